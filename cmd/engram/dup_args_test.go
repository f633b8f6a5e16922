package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// One engram given twice (by name and by ID) is verified and listed once:
// verify said "ok: 3 engrams verified" for one, sketch showed it thrice.
func TestRepeatedArgsCountOnce(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img := filepath.Join(dir, "a.raw")
	if err := os.WriteFile(img, []byte(strings.Repeat("a", 1<<16)), 0o644); err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(ok(t, store, "-q", "ingest", "--format", "raw", "--name", "a", img))
	if out := ok(t, store, "verify", "a", "a", id[:8]); !strings.Contains(out, "ok: 1 engram verified") {
		t.Errorf("verify a a %s: %q, want one engram verified", id[:8], out)
	}
	var rows []json.RawMessage
	if err := json.Unmarshal([]byte(ok(t, store, "--json", "sketch", "a", id)), &rows); err != nil || len(rows) != 1 {
		t.Errorf("sketch a ID: %d rows (%v), want 1", len(rows), err)
	}
}
