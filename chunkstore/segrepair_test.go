package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// A damaged index segment fails every open of the store once the cache
// must merge it; RepairDir replaces it from the copy in its pack, and also
// finds it while the cache still hides it.
func TestRepairDirDamagedSegment(t *testing.T) {
	for _, dropCache := range []bool{true, false} {
		t.Run(map[bool]string{true: "cache-rebuilt", false: "cache-intact"}[dropCache], func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			if err := Init(dir, InitOptions{}); err != nil {
				t.Fatal(err)
			}
			opts := OpenOptions{Exclusive: true, Command: t.Name()}
			s, err := Open(ctx, dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			cs := mkChunks(1, 5, 20000)
			if _, err := s.PutMany(ctx, cs); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			segs, err := filepath.Glob(filepath.Join(dir, "index", "*"))
			if err != nil || len(segs) != 1 {
				t.Fatalf("segments %v, %v", segs, err)
			}
			b, err := os.ReadFile(segs[0])
			if err != nil {
				t.Fatal(err)
			}
			b[20] ^= 0xff
			if err := os.WriteFile(segs[0], b, 0o644); err != nil {
				t.Fatal(err)
			}
			if dropCache {
				if err := os.Remove(filepath.Join(dir, dirCacheName, indexName)); err != nil {
					t.Fatal(err)
				}
				if _, err := Open(ctx, dir, opts); !errors.Is(err, ErrIndexDamaged) {
					t.Fatalf("open with a damaged segment: %v, want ErrIndexDamaged", err)
				}
			}
			rep, err := RepairDir(ctx, dir, opts)
			if err != nil {
				t.Fatalf("repair: %v (problems %v)", err, rep.Problems)
			}
			if len(rep.Problems) != 1 {
				t.Fatalf("repair problems %v, want the replaced segment", rep.Problems)
			}
			if err := os.Remove(filepath.Join(dir, dirCacheName, indexName)); err != nil {
				t.Fatal(err)
			}
			s, err = Open(ctx, dir, opts)
			if err != nil {
				t.Fatalf("open after repair: %v", err)
			}
			defer s.Close()
			for _, c := range cs {
				if _, err := s.Get(ctx, c.ID); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// A damaged catalog journal entry fails every open once a cache must
// apply it; RepairDir removes it (and reports the catalog lost, so that
// engram repair rebuilds it from catalog chunks), also while the cache
// hides it. An intact entry of a newer version is left alone.
func TestRepairDirDamagedJournal(t *testing.T) {
	for _, dropCache := range []bool{true, false} {
		t.Run(map[bool]string{true: "cache-rebuilt", false: "cache-intact"}[dropCache], func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			if err := Init(dir, InitOptions{}); err != nil {
				t.Fatal(err)
			}
			opts := OpenOptions{Exclusive: true, Command: t.Name()}
			s, err := Open(ctx, dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			cs := mkChunks(1, 5, 20000)
			if _, err := s.PutMany(ctx, cs); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"a", "b"} {
				if err := s.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("user"), []byte(k), []byte("v")) }); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			entries, err := filepath.Glob(filepath.Join(dir, "meta", "*"))
			if err != nil || len(entries) != 2 {
				t.Fatalf("journal %v, %v", entries, err)
			}
			if err := os.WriteFile(entries[0], []byte("{\"v\":1,\"op"), 0o644); err != nil {
				t.Fatal(err)
			}
			if dropCache {
				if err := os.Remove(filepath.Join(dir, dirCacheName, indexName)); err != nil {
					t.Fatal(err)
				}
				if _, err := Open(ctx, dir, opts); !errors.Is(err, ErrJournalDamaged) {
					t.Fatalf("open with a damaged journal entry: %v, want ErrJournalDamaged", err)
				}
			}
			rep, err := RepairDir(ctx, dir, opts)
			if err != nil {
				t.Fatalf("repair: %v (problems %v)", err, rep.Problems)
			}
			if len(rep.Problems) != 1 || !rep.MetadataLost {
				t.Fatalf("repair = %+v, want the removed entry and MetadataLost", rep)
			}
			if err := os.Remove(filepath.Join(dir, dirCacheName, indexName)); err != nil {
				t.Fatal(err)
			}
			s, err = Open(ctx, dir, opts)
			if err != nil {
				t.Fatalf("open after repair: %v", err)
			}
			defer s.Close()
			if _, err := s.Get(ctx, cs[0].ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestJournalIntactNewerVersion(t *testing.T) {
	body := []byte(`{"v":9,"ops":[]}`)
	name := journalName(12345, body)
	if err := journalIntact(name, body); err != nil {
		t.Fatalf("an intact entry of a newer version: %v", err)
	}
	if err := journalIntact(name, append(body, ' ')); err == nil {
		t.Fatal("a changed entry passed")
	}
}

// An unreadable gc list or damage list fails every open that lists it;
// RepairDir removes it (a list of a newer version stays).
func TestRepairDirDamagedLists(t *testing.T) {
	for _, name := range []string{
		"gc/condemned-0000000000000001-abcdefabcdefabcd",
		"damaged/" + ID{1}.String() + "-0000000000000001-abcdefabcdefabcd",
	} {
		t.Run(strings.SplitN(name, "/", 2)[0], func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			if err := Init(dir, InitOptions{}); err != nil {
				t.Fatal(err)
			}
			opts := OpenOptions{Exclusive: true, Command: t.Name()}
			p := filepath.Join(dir, filepath.FromSlash(name))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("\x00garbage"), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := Open(ctx, dir, opts); !errors.Is(err, ErrListDamaged) {
				t.Fatalf("open with a damaged list: %v, want ErrListDamaged", err)
			}
			rep, err := RepairDir(ctx, dir, opts)
			if err != nil || len(rep.Problems) != 1 {
				t.Fatalf("repair = %v, %v; want the list removed", rep.Problems, err)
			}
			s, err := Open(ctx, dir, opts)
			if err != nil {
				t.Fatalf("open after repair: %v", err)
			}
			s.Close()
		})
	}
}

// Verify reports a damaged segment that the cache still hides.
func TestVerifyFindsDamagedSegment(t *testing.T) {
	ctx := context.Background()
	s := NewTestStore(t)
	dir := s.local.dir
	if _, err := s.PutMany(ctx, mkChunks(1, 5, 20000)); err != nil {
		t.Fatal(err)
	}
	segs, err := filepath.Glob(filepath.Join(dir, "index", "*"))
	if err != nil || len(segs) != 1 {
		t.Fatalf("segments %v, %v", segs, err)
	}
	good, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), good...)
	bad[20] ^= 0xff
	if err := os.WriteFile(segs[0], bad, 0o644); err != nil {
		t.Fatal(err)
	}
	var probs []Problem
	if _, err := s.Verify(ctx, func(p Problem) { probs = append(probs, p) }); err != nil {
		t.Fatal(err)
	}
	if len(probs) != 1 || !strings.Contains(probs[0].String(), "index segment damaged") {
		t.Fatalf("verify problems %v, want the damaged segment", probs)
	}
	// Put it back for the Cleanup's verify.
	if err := os.WriteFile(segs[0], good, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A directory where a journal entry or an index segment belongs is not
// listed as an object, so the record it replaced was simply absent and
// verify called the store intact; it names each such path as damaged.
func TestVerifyDirObjectReplacedByDirectory(t *testing.T) {
	for _, dropCache := range []bool{true, false} {
		t.Run(map[bool]string{true: "cache-rebuilt", false: "cache-intact"}[dropCache], func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			if err := Init(dir, InitOptions{}); err != nil {
				t.Fatal(err)
			}
			opts := OpenOptions{Command: t.Name()}
			s, err := Open(ctx, dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.PutMany(ctx, mkChunks(1, 5, 20000)); err != nil {
				t.Fatal(err)
			}
			if err := s.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("user"), []byte("a"), []byte("v")) }); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, g := range []string{"meta", "index"} {
				objs, err := filepath.Glob(filepath.Join(dir, g, "*"))
				if err != nil || len(objs) != 1 {
					t.Fatalf("%s: %v, %v", g, objs, err)
				}
				if err := os.Remove(objs[0]); err != nil {
					t.Fatal(err)
				}
				if err := os.Mkdir(objs[0], 0o755); err != nil {
					t.Fatal(err)
				}
				want = append(want, objs[0])
			}
			if dropCache {
				if err := os.Remove(filepath.Join(dir, dirCacheName, indexName)); err != nil {
					t.Fatal(err)
				}
			}
			s, err = Open(ctx, dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var got []string
			if _, err := s.Verify(ctx, func(p Problem) { got = append(got, p.String()) }); err != nil {
				t.Fatal(err)
			}
			for _, w := range want {
				if !slices.ContainsFunc(got, func(g string) bool { return strings.Contains(g, w) && strings.Contains(g, "a directory") }) {
					t.Errorf("verify problems %q do not name %s as a directory in the way", got, w)
				}
			}
		})
	}
}

// A repair killed in a directory store leaves its gc lease behind; the
// next repair holds the exclusive flock, so no other gc or repair can be
// running, and it goes on instead of calling the lease live for an hour.
func TestRepairDirAfterKilledRepair(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := Init(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	opts := OpenOptions{Command: t.Name()}
	s, err := Open(ctx, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutMany(ctx, mkChunks(1, 5, 20000)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// What a repair killed a moment ago leaves: its lease, a fresh beat.
	lease := fmt.Sprintf(`{"host":"h","pid":%d,"time_ns":%d}`, 1<<22+1, time.Now().UnixNano())
	if err := os.MkdirAll(filepath.Join(dir, "gc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{gcLeaseName: lease, beatName(time.Now().UnixNano()): ""} {
		if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(name)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if rep, err := RepairDir(ctx, dir, opts); err != nil {
		t.Fatalf("repair after a killed repair: %v (problems %v)", err, rep.Problems)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "gc", "*")); len(left) != 0 {
		t.Errorf("repair left %v", left)
	}
}

// Init over a directory holding something else says once that nothing
// was written (it said it twice).
func TestInitForeignDirSaysOnce(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Init(dir, InitOptions{})
	if !errors.Is(err, ErrNotStore) || strings.Count(err.Error(), "nothing was written") != 1 {
		t.Fatalf("Init over a foreign directory: %v, want ErrNotStore saying once that nothing was written", err)
	}
}

// gc sweeps nothing while a directory stands where a journal entry
// belongs: the records it held are unknown, and gc deleted the packs of
// their engrams (catalog copies too) as unreferenced.
func TestGCRefusesDirectoryForJournalEntry(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := Init(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, dir, OpenOptions{Command: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutMany(ctx, mkChunks(1, 5, 20000)); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("user"), []byte("a"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	entries, err := filepath.Glob(filepath.Join(dir, "meta", "*"))
	if err != nil || len(entries) != 1 {
		t.Fatalf("journal %v, %v", entries, err)
	}
	if err := os.Remove(entries[0]); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(entries[0], 0o755); err != nil {
		t.Fatal(err)
	}
	packs, _ := filepath.Glob(filepath.Join(dir, "packs", "*", "*"))
	gc, err := Open(ctx, dir, OpenOptions{Exclusive: true, Command: "gc"})
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	_, err = gc.GC(ctx, func(ID) bool { return false }, GCOptions{})
	if !errors.Is(err, ErrJournalDamaged) || !strings.Contains(err.Error(), entries[0]) {
		t.Errorf("gc with a directory for a journal entry: %v, want ErrJournalDamaged naming it", err)
	}
	if after, _ := filepath.Glob(filepath.Join(dir, "packs", "*", "*")); len(after) != len(packs) {
		t.Errorf("gc deleted packs: %d before, %d after", len(packs), len(after))
	}
}
