package fleet

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/sketch"
)

// Member is one engram of the store as the fleet view sees it.
type Member struct {
	ID      engram.ID
	Name    string // newest name that selects it now, or ""
	Size    int64  // virtual size
	Records []*engram.Record
	Sketch  *sketch.Sketch // nil when it has no signature
}

// Label is the name, or the short ID when unnamed.
func (m *Member) Label() string {
	if m.Name != "" {
		return m.Name
	}
	return m.ID.Short()
}

// Fleet is every engram of a store with its signature.
type Fleet struct {
	r       chunkstore.Reader
	Members []*Member // in catalog order (oldest newest-record first)
	byID    map[engram.ID]*Member
	sets    map[engram.ID]chunkSet // exact chunk sets loaded so far
	cached  int                    // Σ len(units) over sets
	// Unsigned lists engrams without a readable signature; they take no
	// part in content comparisons.
	Unsigned []engram.ID
}

// Load reads the catalog and every signature of r.
func Load(ctx context.Context, r chunkstore.Reader) (*Fleet, error) {
	entries, err := engram.List(ctx, r)
	if err != nil {
		return nil, err
	}
	sigs, missing, err := engram.LoadSketches(ctx, r)
	if err != nil {
		return nil, err
	}
	// Not the records' names: a name moves on to the newest ingest that
	// gives it, and the older engram's records keep it.
	names, err := engram.Names(ctx, r)
	if err != nil {
		return nil, err
	}
	f := &Fleet{r: r, byID: map[engram.ID]*Member{}, sets: map[engram.ID]chunkSet{}, Unsigned: missing}
	for _, e := range entries {
		m := &Member{ID: e.ID, Size: e.Size, Records: e.Records, Sketch: sigs[e.ID]}
		if ns := names[e.ID]; len(ns) > 0 {
			m.Name = ns[len(ns)-1]
		}
		f.Members = append(f.Members, m)
		f.byID[e.ID] = m
	}
	return f, nil
}

// LoadSignatures reads only the signatures of r (no records): enough for
// Similar, whose results FillNames then names. Lineage and Tree need Load.
func LoadSignatures(ctx context.Context, r chunkstore.Reader) (*Fleet, error) {
	sigs, missing, err := engram.LoadSketches(ctx, r)
	if err != nil {
		return nil, err
	}
	f := &Fleet{r: r, byID: map[engram.ID]*Member{}, sets: map[engram.ID]chunkSet{}, Unsigned: missing}
	for id, s := range sigs {
		m := &Member{ID: id, Sketch: s}
		f.Members = append(f.Members, m)
		f.byID[id] = m
	}
	for _, id := range missing {
		m := &Member{ID: id}
		f.Members = append(f.Members, m)
		f.byID[id] = m
	}
	// Map order is random: keep rankings (ties by index) stable.
	sort.Slice(f.Members, func(i, j int) bool { return bytes.Compare(f.Members[i].ID[:], f.Members[j].ID[:]) < 0 })
	return f, nil
}

// FillNames sets the names of the members in rels that have none yet.
func (f *Fleet) FillNames(ctx context.Context, rels []Relation) error {
	var ids []engram.ID
	for _, r := range rels {
		if r.B.Name == "" {
			ids = append(ids, r.B.ID)
		}
	}
	if len(ids) == 0 || f.r == nil {
		return nil
	}
	names, err := engram.NamesOf(ctx, f.r, ids)
	if err != nil {
		return err
	}
	for _, r := range rels {
		if n, ok := names[r.B.ID]; ok {
			r.B.Name = n
		}
	}
	return nil
}

// FromSketches builds a fleet of synthetic members (no store behind them):
// for benchmarks and tests of the signature-only paths.
func FromSketches(ids []engram.ID, sks []*sketch.Sketch) *Fleet {
	f := &Fleet{byID: map[engram.ID]*Member{}, sets: map[engram.ID]chunkSet{}}
	for i, id := range ids {
		m := &Member{ID: id, Sketch: sks[i]}
		f.Members = append(f.Members, m)
		f.byID[id] = m
	}
	return f
}

// Member returns the member with ID id, or nil.
func (f *Fleet) Member(id engram.ID) *Member { return f.byID[id] }

// Relation is how engram A (the query) relates to B.
type Relation struct {
	B       *Member
	Exact   bool            // figures from the manifests, not the signatures
	Est     sketch.Estimate // signature estimate (always present when both are signed)
	Shared  int64           // bytes shared (4 KiB units of distinct chunks × 4096)
	Jaccard float64
	AInB    float64 // part of A's bytes that B holds
	BInA    float64 // part of B's bytes that A holds
}

// chunkSet is the distinct chunks of a manifest with their weight in
// 4 KiB units.
type chunkSet struct {
	units  map[[2]uint64]uint32 // first 128 bits of the chunk ID -> units
	weight uint64
}

