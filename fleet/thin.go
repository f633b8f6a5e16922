package fleet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/qcow2"
	"github.com/engram-vm/engram/restore"
	"github.com/engram-vm/engram/sketch"
)

// ThinOptions tune PlanThin; the zero value is fine.
type ThinOptions struct {
	// MinSaving is the part of a member's own data an overlay must save
	// to be chosen over a standalone file (default 0.1).
	MinSaving float64
	// MaxDepth bounds the backing chains of the plan (default 8 files).
	MaxDepth int
	// Shortlist is how many members, best by signature, are measured
	// exactly as a backing for each one (default 4).
	Shortlist int
	// Skip, if not nil, rules out a candidate source file for
	// ChooseBacking (the output it would back); the next one is tried.
	Skip func(path string) bool
}

// ThinEntry is one file of a thin plan.
type ThinEntry struct {
	Member    *Member
	File      string     // file name in the output directory
	Backing   *ThinEntry // nil: standalone
	Bytes     int64      // guest data bytes the file holds (exact, from the manifests)
	FlatBytes int64      // guest data bytes of a standalone file
	Depth     int        // 1 for a standalone file, parent's depth + 1 for an overlay
}

// ThinPlan is a forest of files: parents come before their children.
type ThinPlan struct {
	Entries   []*ThinEntry
	Total     int64 // Σ Bytes
	FlatTotal int64 // Σ FlatBytes: the same set restored all flat
}

// fileName is a member's file name: its name made safe, or its short ID.
func fileName(m *Member, used map[string]bool) string {
	base := m.ID.Short()
	if m.Name != "" {
		base = strings.Map(func(r rune) rune {
			if r == '/' || r == '\\' || r == 0 {
				return '_'
			}
			return r
		}, m.Name)
		if base == "." || base == ".." {
			base = m.ID.Short()
		}
	}
	name := base + ".qcow2"
	for n := 2; used[name]; n++ {
		name = fmt.Sprintf("%s-%d.qcow2", base, n)
	}
	used[name] = true
	return name
}

// dataBytes is Σ ref lengths of root: what a standalone file holds.
func (f *Fleet) dataBytes(ctx context.Context, root engram.Root) (int64, error) {
	var n int64
	err := engram.ForEachChunk(ctx, f.r, root, func(c engram.ChunkRef) error { n += int64(c.Length); return nil })
	return n, err
}

// overlayBytes is how many guest data bytes of child an overlay on parent
// must hold: child's data inside the ranges where the manifests differ.
func (f *Fleet) overlayBytes(ctx context.Context, parent, child engram.Root) (int64, error) {
	n, _, err := f.overlayCost(ctx, parent, child)
	return n, err
}

