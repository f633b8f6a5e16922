package sketch

import (
	"encoding/binary"
	"math"
	"math/bits"
	"sort"
)

// Estimate is what two signatures say about the sets A and B they stand
// for. Byte figures are in 4 KiB units times 4096; each figure comes with
// its standard error (SE). Containment AInB is the part of A's bytes that
// B holds as well.
type Estimate struct {
	Jaccard   float64 `json:"jaccard"`
	JaccardSE float64 `json:"jaccard_se"`
	Shared    float64 `json:"shared_bytes"`
	SharedSE  float64 `json:"shared_bytes_se"`
	AInB      float64 `json:"a_in_b"`
	AInBSE    float64 `json:"a_in_b_se"`
	BInA      float64 `json:"b_in_a"`
	BInASE    float64 `json:"b_in_a_se"`
	Bins      int     `json:"bins"` // bins non-empty in at least one signature: the sample size
}

// falseMatch is the chance that two different bin minima share a
// fingerprint (fingerprints are uniform on 1..255).
const falseMatch = 1.0 / 255

const (
	lo7 = 0x7f7f7f7f7f7f7f7f
	hi1 = 0x8080808080808080
)

// zeroBytes sets the high bit of each byte of x that is zero, exactly (no
// borrow between bytes).
func zeroBytes(x uint64) uint64 {
	y := (x & lo7) + lo7
	return ^(y | x | lo7)
}

// counts compares the first n bins (n a multiple of 8, at most Bins):
// used = bins non-empty in at least one, both = non-empty in both, match =
// non-empty and equal.
func counts(a, b *Sketch, n int) (used, both, match int) { return countBins(a.Fp[:n], b.Fp[:n]) }

// countBins is counts over two bin slices of the same length (a multiple
// of 8).
func countBins(a, b []byte) (used, both, match int) {
	n := len(a)
	b = b[:n]
	empty := 0
	for i := 0; i+8 <= n; i += 8 {
		x := binary.LittleEndian.Uint64(a[i:])
		y := binary.LittleEndian.Uint64(b[i:])
		za, zb := zeroBytes(x), zeroBytes(y)
		eq := zeroBytes(x ^ y)
		empty += bits.OnesCount64(za & zb)
		both += bits.OnesCount64(^za & ^zb & hi1)
		match += bits.OnesCount64(eq &^ za)
	}
	return n - empty, both, match
}

// Compare estimates the relation of the sets behind a and b from all bins.
func Compare(a, b *Sketch) Estimate { return ComparePrefix(a, b, Bins) }

// ComparePrefix estimates from the first n bins only (rounded down to a
// multiple of 8): a cheaper, noisier first pass.
func ComparePrefix(a, b *Sketch, n int) Estimate {
	n = min(max(n, 8), Bins) / 8 * 8
	used, both, match := counts(a, b, n)
	return estimate(a.Weight, b.Weight, used, both, match)
}

// PrefixEstimate is ComparePrefix of q against an encoded signature
// without decoding it: for a first pass over many signatures read in
// place. ok is false when enc is not a version 1 encoding by its length,
// magic and version; everything else is checked only by Decode, so a
// candidate that survives the first pass must be decoded before use.
func PrefixEstimate(q *Sketch, enc []byte, n int) (e Estimate, ok bool) {
	if len(enc) != EncodedLen || string(enc[:4]) != magic || binary.LittleEndian.Uint16(enc[4:]) != Version {
		return e, false
	}
	n = min(max(n, 8), Bins) / 8 * 8
	used, both, match := countBins(q.Fp[:n], enc[HeaderLen:HeaderLen+n])
	return estimate(q.Weight, binary.LittleEndian.Uint64(enc[16:]), used, both, match), true
}

func estimate(wa, wb uint64, used, both, match int) Estimate {
	var e Estimate
	e.Bins = used
	if used == 0 {
		return e // both empty: nothing shared, nothing to say
	}
	n := float64(used)
	var j, varJ float64
	if match == used {
		j = 1
	} else {
		// Expected matches: true ones plus falseMatch of the other
		// both-filled bins.
		t := (float64(match) - float64(both)*falseMatch) / (1 - falseMatch)
		t = min(max(t, 0), float64(match))
		j = t / n
		varJ = j*(1-j)/n + (float64(both)-t)*falseMatch*(1-falseMatch)/((1-falseMatch)*(1-falseMatch)*n*n)
	}
	e.Jaccard = j
	e.JaccardSE = math.Sqrt(varJ)
	fa, fb := float64(wa), float64(wb)
	units := j / (1 + j) * (fa + fb)
	unitsSE := (fa + fb) / ((1 + j) * (1 + j)) * e.JaccardSE
	units = min(units, fa, fb)
	e.Shared, e.SharedSE = units*Unit, unitsSE*Unit
	if wa > 0 {
		e.AInB, e.AInBSE = min(units/fa, 1), unitsSE/fa
	}
	if wb > 0 {
		e.BInA, e.BInASE = min(units/fb, 1), unitsSE/fb
	}
	return e
}

// Ranked is one candidate of a ranking: its index in the candidate list
// and the full estimate against the query.
type Ranked struct {
	Index int
	Estimate
}

// RankOptions tune Rank; the zero value is the two-stage scan: the first
// 1024 bins for every candidate, the full signature for the best 100.
type RankOptions struct {
	PrefixBins int // bins of the first pass (default 1024)
	Shortlist  int // candidates re-scored in full (default 100, at least top)
}

// Rank returns up to top candidates ordered by estimated shared bytes with
// q, best first (ties by index). Nil candidates are skipped.
func Rank(q *Sketch, cands []*Sketch, top int, opts RankOptions) []Ranked {
	if top <= 0 {
		return nil
	}
	pb := opts.PrefixBins
	if pb <= 0 {
		pb = 1024
	}
	short := max(opts.Shortlist, top)
	if opts.Shortlist <= 0 {
		short = max(100, top)
	}
	type scored struct {
		i int
		s float64
	}
	first := make([]scored, 0, len(cands))
	for i, c := range cands {
		if c == nil {
			continue
		}
		var s float64
		if pb >= Bins {
			s = Compare(q, c).Shared
		} else {
			s = ComparePrefix(q, c, pb).Shared
		}
		first = append(first, scored{i, s})
	}
	byScore := func(l []scored) func(a, b int) bool {
		return func(a, b int) bool {
			if l[a].s != l[b].s {
				return l[a].s > l[b].s
			}
			return l[a].i < l[b].i
		}
	}
	if len(first) > short && pb < Bins {
		sort.Slice(first, byScore(first))
		first = first[:short]
	}
	out := make([]Ranked, len(first))
	for k, f := range first {
		out[k] = Ranked{Index: f.i, Estimate: Compare(q, cands[f.i])}
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].Shared != out[b].Shared {
			return out[a].Shared > out[b].Shared
		}
		return out[a].Index < out[b].Index
	})
	if len(out) > top {
		out = out[:top]
	}
	return out
}
