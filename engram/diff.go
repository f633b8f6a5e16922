package engram

import (
	"context"
	"sort"

	"github.com/engram-vm/engram/chunkstore"
)

// Diff calls fn, in order and merged, for every guest range where the
// content of a (whose pages ra holds) and b (pages in rb) may differ: the
// ranges of chunk refs that the other manifest does not have at the same
// offset with the same length and ID. Everything else is equal, so an
// overlay of b over a needs only these ranges. Pages with the same ID are
// skipped without loading them, which makes clones cheap to compare.
func Diff(ctx context.Context, ra chunkstore.Reader, a Root, rb chunkstore.Reader, b Root, fn func(start, end int64) error) error {
	var pend Span
	have := false
	emit := func(s Span) error {
		if have && s.Start <= pend.End {
			pend.End = max(pend.End, s.End)
			return nil
		}
		if have {
			if err := fn(pend.Start, pend.End); err != nil {
				return err
			}
		}
		pend, have = s, true
		return nil
	}
	i, j := 0, 0
	for i < len(a.Pages) || j < len(b.Pages) {
		var pa, pb *PageRef
		switch {
		case j >= len(b.Pages) || (i < len(a.Pages) && a.Pages[i].Index < b.Pages[j].Index):
			pa = &a.Pages[i]
			i++
		case i >= len(a.Pages) || b.Pages[j].Index < a.Pages[i].Index:
			pb = &b.Pages[j]
			j++
		default:
			pa, pb = &a.Pages[i], &b.Pages[j]
			i++
			j++
			if pa.ID == pb.ID {
				continue
			}
		}
		var refsA, refsB []ChunkRef
		var err error
		if pa != nil {
			if refsA, err = LoadPage(ctx, ra, a, *pa); err != nil {
				return err
			}
		}
		if pb != nil {
			if refsB, err = LoadPage(ctx, rb, b, *pb); err != nil {
				return err
			}
		}
		var spans []Span
		x, y := 0, 0
		for x < len(refsA) || y < len(refsB) {
			switch {
			case y >= len(refsB) || (x < len(refsA) && refsA[x].Offset < refsB[y].Offset):
				spans = append(spans, Span{refsA[x].Offset, refsA[x].End()})
				x++
			case x >= len(refsA) || refsB[y].Offset < refsA[x].Offset:
				spans = append(spans, Span{refsB[y].Offset, refsB[y].End()})
				y++
			default:
				if refsA[x] != refsB[y] {
					spans = append(spans, Span{refsA[x].Offset, max(refsA[x].End(), refsB[y].End())})
				}
				x++
				y++
			}
		}
		sort.Slice(spans, func(p, q int) bool { return spans[p].Start < spans[q].Start })
		for _, s := range spans {
			if err := emit(s); err != nil {
				return err
			}
		}
	}
	if have {
		return fn(pend.Start, pend.End)
	}
	return nil
}

// Span is a guest range [Start, End).
type Span struct{ Start, End int64 }
