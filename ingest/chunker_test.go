package ingest

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
)

type cut struct {
	off int64
	id  chunkstore.ID
	n   int
}

func split(t *testing.T, c *Chunker, writes map[int64][]byte, order []int64) []cut {
	t.Helper()
	var out []cut
	sp := c.NewSplitter(func(off int64, data []byte) error {
		out = append(out, cut{off, chunkstore.Sum(data), len(data)})
		c.PutBuf(data)
		return nil
	})
	for _, off := range order {
		if err := sp.Write(off, writes[off]); err != nil {
			t.Fatal(err)
		}
	}
	if err := sp.Flush(); err != nil {
		t.Fatal(err)
	}
	return out
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func newTestChunker(t *testing.T) *Chunker {
	c, err := NewChunker(chunkstore.DefaultChunkParams)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestChunkerSizes(t *testing.T) {
	c := newTestChunker(t)
	p := c.Params()
	r := rand.New(rand.NewPCG(1, 2))
	data := randBytes(r, 64<<20)
	cuts := split(t, c, map[int64][]byte{0: data}, []int64{0})
	var total int64
	for i, k := range cuts {
		if k.off != total {
			t.Fatalf("chunk %d at %d, want %d", i, k.off, total)
		}
		if k.n > p.Max || (k.n < p.Min && i != len(cuts)-1) || k.n%p.Align != 0 {
			t.Fatalf("chunk %d has length %d (min %d max %d)", i, k.n, p.Min, p.Max)
		}
		total += int64(k.n)
	}
	if total != int64(len(data)) {
		t.Fatalf("chunks cover %d bytes, want %d", total, len(data))
	}
	avg := total / int64(len(cuts))
	if avg < int64(p.Avg)*3/4 || avg > int64(p.Avg)*5/4 {
		t.Errorf("average chunk %d, want about %d", avg, p.Avg)
	}
}

// The same data written in pieces, or at another aligned offset after a
// zero block, is cut at the same places: boundaries depend on content only.
func TestChunkerContentDefined(t *testing.T) {
	c := newTestChunker(t)
	r := rand.New(rand.NewPCG(3, 4))
	data := randBytes(r, 4<<20)
	whole := split(t, c, map[int64][]byte{0: data}, []int64{0})

	pieces := map[int64][]byte{}
	var order []int64
	for off := 0; off < len(data); {
		n := (1 + r.IntN(40)) * 4096
		n = min(n, len(data)-off)
		pieces[int64(off)] = data[off : off+n]
		order = append(order, int64(off))
		off += n
	}
	if got := split(t, c, pieces, order); !sameIDs(got, whole) {
		t.Fatal("cutting in pieces changed the chunks")
	}

	// At a different aligned offset behind zeros, with a zero block in front.
	shifted := append(make([]byte, 12*4096), data...)
	got := split(t, c, map[int64][]byte{1 << 20: shifted}, []int64{1 << 20})
	if !sameIDs(got, whole) {
		t.Fatal("moving the data to another aligned offset changed the chunks")
	}
	if got[0].off != 1<<20+12*4096 {
		t.Fatalf("first chunk at %#x, want after the zero blocks", got[0].off)
	}
}

func sameIDs(a, b []cut) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].id != b[i].id || a[i].n != b[i].n {
			return false
		}
	}
	return true
}

func TestChunkerZeroBlocksAndGaps(t *testing.T) {
	c := newTestChunker(t)
	r := rand.New(rand.NewPCG(5, 6))
	blk := func() []byte { return randBytes(r, 4096) }
	// data, zero, data data; then a gap; then one short tail block.
	first := bytes.Join([][]byte{blk(), make([]byte, 4096), blk(), blk()}, nil)
	tail := randBytes(r, 1000)
	cuts := split(t, c, map[int64][]byte{0: first, 1 << 20: tail}, []int64{0, 1 << 20})
	want := []struct {
		off int64
		n   int
	}{{0, 4096}, {8192, 8192}, {1 << 20, 1000}}
	if len(cuts) != len(want) {
		t.Fatalf("got %d chunks %+v, want %d", len(cuts), cuts, len(want))
	}
	for i, w := range want {
		if cuts[i].off != w.off || cuts[i].n != w.n {
			t.Errorf("chunk %d: at %#x len %d, want %#x len %d", i, cuts[i].off, cuts[i].n, w.off, w.n)
		}
	}
	// All zero: nothing at all.
	if got := split(t, c, map[int64][]byte{0: make([]byte, 1<<20)}, []int64{0}); len(got) != 0 {
		t.Fatalf("zero data gave %d chunks", len(got))
	}
}

func TestChunkerRejects(t *testing.T) {
	c := newTestChunker(t)
	sp := c.NewSplitter(func(int64, []byte) error { return nil })
	if err := sp.Write(100, make([]byte, 4096)); err == nil {
		t.Error("unaligned write accepted")
	}
	if err := sp.Write(8192, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if err := sp.Write(4096, make([]byte, 4096)); err == nil {
		t.Error("backwards write accepted")
	}
	bad := chunkstore.DefaultChunkParams
	bad.Align = 3000
	if _, err := NewChunker(bad); err == nil {
		t.Error("bad params accepted")
	}
}