// overlayCost is overlayBytes and the total length of the differing
// ranges (where child has no data they become zero clusters: metadata).
func (f *Fleet) overlayCost(ctx context.Context, parent, child engram.Root) (data, span int64, err error) {
	var spans []engram.Span
	err = engram.Diff(ctx, f.r, parent, f.r, child, func(s, e int64) error {
		spans = append(spans, engram.Span{Start: s, End: e})
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	var n int64
	cur := engram.NewCursor(ctx, f.r, child)
	for _, s := range spans {
		span += s.End - s.Start
		for {
			ref, ok, err := cur.SkipTo(s.Start)
			if err != nil {
				return 0, 0, err
			}
			if !ok || ref.Offset >= s.End {
				break
			}
			n += min(ref.End(), s.End) - max(ref.Offset, s.Start)
			if ref.End() > s.End {
				break // the ref continues into the next span
			}
			cur.Pop()
		}
	}
	return n, span, nil
}

// PlanThin decides, for the engrams ids, which member each is written as
// a thin overlay on: the one whose manifest leaves the fewest bytes to
// hold (exact diff of positions), among members shortlisted by signature.
// Members are placed smallest first and only earlier ones may back later
// ones, so the plan is a forest; chains stay within MaxDepth.
func (f *Fleet) PlanThin(ctx context.Context, ids []engram.ID, opts ThinOptions) (*ThinPlan, error) {
	if opts.MinSaving <= 0 {
		opts.MinSaving = 0.1
	}
	if opts.MaxDepth <= 0 {
		opts.MaxDepth = 8
	}
	if opts.Shortlist <= 0 {
		opts.Shortlist = 4
	}
	type item struct {
		e    *ThinEntry
		root engram.Root
	}
	var items []*item
	seen := map[engram.ID]bool{}
	for _, id := range ids {
		m := f.byID[id]
		if m == nil {
			return nil, fmt.Errorf("%w: %s", engram.ErrNotFound, id)
		}
		if seen[id] {
			return nil, fmt.Errorf("engram %s given twice", m.Label())
		}
		seen[id] = true
		root, err := engram.LoadRoot(ctx, f.r, id)
		if err != nil {
			return nil, err
		}
		flat, err := f.dataBytes(ctx, root)
		if err != nil {
			return nil, fmt.Errorf("engram %s: %w", m.Label(), err)
		}
		items = append(items, &item{e: &ThinEntry{Member: m, Bytes: flat, FlatBytes: flat, Depth: 1}, root: root})
	}
	sort.SliceStable(items, func(i, j int) bool {
		if items[i].e.FlatBytes != items[j].e.FlatBytes {
			return items[i].e.FlatBytes < items[j].e.FlatBytes
		}
		return items[i].e.Member.ID.String() < items[j].e.Member.ID.String()
	})
	plan := &ThinPlan{}
	used := map[string]bool{}
	for k, it := range items {
		m := it.e.Member
		it.e.File = fileName(m, used)
		// Shortlist earlier members by estimated shared bytes.
		type cand struct {
			it     *item
			shared float64
		}
		var cands []cand
		for _, p := range items[:k] {
			if p.e.Depth >= opts.MaxDepth {
				continue
			}
			s := 0.0
			if m.Sketch != nil && p.e.Member.Sketch != nil {
				s = sketch.Compare(m.Sketch, p.e.Member.Sketch).Shared
			} else if m.Sketch != nil || p.e.Member.Sketch != nil {
				continue
			}
			cands = append(cands, cand{p, s})
		}
		sort.SliceStable(cands, func(i, j int) bool { return cands[i].shared > cands[j].shared })
		var bestSpan int64
		if len(cands) > opts.Shortlist {
			cands = cands[:opts.Shortlist]
		}
		for _, c := range cands {
			if c.shared <= 0 && m.Sketch != nil {
				continue
			}
			n, sp, err := f.overlayCost(ctx, c.it.root, it.root)
			if err != nil {
				return nil, fmt.Errorf("engram %s over %s: %w", m.Label(), c.it.e.Member.Label(), err)
			}
			// Fewest data bytes; on a tie the shallower chain, then the
			// fewest differing ranges (zero clusters).
			d := c.it.e.Depth + 1
			if n < it.e.Bytes || it.e.Backing != nil && n == it.e.Bytes && (d < it.e.Depth || d == it.e.Depth && sp < bestSpan) {
				it.e.Bytes, it.e.Backing, it.e.Depth, bestSpan = n, c.it.e, d, sp
			}
		}
		if b := it.e.Backing; b != nil && float64(it.e.FlatBytes-it.e.Bytes) < opts.MinSaving*float64(it.e.FlatBytes) {
			it.e.Bytes, it.e.Backing, it.e.Depth = it.e.FlatBytes, nil, 1
		}
		plan.Entries = append(plan.Entries, it.e)
		plan.Total += it.e.Bytes
		plan.FlatTotal += it.e.FlatBytes
	}
	return plan, nil
}

// WriteThin writes plan into dir: each entry restored standalone or as a
// qcow2 overlay on its backing entry (named relative to dir, so the set
// moves together). opts applies to every file; its Backing is set per
// file. progress, when not nil, gives each file its progress reporter.
// It returns the paths written, parents first.
func (f *Fleet) WriteThin(ctx context.Context, plan *ThinPlan, dir string, opts restore.Options, progress func(file string) restore.Progress) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("output directory %s: %w", dir, err)
	}
	if !opts.Force {
		// Refuse before writing anything, not after half the set.
		for _, e := range plan.Entries {
			if _, err := os.Lstat(filepath.Join(dir, e.File)); err == nil {
				return nil, fmt.Errorf("%s: %w", filepath.Join(dir, e.File), restore.ErrExists)
			}
		}
	}
	done := map[*ThinEntry]*restore.Backing{}
	var written []string
	defer func() {
		for _, b := range done {
			if c, ok := b.Image.(*qcow2.Image); ok {
				c.Close()
			}
		}
	}()
	for _, e := range plan.Entries {
		o := opts
		o.Format, o.ClusterSize, o.ExtendedL2, o.Backing = "qcow2", 0, false, nil
		for _, r := range e.Member.Records {
			if r.ClusterSize > 0 {
				o.ClusterSize = r.ClusterSize
			}
		}
		if e.Backing != nil {
			o.Backing = done[e.Backing]
			if o.Backing == nil {
				return written, fmt.Errorf("thin plan: %s backs %s but comes after it", e.Backing.File, e.File)
			}
		}
		if progress != nil {
			o.Progress = progress(e.File)
		}
		path := filepath.Join(dir, e.File)
		if err := restore.ToFile(ctx, f.r, e.Member.ID, path, o); err != nil {
			return written, fmt.Errorf("engram %s: %w", e.Member.Label(), err)
		}
		written = append(written, path)
		root, err := engram.LoadRoot(ctx, f.r, e.Member.ID)
		if err != nil {
			return written, err
		}
		im, err := qcow2.Open(path, qcow2.Options{Format: "qcow2"})
		if err != nil {
			return written, err
		}
		done[e] = &restore.Backing{Name: e.File, Format: "qcow2", Root: root, Image: im}
	}
	return written, nil
}
