package chunkstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
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

// A rotten block read whole still fails with the chunk, pack and frame
// named, and nothing lands in the caller's other buffers unchecked.
func TestGetManyWholeBlockRot(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := Init(dir, InitOptions{BlockSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cs := mkChunks(400, 12, 20000)
	if _, err := s.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	e := entryOf(t, s, cs[5].ID)
	path := s.packs.path(e.Pack)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for k, fixSum := range []bool{false, true} {
		f := b[e.FrameOff : e.FrameOff+int64(e.FrameLen)]
		f[len(f)-20-k] ^= 0x40 // inside the payload
		if fixSum {
			// A frame checksum that matches damaged content: the
			// decoder or BLAKE3 must catch it.
			binary.LittleEndian.PutUint64(f[len(f)-frameTrailer:], xxh3.Hash(f[:len(f)-frameTrailer]))
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		err = getBackToBack(t, s, cs, 0, len(cs))
		var ce *CorruptChunkError
		if !errors.As(err, &ce) || ce.Pack != path || ce.Offset != e.FrameOff {
			t.Fatalf("GetMany of a rotten block = %v", err)
		}
		if x := entryOf(t, s, ce.ID); x.FrameOff != e.FrameOff {
			t.Fatalf("error names chunk %s of another frame: %v", ce.ID.Short(), err)
		}
		t.Log(err)
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
