package engram_test

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/fleet"
	"github.com/engram-vm/engram/sketch"
)

// familySigs returns signatures of families of 50: each member 1800
// chunks of its family's template and 200 of its own.
func familySigs(seed uint64) func(i int) []byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	var tmpl [][32]byte
	return func(i int) []byte {
		if i%50 == 0 {
			tmpl = make([][32]byte, 2000)
			for k := range tmpl {
				for j := range tmpl[k] {
					tmpl[k][j] = byte(r.Uint32())
				}
			}
		}
		bl := sketch.NewBuilder()
		for _, id := range tmpl[:1800] {
			bl.Add(id, 64<<10)
		}
		for k := 0; k < 200; k++ {
			var id [32]byte
			for j := range id {
				id[j] = byte(r.Uint32())
			}
			bl.Add(id, 64<<10)
		}
		return bl.Sketch().Encode()
	}
}

// TestSimilarInStoreMatchesLoad: the in-place scan ranks as the loaded
// fleet does, and names the results.
func TestSimilarInStoreMatchesLoad(t *testing.T) {
	ctx := context.Background()
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	ids, err := engram.BulkCatalog(ctx, st, 500, familySigs(63))
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleet.LoadSignatures(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	want, err := f.Similar(ctx, ids[123], fleet.SimilarOptions{Top: 20})
	if err != nil {
		t.Fatal(err)
	}
	got, unsigned, err := fleet.SimilarInStore(ctx, st, ids[123], fleet.SimilarOptions{Top: 20})
	if err != nil || unsigned != 0 {
		t.Fatalf("SimilarInStore: %v (%d unsigned)", err, unsigned)
	}
	if len(got) != len(want) {
		t.Fatalf("%d results, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].B.ID != want[i].B.ID && got[i].Shared != want[i].Shared {
			t.Errorf("rank %d: %s (%d), want %s (%d)", i, got[i].B.ID.Short(), got[i].Shared, want[i].B.ID.Short(), want[i].Shared)
		}
		if got[i].B.Name == "" {
			t.Errorf("rank %d: no name", i)
		}
	}
	// The best are the query's family (members 100..149).
	for i, r := range got[:10] {
		k := -1
		for j, id := range ids {
			if id == r.B.ID {
				k = j
			}
		}
		if k < 100 || k >= 150 {
			t.Errorf("rank %d: engram %d, want one of its family", i, k)
		}
	}
}

// BenchmarkSimilarStore10k is `engram similar` end to end on a real store
// of 10,000 engrams, less process start: scan the signatures in place,
// rank, name the results (goal: under 50 ms).
func BenchmarkSimilarStore10k(b *testing.B) {
	ctx := context.Background()
	st := chunkstore.NewTestStore(b)
	ids, err := engram.BulkCatalog(ctx, st, 10000, familySigs(61))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		rels, _, err := fleet.SimilarInStore(ctx, st, ids[1234], fleet.SimilarOptions{Top: 10})
		if err != nil || len(rels) != 10 {
			b.Fatal(len(rels), err)
		}
	}
}

// BenchmarkLoad10k is the full fleet load (records too) that lineage and
// tree need.
func BenchmarkLoad10k(b *testing.B) {
	ctx := context.Background()
	st := chunkstore.NewTestStore(b)
	enc := (&sketch.Sketch{}).Encode()
	if _, err := engram.BulkCatalog(ctx, st, 10000, func(int) []byte { return enc }); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := fleet.Load(ctx, st); err != nil {
			b.Fatal(err)
		}
	}
}
