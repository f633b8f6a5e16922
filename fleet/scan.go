package fleet

import (
	"bytes"
	"container/heap"
	"context"
	"fmt"
	"sort"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/sketch"
)

// scored is a first-pass candidate.
type scored struct {
	id     engram.ID
	shared float64
}

// minHeap keeps the best candidates seen so far, worst on top.
type minHeap []scored

func (h minHeap) Len() int { return len(h) }
func (h minHeap) Less(i, j int) bool {
	if h[i].shared != h[j].shared {
		return h[i].shared < h[j].shared
	}
	return bytes.Compare(h[i].id[:], h[j].id[:]) > 0
}
func (h minHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *minHeap) Push(x any)   { *h = append(*h, x.(scored)) }
func (h *minHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// SimilarInStore is Similar read straight from the catalog of r, without
// loading the fleet: the first pass compares the first 1024 bins of every
// signature where the store keeps it (no copy, no decode), the shortlist
// is decoded, checked and compared in full, and the results are named.
// It also returns how many engrams have no usable signature.
func SimilarInStore(ctx context.Context, r chunkstore.Reader, id engram.ID, opts SimilarOptions) ([]Relation, int, error) {
	q, err := engram.LoadSketch(ctx, r, id)
	if err != nil {
		return nil, 0, err
	}
	top := opts.Top
	if top <= 0 {
		top = 10
	}
	short := opts.Shortlist
	if short <= 0 {
		short = 100
	}
	short = max(short, top)
	// Top comes from the command line (similar --top): size the heap by
	// what it holds, not by a count that may exceed the catalog.
	h := make(minHeap, 0, min(short, 1024)+1)
	old := 0
	unsigned, err := engram.ScanSketches(ctx, r, func(cid engram.ID, enc []byte) error {
		if cid == id {
			return nil
		}
		e, ok := sketch.PrefixEstimate(q, enc, 1024)
		if !ok {
			old++ // another version (or damaged): sketch --rebuild
			return nil
		}
		c := scored{cid, e.Shared}
		if len(h) < short {
			heap.Push(&h, c)
		} else if c.shared > h[0].shared || c.shared == h[0].shared && bytes.Compare(c.id[:], h[0].id[:]) < 0 {
			h[0] = c
			heap.Fix(&h, 0)
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	f := &Fleet{r: r, byID: map[engram.ID]*Member{}, sets: map[engram.ID]chunkSet{}}
	rels := make([]Relation, 0, len(h))
	for _, c := range h {
		s, err := engram.LoadSketch(ctx, r, c.id)
		if err != nil {
			return nil, 0, fmt.Errorf("similar: %w", err)
		}
		m := &Member{ID: c.id, Sketch: s}
		f.byID[c.id] = m
		rels = append(rels, fromEstimate(m, sketch.Compare(q, s)))
	}
	sort.Slice(rels, func(i, j int) bool {
		if rels[i].Shared != rels[j].Shared {
			return rels[i].Shared > rels[j].Shared
		}
		return bytes.Compare(rels[i].B.ID[:], rels[j].B.ID[:]) < 0
	})
	if len(rels) > top {
		rels = rels[:top]
	}
	if opts.Exact {
		for i := range rels {
			if err := f.exact(ctx, id, &rels[i]); err != nil {
				return nil, 0, err
			}
		}
		sort.SliceStable(rels, func(i, j int) bool { return rels[i].Shared > rels[j].Shared })
	}
	if err := f.FillNames(ctx, rels); err != nil {
		return nil, 0, err
	}
	return rels, unsigned + old, nil
}
