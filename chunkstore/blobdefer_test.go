package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// openDeferred opens a new directory store with OpenOptions.DeferSync.
func openDeferred(t *testing.T, opts InitOptions) (*BlobStore, string) {
	t.Helper()
	dir := t.TempDir()
	if err := Init(dir, opts); err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), dir, OpenOptions{DeferSync: true, Command: "test " + t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

func TestConformanceDirStoreDeferSync(t *testing.T) {
	runConformance(t, func(t *testing.T) testable {
		s, _ := openDeferred(t, InitOptions{PackSize: 256 << 10, BlockSize: 64 << 10})
		t.Cleanup(func() {
			if st, err := s.Verify(context.Background(), func(p Problem) { t.Errorf("verify: %s", p) }); err != nil || st.Problems > 0 {
				t.Errorf("verify: %+v %v", st, err)
			}
		})
		return s
	})
}

// tmpFiles counts the store's temporary files.
func tmpFiles(t *testing.T, dir string) int {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(dir, ".tmp"))
	if err != nil {
		t.Fatal(err)
	}
	return len(des)
}

// Staged packs are this process's until a durable point: dedup sees them
// at once, another process only after Update (or Close), and then the
// objects are named and the temporary files gone.
func TestDeferSyncDurablePoints(t *testing.T) {
	ctx := context.Background()
	s, dir := openDeferred(t, InitOptions{PackSize: 256 << 10, BlockSize: 64 << 10})
	cs := mkChunks(1, 40, 20000)
	if n, err := s.PutMany(ctx, cs); err != nil || n != len(cs) {
		t.Fatalf("PutMany = %d, %v", n, err)
	}
	if n, err := s.PutMany(ctx, cs); err != nil || n != 0 {
		t.Fatalf("PutMany again = %d, %v; want 0 (staged chunks count as stored)", n, err)
	}
	have, err := s.HasForDedup(ctx, []ID{cs[0].ID, cs[39].ID})
	if err != nil || !have[0] || !have[1] {
		t.Fatalf("HasForDedup of staged chunks = %v, %v", have, err)
	}
	if tmpFiles(t, dir) == 0 {
		t.Fatal("nothing staged")
	}
	var packs int
	_ = filepath.WalkDir(filepath.Join(dir, "packs"), func(_ string, de os.DirEntry, _ error) error {
		if de != nil && !de.IsDir() {
			packs++
		}
		return nil
	})
	if packs != 0 {
		t.Fatalf("%d packs named before a durable point", packs)
	}
	// Another process sees nothing yet.
	r, err := Open(ctx, dir, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(ctx, cs[0].ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("reader's Get of a staged chunk = %v, want not found", err)
	}
	r.Close()
	// The commit point makes them durable and indexed.
	if err := s.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("user"), []byte("k"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	if n := tmpFiles(t, dir); n != 0 {
		t.Fatalf("%d temporary files after Update", n)
	}
	r, err = Open(ctx, dir, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, c := range cs {
		got, err := r.Get(ctx, c.ID)
		if err != nil || !bytes.Equal(got, c.Data) {
			t.Fatalf("reader's Get after Update: %v", err)
		}
	}
	// A read of a staged chunk in the writer is a durable point too.
	more := mkChunks(100, 5, 9000)
	if _, err := s.PutMany(ctx, more); err != nil {
		t.Fatal(err)
	}
	bufs := make([][]byte, len(more))
	ids := make([]ID, len(more))
	for i, c := range more {
		ids[i], bufs[i] = c.ID, make([]byte, len(c.Data))
	}
	if err := s.GetMany(ctx, ids, bufs); err != nil {
		t.Fatal(err)
	}
	if n := tmpFiles(t, dir); n != 0 {
		t.Fatalf("%d temporary files after GetMany of staged chunks", n)
	}
	// Close is the last one.
	last := mkChunks(200, 3, 7000)
	if _, err := s.PutMany(ctx, last); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(ctx, dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	verifyClean(t, s2)
	for _, c := range append(append(cs, more...), last...) {
		if got, err := s2.Get(ctx, c.ID); err != nil || !bytes.Equal(got, c.Data) {
			t.Fatalf("Get after Close: %v", err)
		}
	}
}

// Many packs at once: staging stops at stageMaxPacks and makes them
// durable from PutMany itself.
func TestDeferSyncBound(t *testing.T) {
	ctx := context.Background()
	s, dir := openDeferred(t, InitOptions{PackSize: 8 << 10, BlockSize: 1, Compression: "fastest"})
	cs := mkChunks(1, stageMaxPacks+10, 9000) // one pack each
	if _, err := s.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	if n := s.staged.n.Load(); n >= stageMaxPacks {
		t.Fatalf("%d packs staged, want fewer than %d", n, stageMaxPacks)
	}
	if n := tmpFiles(t, dir); n >= 2*stageMaxPacks {
		t.Fatalf("%d temporary files", n)
	}
	st, err := s.Stats(ctx)
	if err != nil || st.Chunks != int64(len(cs)) {
		t.Fatalf("Stats = %+v, %v", st, err)
	}
}

// TestCrashDuringDeferredPut kills a writer with DeferSync at random
// moments and at each injected point: what an Update acknowledged is
// there, and the store verifies clean.
func TestCrashDuringDeferredPut(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := Init(dir, InitOptions{PackSize: 128 << 10, BlockSize: 32 << 10}); err != nil {
		t.Fatal(err)
	}
	var acked []ID
	points := []string{"", "pack-put:2", "after-pack:2", "before-record:2"}
	for round := range crashRounds() + len(points) - 1 {
		var env []string
		if round < len(points) && points[round] != "" {
			env = append(env, "ENGRAM_TEST_KILL_AT="+points[round])
		}
		c := startChildEnv(t, "deferput", dir, uint64(round)<<32, env)
		select {
		case <-c.acked:
		case <-c.done:
		}
		if len(env) == 0 {
			time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
		} else {
			select { // killed by its hook
			case <-c.done:
			case <-time.After(30 * time.Second):
				t.Fatalf("round %d: child not killed at %s", round, points[round])
			}
		}
		c.kill(t)
		acked = append(acked, c.ids...)
		s, err := Open(ctx, dir, OpenOptions{})
		if err != nil {
			t.Fatalf("round %d: open after kill: %v", round, err)
		}
		verifyClean(t, s)
		for _, id := range acked {
			if _, err := s.Get(ctx, id); err != nil {
				t.Fatalf("round %d: acknowledged chunk lost: %v", round, err)
			}
		}
		st, _ := s.Stats(ctx)
		t.Logf("round %d (%q): %d acknowledged chunks, store %+v", round, env, len(acked), st)
		s.Close()
	}
	if len(acked) == 0 {
		t.Fatal("the child never acknowledged a batch")
	}
}

// deferPutChild is the child of TestCrashDuringDeferredPut: three PutMany
// calls, then an Update (the commit point), then "ok" with their IDs.
func deferPutChild(ctx context.Context, dir string) {
	s, err := Open(ctx, dir, OpenOptions{DeferSync: true, Command: "crash child deferput"})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	base, _ := strconv.ParseUint(os.Getenv("CHUNKSTORE_CRASH_BASE"), 10, 64)
	for b := uint64(0); ; b += 3 {
		var ids []string
		for k := range uint64(3) {
			cs := mkChunks(base+(b+k)*16, 16, 12000)
			if _, err := s.PutMany(ctx, cs); err != nil {
				fmt.Println("error", err)
				os.Exit(2)
			}
			for _, c := range cs {
				ids = append(ids, c.ID.String())
			}
		}
		key := []byte(fmt.Sprintf("batch-%d-%d", base, b))
		if err := s.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("user"), key, []byte("x")) }); err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		fmt.Println("ok " + strings.Join(ids, " "))
	}
}

// Commits of many packs each must not leave a copy of the chunk tree as
// free pages in the cache (indexAhead): the file stays close to what it
// holds.
func TestDeferSyncCacheGrowth(t *testing.T) {
	ctx := context.Background()
	s, dir := openDeferred(t, InitOptions{PackSize: 64 << 10, BlockSize: 1, Compression: "fastest"})
	for c := uint64(0); c < 8; c++ {
		if _, err := s.PutMany(ctx, mkChunks(1+c*1000, 1000, 600)); err != nil {
			t.Fatal(err)
		}
		k := []byte(strconv.FormatUint(c, 10))
		if err := s.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("user"), k, []byte("v")) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, "cache", "index.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var pages int64
	if err := db.View(func(tx *bolt.Tx) error { pages = tx.Size() / int64(db.Info().PageSize); return nil }); err != nil {
		t.Fatal(err)
	}
	st := db.Stats()
	if free := int64(st.FreePageN + st.PendingPageN); free*5 > pages {
		t.Fatalf("cache: %d of %d pages free, want at most a fifth", free, pages)
	}
}