func setKey(id chunkstore.ID) [2]uint64 {
	return [2]uint64{binary.LittleEndian.Uint64(id[0:]), binary.LittleEndian.Uint64(id[8:])}
}

// maxCachedRefs bounds the chunk sets kept between comparisons (about
// 20-35 bytes each).
const maxCachedRefs = 4 << 20

func (f *Fleet) set(ctx context.Context, id engram.ID) (chunkSet, error) {
	if s, ok := f.sets[id]; ok {
		return s, nil
	}
	if f.r == nil {
		return chunkSet{}, fmt.Errorf("engram %s: no store to read its manifest from", id.Short())
	}
	root, err := engram.LoadRoot(ctx, f.r, id)
	if err != nil {
		return chunkSet{}, err
	}
	s := chunkSet{units: map[[2]uint64]uint32{}}
	err = engram.ForEachChunk(ctx, f.r, root, func(c engram.ChunkRef) error {
		k := setKey(c.ID)
		if _, ok := s.units[k]; !ok {
			u := (c.Length + sketch.Unit - 1) / sketch.Unit
			s.units[k] = u
			s.weight += uint64(u)
		}
		return nil
	})
	if err != nil {
		return chunkSet{}, fmt.Errorf("engram %s: %w", id.Short(), err)
	}
	// Keep a bounded number of refs: drop sets (map order: arbitrary ones)
	// until the new one fits.
	f.cached += len(s.units)
	for k, old := range f.sets {
		if f.cached <= maxCachedRefs {
			break
		}
		f.cached -= len(old.units)
		delete(f.sets, k)
	}
	f.sets[id] = s
	return s, nil
}

// exact fills rel's figures from the manifests of a and rel.B.
func (f *Fleet) exact(ctx context.Context, a engram.ID, rel *Relation) error {
	sa, err := f.set(ctx, a)
	if err != nil {
		return err
	}
	sb, err := f.set(ctx, rel.B.ID)
	if err != nil {
		return err
	}
	small, big := sa, sb
	if len(small.units) > len(big.units) {
		small, big = big, small
	}
	var common uint64
	for id, u := range small.units {
		if _, ok := big.units[id]; ok {
			common += uint64(u)
		}
	}
	rel.Exact = true
	rel.Shared = int64(common) * sketch.Unit
	rel.Jaccard, rel.AInB, rel.BInA = 0, 0, 0
	if union := sa.weight + sb.weight - common; union > 0 {
		rel.Jaccard = float64(common) / float64(union)
	}
	if sa.weight > 0 {
		rel.AInB = float64(common) / float64(sa.weight)
	}
	if sb.weight > 0 {
		rel.BInA = float64(common) / float64(sb.weight)
	}
	return nil
}

func fromEstimate(b *Member, e sketch.Estimate) Relation {
	return Relation{B: b, Est: e, Shared: int64(e.Shared), Jaccard: e.Jaccard, AInB: e.AInB, BInA: e.BInA}
}

// SimilarOptions tune Similar.
type SimilarOptions struct {
	Top   int  // how many to return (default 10)
	Exact bool // re-score the top ones from the manifests
	// Shortlist is how many candidates the first pass (1024 bins) keeps
	// for the full comparison (default 100).
	Shortlist int
}

// Similar ranks every other signed engram by estimated shared bytes with
// id. With Exact, the top ones are re-scored from the manifests and
// re-ordered by their exact shared bytes.
func (f *Fleet) Similar(ctx context.Context, id engram.ID, opts SimilarOptions) ([]Relation, error) {
	q := f.byID[id]
	if q == nil {
		return nil, fmt.Errorf("%w: %s", engram.ErrNotFound, id)
	}
	if q.Sketch == nil {
		return nil, fmt.Errorf("engram %s: %w (run engram sketch --rebuild)", id.Short(), engram.ErrNoSignature)
	}
	top := opts.Top
	if top <= 0 {
		top = 10
	}
	cands := make([]*sketch.Sketch, len(f.Members))
	for i, m := range f.Members {
		if m.ID != id {
			cands[i] = m.Sketch
		}
	}
	ranked := sketch.Rank(q.Sketch, cands, top, sketch.RankOptions{Shortlist: opts.Shortlist})
	out := make([]Relation, len(ranked))
	for i, r := range ranked {
		out[i] = fromEstimate(f.Members[r.Index], r.Estimate)
		if opts.Exact {
			if err := f.exact(ctx, id, &out[i]); err != nil {
				return nil, err
			}
		}
	}
	if opts.Exact {
		sort.SliceStable(out, func(i, j int) bool { return out[i].Shared > out[j].Shared })
	}
	return out, nil
}
