package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A directory where a catalog journal entry belongs: verify names it as
// damaged (exit 1) and counts it as a damaged object (it said "pack or
// segment"); gc sweeps nothing meanwhile.
func TestVerifyNamesDirectoryForJournalEntry(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img := filepath.Join(dir, "a.raw")
	if err := os.WriteFile(img, []byte(strings.Repeat("a", 1<<16)), 0o644); err != nil {
		t.Fatal(err)
	}
	ok(t, store, "-q", "ingest", "--format", "raw", "--name", "a", img)
	entries, err := filepath.Glob(filepath.Join(store, "meta", "*"))
	if err != nil || len(entries) != 1 {
		t.Fatalf("journal %v, %v", entries, err)
	}
	if err := os.Remove(entries[0]); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(entries[0], 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(store, "cache")); err != nil {
		t.Fatal(err)
	}
	r := runEngram(t, store, "verify")
	if r.code != 1 || !strings.Contains(r.stdout, entries[0]+" at 0x0: catalog journal entry unreadable: a directory") ||
		!strings.Contains(r.stderr, "1 damaged object") {
		t.Errorf("verify: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	fails(t, store, 1, []string{"gc"}, entries[0], "sweeps nothing")
	if packs, _ := filepath.Glob(filepath.Join(store, "packs", "*", "*")); len(packs) == 0 {
		t.Error("gc deleted the packs")
	}
}
