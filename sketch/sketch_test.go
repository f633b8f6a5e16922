package sketch

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
)

type chunk struct {
	id  [32]byte
	len uint32
}

func randChunks(r *rand.Rand, n int) []chunk {
	out := make([]chunk, n)
	for i := range out {
		for k := 0; k < 32; k += 8 {
			v := r.Uint64()
			for b := 0; b < 8; b++ {
				out[i].id[k+b] = byte(v >> (8 * b))
			}
		}
		out[i].len = 1 + r.Uint32N(128<<10)
	}
	return out
}

func units(cs []chunk) uint64 {
	var w uint64
	for _, c := range cs {
		w += (uint64(c.len) + Unit - 1) / Unit
	}
	return w
}

func build(cs ...[]chunk) *Sketch {
	b := NewBuilder()
	for _, l := range cs {
		for _, c := range l {
			b.Add(c.id, c.len)
		}
	}
	return b.Sketch()
}

// fixedChunks is the input of the golden test: IDs 0..99 in byte 0 and 1,
// lengths 1000*i+1.
func fixedChunks() []chunk {
	var cs []chunk
	for i := 0; i < 100; i++ {
		var c chunk
		c.id[0], c.id[1], c.id[31] = byte(i), byte(i>>8), 0xaa
		c.len = uint32(1000*i + 1)
		cs = append(cs, c)
	}
	return cs
}

func TestGolden(t *testing.T) {
	s := build(fixedChunks())
	enc := s.Encode()
	if len(enc) != EncodedLen || len(enc) > 4096 {
		t.Fatalf("encoded %d bytes", len(enc))
	}
	// Header: magic, version 1, 4000 bins, 8 bits, shift 12, weight 1258,
	// 100 chunks.
	wantHead := "454e4753" + "0100" + "a00f" + "08" + "0c" + "0000" + "00000000" +
		"ea04000000000000" + "6400000000000000"
	if got := hex.EncodeToString(enc[:HeaderLen]); got != wantHead {
		t.Errorf("header\n got %s\nwant %s", got, wantHead)
	}
	// The bins pin the hash function: any change to it is a new version.
	const wantBins = "0000009d000000700000640000003700000000000000000000930000a7000000"
	if got := hex.EncodeToString(enc[HeaderLen : HeaderLen+32]); got != wantBins {
		t.Errorf("first 32 bins\n got %s\nwant %s", got, wantBins)
	}
	const wantSum = 277869551
	sum := 0
	for i, f := range enc[HeaderLen:] {
		sum += (i + 1) * int(f)
	}
	if sum != wantSum || s.Filled() != 1081 {
		t.Errorf("bin checksum %d, filled %d; want %d and 1081", sum, s.Filled(), wantSum)
	}
	d, err := Decode(enc)
	if err != nil || *d != *s {
		t.Fatalf("decode: %v", err)
	}
}

func TestOrderAndDuplicates(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	cs := randChunks(r, 3000)
	want := build(cs).Encode()
	shuffled := append([]chunk{}, cs...)
	r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	dup := append(append([]chunk{}, shuffled...), cs[:1000]...)
	for name, l := range map[string][]chunk{"shuffled": shuffled, "duplicated": dup} {
		if got := build(l).Encode(); !bytes.Equal(got, want) {
			t.Errorf("%s: encoding differs", name)
		}
	}
	if s := build(cs); s.Chunks != 3000 || s.Weight != units(cs) {
		t.Errorf("header: %d chunks weight %d, want 3000 and %d", s.Chunks, s.Weight, units(cs))
	}
}

func TestIdentical(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 10, 500, 20000} {
		cs := randChunks(r, n)
		a, b := build(cs), build(cs)
		e := Compare(a, b)
		if e.Jaccard != 1 || e.AInB != 1 || e.BInA != 1 || e.JaccardSE != 0 || e.Shared != float64(a.Weight*Unit) {
			t.Errorf("%d chunks: %+v, want exactly 1", n, e)
		}
	}
	var empty Sketch
	if e := Compare(&empty, &empty); e.Bins != 0 || e.Shared != 0 {
		t.Errorf("empty: %+v", e)
	}
	if e := Compare(&empty, build(randChunks(r, 10))); e.Jaccard != 0 || e.Shared != 0 {
		t.Errorf("empty against 10 chunks: %+v", e)
	}
}

