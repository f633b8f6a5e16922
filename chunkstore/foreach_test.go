package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

func TestForEach(t *testing.T) {
	ctx := context.Background()
	for name, s := range map[string]interface {
		Store
		Lister
	}{"file": NewTestStore(t), "mem": NewMemory(Params{})} {
		t.Run(name, func(t *testing.T) {
			cs := mkChunks(100, 30, 5000)
			if _, err := s.PutMany(ctx, cs); err != nil {
				t.Fatal(err)
			}
			want := map[ID]int{}
			for _, c := range cs {
				want[c.ID] = len(c.Data)
			}
			var prev ID
			n := 0
			err := s.ForEach(ctx, func(e Entry) error {
				if n > 0 && bytes.Compare(prev[:], e.ID[:]) >= 0 {
					t.Errorf("not in ID order: %s after %s", e.ID.Short(), prev.Short())
				}
				prev = e.ID
				if l, ok := want[e.ID]; !ok || l != e.RawLen || e.StoredLen <= 0 {
					t.Errorf("entry %s raw %d stored %d, want raw %d (known %v)", e.ID.Short(), e.RawLen, e.StoredLen, l, ok)
				}
				n++
				return nil
			})
			if err != nil || n != len(cs) {
				t.Fatalf("ForEach visited %d, err %v; want %d", n, err, len(cs))
			}
			stop := errors.New("stop")
			n = 0
			if err := s.ForEach(ctx, func(Entry) error { n++; return stop }); err != stop || n != 1 {
				t.Fatalf("ForEach after error: visited %d, err %v", n, err)
			}
		})
	}
}
