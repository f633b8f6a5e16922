package chunkstore

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/faulty"
	"github.com/engram-vm/engram/chunkstore/blob/mem"
)

// fakeClock is the time every host in a test sees; tests move it.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Microsecond) // strictly increasing, like a real clock
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// gcHost opens a host on bs whose clock is clk (refreshing with it).
func gcHost(t *testing.T, bs blob.Store, clk *fakeClock) *BlobStore {
	t.Helper()
	s := newBlobHost(t, bs)
	s.clock = clk.now
	if err := s.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// liveSet is the live function of a test: the chunks "recorded" so far.
type liveSet map[ID]bool

func (l liveSet) fn(id ID) bool { return l[id] }

func (l liveSet) add(cs []Chunk) {
	for _, c := range cs {
		l[c.ID] = true
	}
}

func objects(t *testing.T, bs blob.Store, prefix string) []string {
	t.Helper()
	var out []string
	if err := bs.List(context.Background(), prefix, func(in blob.Info) error { out = append(out, in.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

const testMargin = time.Hour

// A dead pack is condemned by one gc and deleted by the next one after
// the margin; live chunks are untouched; nothing is deleted before.
func TestBlobGCTwoPhases(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	s := gcHost(t, bs, clk)
	keep, drop := mkChunks(1, 5, 20000), mkChunks(100, 5, 20000)
	if _, err := s.PutMany(ctx, keep); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutMany(ctx, drop); err != nil {
		t.Fatal(err)
	}
	live := liveSet{}
	live.add(keep)
	opts := GCOptions{Margin: testMargin}
	st, err := s.GC(ctx, live.fn, opts)
	if err != nil || st.PacksDeleted != 0 {
		t.Fatalf("first gc = %+v, %v; want nothing deleted", st, err)
	}
	if n := len(objects(t, bs, blobPacksPrefix)); n != 2 {
		t.Fatalf("first gc deleted a pack: %d left", n)
	}
	if n := len(objects(t, bs, gcPendingPrefix)); n != 1 {
		t.Fatalf("%d pending lists, want 1", n)
	}
	// Within the margin: still nothing deleted.
	clk.advance(testMargin / 2)
	if err := s.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := s.GC(ctx, live.fn, opts); err != nil || st.PacksDeleted != 0 {
		t.Fatalf("gc within the margin = %+v, %v", st, err)
	}
	clk.advance(testMargin)
	if err := s.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	st, err = s.GC(ctx, live.fn, opts)
	if err != nil || st.PacksDeleted != 1 {
		t.Fatalf("gc after the margin = %+v, %v; want 1 pack deleted", st, err)
	}
	if n := len(objects(t, bs, blobPacksPrefix)); n != 1 {
		t.Fatalf("%d packs left, want 1", n)
	}
	if n := len(objects(t, bs, gcPendingPrefix)); n != 0 {
		t.Fatalf("%d pending lists left", n)
	}
	for _, h := range []*BlobStore{s, gcHost(t, bs, clk)} {
		for _, c := range keep {
			if _, err := h.Get(ctx, c.ID); err != nil {
				t.Fatal(err)
			}
		}
		if ok, _ := h.Has(ctx, drop[0].ID); ok {
			t.Fatal("a swept chunk is still indexed")
		}
	}
	if _, err := bs.Get(ctx, gcLeaseName, 0, -1); !errors.Is(err, blob.ErrNotExist) {
		t.Fatalf("lease left behind: %v", err)
	}
}

// A writer that opens after the mark does not deduplicate against a
// condemned chunk: it stores it again, so the sweep cannot take it away.
func TestBlobGCWriterAfterMark(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	g := gcHost(t, bs, clk)
	cs := mkChunks(1, 5, 20000)
	if _, err := g.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	live := liveSet{}
	if _, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin}); err != nil { // condemns the pack
		t.Fatal(err)
	}
	w := gcHost(t, bs, clk)
	if n, err := w.PutMany(ctx, cs); err != nil || n != 0 {
		// Already indexed (in the condemned pack): not "added", but stored.
		t.Fatalf("PutMany = %d, %v", n, err)
	}
	if n := len(objects(t, bs, blobPacksPrefix)); n != 2 {
		t.Fatalf("the writer did not store the condemned chunks again: %d packs", n)
	}
	if err := w.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("r"), []byte("k"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	live.add(cs)
	clk.advance(2 * testMargin)
	if err := g.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin})
	if err != nil || st.PacksDeleted != 1 {
		t.Fatalf("sweep = %+v, %v; want the condemned copy deleted", st, err)
	}
	for _, h := range []*BlobStore{w, gcHost(t, bs, clk)} {
		for _, c := range cs {
			if _, err := h.Get(ctx, c.ID); err != nil {
				t.Fatalf("after the sweep: %v", err)
			}
		}
	}
}

// A writer whose view predates the mark may commit within the margin (the
// sweep then sees its record) and must not after it.
func TestBlobGCWriterBeforeMark(t *testing.T) {
	ctx := context.Background()
	for _, late := range []bool{false, true} {
		clk := &fakeClock{t: time.Unix(1e9, 0)}
		bs := mem.New()
		initBlob(t, bs, InitOptions{})
		w := gcHost(t, bs, clk)
		cs := mkChunks(1, 5, 20000)
		if _, err := w.PutMany(ctx, cs); err != nil {
			t.Fatal(err)
		}
		g := gcHost(t, bs, clk)
		live := liveSet{}
		if _, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin}); err != nil { // w's pack: not live yet
			t.Fatal(err)
		}
		if late {
			clk.advance(2 * testMargin)
		}
		err := w.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("r"), []byte("k"), []byte("v")) })
		if late {
			if !errors.Is(err, ErrStaleView) {
				t.Fatalf("a commit after the margin: %v, want ErrStaleView", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("a commit within the margin: %v", err)
		}
		live.add(cs)
		clk.advance(2 * testMargin)
		if err := g.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if st, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin}); err != nil || st.PacksDeleted != 0 {
			t.Fatalf("sweep = %+v, %v; want the reprieved pack kept", st, err)
		}
		for _, c := range cs {
			if _, err := gcHost(t, bs, clk).Get(ctx, c.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// One gc at a time; a lease left by a killed gc goes stale.
func TestBlobGCLease(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	s := gcHost(t, bs, clk)
	body := []byte(`{"host":"elsewhere","pid":1,"time_ns":` + itoa(clk.now().UnixNano()) + `}`)
	if err := bs.Put(ctx, gcLeaseName, body); err != nil {
		t.Fatal(err)
	}
	_, err := s.GC(ctx, liveSet{}.fn, GCOptions{Margin: testMargin, LeaseTimeout: time.Hour})
	if !errors.Is(err, ErrGCRunning) || !strings.Contains(err.Error(), "elsewhere") {
		t.Fatalf("gc beside another: %v", err)
	}
	clk.advance(2 * time.Hour)
	if _, err := s.GC(ctx, liveSet{}.fn, GCOptions{Margin: testMargin, LeaseTimeout: time.Hour}); err != nil {
		t.Fatalf("gc after a stale lease: %v", err)
	}
}

// A pack whose segment never arrived (writer killed between the two) is
// swept after the margin.
func TestBlobGCOrphanPack(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	inner := mem.New()
	initBlob(t, inner, InitOptions{})
	fs := faulty.New(inner)
	s := gcHost(t, fs, clk)
	fs.Add(faulty.Fault{Op: faulty.Put, Prefix: blobIndexPrefix, Times: 1})
	if _, err := s.PutMany(ctx, mkChunks(1, 3, 10000)); !errors.Is(err, faulty.ErrInjected) {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := s.GC(ctx, liveSet{}.fn, GCOptions{Margin: testMargin}); err != nil {
			t.Fatal(err)
		}
		clk.advance(2 * testMargin)
		if err := s.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(objects(t, inner, blobPacksPrefix)); n != 0 {
		t.Fatalf("orphan pack not swept: %d packs", n)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// A record committed after gc's view (so not in its live set) postpones
// the sweep: nothing is deleted that the record may need.
func TestBlobGCCommitAfterView(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	w := gcHost(t, bs, clk)
	cs := mkChunks(1, 5, 20000)
	if _, err := w.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	g := gcHost(t, bs, clk)
	if _, err := g.GC(ctx, liveSet{}.fn, GCOptions{Margin: testMargin}); err != nil {
		t.Fatal(err)
	}
	clk.advance(testMargin / 2)
	if err := w.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("r"), []byte("k"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	// g's view is older than the record but its clock is past the margin.
	g.viewTime.Store(clk.now().Add(testMargin).UnixNano())
	if st, err := g.GC(ctx, liveSet{}.fn, GCOptions{Margin: testMargin}); err != nil || st.PacksDeleted != 0 {
		t.Fatalf("gc with a view older than a record = %+v, %v; want the sweep postponed", st, err)
	}
	if n := len(objects(t, bs, blobPacksPrefix)); n != 1 {
		t.Fatalf("%d packs, want 1", n)
	}
}

// orphanRace is the setting of the TestBlobGCOrphanSegment tests: a writer
// on a faulty wrapper of the bucket whose first segment PUT runs stall
// first (gc working meanwhile, round: one gc run that knows no record, then
// the clock a margin and a half on), then between (after the writer's
// PutMany), then the writer's commit of a record of cs, which is refused
// (its view predates a due gc list) and redone the way a caller would:
// refresh, put the chunks again, commit. Every chunk of the record must
// read back from a fresh host, also after more gc runs that know it.
func orphanRace(t *testing.T, stall, between func(g *BlobStore, round func())) {
	t.Helper()
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	inner := mem.New()
	initBlob(t, inner, InitOptions{})
	fs := faulty.New(inner)
	w := gcHost(t, fs, clk)
	g := gcHost(t, inner, clk)
	cs := mkChunks(1, 5, 20000)
	gc := func() {
		t.Helper()
		if err := g.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		live, _ := recordedChunks(t, g)
		if _, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin}); err != nil {
			t.Fatal(err)
		}
		clk.advance(testMargin * 3 / 2)
	}
	// The segment PUT goes through after stall (ErrExist: success).
	fs.Add(faulty.Fault{Op: faulty.Put, Prefix: blobIndexPrefix, Times: 1, After: true, Err: blob.ErrExist,
		Hook: func(string) error { stall(g, gc); return nil }})
	commit := func() error {
		return w.Update(ctx, func(tx MetaTx) error {
			var v []byte
			for _, c := range cs {
				v = append(v, c.ID[:]...)
			}
			return tx.Put(recBucket, []byte("r"), v)
		})
	}
	if _, err := w.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	between(g, gc)
	if err := commit(); !errors.Is(err, ErrStaleView) {
		t.Fatalf("commit of a view older than a due gc list = %v, want ErrStaleView", err)
	}
	if err := w.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := w.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	if err := commit(); err != nil {
		t.Fatal(err)
	}
	for round := 0; ; round++ {
		fresh := gcHost(t, inner, clk)
		for _, c := range cs {
			if _, err := fresh.Get(ctx, c.ID); err != nil {
				t.Fatalf("after %d more gc runs: the committed record's chunk: %v", round, err)
			}
		}
		if round == 3 {
			return
		}
		gc()
	}
}

// A writer stalls between its pack and its segment while gc marks the
// pack as an orphan (no segment yet) and, past the margin, sweeps it; the
// segment lands after the sweep. The writer's commit is refused, but its
// retry (as would any fresh view) indexed the segment and deduplicated
// against a pack that was gone: the record lost its chunks (the bug behind
// TestBlobGCRewriteDuringWrites' "not found" and "left in place"). The
// writer now puts the pack again.
func TestBlobGCOrphanSegmentAfterSweep(t *testing.T) {
	orphanRace(t, func(_ *BlobStore, gc func()) {
		gc() // marks the pack: an orphan
		gc() // sweeps it
	}, func(*BlobStore, func()) {})
}

// The segment lands after the sweeping gc's view listed index/ but before
// its sweep: the sweep looks again before it deletes an orphan.
func TestBlobGCOrphanSegmentBeforeSweep(t *testing.T) {
	ctx := context.Background()
	orphanRace(t, func(g *BlobStore, gc func()) {
		gc() // marks the pack: an orphan
		if err := g.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}, func(g *BlobStore, _ func()) {
		// The sweep, on the view from before the segment.
		if _, err := g.GC(ctx, liveSet{}.fn, GCOptions{Margin: testMargin}); err != nil {
			t.Fatal(err)
		}
	})
}

// betweenLists runs a hook once, when a refresh lists the second of
// gc/ and index/ (after the first).
type betweenLists struct {
	blob.Store
	mu    sync.Mutex
	first string
	hook  func()
}

func (b *betweenLists) List(ctx context.Context, prefix string, fn func(blob.Info) error) error {
	var hook func()
	if prefix == blobGCPrefix || prefix == blobIndexPrefix {
		b.mu.Lock()
		if b.hook != nil {
			if b.first == "" {
				b.first = prefix
			} else if b.first != prefix {
				hook, b.hook = b.hook, nil
			}
		}
		b.mu.Unlock()
	}
	if hook != nil {
		hook()
	}
	return b.Store.List(ctx, prefix, fn)
}

// A sweep that runs while a writer's refresh is between its listing of
// index/ and its listing of gc/: the refresh indexed the swept pack and
// saw its list only as a done marker (which names no packs), so the pack
// was not condemned in its view; the writer deduplicated against it and,
// its view being newer than the mark, passed the commit check: the record
// lost its chunks ("not found", TestBlobGCRewriteDuringWrites). A refresh
// now lists gc/ before index/.
func TestBlobGCSweepDuringRefresh(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	inner := mem.New()
	initBlob(t, inner, InitOptions{})
	hooked := &betweenLists{Store: inner}
	w := gcHost(t, hooked, clk)
	g := gcHost(t, inner, clk)
	cs := mkChunks(1, 5, 20000)
	if _, err := w.PutMany(ctx, cs); err != nil { // no record yet: dead
		t.Fatal(err)
	}
	gc := func() {
		t.Helper()
		if err := g.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := g.GC(ctx, liveSet{}.fn, GCOptions{Margin: testMargin}); err != nil {
			t.Fatal(err)
		}
		clk.advance(testMargin * 3 / 2)
	}
	gc() // marks the pack
	// The writer's refresh, with the sweep between its two listings.
	hooked.mu.Lock()
	hooked.hook = gc
	hooked.mu.Unlock()
	if err := w.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if hooked.hook != nil {
		t.Fatal("the refresh did not list both gc/ and index/")
	}
	if _, err := w.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	err := w.Update(ctx, func(tx MetaTx) error {
		var v []byte
		for _, c := range cs {
			v = append(v, c.ID[:]...)
		}
		return tx.Put(recBucket, []byte("r"), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	fresh := gcHost(t, inner, clk)
	for _, c := range cs {
		if _, err := fresh.Get(ctx, c.ID); err != nil {
			t.Fatalf("the committed record's chunk: %v", err)
		}
	}
}

// hookOnce runs a hook once, before the first Put or Delete of a name
// with its prefix (then the operation runs as usual).
type hookOnce struct {
	blob.Store
	mu     sync.Mutex
	op     faulty.Op // faulty.Put, faulty.Delete or faulty.Get
	prefix string
	hook   func()
}

func (h *hookOnce) take(op faulty.Op, name string) {
	h.mu.Lock()
	var hook func()
	if h.hook != nil && h.op == op && strings.HasPrefix(name, h.prefix) {
		hook, h.hook = h.hook, nil
	}
	h.mu.Unlock()
	if hook != nil {
		hook()
	}
}

func (h *hookOnce) set(op faulty.Op, prefix string, hook func()) {
	h.mu.Lock()
	h.op, h.prefix, h.hook = op, prefix, hook
	h.mu.Unlock()
}

func (h *hookOnce) Put(ctx context.Context, name string, data []byte) error {
	h.take(faulty.Put, name)
	return h.Store.Put(ctx, name, data)
}

func (h *hookOnce) Delete(ctx context.Context, name string) error {
	h.take(faulty.Delete, name)
	return h.Store.Delete(ctx, name)
}

func (h *hookOnce) Get(ctx context.Context, name string, off, length int64) ([]byte, error) {
	h.take(faulty.Get, name)
	return h.Store.Get(ctx, name, off, length)
}

// A writer's refresh starts after gc took its mark's time but lists gc/
// before the list is put: its view does not condemn the list's pack P,
// though the list's time precedes the view, so only "the view did not
// list it" makes the commit check count it as newer than the view. The
// writer commits a record within the margin (its check lists gc/ and
// learns the list), then deduplicates against P's chunks, still live in
// its index, and commits a second record, without a refresh, while a
// sweep past the margin (whose view predates that record) deletes P. The
// check took its "seen" lists from the cache, which the first check had
// updated, so it passed, and the record lost its chunks. The check now
// compares with the lists the view's refresh listed (viewGC): the second
// commit is refused, and its retry (refresh, put, commit) stores the
// chunks again.
func TestBlobGCListLearntByCommit(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	inner := mem.New()
	initBlob(t, inner, InitOptions{})
	hooked := &hookOnce{Store: inner}
	g := gcHost(t, hooked, clk)
	w := gcHost(t, inner, clk)
	cs := mkChunks(1, 5, 20000) // P's chunks: no record, dead at the mark
	if _, err := w.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	commit := func(key string, chunks []Chunk) error {
		return w.Update(ctx, func(tx MetaTx) error {
			var v []byte
			for _, c := range chunks {
				v = append(v, c.ID[:]...)
			}
			return tx.Put(recBucket, []byte(key), v)
		})
	}
	gc := func() {
		t.Helper()
		if err := g.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		live, _ := recordedChunks(t, g)
		if _, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin}); err != nil {
			t.Fatal(err)
		}
	}
	// The mark, with the writer's refresh between its time and its PUT.
	hooked.set(faulty.Put, gcPendingPrefix, func() {
		if err := w.Refresh(ctx); err != nil {
			t.Error(err)
		}
	})
	gc()
	if hooked.hook != nil || len(objects(t, inner, gcPendingPrefix)) != 1 {
		t.Fatal("gc put no pending list")
	}
	if dd, err := w.HasForDedup(ctx, chunkIDs(cs)); err != nil || !dd[0] {
		t.Fatalf("the view condemns P already (%v, %v): not the interleaving", dd, err)
	}
	// Record 1, within the margin: its check learns the list.
	clk.advance(testMargin / 2)
	other := mkChunks(100, 2, 20000)
	if _, err := w.PutMany(ctx, other); err != nil {
		t.Fatal(err)
	}
	if err := commit("r1", other); err != nil {
		t.Fatalf("record 1, within the margin: %v", err)
	}
	// The writer's index still has P's chunks, not condemned: it
	// deduplicates against them.
	packs := len(objects(t, inner, blobPacksPrefix))
	if _, err := w.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	if n := len(objects(t, inner, blobPacksPrefix)); n != packs {
		t.Fatalf("the writer stored P's chunks again (%d packs, was %d): not the interleaving", n, packs)
	}
	// Past the margin, record 2 is committed during the sweep of P (after
	// the sweeping gc looked at meta/).
	clk.advance(testMargin)
	var err2 error
	hooked.set(faulty.Delete, blobIndexPrefix, func() { err2 = commit("r2", cs) })
	gc()
	if hooked.hook != nil {
		t.Fatal("the sweep deleted no segment")
	}
	if !errors.Is(err2, ErrStaleView) {
		t.Errorf("record 2 (deduplicated on a view that did not condemn P, committed past the list's margin) = %v, want ErrStaleView", err2)
	}
	check := func(when string) {
		t.Helper()
		fresh := gcHost(t, inner, clk)
		live, keys := recordedChunks(t, fresh)
		for id := range live {
			if _, err := fresh.Get(ctx, id); err != nil {
				t.Fatalf("%s: a chunk of a committed record (%d records): %v", when, len(keys), err)
			}
		}
	}
	check("after the sweep")
	if err2 != nil { // the retry a caller does
		if err := w.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := w.PutMany(ctx, cs); err != nil {
			t.Fatal(err)
		}
		if err := commit("r2", cs); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		clk.advance(testMargin * 3 / 2)
		gc()
	}
	check("after two more gc runs")
}

// A writer deduplicates against a pack a gc has just condemned (its view
// predates the list), then a refresh in its process (a read of a chunk
// whose pack is gone does one) gives it a view that knows the list. Its commit, past the list's margin
// and after the sweep, must still be refused: the decisions were taken
// on the older view (dedupView).
func TestBlobGCListLearntByRead(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	inner := mem.New()
	initBlob(t, inner, InitOptions{})
	g := gcHost(t, inner, clk)
	p := gcHost(t, inner, clk)
	cs := mkChunks(1, 5, 20000) // pack P: no record, dead at the mark
	if _, err := p.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	w := gcHost(t, inner, clk) // knows P, not its condemnation
	commit := func(s *BlobStore, key string, chunks []Chunk) error {
		return s.Update(ctx, func(tx MetaTx) error {
			var v []byte
			for _, c := range chunks {
				v = append(v, c.ID[:]...)
			}
			return tx.Put(recBucket, []byte(key), v)
		})
	}
	gc := func() {
		t.Helper()
		if err := g.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		live, _ := recordedChunks(t, g)
		if _, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin}); err != nil {
			t.Fatal(err)
		}
	}
	gc() // marks P
	if len(objects(t, inner, gcPendingPrefix)) != 1 {
		t.Fatal("gc put no pending list")
	}
	packs := len(objects(t, inner, blobPacksPrefix))
	if _, err := w.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	if n := len(objects(t, inner, blobPacksPrefix)); n != packs {
		t.Fatalf("the writer stored P's chunks again (%d packs, was %d): not the interleaving", n, packs)
	}
	// A refresh in the writer's process before its commit: a Get or
	// GetMany whose pack another gc deleted does one (as do Verify and
	// Stats). The view now holds gc's list.
	if err := w.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if dd, err := w.HasForDedup(ctx, chunkIDs(cs)); err != nil || dd[0] {
		t.Fatalf("after the read's refresh the view still deduplicates against P (%v, %v): not the interleaving", dd, err)
	}
	clk.advance(testMargin * 3 / 2)
	gc() // sweeps P
	if err := commit(w, "w", cs); !errors.Is(err, ErrStaleView) {
		t.Fatalf("commit of chunks deduplicated on a view that did not condemn P, past the list's margin = %v, want ErrStaleView", err)
	}
	// The retry a caller does: its chunks stored anew, then committed.
	if _, err := w.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	if err := commit(w, "w", cs); err != nil {
		t.Fatal(err)
	}
	fresh := gcHost(t, inner, clk)
	live, keys := recordedChunks(t, fresh)
	for id := range live {
		if _, err := fresh.Get(ctx, id); err != nil {
			t.Fatalf("a chunk of a committed record (%d records): %v", len(keys), err)
		}
	}
}

// A writer deduplicates against pack P on a view older than the gc list
// that condemns P, and commits past the list's margin while a sweep of P
// runs: its commit check lists gc/ before the sweep and reads the pending
// list after it, when the list is gone (replaced by its done marker, which
// the listing missed). The check skipped a list gone since its listing,
// so it saw no list newer than the view, passed, and the record named
// P's swept chunks (TestBlobGCRewriteDuringWrites, about 1 run in 50
// under -race). It now reads the done marker in its place, and refuses.
func TestBlobGCSweepDuringCommitCheck(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	inner := mem.New()
	initBlob(t, inner, InitOptions{})
	g := gcHost(t, inner, clk)
	p := gcHost(t, inner, clk)
	cs := mkChunks(1, 5, 20000) // pack P: no record, dead at the mark
	if _, err := p.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	hooked := &hookOnce{Store: inner}
	w := gcHost(t, hooked, clk) // knows P, not its condemnation
	gc := func() {
		t.Helper()
		if err := g.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		live, _ := recordedChunks(t, g)
		if _, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin}); err != nil {
			t.Fatal(err)
		}
	}
	gc() // marks P
	if len(objects(t, inner, gcPendingPrefix)) != 1 {
		t.Fatal("gc put no pending list")
	}
	packs := len(objects(t, inner, blobPacksPrefix))
	if _, err := w.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	if n := len(objects(t, inner, blobPacksPrefix)); n != packs {
		t.Fatalf("the writer stored P's chunks again (%d packs, was %d): not the interleaving", n, packs)
	}
	clk.advance(testMargin * 3 / 2)
	// The sweep runs between the check's listing of gc/ and its read of
	// the pending list.
	hooked.set(faulty.Get, gcPendingPrefix, gc)
	err := w.Update(ctx, func(tx MetaTx) error {
		var v []byte
		for _, c := range cs {
			v = append(v, c.ID[:]...)
		}
		return tx.Put(recBucket, []byte("w"), v)
	})
	if len(objects(t, inner, gcPendingPrefix)) != 0 || len(objects(t, inner, gcDonePrefix)) != 1 {
		t.Fatal("the sweep did not run during the commit check: not the interleaving")
	}
	if !errors.Is(err, ErrStaleView) {
		t.Fatalf("commit of chunks deduplicated against P, checked while a sweep deleted P = %v, want ErrStaleView", err)
	}
	fresh := gcHost(t, inner, clk)
	live, keys := recordedChunks(t, fresh)
	for id := range live {
		if _, err := fresh.Get(ctx, id); err != nil {
			t.Fatalf("a chunk of a committed record (%d records): %v", len(keys), err)
		}
	}
}

// A gc that runs for longer than the lease timeout keeps its lease by its
// beats: another gc meanwhile is refused, and once the first is done the
// lease and its beats are gone and the next gc runs. The clock is fake;
// the beats come from a real ticker, which the test waits for.
func TestBlobGCLeaseBeats(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	inner := mem.New()
	initBlob(t, inner, InitOptions{})
	hooked := &hookOnce{Store: inner}
	g1 := gcHost(t, hooked, clk)
	g2 := gcHost(t, inner, clk)
	if _, err := g1.PutMany(ctx, mkChunks(1, 3, 20000)); err != nil { // dead: gc marks their pack
		t.Fatal(err)
	}
	const timeout = 40 * time.Millisecond // beats every 10 ms of real time
	opts := GCOptions{Margin: testMargin, LeaseTimeout: timeout}
	var err2 error
	hooked.set(faulty.Put, gcPendingPrefix, func() {
		// The first gc's mark, stalled past the timeout: the lease is
		// stale by its own time; wait for a beat after it.
		clk.advance(10 * timeout)
		now := clk.now().UnixNano()
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
			var beat bool
			for _, n := range objects(t, inner, gcBeatPrefix) {
				if v, ok := parseBeatName(n); ok && v >= now {
					beat = true
				}
			}
			if beat {
				break
			}
			if time.Now().After(deadline) {
				t.Error("no beat within a minute")
				return
			}
		}
		if err := g2.Refresh(ctx); err != nil {
			t.Error(err)
		}
		_, err2 = g2.GC(ctx, liveSet{}.fn, opts)
	})
	if _, err := g1.GC(ctx, liveSet{}.fn, opts); err != nil {
		t.Fatal(err)
	}
	if hooked.hook != nil {
		t.Fatal("the first gc put no pending list")
	}
	if !errors.Is(err2, ErrGCRunning) {
		t.Fatalf("a second gc while the first (past the lease timeout, beating) runs = %v, want ErrGCRunning", err2)
	}
	if n := len(objects(t, inner, gcLeaseName)) + len(objects(t, inner, gcBeatPrefix)); n != 0 {
		t.Fatalf("%d lease objects left after the gc", n)
	}
	if _, err := g2.GC(ctx, liveSet{}.fn, opts); err != nil {
		t.Fatalf("the next gc: %v", err)
	}
	// A killed gc's lease and beats: stale once its newest beat is.
	if err := inner.Put(ctx, gcLeaseName, []byte(`{"host":"h","pid":1,"time_ns":`+strconv.FormatInt(clk.now().UnixNano(), 10)+`}`)); err != nil {
		t.Fatal(err)
	}
	clk.advance(timeout / 2)
	if err := inner.Put(ctx, beatName(clk.now().UnixNano()), nil); err != nil {
		t.Fatal(err)
	}
	clk.advance(timeout * 3 / 4) // the lease stale by its time, not by its beat
	if _, err := g2.GC(ctx, liveSet{}.fn, opts); !errors.Is(err, ErrGCRunning) {
		t.Fatalf("gc beside a lease with a fresh beat = %v, want ErrGCRunning", err)
	}
	clk.advance(timeout)
	if _, err := g2.GC(ctx, liveSet{}.fn, opts); err != nil {
		t.Fatalf("gc beside a stale lease and beat: %v", err)
	}
	if n := len(objects(t, inner, gcLeaseName)) + len(objects(t, inner, gcBeatPrefix)); n != 0 {
		t.Fatalf("%d lease objects left after taking over a stale lease", n)
	}
}

