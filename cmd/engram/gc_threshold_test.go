package main

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// gc --threshold 0 rewrites no pack (no live fraction is below 0); it got
// GCOptions' default, 0.5, and rewrote a quarter-live pack. NaN is refused.
func TestGCThresholdZero(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	a := make([]byte, 16<<20)
	if _, err := rand.Read(a); err != nil {
		t.Fatal(err)
	}
	b := append([]byte(nil), a[:4<<20]...)
	b = append(b, make([]byte, 12<<20)...)
	if _, err := rand.Read(b[4<<20:]); err != nil {
		t.Fatal(err)
	}
	for n, data := range map[string][]byte{"a": a, "b": b} {
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
		t.Fatal("fixture: no pack under half live")
	}
	for _, th := range []string{"0", "-0"} {
		if n := rewritten(th); n != 0 {
			t.Errorf("gc --threshold %s would rewrite %d packs, want none", th, n)
		}
	}
	fails(t, store, exitUsage, []string{"gc", "--threshold", "NaN"}, "--threshold NaN")
}
