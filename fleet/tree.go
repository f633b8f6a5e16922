package fleet

import (
	"context"
	"sort"

	"github.com/engram-vm/engram/sketch"
)

// Node is one engram in the forest of families.
type Node struct {
	Decision
	Children []*Node
}

// Tree decides the parent of every engram and returns the families as a
// forest: roots are engrams without a parent (or with an ambiguous one),
// children ordered by label. Candidates for content decisions come from
// an index of the signatures' first bins, so the cost grows with family
// sizes, not with the square of the store.
func (f *Fleet) Tree(ctx context.Context, opts LineageOptions) ([]*Node, error) {
	ix := newBinIndex(f)
	nodes := make(map[*Member]*Node, len(f.Members))
	for _, m := range f.Members {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		d, ok := f.byRecord(m)
		if !ok {
			d = Decision{Child: m, Method: NoParent}
			if m.Sketch != nil {
				var err error
				if d, err = f.byContent(ctx, m, ix.candidates(m), opts); err != nil {
					return nil, err
				}
			}
		}
		nodes[m] = &Node{Decision: d}
	}
	var roots []*Node
	for _, m := range f.Members {
		n := nodes[m]
		p := n.Parent
		if p != nil && !reaches(nodes, p, m) {
			nodes[p].Children = append(nodes[p].Children, n)
			continue
		}
		roots = append(roots, n)
	}
	var order func(l []*Node)
	order = func(l []*Node) {
		sort.SliceStable(l, func(i, j int) bool { return l[i].Child.Label() < l[j].Child.Label() })
		for _, n := range l {
			order(n.Children)
		}
	}
	order(roots)
	return roots, nil
}

// reaches reports whether following parents from p arrives at m (a loop
// through records; content decisions cannot loop: weights grow toward the
// children).
func reaches(nodes map[*Member]*Node, p, m *Member) bool {
	for i := 0; p != nil && i <= len(nodes); i++ {
		if p == m {
			return true
		}
		p = nodes[p].Parent
	}
	return false
}

// indexBins is how many leading bins the candidate index covers, and
// minHits how many of them must match for a candidate: random matches
// average indexBins/255 = 0.5 (8 or more: p ≈ 1e-7), while any pair with
// a Jaccard above ~6% passes.
const (
	indexBins = 128
	minHits   = 8
)

// prefixBins is what the first pass over candidates compares.
const prefixBins = 1024

// binIndex maps (bin, fingerprint) to the members holding it.
type binIndex struct {
	f     *Fleet
	lists [indexBins][256][]int32
	hits  []uint16 // per member, reset after each query
}

func newBinIndex(f *Fleet) *binIndex {
	ix := &binIndex{f: f}
	for i, m := range f.Members {
		if m.Sketch == nil {
			continue
		}
		for b := 0; b < indexBins; b++ {
			if fp := m.Sketch.Fp[b]; fp != 0 {
				ix.lists[b][fp] = append(ix.lists[b][fp], int32(i))
			}
		}
	}
	return ix
}

// candidates returns the members sharing at least minHits indexed bins
// with m, with their full estimates.
func (ix *binIndex) candidates(m *Member) []Relation {
	filled := 0
	for _, fp := range m.Sketch.Fp[:indexBins] {
		if fp != 0 {
			filled++
		}
	}
	if filled < 4*minHits {
		// A small image fills few bins: compare it with everyone.
		var out []Relation
		for _, b := range ix.f.Members {
			if b != m && b.Sketch != nil {
				out = append(out, fromEstimate(b, sketch.Compare(m.Sketch, b.Sketch)))
			}
		}
		return out
	}
	if len(ix.hits) != len(ix.f.Members) {
		ix.hits = make([]uint16, len(ix.f.Members))
	}
	var touched []int32
	for b := 0; b < indexBins; b++ {
		if fp := m.Sketch.Fp[b]; fp != 0 {
			for _, i := range ix.lists[b][fp] {
				if ix.hits[i] == 0 {
					touched = append(touched, i)
				}
				ix.hits[i]++
			}
		}
	}
	var out []Relation
	for _, i := range touched {
		b := ix.f.Members[i]
		if ix.hits[i] >= minHits && b != m {
			// A first-pass estimate; the shortlist is compared in full.
			out = append(out, fromEstimate(b, sketch.ComparePrefix(m.Sketch, b.Sketch, prefixBins)))
		}
		ix.hits[i] = 0
	}
	return out
}
