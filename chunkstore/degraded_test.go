package chunkstore

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/mem"
	"github.com/engram-vm/engram/chunkstore/blob/s3"
	"github.com/engram-vm/engram/chunkstore/blob/s3/s3test"
)

// degradedBackends are the blob stores the degraded-mode tests run on:
// memory, and the real S3 server of the TestS3* tests.
var degradedBackends = []struct {
	name string
	open func(t *testing.T) blob.Store
}{
	{"mem", func(t *testing.T) blob.Store { return mem.New() }},
	{"s3", func(t *testing.T) blob.Store {
		cfg := s3test.Config(t)
		cfg.Prefix = "store"
		bs, err := s3.Open(context.Background(), cfg, true)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { bs.Close() })
		return bs
	}},
}

// warnings collects a host's warnings.
type warnings struct {
	mu  sync.Mutex
	got []string
}

func (w *warnings) add(msg string) { w.mu.Lock(); w.got = append(w.got, msg); w.mu.Unlock() }

func (w *warnings) naming(name string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, m := range w.got {
		if strings.Contains(m, name) && strings.Contains(m, "engram repair") {
			n++
		}
	}
	return n
}

// warnHost opens a host on bs with a cache of its own and Warn set, as
// the CLI opens a bucket, on the clock clk.
func warnHost(t *testing.T, bs blob.Store, clk *fakeClock, w *warnings) *BlobStore {
	t.Helper()
	s, err := OpenBlob(context.Background(), nopClose{bs}, BlobOpenOptions{CacheRoot: t.TempDir(), Warn: w.add})
	if err != nil {
		t.Fatalf("open with a damaged object: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	s.clock = clk.now
	if err := s.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// damage replaces the object name by a garbled copy (objects are
// create-only, so delete, then put).
func damage(t *testing.T, bs blob.Store, name string) {
	t.Helper()
	ctx := context.Background()
	b, err := blob.ReadAll(ctx, bs, name, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := bs.Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := bs.Put(ctx, name, b); err != nil {
		t.Fatal(err)
	}
}

func putKey(t *testing.T, s *BlobStore, k string) error {
	t.Helper()
	return s.Update(context.Background(), func(tx MetaTx) error { return tx.Put([]byte("b"), []byte(k), []byte("v")) })
}

func hasKey(t *testing.T, s *BlobStore, k string) bool {
	var v []byte
	if err := s.View(context.Background(), func(tx MetaTx) error { v = tx.Get([]byte("b"), []byte(k)); return nil }); err != nil {
		t.Fatal(err)
	}
	return v != nil
}

// freshVerified opens a fresh host without Warn (as before this change)
// and verifies the store: repair left nothing a refresh must skip.
func freshVerified(t *testing.T, bs blob.Store) *BlobStore {
	t.Helper()
	s, err := OpenBlob(context.Background(), nopClose{bs}, BlobOpenOptions{CacheRoot: t.TempDir()})
	if err != nil {
		t.Fatalf("open after repair: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if st, err := s.Verify(context.Background(), func(p Problem) { t.Errorf("verify after repair: %v", p) }); err != nil || st.Problems > 0 {
		t.Fatalf("verify after repair: %+v %v", st, err)
	}
	return s
}

func listed(t *testing.T, bs blob.Store, prefix string) []string { return objects(t, bs, prefix) }

// A damaged index segment: a second host opens with one warning, reads
// what other packs hold, gets not-found for the pack's chunks and stores
// them again; gc neither marks nor sweeps that pack; verify names it;
// repair replaces it from the pack's copy and verify is clean after.
func TestBlobDegradedSegment(t *testing.T) {
	for _, be := range degradedBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			bs := be.open(t)
			initBlob(t, bs, InitOptions{})
			clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			a := gcHost(t, bs, clk)
			xs, ys := mkChunks(1, 4, 20000), mkChunks(100, 4, 20000)
			for _, cs := range [][]Chunk{xs, ys} {
				if _, err := a.PutMany(ctx, cs); err != nil {
					t.Fatal(err)
				}
			}
			if err := putKey(t, a, "rec"); err != nil {
				t.Fatal(err)
			}
			_, hx, _, err := a.lookup(ctx, xs[0].ID)
			if err != nil {
				t.Fatal(err)
			}
			damage(t, bs, indexObject(hx))

			var w warnings
			b := warnHost(t, bs, clk, &w)
			if n := w.naming(indexObject(hx)); n != 1 {
				t.Fatalf("warnings %q, want one naming %s", w.got, indexObject(hx))
			}
			if !hasKey(t, b, "rec") {
				t.Fatal("the catalog is missing on the degraded host")
			}
			if _, err := b.Get(ctx, ys[0].ID); err != nil {
				t.Fatalf("chunk of an intact pack: %v", err)
			}
			if _, err := b.Get(ctx, xs[0].ID); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), xs[0].ID.String()) {
				t.Fatalf("chunk of the skipped pack: %v, want not-found naming it", err)
			}
			if n, err := b.PutMany(ctx, xs); err != nil || n != len(xs) {
				t.Fatalf("put of the skipped pack's chunks = %d, %v; want them stored again", n, err)
			}
			if err := putKey(t, b, "rec2"); err != nil {
				t.Fatalf("commit on the degraded host: %v", err)
			}
			vst, err := b.Verify(ctx, nil)
			if err != nil || vst.Problems != 1 {
				t.Fatalf("verify on the degraded host = %+v, %v; want the damaged segment", vst, err)
			}
			// gc: two runs a margin apart; the pack must be neither in a
			// list nor gone.
			live := liveSet{}
			live.add(xs)
			live.add(ys)
			for i := 0; i < 2; i++ {
				if _, err := b.GC(ctx, live.fn, GCOptions{Margin: testMargin}); err != nil {
					t.Fatal(err)
				}
				clk.advance(2 * testMargin)
				if err := b.Refresh(ctx); err != nil {
					t.Fatal(err)
				}
			}
			for _, n := range listed(t, bs, gcPendingPrefix) {
				l, err := blob.ReadAll(ctx, bs, n, maxGCList)
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(string(l), hx.String()) {
					t.Fatalf("gc list %s names the pack whose segment was skipped: %s", n, l)
				}
			}
			if _, err := bs.Get(ctx, packObject(hx), 0, 1); err != nil {
				t.Fatalf("pack of the skipped segment after gc: %v", err)
			}
			rep, err := b.Repair(ctx)
			if err != nil {
				t.Fatalf("repair: %v", err)
			}
			if !slices.ContainsFunc(rep.Problems, func(p Problem) bool {
				return strings.HasSuffix(p.Pack, indexObject(hx)) && strings.Contains(p.Err.Error(), "replaced by the copy")
			}) {
				t.Fatalf("repair problems %v, want the segment replaced", rep.Problems)
			}
			c := freshVerified(t, bs)
			if _, err := c.Get(ctx, xs[0].ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A damaged journal entry: a second host opens with one warning and
// works without what the entry recorded; gc sweeps nothing while it is
// listed (a condemned pack stays); repair reports it and the catalog as
// lost, and RemoveDamagedJournal (after the caller's RecoverCatalog)
// removes it; verify is clean after.
func TestBlobDegradedJournal(t *testing.T) {
	for _, be := range degradedBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			bs := be.open(t)
			initBlob(t, bs, InitOptions{})
			clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			a := gcHost(t, bs, clk)
			dead := mkChunks(200, 4, 20000)
			if _, err := a.PutMany(ctx, dead); err != nil {
				t.Fatal(err)
			}
			if err := putKey(t, a, "lost"); err != nil {
				t.Fatal(err)
			}
			entries := listed(t, bs, blobMetaPrefix)
			if err := putKey(t, a, "kept"); err != nil {
				t.Fatal(err)
			}
			// Mark the dead pack (nothing live), then damage the first entry.
			if _, err := a.GC(ctx, liveSet{}.fn, GCOptions{Margin: testMargin}); err != nil {
				t.Fatal(err)
			}
			if len(listed(t, bs, gcPendingPrefix)) != 1 || len(entries) != 1 {
				t.Fatalf("setup: lists %v, entries %v", listed(t, bs, gcPendingPrefix), entries)
			}
			damage(t, bs, entries[0])
			clk.advance(2 * testMargin)

			var w warnings
			b := warnHost(t, bs, clk, &w)
			if n := w.naming(entries[0]); n != 1 {
				t.Fatalf("warnings %q, want one naming %s", w.got, entries[0])
			}
			if hasKey(t, b, "lost") || !hasKey(t, b, "kept") {
				t.Fatal("degraded host: want the damaged entry's key missing and the next one's present")
			}
			if err := putKey(t, b, "new"); err != nil {
				t.Fatalf("commit on the degraded host: %v", err)
			}
			if err := b.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			st, err := b.GC(ctx, liveSet{}.fn, GCOptions{Margin: testMargin})
			if err != nil {
				t.Fatal(err)
			}
			if st.PacksDeleted != 0 || len(listed(t, bs, blobPacksPrefix)) != 1 {
				t.Fatalf("gc with a skipped journal entry swept: %+v", st)
			}
			rep, err := b.Repair(ctx)
			if err != nil {
				t.Fatalf("repair: %v", err)
			}
			if !rep.MetadataLost || !slices.ContainsFunc(rep.Problems, func(p Problem) bool { return strings.HasSuffix(p.Pack, entries[0]) }) {
				t.Fatalf("repair = %+v, want the entry reported and MetadataLost", rep)
			}
			if _, err := bs.Get(ctx, entries[0], 0, 1); err != nil {
				t.Fatalf("repair removed the entry before the catalog was rebuilt: %v", err)
			}
			gone, err := b.RemoveDamagedJournal(ctx)
			if err != nil || len(gone) != 1 {
				t.Fatalf("RemoveDamagedJournal = %v, %v", gone, err)
			}
			c := freshVerified(t, bs)
			if !hasKey(t, c, "kept") || !hasKey(t, c, "new") {
				t.Fatal("catalog after repair lost intact entries")
			}
		})
	}
}

// A damaged pending gc list: a second host opens with one warning, but
// its commits are refused (it may have deduplicated against a pack the
// list condemned and a sweep took) and so is its gc; repair replaces the
// list by a done marker, a fresh view then commits, verify is clean.
func TestBlobDegradedGCList(t *testing.T) {
	for _, be := range degradedBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			bs := be.open(t)
			initBlob(t, bs, InitOptions{})
			clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			a := gcHost(t, bs, clk)
			dead := mkChunks(300, 4, 20000)
			if _, err := a.PutMany(ctx, dead); err != nil {
				t.Fatal(err)
			}
			if _, err := a.GC(ctx, liveSet{}.fn, GCOptions{Margin: testMargin}); err != nil {
				t.Fatal(err)
			}
			lists := listed(t, bs, gcPendingPrefix)
			if len(lists) != 1 {
				t.Fatalf("setup: lists %v", lists)
			}
			damage(t, bs, lists[0])

			var w warnings
			b := warnHost(t, bs, clk, &w)
			if n := w.naming(lists[0]); n != 1 {
				t.Fatalf("warnings %q, want one naming %s", w.got, lists[0])
			}
			// b cannot know the pack is condemned: it deduplicates against it.
			if n, err := b.PutMany(ctx, dead); err != nil || n != 0 {
				t.Fatalf("put = %d, %v", n, err)
			}
			clk.advance(2 * testMargin)
			err := putKey(t, b, "rec")
			if !errors.Is(err, ErrStaleView) || !errors.Is(err, ErrListDamaged) || !strings.Contains(err.Error(), lists[0]) {
				t.Fatalf("commit with a damaged gc list: %v, want refused naming it", err)
			}
			if _, err := b.GC(ctx, liveSet{}.fn, GCOptions{Margin: testMargin}); !errors.Is(err, ErrListDamaged) {
				t.Fatalf("gc with a damaged gc list: %v, want refused", err)
			}
			if _, err := bs.Get(ctx, packObject(mustPack(t, a, dead[0].ID)), 0, 1); err != nil {
				t.Fatalf("the condemned pack: %v", err)
			}
			rep, err := b.Repair(ctx)
			if err != nil {
				t.Fatalf("repair: %v", err)
			}
			if !slices.ContainsFunc(rep.Problems, func(p Problem) bool { return strings.HasSuffix(p.Pack, lists[0]) }) {
				t.Fatalf("repair problems %v, want the list", rep.Problems)
			}
			if len(listed(t, bs, gcPendingPrefix)) != 0 || len(listed(t, bs, gcDonePrefix)) != 1 {
				t.Fatalf("after repair: gc/ holds %v", listed(t, bs, blobGCPrefix))
			}
			c := freshVerified(t, bs)
			c.clock = clk.now
			if err := c.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			if n, err := c.PutMany(ctx, dead); err != nil || n != 0 {
				t.Fatalf("put after repair = %d, %v", n, err)
			}
			if err := putKey(t, c, "rec"); err != nil {
				t.Fatalf("commit of a fresh view after repair: %v", err)
			}
		})
	}
}

