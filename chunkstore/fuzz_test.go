package chunkstore

import (
	"bytes"
	"context"
	"testing"
)

// FuzzFrame feeds arbitrary bytes to the frame decoder and the pack
// scanner: they must return errors, never panic or allocate beyond the
// limits, and whatever decodes must slice cleanly.
func FuzzFrame(f *testing.F) {
	c, err := getCodec("fastest")
	if err != nil {
		f.Fatal(err)
	}
	cs := mkChunks(1, 3, 3000)
	raw := append(append(append([]byte{}, cs[0].Data...), cs[1].Data...), cs[2].Data...)
	f.Add(encodeFrame(nil, cs, raw, c))
	f.Add(encodeFrame(nil, cs[:1], cs[0].Data, nil))
	f.Add(encodeFrame(nil, []Chunk{{ID: Sum(nil)}}, nil, nil))
	f.Add([]byte(frameMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		if fr, n, err := decodeFrame(b); err == nil {
			if n > int64(len(b)) {
				t.Fatalf("frame length %d beyond input %d", n, len(b))
			}
			block, berr := fr.block()
			if berr == nil {
				for _, c := range fr.Chunks {
					_ = chunkOK(block, c)
				}
			}
			// The whole-block run of the frame's own list decodes to the
			// same bytes straight into a buffer, or fails.
			if fr.RawLen <= 1<<20 {
				ids := make([]ID, len(fr.Chunks))
				ents := make([]entry, len(fr.Chunks))
				for i, c := range fr.Chunks {
					ids[i], ents[i] = c.ID, entry{BlockOff: c.Off, RawLen: c.Len}
				}
				dst := make([]byte, fr.RawLen)
				ok, _, err := fr.decodeRunInto(dst, 0, ids, ents)
				if !ok {
					t.Fatal("a frame's own chunk list is not its whole block")
				}
				if err == nil && (berr != nil || !bytes.Equal(dst, block)) {
					t.Fatalf("decodeRunInto accepted what block() did not (%v) or differs", berr)
				}
			}
		}
		pack := append(packHeader(7), b...)
		end, err := scanPack(context.Background(), bytes.NewReader(pack), 7, int64(len(pack)),
			func(off int64, fr *frame, raw []byte) error {
				if int64(len(raw)) > int64(len(pack))-off {
					t.Fatalf("frame at %d of %d bytes runs past the input", off, len(raw))
				}
				_, _ = fr.block()
				return nil
			}, func(int64, error) {})
		if err != nil || end > int64(len(pack)) {
			t.Fatal(end, err)
		}
	})
}
