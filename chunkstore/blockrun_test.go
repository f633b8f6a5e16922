package chunkstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/zeebo/xxh3"
)

// getBackToBack reads cs[from:to] with one GetMany into one array, the way
// restore does, and checks the bytes.
func getBackToBack(t *testing.T, s Reader, cs []Chunk, from, to int) error {
	t.Helper()
	n := 0
	for _, c := range cs[from:to] {
		n += len(c.Data)
	}
	arr := make([]byte, n+100) // spare capacity past the last chunk stays ours
	for i := range arr {
		arr[i] = 0xee
	}
	ids := make([]ID, 0, to-from)
	bufs := make([][]byte, 0, to-from)
	off := 0
	for _, c := range cs[from:to] {
		ids = append(ids, c.ID)
		bufs = append(bufs, arr[off:off+len(c.Data)])
		off += len(c.Data)
	}
	if err := GetMany(context.Background(), s, ids, bufs); err != nil {
		return err
	}
	for i, c := range cs[from:to] {
		if !bytes.Equal(bufs[i], c.Data) {
			t.Fatalf("chunk %d of %d..%d differs", from+i, from, to)
		}
	}
	if !bytes.Equal(arr[n:], bytes.Repeat([]byte{0xee}, 100)) {
		t.Fatalf("GetMany wrote past the last buffer")
	}
	return nil
}

func TestGetManyWholeBlocks(t *testing.T) {
	ctx := context.Background()
	s := NewTestStore(t, InitOptions{BlockSize: 64 << 10})
	cs := mkChunks(300, 40, 20000) // 3 or 4 chunks a block
	if _, err := s.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	// Every block asked for whole: decoded straight into the buffers,
	// nothing goes through the block cache.
	if err := getBackToBack(t, s, cs, 0, len(cs)); err != nil {
		t.Fatal(err)
	}
	if s.cache.used != 0 {
		t.Fatalf("block cache holds %d bytes after reading whole blocks", s.cache.used)
	}
	// Calls that cut blocks: the cut blocks come from the cache, the rest
	// still straight; the bytes are the same either way.
	for _, cut := range [][2]int{{1, 7}, {7, 8}, {8, 23}, {23, 40}, {0, 1}} {
		if err := getBackToBack(t, s, cs, cut[0], cut[1]); err != nil {
			t.Fatal(err)
		}
	}
	if s.cache.used == 0 {
		t.Fatal("no block went through the cache although calls cut blocks")
	}
	// Buffers that are not back to back are served chunk by chunk.
	bufs := [][]byte{make([]byte, len(cs[0].Data)), make([]byte, len(cs[1].Data))}
	if err := GetMany(ctx, s, []ID{cs[0].ID, cs[1].ID}, bufs); err != nil || !bytes.Equal(bufs[0], cs[0].Data) || !bytes.Equal(bufs[1], cs[1].Data) {
		t.Fatalf("separate buffers: %v", err)
	}
}

// encodeTestFrame encodes cs as one frame (zstd unless it does not shrink) and
// returns it with the entries an index would hold for its chunks.
func encodeTestFrame(t *testing.T, cs []Chunk) ([]byte, []ID, []entry, int) {
	t.Helper()
	c, err := getCodec("default")
	if err != nil {
		t.Fatal(err)
	}
	var raw []byte
	ids := make([]ID, len(cs))
	ents := make([]entry, len(cs))
	for i, ch := range cs {
		ids[i] = ch.ID
		ents[i] = entry{BlockOff: uint32(len(raw)), RawLen: uint32(len(ch.Data))}
		raw = append(raw, ch.Data...)
	}
	return encodeFrame(nil, cs, raw, c), ids, ents, len(raw)
}

// decodeRunInto decodes a whole block into the caller's memory, refuses
// what is not the whole block, and names the chunk that does not hash
// when the frame's checksum matches damaged content.
func TestDecodeRunInto(t *testing.T) {
	cs := mkChunks(400, 5, 20000)
	fb, ids, ents, n := encodeTestFrame(t, cs)
	f, _, err := decodeFrame(fb)
	if err != nil || f.Codec != codecZstd {
		t.Fatalf("frame: codec %d, %v", f.Codec, err)
	}
	dst := make([]byte, n)
	if ok, bad, err := f.decodeRunInto(dst, 0, ids, ents); !ok || bad != -1 || err != nil {
		t.Fatalf("whole block: %v %d %v", ok, bad, err)
	}
	off := 0
	for _, c := range cs {
		if !bytes.Equal(dst[off:off+len(c.Data)], c.Data) {
			t.Fatal("decoded block differs")
		}
		off += len(c.Data)
	}
	if ok, _, _ := f.decodeRunInto(dst[:n-len(cs[4].Data)], 0, ids[:4], ents[:4]); ok {
		t.Fatal("part of a block accepted as a whole-block run")
	}
	other := append([]ID(nil), ids...)
	other[2] = Sum([]byte("not this one"))
	if ok, _, _ := f.decodeRunInto(dst, 0, other, ents); ok {
		t.Fatal("a run naming another chunk accepted")
	}
	// Damage behind a checksum that matches it: zstd fails or BLAKE3
	// names the chunk.
	for k := range 8 {
		bad := bytes.Clone(fb)
		bad[len(bad)-frameTrailer-1-k*97] ^= 0x40
		binary.LittleEndian.PutUint64(bad[len(bad)-frameTrailer:], xxh3.Hash(bad[:len(bad)-frameTrailer]))
		f, _, err := decodeFrame(bad)
		if err != nil {
			t.Fatal(err)
		}
		ok, i, err := f.decodeRunInto(make([]byte, n), 0, ids, ents)
		if !ok || err == nil {
			t.Fatalf("damage %d not found: %v %d %v", k, ok, i, err)
		}
		t.Logf("damage %d: chunk %d: %v", k, i, err)
	}
}

func TestWholeRun(t *testing.T) {
	arr := make([]byte, 300)
	ents := []entry{
		{Pack: 1, FrameOff: 16, BlockOff: 0, RawLen: 100},
		{Pack: 1, FrameOff: 16, BlockOff: 100, RawLen: 100},
		{Pack: 1, FrameOff: 16, BlockOff: 200, RawLen: 100},
		{Pack: 1, FrameOff: 16, BlockOff: 0, RawLen: 100}, // the first chunk again
	}
	bufs := [][]byte{arr[0:100], arr[100:200], arr[200:300], make([]byte, 100)}
	if dst := wholeRun(ents, bufs, []int{0, 1, 2}); len(dst) != 300 || &dst[0] != &arr[0] {
		t.Fatalf("back-to-back run: %d bytes", len(dst))
	}
	if dst := wholeRun(ents, bufs, []int{0, 1, 2, 3}); dst != nil {
		t.Fatal("a repeated chunk in another buffer made a run")
	}
	if dst := wholeRun(ents, bufs, []int{1, 2}); dst != nil {
		t.Fatal("a run not from the block's start")
	}
	if dst := wholeRun(ents, bufs, []int{0, 2}); dst != nil {
		t.Fatal("a run with a gap")
	}
	capped := [][]byte{arr[0:100:100], arr[100:200], arr[200:300]}
	if dst := wholeRun(ents, capped, []int{0, 1, 2}); dst != nil {
		t.Fatal("capped buffers are not back to back")
	}
	if dst := wholeRun(ents[:1], bufs[:1], []int{0}); len(dst) != 100 {
		t.Fatal("a one-chunk run")
	}
}