func mustPack(t *testing.T, s *BlobStore, id ID) ID {
	t.Helper()
	_, h, ok, err := s.lookup(context.Background(), id)
	if err != nil || !ok {
		t.Fatalf("lookup %s: %v %v", id.Short(), ok, err)
	}
	return h
}

// watchStore calls after once each write to an object has returned, so a
// test can look at the bucket between two steps of a repair. It forwards
// Replace (blob.Replace: atomic when the inner store is a Replacer).
type watchStore struct {
	blob.Store
	after func(op, name string)
}

func (w watchStore) Close() error { return nil }

func (w watchStore) Put(ctx context.Context, name string, data []byte) error {
	err := w.Store.Put(ctx, name, data)
	w.after("put", name)
	return err
}

func (w watchStore) Delete(ctx context.Context, name string) error {
	err := w.Store.Delete(ctx, name)
	w.after("delete", name)
	return err
}

func (w watchStore) Replace(ctx context.Context, name string, data []byte) error {
	err := blob.Replace(ctx, w.Store, name, data)
	w.after("replace", name)
	return err
}

// Repair puts back a damaged segment without a moment in which it is
// missing: a host that opens the bucket after any of repair's writes to
// index/H either still warns about the segment or knows the pack's chunks.
// (With delete, then put, a host listing in between saw no segment, no
// warning, and missed the chunks until its next refresh.)
func TestBlobDegradedSegmentRepairNoGap(t *testing.T) {
	for _, be := range degradedBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			bs := be.open(t)
			initBlob(t, bs, InitOptions{})
			clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			a := gcHost(t, bs, clk)
			xs := mkChunks(1, 4, 20000)
			if _, err := a.PutMany(ctx, xs); err != nil {
				t.Fatal(err)
			}
			_, hx, _, err := a.lookup(ctx, xs[0].ID)
			if err != nil {
				t.Fatal(err)
			}
			damage(t, bs, indexObject(hx))

			var ops []string
			watched := watchStore{Store: bs, after: func(op, name string) {
				if name != indexObject(hx) {
					return
				}
				ops = append(ops, op)
				var w warnings
				c := warnHost(t, bs, clk, &w)
				if ok, err := c.Has(ctx, xs[0].ID); err != nil {
					t.Fatal(err)
				} else if !ok && w.naming(indexObject(hx)) == 0 {
					t.Errorf("after repair's %s of %s, a fresh host neither knows the pack's chunks nor warns", op, indexObject(hx))
				}
			}}
			var w warnings
			r, err := OpenBlob(ctx, watched, BlobOpenOptions{CacheRoot: t.TempDir(), Warn: w.add})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			r.clock = clk.now
			if _, err := r.Repair(ctx); err != nil {
				t.Fatalf("repair: %v", err)
			}
			if len(ops) == 0 {
				t.Fatal("repair did not write the segment")
			}
			t.Logf("repair's writes to the segment: %v", ops)
			if _, err := freshVerified(t, bs).Get(ctx, xs[0].ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// openHostAt opens a host on bs with the cache under root and Warn set,
// on the clock clk: a new process on a host whose cache is root.
func openHostAt(t *testing.T, bs blob.Store, clk *fakeClock, w *warnings, root string) *BlobStore {
	t.Helper()
	s, err := OpenBlob(context.Background(), nopClose{bs}, BlobOpenOptions{CacheRoot: root, Warn: w.add})
	if err != nil {
		t.Fatalf("open with a damaged object: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	s.clock = clk.now
	if err := s.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// A damaged journal entry older than a refresh's lookback: a host that
// skipped it at its first (full) listing warns again in every later
// process, though their refreshes list only the last hour of meta/, and gc
// there still postpones; a host that applied the entry before the damage
// (its catalog has what the entry did) has verify name it.
func TestBlobDegradedJournalOld(t *testing.T) {
	for _, be := range degradedBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			bs := be.open(t)
			initBlob(t, bs, InitOptions{})
			clk := &fakeClock{t: time.Now()}
			a := gcHost(t, bs, clk)
			if err := putKey(t, a, "lost"); err != nil {
				t.Fatal(err)
			}
			entries := listed(t, bs, blobMetaPrefix)
			if len(entries) != 1 {
				t.Fatalf("setup: entries %v", entries)
			}
			c := gcHost(t, bs, clk) // applies the entry before the damage
			damage(t, bs, entries[0])

			root := t.TempDir()
			var w1 warnings
			b := openHostAt(t, bs, clk, &w1, root)
			if n := w1.naming(entries[0]); n != 1 {
				t.Fatalf("first open: warnings %q, want one naming %s", w1.got, entries[0])
			}
			clk.advance(2 * journalLookback)
			if err := putKey(t, a, "later"); err != nil {
				t.Fatal(err)
			}
			if err := b.Refresh(ctx); err != nil || !hasKey(t, b, "later") {
				t.Fatalf("refresh: %v", err)
			}
			b.Close()

			for i := 0; i < 2; i++ {
				var w warnings
				b = openHostAt(t, bs, clk, &w, root)
				if n := w.naming(entries[0]); n != 1 {
					t.Fatalf("open %d of the same cache: warnings %q, want one naming %s", i+2, w.got, entries[0])
				}
				if changed, err := b.catalogChangedSinceView(ctx); err != nil || !changed {
					t.Fatalf("gc would sweep with the entry unapplied: %v %v", changed, err)
				}
				b.Close()
			}
			var names []string
			if _, err := c.Verify(ctx, func(p Problem) { names = append(names, p.Pack) }); err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(names, func(n string) bool { return strings.HasSuffix(n, entries[0]) }) {
				t.Fatalf("verify on the host that applied the entry before the damage: problems %v, want %s", names, entries[0])
			}
			var w warnings
			b = openHostAt(t, bs, clk, &w, root)
			if _, err := b.Repair(ctx); err != nil {
				t.Fatal(err)
			}
			if gone, err := b.RemoveDamagedJournal(ctx); err != nil || len(gone) != 1 {
				t.Fatalf("RemoveDamagedJournal = %v, %v", gone, err)
			}
			b.Close()
			w = warnings{}
			b = openHostAt(t, bs, clk, &w, root)
			if len(w.got) != 0 {
				t.Fatalf("open after repair: warnings %q", w.got)
			}
			freshVerified(t, bs)
		})
	}
}

// Without BlobOpenOptions.Warn a damaged object that a refresh reads
// fails the open, as documented there: with a sentinel error naming the
// object and engram repair, so that a library caller that did not ask to
// work around damage never gets answers (not-found chunks, a catalog
// without records) that silently leave something out. With Warn the same
// bucket opens.
func TestBlobOpenWithoutWarnFails(t *testing.T) {
	for _, be := range degradedBackends {
		for _, kind := range []struct {
			prefix string
			want   error
		}{{blobIndexPrefix, ErrIndexDamaged}, {blobMetaPrefix, ErrJournalDamaged}, {gcPendingPrefix, ErrListDamaged}} {
			t.Run(be.name+"/"+strings.TrimSuffix(kind.prefix, "/"), func(t *testing.T) {
				ctx := context.Background()
				bs := be.open(t)
				initBlob(t, bs, InitOptions{})
				clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
				a := gcHost(t, bs, clk)
				if _, err := a.PutMany(ctx, mkChunks(400, 4, 20000)); err != nil {
					t.Fatal(err)
				}
				if err := putKey(t, a, "rec"); err != nil {
					t.Fatal(err)
				}
				if _, err := a.GC(ctx, liveSet{}.fn, GCOptions{Margin: testMargin}); err != nil {
					t.Fatal(err)
				}
				names := listed(t, bs, kind.prefix)
				if len(names) != 1 {
					t.Fatalf("setup: %v", names)
				}
				damage(t, bs, names[0])
				s, err := OpenBlob(ctx, nopClose{bs}, BlobOpenOptions{CacheRoot: t.TempDir()})
				if err == nil {
					s.Close()
					t.Fatal("open without Warn succeeded")
				}
				if !errors.Is(err, kind.want) || !strings.Contains(err.Error(), names[0]) || !strings.Contains(err.Error(), "engram repair") {
					t.Fatalf("open without Warn: %v, want %v naming %s and engram repair", err, kind.want, names[0])
				}
				var w warnings
				b := warnHost(t, bs, clk, &w)
				if w.naming(names[0]) != 1 {
					t.Fatalf("warnings %q", w.got)
				}
				if _, err := b.Repair(ctx); err != nil {
					t.Fatal(err)
				}
				if _, err := b.RemoveDamagedJournal(ctx); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}
