package chunkstore

import (
	"context"
	"testing"
)

// NewTestStore creates a directory store in t.TempDir and opens it for
// writing, holding the store lock exclusively (so GC deletes at once, as
// the CLI's gc does). In
// t.Cleanup it runs Verify, failing the test on any problem, and closes
// the store. Pass opts to change the Init options (small packs, say).
func NewTestStore(t testing.TB, opts ...InitOptions) *BlobStore {
	t.Helper()
	var o InitOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	dir := t.TempDir()
	if err := Init(dir, o); err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), dir, OpenOptions{Exclusive: true, Command: "test " + t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		defer s.Close()
		if s.closed.Load() {
			return
		}
		st, err := s.Verify(context.Background(), func(p Problem) { t.Errorf("chunkstore verify: %s", p) })
		if err != nil {
			t.Errorf("chunkstore verify: %v", err)
		} else if st.Problems > 0 {
			t.Errorf("chunkstore verify: %d problems", st.Problems)
		}
	})
	return s
}
