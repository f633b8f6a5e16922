package fleet

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
)

// memFleet commits n engrams with real manifests (pages stored, data
// chunks not needed by the fleet view) in families of 50 to a memory store:
// a template of 2000 chunks of 64 KiB, clones with 100 chunks replaced
// and 300 of their own after it.
func memFleet(tb testing.TB, n int) *chunkstore.MemStore {
	ctx := context.Background()
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	r := rand.New(rand.NewPCG(91, 92))
	randID := func() (id chunkstore.ID) {
		for k := range id {
			id[k] = byte(r.Uint32())
		}
		return id
	}
	var tmpl []chunkstore.ID
	for i := 0; i < n; i++ {
		var ids []chunkstore.ID
		if i%50 == 0 {
			tmpl = make([]chunkstore.ID, 2000)
			for k := range tmpl {
				tmpl[k] = randID()
			}
			ids = tmpl
		} else {
			ids = append([]chunkstore.ID{}, tmpl...)
			for k := 0; k < 100; k++ {
				ids[r.IntN(len(ids))] = randID()
			}
			for k := 0; k < 300; k++ {
				ids = append(ids, randID())
			}
		}
		var pages []chunkstore.Chunk
		b := engram.NewBuilder(int64(len(ids))<<16, func(c chunkstore.Chunk) error { pages = append(pages, c); return nil })
		sk := engram.NewSketchBuilder()
		for k, id := range ids {
			ref := engram.ChunkRef{Offset: int64(k) << 16, Length: 64 << 10, ID: id}
			if err := b.Add(ref); err != nil {
				tb.Fatal(err)
			}
			sk.Add(ref)
		}
		_, enc, id, err := b.Finish()
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := st.PutMany(ctx, pages); err != nil {
			tb.Fatal(err)
		}
		if err := engram.Commit(ctx, st, id, enc, &engram.Record{Name: fmt.Sprintf("vm-%04d", i), Signature: sk.Encode()}); err != nil {
			tb.Fatal(err)
		}
	}
	return st
}

func TestTreeExactOnManifests(t *testing.T) {
	st := memFleet(t, 100)
	f, err := Load(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := f.Tree(context.Background(), LineageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) != 2 {
		t.Fatalf("%d families, want 2", len(roots))
	}
	for _, r := range roots {
		if len(r.Children) != 49 {
			t.Errorf("%s: %d children, want 49", r.Child.Name, len(r.Children))
		}
		for _, c := range r.Children {
			if c.Method != ByContent || c.Figures == nil || !c.Figures.Exact {
				t.Errorf("%s: %s, want a content decision confirmed exactly", c.Child.Name, c.Method)
			}
		}
	}
}

// BenchmarkTreeExact1k is `engram tree` (content decisions confirmed from
// the manifests) over 1,000 engrams with real manifests in memory.
func BenchmarkTreeExact1k(b *testing.B) {
	st := memFleet(b, 1000)
	b.ResetTimer()
	for b.Loop() {
		f, err := Load(context.Background(), st)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.Tree(context.Background(), LineageOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