// TestAccuracy checks the estimators against exact set arithmetic on random
// sets: sizes 500 to 50k chunks, Jaccard 0.1 to 0.99, size ratios up to
// 1:8. Each estimate must lie within k standard errors of the truth (plus
// one bin of discreteness), and the mean error must stay small.
func TestAccuracy(t *testing.T) {
	const k = 4.5
	r := rand.New(rand.NewPCG(5, 6))
	var sumErr, sumCont float64
	var errs []float64
	var n int
	for _, size := range []int{500, 2000, 10000, 50000} {
		for _, ratio := range []int{1, 2, 8} {
			for _, jt := range []float64{0.1, 0.5, 0.9, 0.99} {
				if testing.Short() && size == 50000 {
					continue
				}
				// A has size chunks, B size/ratio-ish; the common part c
				// gives Jaccard jt when possible (B ⊂ A caps it at 1/ratio).
				nb := max(size/ratio, 1)
				c := int(jt * float64(size+nb) / (1 + jt))
				c = min(c, nb)
				common := randChunks(r, c)
				onlyA := randChunks(r, size-c)
				onlyB := randChunks(r, nb-c)
				a, b := build(common, onlyA), build(onlyB, common)
				wc, wa, wb := float64(units(common)), float64(units(common)+units(onlyA)), float64(units(common)+units(onlyB))
				exactJ := wc / (wa + wb - wc)
				e := Compare(a, b)
				slack := 1 / float64(e.Bins)
				if d := math.Abs(e.Jaccard - exactJ); d > k*e.JaccardSE+slack {
					t.Errorf("size %d ratio %d: Jaccard %.4f ± %.4f, exact %.4f", size, ratio, e.Jaccard, e.JaccardSE, exactJ)
				}
				if d := math.Abs(e.Shared - wc*Unit); d > k*e.SharedSE+slack*wc*Unit+Unit {
					t.Errorf("size %d ratio %d J %.2f: shared %.0f ± %.0f, exact %.0f", size, ratio, jt, e.Shared, e.SharedSE, wc*Unit)
				}
				if d := math.Abs(e.AInB - wc/wa); d > k*e.AInBSE+slack {
					t.Errorf("size %d ratio %d J %.2f: A in B %.4f ± %.4f, exact %.4f", size, ratio, jt, e.AInB, e.AInBSE, wc/wa)
				}
				if d := math.Abs(e.BInA - wc/wb); d > k*e.BInASE+slack {
					t.Errorf("size %d ratio %d J %.2f: B in A %.4f ± %.4f, exact %.4f", size, ratio, jt, e.BInA, e.BInASE, wc/wb)
				}
				errs = append(errs, math.Abs(e.Jaccard-exactJ))
				sumErr += math.Abs(e.Jaccard - exactJ)
				sumCont += math.Abs(e.BInA - wc/wb)
				n++
			}
		}
	}
	// The experiment measured a mean Jaccard error of 0.5 pp at this size;
	// bound the mean at 1.5 pp (its standard error over n trials is far
	// below that).
	if m := sumErr / float64(n); m > 0.015 {
		t.Errorf("mean Jaccard error %.4f over %d pairs", m, n)
	}
	if m := sumCont / float64(n); m > 0.02 {
		t.Errorf("mean containment error %.4f over %d pairs", m, n)
	}
	sort.Float64s(errs)
	t.Logf("mean |error|: Jaccard %.4f (p95 %.4f), containment %.4f over %d pairs", sumErr/float64(n), errs[len(errs)*95/100], sumCont/float64(n), n)
}

func TestRankTwoStage(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	base := randChunks(r, 4000)
	q := build(base)
	var cands []*Sketch
	// Candidate i shares i*40 chunks with the query (plus its own): the
	// best is the last.
	for i := 0; i < 100; i++ {
		cands = append(cands, build(base[:i*40], randChunks(r, 1000)))
	}
	cands = append(cands, nil)
	got := Rank(q, cands, 5, RankOptions{Shortlist: 20})
	if len(got) != 5 {
		t.Fatalf("%d results", len(got))
	}
	for k, g := range got {
		if g.Index < 90 {
			t.Errorf("rank %d: candidate %d (shared %.0f), want one of the top ten", k, g.Index, g.Shared)
		}
	}
}

