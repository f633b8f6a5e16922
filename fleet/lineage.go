package fleet

import (
	"context"
	"fmt"
	"sort"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/sketch"
)

// How a parent was decided.
const (
	ByOverlay   = "overlay-record" // the chain was ingested: the record names the parent
	ByContent   = "content"        // the engram most contained in it, clearly asymmetric
	Ambiguous   = "ambiguous"      // two candidates too close to call: reported, not guessed
	NoParent    = "none"           // nothing is contained in it asymmetrically: a family root
	lineageTopK = 6                // candidates confirmed exactly
)

// Thresholds of the content rule, on exact figures (or estimates when
// there is no store).
const (
	// MinContained is how much of a parent's bytes its child must hold.
	MinContained = 0.5
	// AsymmetryRatio: the child's own bytes (not in the parent) must be at
	// least this many times the parent's own bytes (not in the child).
	AsymmetryRatio = 2
	// TieFraction: a runner-up within this part of the child's bytes of
	// the winner's shared bytes, and not an ancestor of the winner, makes
	// the decision ambiguous.
	TieFraction = 0.005
)

// Decision is the parent of one engram and how it was found.
type Decision struct {
	Child    *Member
	Parent   *Member   // nil for NoParent and Ambiguous
	Method   string    // ByOverlay, ByContent, Ambiguous, NoParent
	Figures  *Relation // child against the parent (content decisions), or the best candidate
	RunnerUp *Relation // the next candidate, if any
}

// LineageOptions tune Lineage and Tree.
type LineageOptions struct {
	// Estimate decides from signatures alone (no manifest reads): for
	// stores of synthetic signatures and quick looks.
	Estimate bool
}

// Lineage decides the parent of id.
func (f *Fleet) Lineage(ctx context.Context, id engram.ID, opts LineageOptions) (Decision, error) {
	m := f.byID[id]
	if m == nil {
		return Decision{}, fmt.Errorf("%w: %s", engram.ErrNotFound, id)
	}
	if d, ok := f.byRecord(m); ok {
		return d, nil
	}
	if m.Sketch == nil {
		return Decision{}, fmt.Errorf("engram %s: %w (run engram sketch --rebuild)", id.Short(), engram.ErrNoSignature)
	}
	var cands []Relation
	for _, b := range f.Members {
		if b == m || b.Sketch == nil {
			continue
		}
		cands = append(cands, fromEstimate(b, sketch.Compare(m.Sketch, b.Sketch)))
	}
	return f.byContent(ctx, m, cands, opts)
}

// byRecord: the newest record naming a parent still in the catalog.
func (f *Fleet) byRecord(m *Member) (Decision, bool) {
	for i := len(m.Records) - 1; i >= 0; i-- {
		r := m.Records[i]
		if r.Parent == "" {
			continue
		}
		pid, err := chunkstore.ParseID(r.Parent)
		if err != nil || pid == m.ID {
			continue
		}
		if p := f.byID[pid]; p != nil {
			return Decision{Child: m, Parent: p, Method: ByOverlay}, true
		}
	}
	return Decision{}, false
}

// weightOf is a member's weight in bytes (4 KiB units × 4096).
func weightOf(m *Member) float64 { return float64(m.Sketch.Weight) * sketch.Unit }

// eligible: b (a candidate parent of child) is mostly held by child, and
// child has clearly more of its own than b has.
func eligible(child *Member, r *Relation) bool {
	if r.BInA < MinContained {
		return false
	}
	s := float64(r.Shared)
	ownChild, ownParent := weightOf(child)-s, weightOf(r.B)-s
	if ownChild <= 0 {
		return false
	}
	return ownChild >= AsymmetryRatio*max(ownParent, 0)
}

// maybeEligible is eligible on the estimate with three standard errors
// (and 1% of the child) of slack, so the exact check sees every candidate
// that may pass it.
func maybeEligible(child *Member, r *Relation) bool {
	slack := 3*r.Est.SharedSE + 0.01*weightOf(child)
	s := float64(r.Shared) + slack
	ownChild, ownParent := weightOf(child)-float64(r.Shared)+slack, weightOf(r.B)-s
	return ownChild > 0 && ownChild >= AsymmetryRatio*max(ownParent, 0)
}

