package chunkstore

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob/mem"
)

// A pack whose segment is lost after its chunks were committed looks like
// a killed writer's orphan; gc must keep it while an engram needs its
// chunks (repair re-indexes it from its own copy), and still delete an
// orphan no one needs.
func TestDirGCKeepsNeededUnindexedPack(t *testing.T) {
	ctx := context.Background()
	s := NewTestStore(t)
	dir := s.local.dir
	need, dead := mkChunks(1, 5, 20000), mkChunks(100, 5, 20000)
	for _, cs := range [][]Chunk{need, dead} {
		if _, err := s.PutMany(ctx, cs); err != nil {
			t.Fatal(err)
		}
	}
	segs, err := os.ReadDir(filepath.Join(dir, "index"))
	if err != nil || len(segs) != 2 {
		t.Fatalf("index/: %d segments, %v", len(segs), err)
	}
	for _, e := range segs {
		if err := os.Remove(filepath.Join(dir, "index", e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	live := liveSet{}
	live.add(need)
	st, err := s.GC(ctx, live.fn, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Unindexed) != 1 || st.PacksDeleted != 1 {
		t.Fatalf("gc = %+v; want the needed pack kept (Unindexed) and the dead one deleted", st)
	}
	if _, err := s.Repair(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range need {
		if _, err := s.Get(ctx, c.ID); err != nil {
			t.Fatalf("after gc and repair: %v", err)
		}
	}
}

// The same in a bucket: a lost segment's pack is neither condemned nor
// swept while its chunks are needed.
func TestBlobGCKeepsNeededUnindexedPack(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	s := gcHost(t, bs, clk)
	need := mkChunks(1, 5, 20000)
	if _, err := s.PutMany(ctx, need); err != nil {
		t.Fatal(err)
	}
	for _, n := range objects(t, bs, blobIndexPrefix) {
		if err := bs.Delete(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	live := liveSet{}
	live.add(need)
	for range 2 {
		if err := s.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		st, err := s.GC(ctx, live.fn, GCOptions{Margin: testMargin})
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Unindexed) != 1 {
			t.Fatalf("gc = %+v; want the needed pack reported as unindexed", st)
		}
		clk.advance(2 * testMargin)
	}
	if n := len(objects(t, bs, blobPacksPrefix)); n != 1 {
		t.Fatalf("%d packs left, want the needed one", n)
	}
}
