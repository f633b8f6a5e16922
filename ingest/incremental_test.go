package ingest

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/qcow2"
)

// memLayer is an overlay in memory: guest holds the merged content, own
// marks the 64 KiB clusters this layer allocates.
type memLayer struct {
	memSource
	own map[int64]bool
}

const cl = 64 << 10

func (m *memLayer) LayerExtents(off, length int64) ([]qcow2.Extent, error) {
	var out []qcow2.Extent
	for s := off / cl * cl; s < off+length; s += cl {
		a, b := max(s, off), min(s+cl, off+length, m.Size())
		if b > a {
			out = append(out, qcow2.Extent{Start: a, Length: b - a, Present: m.own[s], Data: m.own[s], Offset: -1})
		}
	}
	return out, nil
}

func TestIncrementalMatchesFlat(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(11, 12))
	for iter := range incrementalIters {
		st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
		baseSize := (4<<20 + r.IntN(8<<20)) / 512 * 512
		base := makeDisk(uint64(iter), baseSize)
		parent, err := Run(ctx, st, &memSource{base}, Options{Workers: 2})
		if err != nil {
			t.Fatal(err)
		}

		size := baseSize
		switch r.IntN(4) {
		case 0:
			size = baseSize + r.IntN(1<<20)/512*512
		case 1:
			size = baseSize - r.IntN(1<<20)/512*512
		}
		guest := make([]byte, size)
		copy(guest, base)
		own := map[int64]bool{}
		// Changes: random data, zeros, and base data copied to another
		// 4 KiB-aligned offset; each marks the clusters it touches.
		for range 1 + r.IntN(6) {
			off := r.IntN(size)
			n := min(1+r.IntN(300<<10), size-off)
			switch r.IntN(3) {
			case 0:
				for i := off; i < off+n; i++ {
					guest[i] = byte(r.Uint32())
				}
			case 1:
				clear(guest[off : off+n])
			case 2:
				off = off / 4096 * 4096
				from := r.IntN(baseSize-n+1) / 4096 * 4096
				n = min(n, size-off)
				copy(guest[off:off+n], base[from:from+n])
			}
			for c := int64(off) / cl * cl; c < int64(off+n); c += cl {
				own[c] = true
			}
		}
		if size > baseSize {
			for c := int64(baseSize) / cl * cl; c < int64(size); c += cl {
				own[c] = true
			}
		}
		// The overlay's clusters hold the guest bytes of whole clusters.
		layer := &memLayer{memSource{guest}, own}
		inc, err := RunIncremental(ctx, st, layer, parent.Root, Options{Workers: 2})
		if err != nil {
			t.Fatalf("iter %d: %v", iter, err)
		}
		flat, err := Run(ctx, st, &memSource{bytes.Clone(guest)}, Options{Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		if inc.ID != flat.ID {
			diffManifests(t, st, inc, flat, layer)
			t.Fatalf("iter %d (base %d, size %d): incremental ID %s, flat %s", iter, baseSize, size, inc.ID.Short(), flat.ID.Short())
		}
		// The signature covers every ref, reused ones too: the same as flat.
		want, err := engram.BuildSketch(ctx, st, flat.Root)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(inc.Sketch, flat.Sketch) || !bytes.Equal(flat.Sketch, want.Encode()) {
			t.Fatalf("iter %d: incremental, flat and manifest signatures differ", iter)
		}
		var ownBytes int64
		for range own {
			ownBytes += cl
		}
		// Reads the overlay's clusters and a neighbourhood, not the disk.
		if inc.Stats.DataBytes > ownBytes+int64(len(own)+1)*(1<<20) {
			t.Errorf("iter %d: read %d bytes for %d owned", iter, inc.Stats.DataBytes, ownBytes)
		}
	}
}

// incrementalIters is raised by hand when changing the re-chunking logic.
var incrementalIters = 40

func diffManifests(t *testing.T, st chunkstore.Reader, a, b *Result, layer *memLayer) {
	ctx := context.Background()
	var ra, rb []engram.ChunkRef
	engram.ForEachChunk(ctx, st, a.Root, func(c engram.ChunkRef) error { ra = append(ra, c); return nil })
	engram.ForEachChunk(ctx, st, b.Root, func(c engram.ChunkRef) error { rb = append(rb, c); return nil })
	regions, _ := dirtyRegions(layer, a.Root.Size, 4096)
	t.Logf("regions %v", regions)
	for i := 0; i < max(len(ra), len(rb)); i++ {
		var x, y engram.ChunkRef
		if i < len(ra) {
			x = ra[i]
		}
		if i < len(rb) {
			y = rb[i]
		}
		if x.Offset != y.Offset || x.Length != y.Length {
			t.Logf("first difference at %d: incremental %#x+%#x, flat %#x+%#x", i, x.Offset, x.Length, y.Offset, y.Length)
			for j := max(0, i-3); j < min(i+3, len(ra), len(rb)); j++ {
				t.Logf("  %d: inc %#x+%#x  flat %#x+%#x", j, ra[j].Offset, ra[j].Length, rb[j].Offset, rb[j].Length)
			}
			return
		}
	}
}

// TestIncrementalLongRuns covers dirty runs of several MiB with merged
// extents, so each read spans many clusters and chunks are cut inside and
// across reads: the manifest must be the flat one, and every stored chunk
// must hold the guest bytes at its offset (a buffer reused too early would
// not).
func TestIncrementalLongRuns(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(5, 6))
	for iter := range 6 {
		st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
		baseSize := 40<<20 + r.IntN(4<<20)/512*512
		base := makeDisk(uint64(100+iter), baseSize)
		parent, err := Run(ctx, st, &memSource{base}, Options{Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		size := baseSize
		if iter%3 == 1 {
			size += 3 << 20 // grown: the tail is dirty too
		}
		guest := make([]byte, size)
		copy(guest, base)
		own := map[int64]bool{}
		for range 1 + r.IntN(3) {
			off := r.IntN(size-(1<<20)) / cl * cl
			n := min((1<<20)+r.IntN(10<<20), size-off)
			for i := off; i < off+n; i++ {
				guest[i] = byte(r.Uint32())
			}
			// Zero blocks, a hole of clusters and base data moved inside
			// the run: cuts the splitter must make inside a borrowed read.
			for range 8 {
				z := off + r.IntN(n)/4096*4096
				clear(guest[z:min(z+4096*(1+r.IntN(20)), off+n)])
			}
			if n > 2<<20 {
				to := off + (1 << 20)
				from := r.IntN(baseSize-(512<<10)) / 4096 * 4096
				copy(guest[to:to+(512<<10)], base[from:])
			}
			for c := int64(off) / cl * cl; c < int64(off+n); c += cl {
				own[c] = true
			}
		}
		for c := int64(baseSize) / cl * cl; c < int64(size); c += cl {
			own[c] = true
			copy(guest[c:min(c+cl, int64(size))], makeDisk(uint64(c), cl))
		}
		layer := &mergedLayer{memLayer{memSource{guest}, own}}
		inc, err := RunIncremental(ctx, st, layer, parent.Root, Options{Workers: 2})
		if err != nil {
			t.Fatalf("iter %d: %v", iter, err)
		}
		flat, err := Run(ctx, chunkstore.NewMemory(st.Params()), &memSource{bytes.Clone(guest)}, Options{Workers: 2, HashOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if inc.ID != flat.ID {
			diffManifests(t, st, inc, flat, &layer.memLayer)
			t.Fatalf("iter %d: incremental ID %s, flat %s", iter, inc.ID.Short(), flat.ID.Short())
		}
		err = engram.ForEachChunk(ctx, st, inc.Root, func(c engram.ChunkRef) error {
			b, err := st.Get(ctx, c.ID)
			if err != nil {
				return err
			}
			if !bytes.Equal(b, guest[c.Offset:c.Offset+int64(c.Length)]) {
				t.Fatalf("iter %d: chunk at %#x+%#x does not hold the guest bytes", iter, c.Offset, c.Length)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// mergedLayer is a memLayer whose extent map merges neighbouring extents
// of one kind, as a qcow2 image's does, so reads can span many clusters.
type mergedLayer struct{ memLayer }

func (m *mergedLayer) Extents(off, length int64) ([]qcow2.Extent, error) {
	exts, err := m.memLayer.Extents(off, length)
	if err != nil {
		return nil, err
	}
	var out []qcow2.Extent
	for _, e := range exts {
		if n := len(out); n > 0 && out[n-1].Data == e.Data && out[n-1].Zero == e.Zero {
			out[n-1].Length += e.Length
			continue
		}
		out = append(out, e)
	}
	return out, nil
}
