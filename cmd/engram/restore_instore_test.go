package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A restore into the store's own directory is refused: with --force,
// -o STORE/config.json replaced the store's config and every later
// command failed with "not a chunk store".
func TestRestoreIntoStoreRefused(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img := filepath.Join(dir, "a.raw")
	if err := os.WriteFile(img, []byte(strings.Repeat("a", 1<<16)), 0o644); err != nil {
		t.Fatal(err)
	}
	ok(t, store, "-q", "ingest", "--format", "raw", "--name", "a", img)
	link := filepath.Join(dir, "link")
	if err := os.Symlink("store", link); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"restore", "a", "-o", filepath.Join(store, "config.json"), "--force"},
		{"restore", "a", "-O", "raw", "-o", filepath.Join(link, "new.raw")},
		{"restore", "a", "--chain", "-o", store},
		{"restore", "--thin", "a", "-o", filepath.Join(store, "fleet")},
	} {
		fails(t, store, exitUsage, args, "inside the store")
	}
	ok(t, store, "verify")
	out := filepath.Join(dir, "storeside.raw") // beside the store, not in it
	ok(t, store, "-q", "restore", "a", "-O", "raw", "-o", out)
}
