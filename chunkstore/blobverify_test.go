package chunkstore

import (
	"context"
	"errors"
	"os"
	"runtime"
	"slices"
	"testing"
)

// Verify checks packs two at a time: the problems of several damaged packs
// come in pack order every time, as the serial scan gave them, and the
// counts are those of one pass over every pack.
func TestVerifyParallelOrder(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	}
	dir, cs := filledStore(t)
	s := openT(t, dir)
	var paths []string // every other pack, in pack order
	seen := map[string]bool{}
	for _, c := range cs {
		if _, p := entryOf(t, s, c.ID); !seen[p] {
			seen[p] = true
			if len(seen)%2 == 1 {
				paths = append(paths, p)
			}
		}
	}
	if len(seen) < 4 {
		t.Fatalf("only %d packs", len(seen))
	}
	for _, p := range paths {
		flipMiddle(t, p)
	}
	var first []string
	var firstSt VerifyStats
	for round := range 5 {
		var got []string
		st, err := s.Verify(context.Background(), func(p Problem) {
			if p.ID.IsZero() && (len(got) == 0 || got[len(got)-1] != p.Pack) {
				got = append(got, p.Pack)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if st.Packs != int64(len(seen)) || st.Problems == 0 {
			t.Fatalf("round %d: %+v for %d packs", round, st, len(seen))
		}
		if round == 0 {
			first, firstSt = got, st
			continue
		}
		if !slices.Equal(got, first) || st != firstSt {
			t.Fatalf("round %d: pack problems %v, %+v; round 0 %v, %+v", round, got, st, first, firstSt)
		}
	}
	if len(first) != len(paths) {
		t.Fatalf("pack-level problems for %d packs, damaged %d: %v", len(first), len(paths), first)
	}
}

// A Verify cancelled while it scans returns the context's error once its
// workers are done.
func TestVerifyCancelled(t *testing.T) {
	dir, cs := filledStore(t)
	s := openT(t, dir)
	seen := map[string]bool{}
	for _, c := range cs {
		if _, p := entryOf(t, s, c.ID); !seen[p] {
			seen[p] = true
			flipMiddle(t, p)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	_, err := s.Verify(ctx, func(Problem) { n++; cancel() })
	if !errors.Is(err, context.Canceled) || n == 0 {
		t.Fatalf("cancelled verify: %d problems, %v", n, err)
	}
}

// flipMiddle flips one bit in the middle of the file at path.
func flipMiddle(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
