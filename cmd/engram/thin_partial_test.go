package main

import (
	"encoding/json"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A restore --thin that fails after writing some of its files removes
// them with the directory it made, as --chain does: a Ctrl-C (exit 130,
// "nothing partial was committed") left a half forest in -o DIR.
func TestThinFailedRemovesWrittenFiles(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	packs := func() []string {
		ps, _ := filepath.Glob(filepath.Join(store, "packs", "*", "*"))
		return ps
	}
	added := map[string][]string{} // the packs each ingest wrote
	for i, n := range []string{"a", "b"} {
		data := make([]byte, 2<<20) // incompressible, unshared
		rand.New(rand.NewSource(int64(i + 1))).Read(data)
		img := filepath.Join(dir, n+".raw")
		if err := os.WriteFile(img, data, 0o644); err != nil {
			t.Fatal(err)
		}
		before := packs()
		ok(t, store, "-q", "ingest", "--format", "raw", "--name", n, img)
		for _, p := range packs() {
			if !slices.Contains(before, p) {
				added[n] = append(added[n], p)
			}
		}
	}
	out := filepath.Join(dir, "fleet")
	var plan struct {
		Files []struct {
			Name string `json:"name"`
		} `json:"files"`
	}
	if err := json.Unmarshal([]byte(ok(t, store, "--json", "restore", "--thin", "--dry-run", "-o", out, "a", "b")), &plan); err != nil {
		t.Fatal(err)
	}
	if len(plan.Files) != 2 {
		t.Fatalf("fixture: plan %+v, want two files", plan.Files)
	}
	// The second file's data goes: the first is written, then it fails.
	// Only data packs (its manifest must still read, or the plan fails
	// before anything is written).
	cut := 0
	for _, p := range added[plan.Files[1].Name] {
		if fi, err := os.Stat(p); err == nil && fi.Size() > 256<<10 {
			if err := os.Truncate(p, 100); err != nil {
				t.Fatal(err)
			}
			cut++
		}
	}
	if cut == 0 {
		t.Fatalf("fixture: no data pack among %v", added[plan.Files[1].Name])
	}
	if r := runEngram(t, store, "restore", "--thin", "-o", out, "a", "b"); r.code == 0 {
		t.Fatalf("restore --thin with %s's pack truncated: exit 0\n%s", plan.Files[1].Name, r.stderr)
	}
	if ents, err := os.ReadDir(out); !os.IsNotExist(err) {
		t.Errorf("failed restore --thin left %s (%v) holding %v", out, err, ents)
	}
}
