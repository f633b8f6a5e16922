package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/faulty"
	"github.com/engram-vm/engram/chunkstore/blob/mem"
	"github.com/engram-vm/engram/chunkstore/blob/s3"
	"github.com/engram-vm/engram/chunkstore/blob/s3/s3test"
)

func TestMain(m *testing.M) { s3test.Main(m) }

// newBlobHost opens the store in bs with a cache of its own, as another
// host would, and verifies it at cleanup.
func newBlobHost(t *testing.T, bs blob.Store) *BlobStore {
	t.Helper()
	s, err := OpenBlob(context.Background(), nopClose{bs}, BlobOpenOptions{CacheRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if st, err := s.Verify(context.Background(), func(p Problem) { t.Errorf("verify: %v", p) }); err != nil || st.Problems > 0 {
			t.Errorf("verify: %+v %v", st, err)
		}
		s.Close()
	})
	return s
}

// nopClose keeps a blob store shared by several BlobStores open.
type nopClose struct{ blob.Store }

func (nopClose) Close() error { return nil }

func initBlob(t *testing.T, bs blob.Store, opts InitOptions) {
	t.Helper()
	if err := InitBlob(context.Background(), bs, opts); err != nil {
		t.Fatal(err)
	}
}

func TestConformanceBlobStoreMem(t *testing.T) {
	runConformance(t, func(t *testing.T) testable {
		bs := mem.New()
		initBlob(t, bs, InitOptions{PackSize: 256 << 10, BlockSize: 64 << 10})
		return newBlobHost(t, bs)
	})
}

func TestConformanceBlobStoreS3(t *testing.T) {
	runConformance(t, func(t *testing.T) testable {
		cfg := s3test.Config(t)
		cfg.Prefix = "store"
		bs, err := s3.Open(context.Background(), cfg, true)
		if err != nil {
			t.Fatal(err)
		}
		initBlob(t, bs, InitOptions{PackSize: 256 << 10, BlockSize: 64 << 10})
		return newBlobHost(t, bs)
	})
}

// A second host (an empty cache) sees every chunk and all metadata the
// first wrote, and a refresh brings later writes in.
func TestBlobStoreSecondHost(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{PackSize: 128 << 10})
	a := newBlobHost(t, bs)
	cs := mkChunks(1, 30, 20000)
	if _, err := a.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	put := func(s *BlobStore, k, v string) {
		t.Helper()
		if err := s.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("b"), []byte(k), []byte(v)) }); err != nil {
			t.Fatal(err)
		}
	}
	get := func(s *BlobStore, k string) string {
		var v string
		_ = s.View(ctx, func(tx MetaTx) error { v = string(tx.Get([]byte("b"), []byte(k))); return nil })
		return v
	}
	put(a, "name", "one")
	b := newBlobHost(t, bs)
	for _, c := range cs {
		got, err := b.Get(ctx, c.ID)
		if err != nil || string(got) != string(c.Data) {
			t.Fatalf("host B Get %s: %v", c.ID.Short(), err)
		}
	}
	if v := get(b, "name"); v != "one" {
		t.Fatalf("host B sees name = %q", v)
	}
	// B stores the same chunks again: nothing new. Then both write.
	if n, err := b.PutMany(ctx, cs); err != nil || n != 0 {
		t.Fatalf("host B re-put = %d, %v", n, err)
	}
	put(b, "name", "two")
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if v := get(a, "name"); v != "two" {
		t.Fatalf("host A after refresh sees name = %q, want two", v)
	}
	if err := a.Update(ctx, func(tx MetaTx) error { return tx.Delete([]byte("b"), []byte("name")) }); err != nil {
		t.Fatal(err)
	}
	c := newBlobHost(t, bs)
	if v := get(c, "name"); v != "" {
		t.Fatalf("host C sees a removed name = %q", v)
	}
	sa, _ := a.Stats(ctx)
	sc, _ := c.Stats(ctx)
	if sa != sc || sa.Chunks != int64(len(cs)) {
		t.Fatalf("stats differ: A %+v, C %+v", sa, sc)
	}
}

