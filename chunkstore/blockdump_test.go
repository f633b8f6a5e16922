package chunkstore

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestDumpBlocks writes the raw blocks of a store's frames, in the order
// the packs were written, for bench/frontier to compress again:
//
//	ENGRAM_DUMP_BLOCKS=STORE:OUT go test ./chunkstore -run TestDumpBlocks
//
// OUT holds each block as a little-endian uint32 length and its bytes.
// Without the variable the test does nothing.
func TestDumpBlocks(t *testing.T) {
	store, out, ok := strings.Cut(os.Getenv("ENGRAM_DUMP_BLOCKS"), ":")
	if !ok {
		t.Skip("ENGRAM_DUMP_BLOCKS=STORE:OUT not set")
	}
	paths, err := filepath.Glob(filepath.Join(store, packsDir, "*", "*"))
	if err != nil {
		t.Fatal(err)
	}
	mtime := map[string]int64{}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		mtime[p] = fi.ModTime().UnixNano()
	}
	sort.Slice(paths, func(i, j int) bool { return mtime[paths[i]] < mtime[paths[j]] })
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n, raw int
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		// Frames follow the pack header up to the pack's index segment.
		for off := packHeaderSize; off+len(frameMagic) <= len(b) && string(b[off:off+len(frameMagic)]) == frameMagic; {
			fr, l, err := decodeFrame(b[off:])
			if err != nil {
				t.Fatalf("%s at %d: %v", p, off, err)
			}
			blk, err := fr.block()
			if err != nil {
				t.Fatalf("%s at %d: %v", p, off, err)
			}
			if _, err := f.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(blk)))); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(blk); err != nil {
				t.Fatal(err)
			}
			off += int(l)
			n++
			raw += len(blk)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d blocks, %d raw bytes, from %d packs", n, raw, len(paths))
}
