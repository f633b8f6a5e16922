package fleet

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/sketch"
)

type chunk struct {
	id [32]byte
	n  uint32
}

func randChunks(r *rand.Rand, n int) []chunk {
	out := make([]chunk, n)
	for i := range out {
		for k := range out[i].id {
			out[i].id[k] = byte(r.Uint32())
		}
		out[i].n = 64 << 10
	}
	return out
}

func sig(parts ...[]chunk) *sketch.Sketch {
	b := sketch.NewBuilder()
	for _, p := range parts {
		for _, c := range p {
			b.Add(c.id, c.n)
		}
	}
	return b.Sketch()
}

type synth struct {
	names  []string
	sks    []*sketch.Sketch
	parent map[string]string
}

func (s *synth) add(name, parent string, sk *sketch.Sketch) {
	s.names = append(s.names, name)
	s.sks = append(s.sks, sk)
	s.parent[name] = parent
}

func (s *synth) fleet() *Fleet {
	ids := make([]engram.ID, len(s.names))
	for i, n := range s.names {
		ids[i] = chunkstore.Sum([]byte(n))
	}
	f := FromSketches(ids, s.sks)
	for i, m := range f.Members {
		m.Name = s.names[i]
	}
	return f
}

// family adds a template, clones (a twentieth of the template replaced,
// their own data added) and clones of the first clone.
func family(s *synth, r *rand.Rand, fam string, clones, grand int) {
	tmpl := randChunks(r, 2000)
	t := fam + "/template"
	s.add(t, "", sig(tmpl))
	var c0 []chunk
	for i := 0; i < clones; i++ {
		own := randChunks(r, 300)
		name := fmt.Sprintf("%s/clone%d", fam, i)
		s.add(name, t, sig(tmpl[100:], own))
		if i == 0 {
			c0 = append(append([]chunk{}, tmpl[100:]...), own...)
		}
	}
	for i := 0; i < grand; i++ {
		s.add(fmt.Sprintf("%s/clone0-%d", fam, i), fam+"/clone0", sig(c0[50:], randChunks(r, 300)))
	}
}

func TestTreeFromSignatures(t *testing.T) {
	r := rand.New(rand.NewPCG(41, 42))
	s := &synth{parent: map[string]string{}}
	for i := 0; i < 4; i++ {
		family(s, r, fmt.Sprintf("f%d", i), 5, 2)
	}
	// An image that merges two unrelated ones equally: ambiguous.
	common := randChunks(r, 1000)
	a, b := randChunks(r, 800), randChunks(r, 800)
	s.add("mergeA", "", sig(common, a))
	s.add("mergeB", "", sig(common, b))
	s.add("merged", "?", sig(common, a, b, randChunks(r, 400)))

	f := s.fleet()
	roots, err := f.Tree(context.Background(), LineageOptions{Estimate: true})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Decision{}
	var walk func(l []*Node)
	walk = func(l []*Node) {
		for _, n := range l {
			got[n.Child.Name] = n.Decision
			walk(n.Children)
		}
	}
	walk(roots)
	if len(got) != len(s.names) {
		t.Fatalf("tree holds %d engrams, want %d", len(got), len(s.names))
	}
	for _, name := range s.names {
		d := got[name]
		want := s.parent[name]
		switch {
		case want == "?":
			if d.Method != Ambiguous || d.Parent != nil || d.Figures == nil || d.RunnerUp == nil {
				t.Errorf("%s: %s (parent %v), want ambiguous with both candidates", name, d.Method, d.Parent)
			}
		case want == "":
			if d.Parent != nil {
				t.Errorf("%s: parent %s, want a root", name, d.Parent.Name)
			}
		default:
			if d.Parent == nil || d.Parent.Name != want || d.Method != ByContent {
				t.Errorf("%s: parent %v by %s, want %s by content", name, d.Parent, d.Method, want)
			}
		}
		// Lineage alone (a full scan) agrees with the tree (indexed candidates).
		one, err := f.Lineage(context.Background(), f.Members[indexOf(s.names, name)].ID, LineageOptions{Estimate: true})
		if err != nil {
			t.Fatal(err)
		}
		if one.Method != d.Method || one.Parent != d.Parent {
			t.Errorf("%s: Lineage says %s/%v, Tree %s/%v", name, one.Method, one.Parent, d.Method, d.Parent)
		}
	}
}

func indexOf(l []string, s string) int {
	for i, x := range l {
		if x == s {
			return i
		}
	}
	return -1
}

func TestSimilarRanksFamilyFirst(t *testing.T) {
	r := rand.New(rand.NewPCG(43, 44))
	s := &synth{parent: map[string]string{}}
	for i := 0; i < 10; i++ {
		family(s, r, fmt.Sprintf("f%d", i), 3, 1)
	}
	f := s.fleet()
	q := f.Members[indexOf(s.names, "f3/clone1")]
	rels, err := f.Similar(context.Background(), q.ID, SimilarOptions{Top: 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(rels) != 5 {
		t.Fatalf("%d results", len(rels))
	}
	for i, r := range rels[:4] {
		if r.B.Name[:3] != "f3/" || r.B == q {
			t.Errorf("rank %d: %s, want a member of f3", i, r.B.Name)
		}
	}
	if _, err := f.Similar(context.Background(), chunkstore.Sum([]byte("nope")), SimilarOptions{}); err == nil {
		t.Error("similar of an unknown engram succeeded")
	}
}

// bigFleet is 10,000 synthetic signatures: 200 families of 50.
func bigFleet(b *testing.B) *Fleet {
	r := rand.New(rand.NewPCG(45, 46))
	s := &synth{parent: map[string]string{}}
	for i := 0; i < 200; i++ {
		family(s, r, fmt.Sprintf("f%d", i), 39, 10)
	}
	if len(s.names) != 10000 {
		b.Fatalf("%d members", len(s.names))
	}
	return s.fleet()
}

// BenchmarkTree10k decides the parent of 10,000 engrams from signatures
// (goal: under 2 s per op).
func BenchmarkTree10k(b *testing.B) {
	f := bigFleet(b)
	b.ResetTimer()
	for b.Loop() {
		if _, err := f.Tree(context.Background(), LineageOptions{Estimate: true}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSimilar10k is `similar` over 10,000 engrams (goal: under 50 ms).
func BenchmarkSimilar10k(b *testing.B) {
	f := bigFleet(b)
	q := f.Members[1234].ID
	b.ResetTimer()
	for b.Loop() {
		if _, err := f.Similar(context.Background(), q, SimilarOptions{Top: 10}); err != nil {
			b.Fatal(err)
		}
	}
}
