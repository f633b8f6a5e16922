package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A --socket path bind(2) cannot take, or an empty one, is a bad command
// line named as such: a long one said "bind: invalid argument" (exit 1),
// an empty one served on TCP instead.
func TestServeSocketPath(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img := filepath.Join(dir, "a.raw")
	if err := os.WriteFile(img, []byte(strings.Repeat("a", 1<<16)), 0o644); err != nil {
		t.Fatal(err)
	}
	ok(t, store, "-q", "ingest", "--format", "raw", "--name", "a", img)
	long := filepath.Join(dir, strings.Repeat("s", 120)+".sock")
	fails(t, store, exitUsage, []string{"serve", "--socket", long}, "at most 107 bytes")
	// Checked before the store is opened (an empty store would serve
	// nothing): without the check this one serves on TCP until killed.
	empty := filepath.Join(dir, "empty")
	ok(t, empty, "init")
	fails(t, empty, exitUsage, []string{"serve", "--socket", ""}, "--socket needs a path")
}
