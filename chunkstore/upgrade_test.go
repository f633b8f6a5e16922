package chunkstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The fixture testdata/v1store is a directory store of format 1 written by
// the FileStore of a127518 (the last code that wrote format 1): it was
// initialised with packs of 16 KiB and blocks of 4 KiB, given the three
// PutMany batches of v1Batches and the v1Meta keys in bucket "records",
// then collected with GC (threshold 0.5) keeping the chunks v1Live says,
// which dropped entries and rewrote packs.
const v1Fixture = "testdata/v1store"

func v1Batches() [][]Chunk {
	return [][]Chunk{mkChunks(100, 12, 1000), mkChunks(200, 12, 1500), mkChunks(300, 6, 3000)}
}

// v1Live says which fixture chunks survived its GC.
func v1Live(i, j int) bool { return i > 0 || j%2 == 0 }

var v1Meta = map[string]string{"a/1": "one", "b/2": "two", "c": strings.Repeat("x", 5000)}

// copyTree copies the fixture to a fresh directory.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if de.IsDir() {
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
	return dst
}

// checkUpgraded checks that s holds everything the fixture holds.
func checkUpgraded(t *testing.T, s *BlobStore) {
	t.Helper()
	ctx := context.Background()
	for i, b := range v1Batches() {
		for j, c := range b {
			got, err := s.Get(ctx, c.ID)
			if v1Live(i, j) && (err != nil || !bytes.Equal(got, c.Data)) {
				t.Fatalf("chunk %d/%d after the upgrade: %v", i, j, err)
			}
			if !v1Live(i, j) && err == nil {
				t.Fatalf("chunk %d/%d, dropped by gc before the upgrade, is back", i, j)
			}
		}
	}
	err := s.View(ctx, func(tx MetaTx) error {
		n := 0
		err := tx.ForEach([]byte("records"), nil, func(k, v []byte) error {
			n++
			if v1Meta[string(k)] != string(v) {
				t.Errorf("metadata %q = %q", k, v)
			}
			return nil
		})
		if n != len(v1Meta) {
			t.Errorf("%d metadata keys, want %d", n, len(v1Meta))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.Verify(ctx, func(p Problem) { t.Errorf("verify: %s", p) })
	if err != nil || st.Problems > 0 {
		t.Fatalf("verify after the upgrade: %+v %v", st, err)
	}
}

// checkNoLegacy checks that the format-1 files are gone and config.json
// says blob-1.
func checkNoLegacy(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, indexName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("index.db left after the upgrade: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, packsDir, "*.pack")); len(m) > 0 {
		t.Errorf("format-1 packs left after the upgrade: %v", m)
	}
	b, err := os.ReadFile(filepath.Join(dir, configName))
	if err != nil {
		t.Fatal(err)
	}
	var c blobConfig
	if err := json.Unmarshal(b, &c); err != nil || c.Layout != blobLayout || c.Version != configVersion || c.BlockSize != 4<<10 || c.PackSize != 16<<10 {
		t.Errorf("config after the upgrade: %s (%v)", b, err)
	}
}

func TestUpgradeV1(t *testing.T) {
	ctx := context.Background()
	dir := copyTree(t, v1Fixture)
	// Read-only: refused with one line naming the fix, nothing changed.
	if _, err := Open(ctx, dir, OpenOptions{ReadOnly: true}); !errors.Is(err, ErrNeedsUpgrade) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("read-only open of a format-1 store: %v", err)
	}
	if legacy, err := dirLayout(dir); err != nil || !legacy {
		t.Fatalf("read-only open changed the store: %v %v", legacy, err)
	}
	s, err := Open(ctx, dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkUpgraded(t, s)
	checkNoLegacy(t, dir)
	// The upgraded store takes new chunks, and opens read-only.
	extra := mkChunks(900, 5, 2000)
	if _, err := s.PutMany(ctx, extra); err != nil {
		t.Fatal(err)
	}
	s.Close()
	r, err := Open(ctx, dir, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	checkUpgraded(t, r)
	for _, c := range extra {
		if got, err := r.Get(ctx, c.ID); err != nil || !bytes.Equal(got, c.Data) {
			t.Fatalf("chunk put after the upgrade: %v", err)
		}
	}
	// The cache is a cache: without it the store opens whole.
	r.Close()
	if err := os.RemoveAll(filepath.Join(dir, dirCacheName)); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(ctx, dir, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	checkUpgraded(t, r2)
}

// TestUpgradeV1Interrupted stops the upgrade after each step, as a crash
// there would: the store that opens next holds everything.
func TestUpgradeV1Interrupted(t *testing.T) {
	ctx := context.Background()
	for _, step := range []string{"pack", "packs", "journal", "config"} {
		t.Run(step, func(t *testing.T) {
			dir := copyTree(t, v1Fixture)
			crash := errors.New("crash at " + step)
			upgradeHook = func(s string) error {
				if s == step {
					return crash
				}
				return nil
			}
			_, err := Open(ctx, dir, OpenOptions{})
			upgradeHook = nil
			if !errors.Is(err, crash) {
				t.Fatalf("Open = %v, want the injected crash", err)
			}
			legacy, err := dirLayout(dir)
			if err != nil {
				t.Fatal(err)
			}
			if legacy != (step != "config") {
				t.Fatalf("after a crash at %s: format 1 = %v", step, legacy)
			}
			if legacy {
				sameFiles(t, v1Fixture, dir) // the old store, byte for byte
			}
			// Killed again at the same step, then left to finish.
			upgradeHook = func(s string) error {
				if s == step {
					return crash
				}
				return nil
			}
			if s, err := Open(ctx, dir, OpenOptions{}); err == nil {
				s.Close() // committed before: nothing left to upgrade
			}
			upgradeHook = nil
			s, err := Open(ctx, dir, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			checkUpgraded(t, s)
			checkNoLegacy(t, dir)
			if got := countJournals(t, dir); got != 1 {
				t.Errorf("%d journal objects after the upgrade, want 1 (the old attempts' must go)", got)
			}
		})
	}
}

func countJournals(t *testing.T, dir string) int {
	m, err := filepath.Glob(filepath.Join(dir, "meta", "*"))
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}

// sameFiles checks that every file of the fixture is in dir unchanged.
func sameFiles(t *testing.T, fixture, dir string) {
	t.Helper()
	err := filepath.WalkDir(fixture, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(fixture, p)
		want, _ := os.ReadFile(p)
		got, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s of the format-1 store changed by an interrupted upgrade (%v)", rel, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeV1Damaged: a format-1 store whose index.db or a pack it
// needs is damaged is refused with one line naming the file, and left as
// it was.
func TestUpgradeV1Damaged(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name, file string
		harm       func(string) error
		want       string // in the error, if set
	}{
		{"empty index", indexName, func(p string) error { return os.Truncate(p, 0) }, "empty (0 bytes)"},
		{"garbage index", indexName, func(p string) error {
			b, _ := os.ReadFile(p)
			for i := range min(len(b), 16384) {
				b[i] = byte(i * 13)
			}
			return os.WriteFile(p, b, 0o644)
		}, ""},
		{"truncated index", indexName, func(p string) error { return os.Truncate(p, 4096) }, ""},
		{"missing index", indexName, os.Remove, ""},
		{"missing pack", filepath.Join(packsDir, packName(2)), os.Remove, ""},
		{"truncated pack", filepath.Join(packsDir, packName(2)), func(p string) error { return os.Truncate(p, 100) }, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := copyTree(t, v1Fixture)
			if err := c.harm(filepath.Join(dir, c.file)); err != nil {
				t.Fatal(err)
			}
			_, err := Open(ctx, dir, OpenOptions{})
			if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, c.file)) || strings.Contains(err.Error(), "\n") ||
				!strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open = %v", err)
			}
			t.Log(err)
			if legacy, err := dirLayout(dir); err != nil || !legacy {
				t.Fatalf("a refused upgrade changed the store: %v %v", legacy, err)
			}
		})
	}
}

// TestUpgradeV1DropUnreadable: with DropUnreadable, a store missing a
// pack is upgraded without that pack's chunks, everything else intact.
func TestUpgradeV1DropUnreadable(t *testing.T) {
	ctx := context.Background()
	dir := copyTree(t, v1Fixture)
	if err := os.Remove(filepath.Join(dir, packsDir, packName(2))); err != nil {
		t.Fatal(err)
	}
	_, err := Open(ctx, dir, OpenOptions{})
	if !errors.Is(err, errUnreadable) || !strings.Contains(err.Error(), "--drop-unreadable") {
		t.Fatalf("Open = %v", err)
	}
	rep, err := Upgrade(ctx, dir, UpgradeOptions{DropUnreadable: true})
	if err != nil || !rep.Upgraded || rep.Dropped == 0 || rep.Chunks == 0 {
		t.Fatalf("Upgrade = %+v, %v", rep, err)
	}
	checkNoLegacy(t, dir)
	s, err := Open(ctx, dir, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	verifyClean(t, s)
	st, _ := s.Stats(ctx)
	if st.Chunks != rep.Chunks {
		t.Fatalf("stats %+v after an upgrade that kept %d chunks", st, rep.Chunks)
	}
	if again, err := Upgrade(ctx, dir, UpgradeOptions{}); err != nil || again.Upgraded {
		t.Fatalf("Upgrade of a current store = %+v, %v", again, err)
	}
}

// TestUpgradeV1FromPacks: with index.db lost, FromPacks indexes the
// packs; every chunk the packs hold intact is there, the catalog is not.
func TestUpgradeV1FromPacks(t *testing.T) {
	ctx := context.Background()
	dir := copyTree(t, v1Fixture)
	if err := os.Remove(filepath.Join(dir, indexName)); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, dir, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "--from-packs") {
		t.Fatalf("Open without index.db = %v", err)
	}
	rep, err := Upgrade(ctx, dir, UpgradeOptions{FromPacks: true})
	if err != nil || !rep.Upgraded || !rep.CatalogLost || rep.Chunks == 0 {
		t.Fatalf("Upgrade = %+v, %v", rep, err)
	}
	checkNoLegacy(t, dir)
	s, err := Open(ctx, dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	verifyClean(t, s)
	for i, b := range v1Batches() {
		for j, c := range b {
			// Every live chunk; dead ones may come back (their frames were
			// intact), as format 1's repair brought them back too.
			if got, err := s.Get(ctx, c.ID); v1Live(i, j) && (err != nil || !bytes.Equal(got, c.Data)) {
				t.Fatalf("chunk %d/%d after the upgrade from packs: %v", i, j, err)
			}
		}
	}
	_ = s.View(ctx, func(tx MetaTx) error {
		if tx.Get([]byte("records"), []byte("a/1")) != nil {
			t.Error("metadata from nowhere")
		}
		return nil
	})
	s.Close()
	rr, err := RepairDir(ctx, dir, OpenOptions{})
	if err != nil || !rr.MetadataLost {
		t.Fatalf("RepairDir after an upgrade from packs: %+v %v", rr, err)
	}
}
