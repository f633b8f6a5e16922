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

// BenchmarkSimilarStore10k is `engram similar` end to end on a real store
// of 10,000 engrams, less process start: open the catalog, load every
// signature, rank (goal: under 50 ms).
func BenchmarkSimilarStore10k(b *testing.B) {
	ctx := context.Background()
	st := chunkstore.NewTestStore(b)
	r := rand.New(rand.NewPCG(61, 62))
	var tmpl [][32]byte
	ids, err := engram.BulkCatalog(ctx, st, 10000, func(i int) []byte {
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
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		f, err := fleet.LoadSignatures(ctx, st)
		if err != nil {
			b.Fatal(err)
		}
		rels, err := f.Similar(ctx, ids[1234], fleet.SimilarOptions{Top: 10})
		if err != nil || len(rels) != 10 {
			b.Fatal(len(rels), err)
		}
		if err := f.FillNames(ctx, rels); err != nil {
			b.Fatal(err)
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
