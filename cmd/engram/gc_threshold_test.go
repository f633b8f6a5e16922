package main

import (
	"encoding/json"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
)

// gc --threshold 0 rewrites no pack (no live fraction is below 0); it got
// GCOptions' default, 0.5, and rewrote packs under half live. NaN is
// refused.
func TestGCThresholdZero(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	// b keeps the first 256 KiB of each MiB of a: once a is removed,
	// a's packs are about a quarter live, whatever chunks each got.
	rng := rand.New(rand.NewSource(1))
	a := make([]byte, 16<<20)
	rng.Read(a)
	b := append([]byte(nil), a...)
	for off := 0; off < len(b); off += 1 << 20 {
		rng.Read(b[off+256<<10 : off+1<<20])
	}
	for i, data := range [][]byte{a, b} { // a first: its packs hold what b shares
		n := string(rune('a' + i))
		p := filepath.Join(dir, n+".raw")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		ok(t, store, "-q", "ingest", "--format", "raw", "--name", n, p)
	}
	ok(t, store, "-q", "rm", "a")
	rewritten := func(th string) int {
		t.Helper()
		var st struct {
			PacksRewritten int `json:"packs_rewritten"`
		}
		if err := json.Unmarshal([]byte(ok(t, store, "--json", "gc", "--dry-run", "--threshold", th)), &st); err != nil {
			t.Fatal(err)
		}
		return st.PacksRewritten
	}
	if n := rewritten("0.5"); n == 0 {
		t.Fatal("fixture: no pack of a under half live")
	}
	for _, th := range []string{"0", "-0"} {
		if n := rewritten(th); n != 0 {
			t.Errorf("gc --threshold %s would rewrite %d packs, want none", th, n)
		}
	}
	fails(t, store, exitUsage, []string{"gc", "--threshold", "NaN"}, "--threshold NaN")
}
