package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testdata/v1store is a directory store of format 1 written by engram at
// a127518 (`engram ingest --name small`) from a 4 MiB qcow2 holding 0xab
// in [0, 256 KiB) and 0x5c in [1 MiB, 1 MiB + 64 KiB), zeros elsewhere.
func TestUpgradeFormat1Store(t *testing.T) {
	store := filepath.Join(t.TempDir(), "store")
	copyTestTree(t, "testdata/v1store", store)
	// Reading commands refuse it with one line naming the way out.
	fails(t, store, 1, []string{"ls"}, store, "engram upgrade")
	if out := ok(t, store, "upgrade"); !strings.Contains(out, "upgraded") {
		t.Errorf("upgrade: %q", out)
	}
	if out := ok(t, store, "upgrade"); !strings.Contains(out, "current format already") {
		t.Errorf("upgrade again: %q", out)
	}
	if out := ok(t, store, "ls"); !strings.Contains(out, "small") {
		t.Errorf("ls after the upgrade: %q", out)
	}
	ok(t, store, "verify")
	raw := filepath.Join(t.TempDir(), "small.raw")
	ok(t, store, "-q", "restore", "small", "-O", "raw", "-o", raw)
	got, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 4<<20)
	copy(want, bytes.Repeat([]byte{0xab}, 256<<10))
	copy(want[1<<20:], bytes.Repeat([]byte{0x5c}, 64<<10))
	if !bytes.Equal(got, want) {
		t.Fatal("restore after the upgrade differs from the image")
	}
	if _, err := os.Stat(filepath.Join(store, "index.db")); err == nil {
		t.Error("index.db of format 1 left after the upgrade")
	}
	// An ingest upgrades on its own too (and then writes the new format).
	store2 := filepath.Join(t.TempDir(), "store2")
	copyTestTree(t, "testdata/v1store", store2)
	src := filepath.Join(t.TempDir(), "again.raw")
	if err := os.WriteFile(src, got, 0o644); err != nil {
		t.Fatal(err)
	}
	ok(t, store2, "-q", "ingest", "--name", "again", src)
	if out := ok(t, store2, "ls"); !strings.Contains(out, "small") || !strings.Contains(out, "again") {
		t.Errorf("ls after an ingest into a format-1 store: %q", out)
	}
	ok(t, store2, "verify")
	// index.db lost: --from-packs indexes the packs and brings the
	// catalog back from its catalog chunks.
	store3 := filepath.Join(t.TempDir(), "store3")
	copyTestTree(t, "testdata/v1store", store3)
	if err := os.Remove(filepath.Join(store3, "index.db")); err != nil {
		t.Fatal(err)
	}
	fails(t, store3, 1, []string{"upgrade"}, "index.db", "--from-packs")
	if out := ok(t, store3, "upgrade", "--from-packs"); !strings.Contains(out, ", 1 engram (") {
		t.Errorf("upgrade --from-packs: %q", out)
	}
	if out := ok(t, store3, "ls"); !strings.Contains(out, "small") {
		t.Errorf("ls after upgrade --from-packs: %q", out)
	}
	ok(t, store3, "verify")
}

func copyTestTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}
