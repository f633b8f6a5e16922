package chunkstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
)

// scanPack walks the frames of a pack file from its header to end. Intact
// frames go to visit (fr.Payload aliases a buffer reused afterwards);
// damage goes to bad, after which the scan resynchronises on the next
// frame magic. It returns the end of the last intact frame.
func scanPack(ctx context.Context, f io.ReaderAt, num uint32, end int64,
	visit func(off int64, fr *frame, raw []byte) error, bad func(off int64, err error)) (int64, error) {
	hdr := make([]byte, packHeaderSize)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		bad(0, fmt.Errorf("reading pack header: %w", err))
		return 0, nil
	}
	if err := checkPackHeader(hdr, num); err != nil {
		// A pack version other than 1 inside a version-1 store (config.json
		// is checked at Open) is damage, not a newer format: report it and
		// scan on, since every frame describes itself. Stopping here made
		// one flipped header bit abort Verify and Repair of the whole store.
		bad(0, err)
	}
	off, lastGood := int64(packHeaderSize), int64(packHeaderSize)
	var buf []byte
	for off < end {
		if err := ctx.Err(); err != nil {
			return lastGood, err
		}
		var fh [frameFixed]byte
		n := min(int64(frameFixed), end-off)
		if _, err := f.ReadAt(fh[:n], off); err != nil {
			return lastGood, err
		}
		h, err := parseFrameHeader(fh[:n])
		if err == nil && off+h.Len() > end {
			err = fmt.Errorf("frame of %d bytes runs past the end of the pack (0x%x)", h.Len(), end)
		}
		if err == nil {
			if int64(cap(buf)) < h.Len() {
				buf = make([]byte, h.Len())
			}
			buf = buf[:h.Len()]
			if _, err := f.ReadAt(buf, off); err != nil {
				return lastGood, err
			}
			var fr *frame
			fr, _, err = decodeFrame(buf)
			if err == nil {
				if err := visit(off, fr, buf); err != nil {
					return lastGood, err
				}
				off += h.Len()
				lastGood = off
				continue
			}
		}
		bad(off, err)
		next, err := findMagic(f, off+1, end)
		if err != nil {
			return lastGood, err
		}
		if next < 0 {
			break
		}
		off = next
	}
	return lastGood, nil
}

// findMagic returns the offset of the next frame magic in [from, end), or -1.
func findMagic(f io.ReaderAt, from, end int64) (int64, error) {
	const win = 1 << 20
	buf := make([]byte, win+len(frameMagic)-1)
	for off := from; off < end; off += win {
		n := min(int64(len(buf)), end-off)
		if _, err := f.ReadAt(buf[:n], off); err != nil && err != io.EOF {
			return -1, err
		}
		if i := bytes.Index(buf[:n], []byte(frameMagic)); i >= 0 {
			return off + int64(i), nil
		}
	}
	return -1, nil
}

// scannedFrame is what Verify learned about one intact frame.
type scannedFrame struct {
	n      int64
	chunks []frameChunk
	bad    map[int]error // chunk index -> BLAKE3 mismatch or decompression error
}

// chunkOK checks one chunk of a decoded block.
func chunkOK(block []byte, c frameChunk) error {
	if got := Sum(block[c.Off : c.Off+c.Len]); got != c.ID {
		return fmt.Errorf("content hashes to %s", got.Short())
	}
	return nil
}

func sortedNums[V any](m map[uint32]V) []uint32 {
	nums := make([]uint32, 0, len(m))
	for n := range m {
		nums = append(nums, n)
	}
	sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })
	return nums
}

func openPack(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}