// Two hosts storing the same chunks at once make duplicate packs; every
// cache picks the same copy (the pack with the smaller hash).
func TestBlobStoreDuplicateMerge(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	a, b := newBlobHost(t, bs), newBlobHost(t, bs)
	cs := mkChunks(1, 10, 10000)
	if _, err := a.PutMany(ctx, cs[:7]); err != nil {
		t.Fatal(err)
	}
	if _, err := b.PutMany(ctx, cs[3:]); err != nil { // b has not refreshed: 3..6 twice
		t.Fatal(err)
	}
	for _, s := range []*BlobStore{a, b} {
		if err := s.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	c := newBlobHost(t, bs)
	for _, c0 := range cs {
		var packs []string
		for _, s := range []*BlobStore{a, b, c} {
			_, h, ok, err := s.lookup(ctx, c0.ID)
			if err != nil || !ok {
				t.Fatalf("lookup %s: %v %v", c0.ID.Short(), ok, err)
			}
			packs = append(packs, h.Short())
		}
		if packs[0] != packs[1] || packs[1] != packs[2] {
			t.Fatalf("chunk %s: hosts disagree on its pack: %v", c0.ID.Short(), packs)
		}
	}
}

// Journal entries written concurrently (one sorts before one a cache has
// applied) make the cache rebuild its metadata into the state a fresh
// cache reaches.
func TestBlobStoreJournalOrder(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	a := newBlobHost(t, bs)
	if err := a.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("n"), []byte("x"), []byte("late")) }); err != nil {
		t.Fatal(err)
	}
	// Another host's entry, named earlier (its clock was 10 minutes
	// behind: within the refresh's lookback), setting the same key and
	// another one.
	body := []byte(`{"v":1,"ops":[{"op":"put","b":"bg==","k":"eA==","v":"ZWFybHk="},{"op":"put","b":"bg==","k":"eQ==","v":"eQ=="}]}`)
	tA, _ := parseJournalName(objects(t, bs, blobMetaPrefix)[0])
	if err := bs.Put(ctx, journalName(tA-int64(10*time.Minute), body), body); err != nil {
		t.Fatal(err)
	}
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	fresh := newBlobHost(t, bs)
	for _, s := range []*BlobStore{a, fresh} {
		_ = s.View(ctx, func(tx MetaTx) error {
			if x, y := string(tx.Get([]byte("n"), []byte("x"))), string(tx.Get([]byte("n"), []byte("y"))); x != "late" || y != "y" {
				t.Errorf("%s: x=%q y=%q, want late, y", s.cacheDir, x, y)
			}
			return nil
		})
	}
}