func TestDecodeRefuses(t *testing.T) {
	good := build(randChunks(rand.New(rand.NewPCG(9, 9)), 200)).Encode()
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte{}, good...)) }
	cases := map[string]struct {
		b    []byte
		want error
	}{
		"short":        {good[:100], ErrBadSignature},
		"long":         {append(append([]byte{}, good...), 0), ErrBadSignature},
		"magic":        {mut(func(b []byte) []byte { b[0] = 'X'; return b }), ErrBadSignature},
		"version":      {mut(func(b []byte) []byte { b[4] = 2; return b }), ErrVersion},
		"bins":         {mut(func(b []byte) []byte { b[6] = 1; return b }), ErrBadSignature},
		"bits":         {mut(func(b []byte) []byte { b[8] = 16; return b }), ErrBadSignature},
		"reserved":     {mut(func(b []byte) []byte { b[13] = 1; return b }), ErrBadSignature},
		"chunks>units": {mut(func(b []byte) []byte { b[24+7] = 1; return b }), ErrBadSignature},
		"empty bins":   {mut(func(b []byte) []byte { clear(b[HeaderLen:]); return b }), ErrBadSignature},
		"nil":          {nil, ErrBadSignature},
	}
	for name, c := range cases {
		if _, err := Decode(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
}

// FuzzDecode: arbitrary bytes must decode or fail cleanly, and whatever
// decodes must encode back to the same bytes and compare without panic.
func FuzzDecode(f *testing.F) {
	f.Add(build(fixedChunks()).Encode())
	f.Add((&Sketch{}).Encode())
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Decode(b)
		if err != nil {
			return
		}
		if !bytes.Equal(s.Encode(), b) {
			t.Fatalf("decode/encode round trip differs")
		}
		e := Compare(s, s)
		if e.Bins > 0 && e.Jaccard != 1 {
			t.Fatalf("self-compare %+v", e)
		}
		_ = ComparePrefix(s, &Sketch{}, 1024)
	})
}

// TestDecodeMutations runs the fuzz body over many seeded mutations of
// valid encodings (header fields, bins, lengths), so the decoder is
// exercised even where the fuzzing engine does not run.
func TestDecodeMutations(t *testing.T) {
	r := rand.New(rand.NewPCG(71, 72))
	seeds := [][]byte{build(fixedChunks()).Encode(), (&Sketch{}).Encode(), build(randChunks(r, 5)).Encode()}
	for i := 0; i < 20000; i++ {
		b := append([]byte{}, seeds[i%len(seeds)]...)
		for k := 0; k < 1+r.IntN(4); k++ {
			op := r.IntN(4)
			if len(b) < EncodedLen {
				op = 3
			}
			switch op {
			case 0: // a header byte
				b[r.IntN(HeaderLen)] = byte(r.Uint32())
			case 1: // a bin
				b[HeaderLen+r.IntN(Bins)] = byte(r.Uint32())
			case 2: // clear the bins
				clear(b[HeaderLen:])
			case 3: // a length change
				b = b[:r.IntN(len(b)+1)]
				if len(b) < HeaderLen {
					b = append(b, make([]byte, r.IntN(EncodedLen))...)
				}
			}
		}
		s, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrVersion) {
				t.Fatalf("mutation %d: error %v is neither ErrBadSignature nor ErrVersion", i, err)
			}
			continue
		}
		if !bytes.Equal(s.Encode(), b) {
			t.Fatalf("mutation %d: decode/encode differs", i)
		}
		if e := Compare(s, s); e.Bins > 0 && e.Jaccard != 1 {
			t.Fatalf("mutation %d: self-compare %+v", i, e)
		}
		_ = ComparePrefix(s, &Sketch{}, 1024)
	}
}

func TestPrefixEstimate(t *testing.T) {
	r := rand.New(rand.NewPCG(81, 82))
	common := randChunks(r, 3000)
	a, b := build(common, randChunks(r, 500)), build(common, randChunks(r, 900))
	enc := b.Encode()
	for _, n := range []int{8, 1024, Bins} {
		got, ok := PrefixEstimate(a, enc, n)
		if want := ComparePrefix(a, b, n); !ok || got != want {
			t.Errorf("%d bins: %+v, want %+v", n, got, want)
		}
	}
	enc[4] = 2
	if _, ok := PrefixEstimate(a, enc, 1024); ok {
		t.Error("another version passed")
	}
	if _, ok := PrefixEstimate(a, enc[:100], 1024); ok {
		t.Error("a short encoding passed")
	}
}
