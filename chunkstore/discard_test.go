package chunkstore

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// DiscardStaged gives up the packs staged since the last durable point:
// Close then names none of them, has() no longer answers for them, and
// what a durable point made durable before stays.
func TestDiscardStaged(t *testing.T) {
	ctx := context.Background()
	s, dir := openDeferred(t, InitOptions{PackSize: 256 << 10, BlockSize: 64 << 10})
	kept, dropped := mkChunks(1, 5, 20000), mkChunks(100, 20, 20000)
	if _, err := s.PutMany(ctx, kept); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("user"), []byte("k"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutMany(ctx, dropped); err != nil {
		t.Fatal(err)
	}
	s.DiscardStaged()
	if n := tmpFiles(t, dir); n != 0 {
		t.Fatalf("%d temporary files left after DiscardStaged", n)
	}
	if have, err := s.HasForDedup(ctx, []ID{dropped[0].ID}); err != nil || have[0] {
		t.Fatalf("HasForDedup of a discarded chunk = %v, %v", have, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	segs, err := filepath.Glob(filepath.Join(dir, "index", "*"))
	if err != nil || len(segs) != 1 {
		t.Fatalf("segments after Close: %v, %v; want the committed pack's only", segs, err)
	}
	r, err := Open(ctx, dir, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, c := range kept {
		if _, err := r.Get(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "packs")); err != nil {
		t.Fatal(err)
	}
}