func TestBlobStoreNotAStore(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	if _, err := OpenBlob(ctx, bs, BlobOpenOptions{CacheRoot: t.TempDir()}); !errors.Is(err, ErrNotStore) || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty bucket: %v", err)
	}
	if err := bs.Put(ctx, "photos/cat.jpg", []byte("meow")); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	if _, err := OpenBlob(ctx, bs, BlobOpenOptions{CacheRoot: cache}); !errors.Is(err, ErrNotStore) {
		t.Fatalf("foreign bucket: %v", err)
	}
	if err := InitBlob(ctx, bs, InitOptions{}); !errors.Is(err, ErrNotStore) {
		t.Fatalf("init over foreign objects: %v", err)
	}
	if n := countObjects(t, bs); n != 1 {
		t.Fatalf("a refused init wrote something: %d objects", n)
	}
	bs2 := mem.New()
	initBlob(t, bs2, InitOptions{})
	if err := InitBlob(ctx, bs2, InitOptions{}); !errors.Is(err, ErrStoreExists) {
		t.Fatalf("second init: %v", err)
	}
	bs3 := mem.New()
	if err := bs3.Put(ctx, blobConfigName, []byte(`{"format":"something-else"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBlob(ctx, bs3, BlobOpenOptions{CacheRoot: cache}); !errors.Is(err, ErrNotStore) {
		t.Fatalf("foreign config.json: %v", err)
	}
	if err := InitBlob(ctx, bs3, InitOptions{}); !errors.Is(err, ErrNotStore) || errors.Is(err, ErrStoreExists) {
		t.Fatalf("init over a foreign config.json: %v, want not a store", err)
	}
}

func countObjects(t *testing.T, bs blob.Store) int {
	n := 0
	if err := bs.List(context.Background(), "", func(blob.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// A writer killed (or failing) at each step of PutMany loses nothing a
// reader relies on, and storing again completes.
func TestBlobStoreFaults(t *testing.T) {
	ctx := context.Background()
	for _, f := range []faulty.Fault{
		{Op: faulty.Put, Prefix: blobPacksPrefix, Times: 1},              // upload of the pack fails
		{Op: faulty.Put, Prefix: blobPacksPrefix, Times: 1, After: true}, // pack written, reply lost
		{Op: faulty.Put, Prefix: blobIndexPrefix, Times: 1},              // killed between pack and segment
		{Op: faulty.Put, Prefix: blobIndexPrefix, Times: 1, After: true}, // segment written, reply lost
		{Op: faulty.Put, Prefix: blobMetaPrefix, Times: 1},               // killed before the record
	} {
		t.Run(fmt.Sprintf("%s-%s-after=%v", f.Op, strings.TrimSuffix(f.Prefix, "/"), f.After), func(t *testing.T) {
			inner := mem.New()
			initBlob(t, inner, InitOptions{})
			fs := faulty.New(inner)
			s := newBlobHost(t, fs)
			cs := mkChunks(5, 8, 30000)
			fs.Add(f)
			_, err := s.PutMany(ctx, cs)
			if err == nil {
				err = s.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("r"), []byte("k"), []byte("v")) })
			}
			if !errors.Is(err, faulty.ErrInjected) {
				t.Fatalf("want the injected error, got %v", err)
			}
			// A fresh host sees nothing half-done.
			other := newBlobHost(t, inner)
			_ = other.View(ctx, func(tx MetaTx) error {
				if tx.Get([]byte("r"), []byte("k")) != nil {
					t.Error("a failed Update is visible")
				}
				return nil
			})
			// Again, without the fault: completes.
			if _, err := s.PutMany(ctx, cs); err != nil {
				t.Fatal(err)
			}
			if err := s.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("r"), []byte("k"), []byte("v")) }); err != nil {
				t.Fatal(err)
			}
			if err := other.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			for _, c := range cs {
				if _, err := other.Get(ctx, c.ID); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// A flipped byte in a pack object is named by Verify and by Get.
func TestBlobStoreRot(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	s, err := OpenBlob(ctx, bs, BlobOpenOptions{CacheRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cs := mkChunks(9, 4, 30000)
	if _, err := s.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	var pack string
	_ = bs.List(ctx, blobPacksPrefix, func(in blob.Info) error { pack = in.Name; return nil })
	if !bs.Corrupt(pack, packHeaderSize+100) {
		t.Fatal("corrupt failed")
	}
	var probs []Problem
	st, err := s.Verify(ctx, func(p Problem) { probs = append(probs, p) })
	if err != nil || st.Problems == 0 {
		t.Fatalf("Verify = %+v, %v: no problem found", st, err)
	}
	if !strings.Contains(probs[0].String(), pack) {
		t.Fatalf("problem does not name the pack: %v", probs[0])
	}
	if _, err := s.Get(ctx, cs[0].ID); !errors.Is(err, ErrCorruptChunk) {
		t.Fatalf("Get of a damaged chunk: %v", err)
	}
}

// A lost or foreign cache is rebuilt from the bucket.
func TestBlobStoreCacheRebuild(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	root := t.TempDir()
	s, err := OpenBlob(ctx, nopClose{bs}, BlobOpenOptions{CacheRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	cs := mkChunks(1, 5, 10000)
	if _, err := s.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	dir := s.CacheDir()
	s.Close()
	if err := removeAll(dir); err != nil {
		t.Fatal(err)
	}
	s = newBlobHost(t, bs)
	if st, _ := s.Stats(ctx); st.Chunks != 5 {
		t.Fatalf("rebuilt cache has %d chunks", st.Chunks)
	}
}

func removeAll(dir string) error { return os.RemoveAll(dir) }

// Repair gives a pack its segment back from the copy at its end, and
// records a damaged frame so every cache drops its chunks (which a later
// PutMany then stores again).
func TestBlobStoreRepair(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	initBlob(t, inner, InitOptions{BlockSize: 16 << 10})
	fs := faulty.New(inner)
	s, err := OpenBlob(ctx, nopClose{fs}, BlobOpenOptions{CacheRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, b := mkChunks(1, 6, 20000), mkChunks(50, 4, 20000)
	if _, err := s.PutMany(ctx, a); err != nil {
		t.Fatal(err)
	}
	fs.Add(faulty.Fault{Op: faulty.Put, Prefix: blobIndexPrefix, Times: 1})
	if _, err := s.PutMany(ctx, b); !errors.Is(err, faulty.ErrInjected) {
		t.Fatal(err)
	}
	// Damage the first frame of a's pack.
	var apack string
	for _, n := range objects(t, inner, blobPacksPrefix) {
		if _, err := inner.Get(ctx, indexObject(mustID(t, n[strings.LastIndexByte(n, '/')+1:])), 0, -1); err == nil {
			apack = n
		}
	}
	inner.Corrupt(apack, packHeaderSize+200)
	rep, err := s.Repair(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Added != int64(len(b)) || rep.BadFrames != 1 || rep.Dropped == 0 || rep.Dropped >= int64(len(a)) {
		t.Fatalf("repair = %+v", rep)
	}
	fresh := newBlobHostNoVerify(t, inner)
	for _, h := range []*BlobStore{s, fresh} {
		have, err := h.HasMany(ctx, ids(append(slices.Clone(a), b...)))
		if err != nil {
			t.Fatal(err)
		}
		lost := 0
		for _, ok := range have {
			if !ok {
				lost++
			}
		}
		if lost != int(rep.Dropped) {
			t.Fatalf("%d chunks missing after repair, report says %d dropped", lost, rep.Dropped)
		}
	}
	// Storing the lost chunks again makes the store whole.
	if n, err := s.PutMany(ctx, a); err != nil || n != int(rep.Dropped) {
		t.Fatalf("PutMany after repair = %d, %v; want %d", n, err, rep.Dropped)
	}
	for _, c := range a {
		if _, err := s.Get(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
	}
}

func newBlobHostNoVerify(t *testing.T, bs blob.Store) *BlobStore {
	t.Helper()
	s, err := OpenBlob(context.Background(), nopClose{bs}, BlobOpenOptions{CacheRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func ids(cs []Chunk) []ID {
	out := make([]ID, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}

func mustID(t *testing.T, s string) ID {
	id, err := ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// A refresh lists meta/ from a lookback before the newest entry it applied
// (StartAfter): an entry named further back (a clock more than the
// lookback behind) is seen by a new cache at once, and by an old cache at
// its next full listing.
func TestBlobStoreJournalListAfter(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	a := gcHost(t, bs, clk)
	for i := range 5 {
		if err := a.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("n"), []byte{byte(i)}, []byte("v")) }); err != nil {
			t.Fatal(err)
		}
	}
	clk.advance(3 * journalLookback)
	if err := a.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("n"), []byte("new"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	// What a partial listing covers: the newest entry's lookback.
	names, full, err := a.listJournal(ctx, false)
	if err != nil || full || len(names) != 1 {
		t.Fatalf("listJournal = %v, full %v, %v; want the one entry within the lookback", names, full, err)
	}
	body := []byte(`{"v":1,"ops":[{"op":"put","b":"bg==","k":"b2xk","v":"dg=="}]}`)
	if err := bs.Put(ctx, journalName(1, body), body); err != nil {
		t.Fatal(err)
	}
	has := func(s *BlobStore) bool {
		var ok bool
		_ = s.View(ctx, func(tx MetaTx) error { ok = tx.Get([]byte("n"), []byte("old")) != nil; return nil })
		return ok
	}
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if has(a) {
		t.Fatal("a partial listing saw an entry named before its lookback")
	}
	if !has(gcHost(t, bs, clk)) {
		t.Fatal("a new cache missed an entry")
	}
	clk.advance(journalFullEvery)
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if !has(a) {
		t.Fatal("the full listing missed an entry")
	}
}