func (f *Fleet) byContent(ctx context.Context, m *Member, cands []Relation, opts LineageOptions) (Decision, error) {
	d, err := f.decide(ctx, m, cands, opts)
	if err != nil || d.RunnerUp != nil {
		return d, err
	}
	// No runner-up among the candidates that may be parents: report the
	// engram sharing the most with it (estimated) instead.
	var best *Relation
	for i := range cands {
		c := &cands[i]
		if c.B != d.Parent && (best == nil || c.Shared > best.Shared) {
			best = c
		}
	}
	if best != nil {
		rr := *best
		d.RunnerUp = &rr
	}
	return d, nil
}

func (f *Fleet) decide(ctx context.Context, m *Member, cands []Relation, opts LineageOptions) (Decision, error) {
	d := Decision{Child: m, Method: NoParent}
	// Shortlist: candidates the signature says are mostly held by m,
	// with some slack for the error, most shared bytes first.
	var short []Relation
	for _, c := range cands {
		if c.Est.BInA+3*c.Est.BInASE+0.02 >= MinContained && maybeEligible(m, &c) {
			short = append(short, c)
		}
	}
	sort.Slice(short, func(i, j int) bool {
		if short[i].Shared != short[j].Shared {
			return short[i].Shared > short[j].Shared
		}
		return short[i].B.ID.String() < short[j].B.ID.String()
	})
	if len(short) > lineageTopK {
		short = short[:lineageTopK]
	}
	for i := range short {
		if short[i].Est.Bins < sketch.Bins {
			short[i] = fromEstimate(short[i].B, sketch.Compare(m.Sketch, short[i].B.Sketch))
		}
	}
	if !opts.Estimate {
		for i := range short {
			if err := f.exact(ctx, m.ID, &short[i]); err != nil {
				return d, err
			}
		}
	}
	var ok, other []Relation
	for _, c := range short {
		if eligible(m, &c) {
			ok = append(ok, c)
		} else {
			other = append(other, c)
		}
	}
	sort.SliceStable(ok, func(i, j int) bool { return ok[i].Shared > ok[j].Shared })
	sort.SliceStable(other, func(i, j int) bool { return other[i].Shared > other[j].Shared })
	if len(ok) == 0 {
		if len(other) > 0 {
			d.RunnerUp = &other[0]
		}
		return d, nil
	}
	win := ok[0]
	d.Figures = &win
	if len(ok) > 1 {
		d.RunnerUp = &ok[1]
	} else if len(other) > 0 {
		d.RunnerUp = &other[0]
	}
	d.Parent, d.Method = win.B, ByContent
	// A near-tie is a real question unless the runner-up is an ancestor
	// of the winner (held by it almost whole). Runners-up count when they
	// are eligible, or nearly so (asymmetric the same way, below the
	// ratio): a decision on the edge of the rule is not a clear one.
	margin := TieFraction * weightOf(m)
	if opts.Estimate {
		margin = max(margin, 3*win.Est.SharedSE)
	}
	rivals := append(append([]Relation{}, ok[1:]...), other...)
	sort.SliceStable(rivals, func(i, j int) bool { return rivals[i].Shared > rivals[j].Shared })
	for _, r := range rivals {
		if float64(win.Shared-r.Shared) > margin {
			break
		}
		if !eligible(m, &r) && !nearlyEligible(m, &r) {
			continue
		}
		anc, err := f.heldBy(ctx, r.B, win.B, opts)
		if err != nil {
			return d, err
		}
		if !anc {
			rr := r
			d.Parent, d.Method, d.RunnerUp = nil, Ambiguous, &rr
			return d, nil
		}
	}
	return d, nil
}

// NearRatio: a candidate whose own-bytes ratio reaches this (but not
// AsymmetryRatio) is a rival that can make a close decision ambiguous.
const NearRatio = 1.2

func nearlyEligible(child *Member, r *Relation) bool {
	if r.BInA < MinContained {
		return false
	}
	s := float64(r.Shared)
	ownChild, ownParent := weightOf(child)-s, weightOf(r.B)-s
	return ownChild > 0 && ownChild >= NearRatio*max(ownParent, 0)
}

// heldBy reports whether a is held almost whole (≥ 95%) by b.
func (f *Fleet) heldBy(ctx context.Context, a, b *Member, opts LineageOptions) (bool, error) {
	rel := fromEstimate(b, sketch.Compare(a.Sketch, b.Sketch))
	if !opts.Estimate {
		if err := f.exact(ctx, a.ID, &rel); err != nil {
			return false, err
		}
	}
	return rel.AInB >= 0.95, nil
}
