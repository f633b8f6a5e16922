package sketch

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkBuild50k builds the signature of 50,000 chunks of 64 KiB (a
// 3 GiB image).
func BenchmarkBuild50k(b *testing.B) {
	r := rand.New(rand.NewPCG(11, 12))
	cs := randChunks(r, 50000)
	for i := range cs {
		cs[i].len = 64 << 10
	}
	b.ResetTimer()
	for b.Loop() {
		bl := NewBuilder()
		for _, c := range cs {
			bl.Add(c.id, c.len)
		}
		_ = bl.Sketch()
	}
}

// synthFleet makes n signatures of families: each family a template of
// 2000 chunks, each member the template with a tenth replaced.
func synthFleet(n int) []*Sketch {
	r := rand.New(rand.NewPCG(13, 14))
	out := make([]*Sketch, 0, n)
	var tmpl []chunk
	for i := 0; i < n; i++ {
		if i%50 == 0 {
			tmpl = randChunks(r, 2000)
		}
		out = append(out, build(tmpl[:1800], randChunks(r, 200)))
	}
	return out
}

// BenchmarkSimilar10k ranks 10,000 signatures against one (the `similar`
// scan): first 1024 bins for all, the full signature for the best 100.
// The goal is under 50 ms per op.
func BenchmarkSimilar10k(b *testing.B) {
	fleet := synthFleet(10000)
	q := fleet[1234]
	b.ResetTimer()
	for b.Loop() {
		if got := Rank(q, fleet, 10, RankOptions{}); len(got) != 10 {
			b.Fatal(len(got))
		}
	}
}

// BenchmarkCompareFull is one full comparison of two signatures.
func BenchmarkCompareFull(b *testing.B) {
	f := synthFleet(2)
	for b.Loop() {
		_ = Compare(f[0], f[1])
	}
}
