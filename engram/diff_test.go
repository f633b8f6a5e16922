package engram

import (
	"context"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
)

// build stores the pages of a manifest with the given refs and returns its root.
func build(t *testing.T, st chunkstore.Store, size int64, refs []ChunkRef) Root {
	t.Helper()
	var pages []chunkstore.Chunk
	b := NewBuilder(size, func(c chunkstore.Chunk) error { pages = append(pages, c); return nil })
	for _, r := range refs {
		if err := b.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	root, _, _, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutMany(context.Background(), pages); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestDiff(t *testing.T) {
	st := newMem()
	id := func(s string) chunkstore.ID { return chunkstore.Sum([]byte(s)) }
	const size = 3 * PageSpan
	common := []ChunkRef{{0, 65536, id("a")}, {PageSpan, 65536, id("b")}, {2 * PageSpan, 4096, id("c")}}
	a := build(t, st, size, common)
	changed := []ChunkRef{
		{0, 65536, id("a")},         // same
		{PageSpan, 32768, id("b2")}, // shorter, other content
		{PageSpan + 1<<20, 8192, id("new")},
		// the chunk at 2*PageSpan is gone (zero now)
	}
	b := build(t, st, size, changed)
	var got []Span
	err := Diff(context.Background(), st, a, st, b, func(s, e int64) error { got = append(got, Span{s, e}); return nil })
	if err != nil {
		t.Fatal(err)
	}
	want := []Span{{PageSpan, PageSpan + 65536}, {PageSpan + 1<<20, PageSpan + 1<<20 + 8192}, {2 * PageSpan, 2*PageSpan + 4096}}
	if len(got) != len(want) {
		t.Fatalf("Diff = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("range %d: %v, want %v", i, got[i], want[i])
		}
	}
	// Identical manifests: nothing, and the equal pages are not even loaded.
	n := 0
	if err := Diff(context.Background(), st, a, st, a, func(int64, int64) error { n++; return nil }); err != nil || n != 0 {
		t.Errorf("Diff of a manifest with itself: %d ranges, %v", n, err)
	}
}