// beforePackGet runs hook once, before the first Get of a pack.
type beforePackGet struct {
	blob.Store
	once sync.Once
	hook func()
}

func (b *beforePackGet) Get(ctx context.Context, name string, off, n int64) ([]byte, error) {
	if strings.HasPrefix(name, blobPacksPrefix) && b.hook != nil {
		b.once.Do(b.hook)
	}
	return b.Store.Get(ctx, name, off, n)
}

// A verify on one host while a gc on another sweeps a condemned pack
// reports nothing: the pack's chunks are needed by no engram, which is
// why it was condemned. A pack that is gone and was not condemned is
// still reported.
func TestBlobVerifyDuringSweep(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	inner := mem.New()
	initBlob(t, inner, InitOptions{})
	// (Hosts without verify at cleanup: the test removes a live pack.)
	host := func(bs blob.Store) *BlobStore {
		s := newBlobHostNoVerify(t, bs)
		s.clock = clk.now
		if err := s.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		return s
	}
	g := host(inner)
	keep, drop := mkChunks(1, 5, 20000), mkChunks(100, 5, 20000)
	for _, cs := range [][]Chunk{keep, drop} {
		if _, err := g.PutMany(ctx, cs); err != nil {
			t.Fatal(err)
		}
	}
	live := liveSet{}
	live.add(keep)
	if _, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin}); err != nil {
		t.Fatal(err)
	}
	clk.advance(testMargin * 3 / 2)
	hooked := &beforePackGet{Store: inner}
	v := host(hooked)
	hooked.hook = func() {
		if err := g.Refresh(ctx); err != nil {
			t.Error(err)
		}
		if st, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin}); err != nil || st.PacksDeleted != 1 {
			t.Errorf("sweep = %+v, %v; want 1 pack deleted", st, err)
		}
	}
	var problems []Problem
	st, err := v.Verify(ctx, func(p Problem) { problems = append(problems, p) })
	if err != nil || len(problems) > 0 {
		t.Fatalf("verify during a sweep = %+v, %v, %v; want clean", st, err, problems)
	}
	// A pack that vanishes without a gc is still damage.
	packs := objects(t, inner, blobPacksPrefix)
	if len(packs) != 1 {
		t.Fatalf("%d packs left, want 1", len(packs))
	}
	if err := inner.Delete(ctx, packs[0]); err != nil {
		t.Fatal(err)
	}
	v2 := newBlobHostNoVerify(t, inner)
	if st, err := v2.Verify(ctx, nil); err != nil || st.Problems == 0 {
		t.Fatalf("verify of a bucket missing a live pack = %+v, %v; want problems", st, err)
	}
}
