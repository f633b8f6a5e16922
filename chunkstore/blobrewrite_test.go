package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/faulty"
	"github.com/engram-vm/engram/chunkstore/blob/mem"
	"github.com/engram-vm/engram/chunkstore/blob/s3"
	"github.com/engram-vm/engram/chunkstore/blob/s3/s3test"
)

// rewriteOpts makes frames of about three chunks and packs of a few
// frames, so a pack mixes fully live, partly live and dead frames.
var rewriteOpts = InitOptions{BlockSize: 64 << 10, PackSize: 256 << 10}

// rewriteThreshold is above the live fraction of every pack
// fillMostlyDead makes (the first pack is 60% live).
const rewriteThreshold = 0.7

// fillMostlyDead stores batches of chunks through s and returns them and
// the few that stay live: every fifth chunk, and the first six of the
// first batch (two whole frames, copied verbatim by a rewrite).
func fillMostlyDead(t *testing.T, s *BlobStore) (all []Chunk, live liveSet) {
	t.Helper()
	live = liveSet{}
	for b := range 8 {
		cs := mkChunks(uint64(1000*b+1), 20, 20000)
		if _, err := s.PutMany(context.Background(), cs); err != nil {
			t.Fatal(err)
		}
		for i, c := range cs {
			if i%5 == 0 || b == 0 && i < 6 {
				live[c.ID] = true
			}
		}
		all = append(all, cs...)
	}
	return all, live
}

// packBytes sums the sizes of the pack objects in bs.
func packBytes(t *testing.T, bs blob.Store) int64 {
	t.Helper()
	var n int64
	err := bs.List(context.Background(), blobPacksPrefix, func(in blob.Info) error { n += in.Size; return nil })
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// liveOnlyBytes is what a store holding only the live chunks takes.
func liveOnlyBytes(t *testing.T, all []Chunk, live liveSet) int64 {
	t.Helper()
	bs := mem.New()
	initBlob(t, bs, rewriteOpts)
	s := newBlobHost(t, bs)
	var cs []Chunk
	for _, c := range all {
		if live[c.ID] {
			cs = append(cs, c)
		}
	}
	if _, err := s.PutMany(context.Background(), cs); err != nil {
		t.Fatal(err)
	}
	return packBytes(t, bs)
}

// checkChunks fails unless every live chunk reads back from a host with an
// empty cache and no dead one is indexed there.
func checkChunks(t *testing.T, bs blob.Store, clk *fakeClock, all []Chunk, live liveSet, deadGone bool) {
	t.Helper()
	ctx := context.Background()
	h := gcHost(t, bs, clk)
	for _, c := range all {
		if live[c.ID] {
			got, err := h.Get(ctx, c.ID)
			if err != nil || string(got) != string(c.Data) {
				t.Fatalf("live chunk %s: %v", c.ID.Short(), err)
			}
		} else if ok, _ := h.Has(ctx, c.ID); ok && deadGone {
			t.Fatalf("dead chunk %s still indexed", c.ID.Short())
		}
	}
}

// After most chunks die, a gc rewrites the live ones out of their packs
// and condemns the packs; a gc past the margin sweeps them, and the bucket
// is about the size of a store of the live chunks alone. Readers on other
// hosts read the new copies once they refresh.
func TestBlobGCRewrite(t *testing.T) {
	t.Run("mem", func(t *testing.T) { testBlobGCRewrite(t, mem.New()) })
	t.Run("s3", func(t *testing.T) {
		cfg := s3test.Config(t)
		cfg.Prefix = "store"
		bs, err := s3.Open(context.Background(), cfg, true)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { bs.Close() })
		testBlobGCRewrite(t, bs)
	})
}

func testBlobGCRewrite(t *testing.T, bs blob.Store) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	initBlob(t, bs, rewriteOpts)
	g := gcHost(t, bs, clk)
	all, live := fillMostlyDead(t, g)
	reader := gcHost(t, bs, clk) // a host whose cache predates the gc
	before := packBytes(t, bs)
	oldPacks := objects(t, bs, blobPacksPrefix)

	opts := GCOptions{Margin: testMargin, Threshold: rewriteThreshold}
	dry, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin, Threshold: rewriteThreshold, DryRun: true})
	if err != nil || dry.PacksRewritten != int64(len(oldPacks)) || dry.ChunksMoved != int64(len(live)) {
		t.Fatalf("dry run = %+v, %v; want %d packs, %d chunks to move", dry, err, len(oldPacks), len(live))
	}
	st, err := g.GC(ctx, live.fn, opts)
	if err != nil {
		t.Fatal(err)
	}
	if st.PacksRewritten != int64(len(oldPacks)) || st.ChunksMoved != int64(len(live)) || st.PacksDeleted != 0 {
		t.Fatalf("first gc = %+v; want all %d packs rewritten, %d chunks moved, none deleted", st, len(oldPacks), len(live))
	}
	for _, p := range oldPacks {
		if _, err := bs.Get(ctx, p, 0, 1); err != nil {
			t.Fatalf("the first gc deleted %s: %v", p, err)
		}
	}
	// Every host now reads the rewritten copies.
	old := map[string]bool{}
	for _, p := range oldPacks {
		old[p] = true
	}
	if err := reader.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for hi, h := range []*BlobStore{g, reader, gcHost(t, bs, clk)} {
		for id := range live {
			_, ph, ok, err := h.lookup(ctx, id)
			if err != nil || !ok || old[packObject(ph)] {
				t.Fatalf("host %d: chunk %s indexed in %s (old: %v), %v", hi, id.Short(), packObject(ph), old[packObject(ph)], err)
			}
		}
	}
	checkChunks(t, bs, clk, all, live, false)

	clk.advance(2 * testMargin)
	if err := g.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	st, err = g.GC(ctx, live.fn, opts)
	if err != nil || st.PacksDeleted != int64(len(oldPacks)) || st.PacksRewritten != 0 {
		t.Fatalf("second gc = %+v, %v; want the %d old packs deleted, nothing rewritten", st, err, len(oldPacks))
	}
	after, ref := packBytes(t, bs), liveOnlyBytes(t, all, live)
	t.Logf("pack bytes: %d before gc, %d after, %d for the live chunks alone", before, after, ref)
	if after > ref*11/10 {
		t.Fatalf("bucket holds %d pack bytes after gc, the live chunks alone take %d", after, ref)
	}
	if err := reader.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for id := range live {
		if _, err := reader.Get(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	checkChunks(t, bs, clk, all, live, true)
}

// A gc stopped after writing the new packs and before its mark (the list
// PUT fails, or the context is cancelled) leaves a bucket that verifies
// and reads; the next runs finish the job without keeping duplicates.
func TestBlobGCRewriteInterrupted(t *testing.T) {
	for _, fault := range []faulty.Fault{
		{Op: faulty.Put, Prefix: gcPendingPrefix, Times: 1},              // the mark
		{Op: faulty.Put, Prefix: blobPacksPrefix, Skip: 0, Times: 1},     // the first new pack
		{Op: faulty.Put, Prefix: blobIndexPrefix, Times: 1, After: true}, // its segment, written but reported lost
	} {
		t.Run(string(fault.Op)+"-"+strings.TrimSuffix(fault.Prefix, "/"), func(t *testing.T) {
			ctx := context.Background()
			clk := &fakeClock{t: time.Unix(1e9, 0)}
			inner := mem.New()
			initBlob(t, inner, rewriteOpts)
			fs := faulty.New(inner)
			g := gcHost(t, fs, clk)
			all, live := fillMostlyDead(t, g)
			fs.Add(fault)
			if _, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin, Threshold: rewriteThreshold}); !errors.Is(err, faulty.ErrInjected) {
				t.Fatalf("gc = %v, want the injected fault", err)
			}
			if n := len(objects(t, inner, gcPendingPrefix)); n != 0 {
				t.Fatalf("%d pending lists after a gc that failed before its mark", n)
			}
			checkChunks(t, inner, clk, all, live, false)
			for range 3 {
				clk.advance(2 * testMargin)
				if err := g.Refresh(ctx); err != nil {
					t.Fatal(err)
				}
				st, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin, Threshold: rewriteThreshold})
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("gc: %+v", st)
			}
			after, ref := packBytes(t, inner), liveOnlyBytes(t, all, live)
			if after > ref*11/10 {
				t.Fatalf("bucket holds %d pack bytes after gc, the live chunks alone take %d", after, ref)
			}
			checkChunks(t, inner, clk, all, live, true)
		})
	}
	t.Run("cancel", func(t *testing.T) {
		clk := &fakeClock{t: time.Unix(1e9, 0)}
		inner := mem.New()
		initBlob(t, inner, rewriteOpts)
		fs := faulty.New(inner)
		g := gcHost(t, fs, clk)
		all, live := fillMostlyDead(t, g)
		ctx, cancel := context.WithCancel(context.Background())
		// Cancelled while the second new pack goes up.
		fs.Add(faulty.Fault{Op: faulty.Put, Prefix: blobPacksPrefix, Skip: 1, Times: 1, After: true, Hook: func(string) error { cancel(); return nil }})
		if _, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin, Threshold: rewriteThreshold}); !errors.Is(err, context.Canceled) {
			t.Fatalf("gc = %v, want context.Canceled", err)
		}
		checkChunks(t, inner, clk, all, live, false)
	})
}

// A damaged frame holding a live chunk keeps its pack in place (neither
// rewritten nor condemned) without stopping the rewrite of the others.
func TestBlobGCRewriteDamaged(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	inner := mem.New()
	initBlob(t, inner, rewriteOpts)
	fs := faulty.New(inner)
	g := gcHost(t, fs, clk)
	_, live := fillMostlyDead(t, g)
	packs := objects(t, inner, blobPacksPrefix)
	// Every read of one pack comes back flipped.
	bad := packs[0]
	fs.Add(faulty.Fault{Op: faulty.Get, Prefix: bad, Err: blob.ErrRange})
	t.Cleanup(fs.Clear) // before g's verify
	st, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin, Threshold: rewriteThreshold})
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "left in place") {
		t.Fatalf("gc = %v, want an error naming %s", err, bad)
	}
	if st.PacksRewritten != int64(len(packs)-1) {
		t.Fatalf("gc = %+v, want the %d other packs rewritten", st, len(packs)-1)
	}
	for _, n := range objects(t, inner, gcPendingPrefix) {
		b, _ := blob.ReadAll(ctx, inner, n, maxGCList)
		if strings.Contains(string(b), strings.TrimPrefix(bad[strings.LastIndexByte(bad, '/'):], "/")) {
			t.Fatalf("the damaged pack was condemned: %s", b)
		}
	}
}

// records is the catalog of TestBlobGCRewriteDuringWrites: key -> the
// concatenated IDs of the chunks the record needs.
var recBucket = []byte("rec")

func recordedChunks(t *testing.T, s *BlobStore) (liveSet, [][]byte) {
	t.Helper()
	live := liveSet{}
	var keys [][]byte
	err := s.View(context.Background(), func(tx MetaTx) error {
		return tx.ForEach(recBucket, nil, func(k, v []byte) error {
			keys = append(keys, append([]byte(nil), k...))
			for i := 0; i+32 <= len(v); i += 32 {
				live[ID(v[i:i+32])] = true
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return live, keys
}

// gc with rewriting, run again and again while two hosts store chunks
// (half of them shared with each other and with removed records) and
// commit records: every record committed at the end reads back whole
// from a fresh host, and the bucket verifies. The fake clock moves a
// margin and a half per gc run, so each run sweeps what the one before
// marked; it moves only between commits (a commit check and its journal
// PUT never straddle a margin: the hole DESIGN.md describes), and only
// once each writer has started a new attempt since it last moved. A
// writer's attempt (refresh, put, commit) during which a whole gc run
// marks and the clock then passes the margin is refused, as it must be
// (it may have built on a pack the next run sweeps); unchecked, the gc
// host, which does nothing else, ran round after round while a writer
// under -race on a loaded machine was inside one attempt, and refused it
// 21 times in a row. The clock still moves while an attempt is under way
// (once per attempt, or after a second of waiting), and every sixth
// segment a writer puts waits first for two moves of the clock: a writer
// stalled between its pack and its segment across the gc run that marks
// the pack as an orphan and the one that sweeps it
// (TestBlobGCOrphanSegmentAfterSweep).
func TestBlobGCRewriteDuringWrites(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	bs := mem.New()
	initBlob(t, bs, rewriteOpts)
	var commitMu sync.RWMutex
	var attempts [2]atomic.Int64 // started by each writer
	var finished [2]atomic.Bool
	var refusals atomic.Int64
	writer := func(host int, s *BlobStore, done chan<- error) {
		defer finished[host].Store(true)
		for i := range 12 {
			shared := mkChunks(uint64(1+i%4*10), 10, 20000) // seen by both hosts and earlier rounds
			own := mkChunks(uint64(100000*(host+1)+1000*i), 10, 20000)
			cs := append(shared, own...)
			// Two records per pack: "a" (gc's host removes it) and "b".
			var recA, recB []byte
			for j, c := range cs {
				if j >= 10 && j < 15 {
					recA = append(recA, c.ID[:]...)
				} else {
					recB = append(recB, c.ID[:]...)
				}
			}
			for try := 0; ; try++ {
				if try > 20 {
					done <- fmt.Errorf("host %d record %d: refused %d times", host, i, try)
					return
				}
				attempts[host].Add(1)
				if err := s.Refresh(ctx); err != nil {
					done <- err
					return
				}
				if _, err := s.PutMany(ctx, cs); err != nil {
					done <- err
					return
				}
				commitMu.RLock()
				err := s.Update(ctx, func(tx MetaTx) error {
					if err := tx.Put(recBucket, []byte(fmt.Sprintf("h%d-%02d-a", host, i)), recA); err != nil {
						return err
					}
					return tx.Put(recBucket, []byte(fmt.Sprintf("h%d-%02d-b", host, i)), recB)
				})
				commitMu.RUnlock()
				if errors.Is(err, ErrStaleView) {
					refusals.Add(1)
					continue
				}
				if err != nil {
					done <- err
					return
				}
				break
			}
		}
		done <- nil
	}
	done := make(chan error, 2)
	var moves atomic.Int64     // of the clock
	var stalled [2]atomic.Bool // in a segment PUT, waiting for moves
	for h := range 2 {
		fs := faulty.New(bs)
		segs := 0
		fs.Add(faulty.Fault{Op: faulty.Put, Prefix: blobIndexPrefix, After: true, Err: blob.ErrExist, // ErrExist: success
			Hook: func(string) error {
				if segs++; segs%6 != 0 {
					return nil
				}
				stalled[h].Store(true)
				defer stalled[h].Store(false)
				for m := moves.Load(); moves.Load() < m+2; {
					time.Sleep(100 * time.Microsecond)
				}
				return nil
			}})
		go writer(h, gcHost(t, fs, clk), done)
	}
	g := gcHost(t, bs, clk)
	var rewritten, deleted int64
	var last [2]int64 // attempts started when the clock last moved
	for running := 2; running > 0; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			running--
			continue
		default:
		}
		if err := g.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		_, keys := recordedChunks(t, g)
		// Remove the "a" records: their chunks die, and the packs holding
		// them are left partly live.
		for _, k := range keys {
			if !strings.HasSuffix(string(k), "-a") {
				continue
			}
			if err := g.Update(ctx, func(tx MetaTx) error { return tx.Delete(recBucket, k) }); err != nil {
				t.Fatal(err)
			}
		}
		if err := g.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		live, _ := recordedChunks(t, g)
		st, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin, Threshold: 0.9})
		if err != nil {
			t.Fatal(err)
		}
		rewritten += st.PacksRewritten
		deleted += st.PacksDeleted
		// A writer waiting for a claim of the other, stalled one waits
		// for the clock (claimWait): a second at most.
		for h := range last {
			for end := time.Now().Add(time.Second); time.Now().Before(end) && !finished[h].Load() && !stalled[h].Load() && attempts[h].Load() == last[h]; {
				time.Sleep(100 * time.Microsecond)
			}
		}
		commitMu.Lock()
		clk.advance(testMargin * 3 / 2)
		moves.Add(1)
		for h := range last {
			last[h] = attempts[h].Load()
		}
		commitMu.Unlock()
	}
	for range 3 { // sweep what is left to sweep
		if err := g.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		live, _ := recordedChunks(t, g)
		st, err := g.GC(ctx, live.fn, GCOptions{Margin: testMargin, Threshold: 0.9})
		if err != nil {
			t.Fatal(err)
		}
		rewritten += st.PacksRewritten
		deleted += st.PacksDeleted
		clk.advance(2 * testMargin)
	}
	t.Logf("%d packs rewritten, %d deleted, %d commits refused", rewritten, deleted, refusals.Load())
	if rewritten == 0 {
		t.Fatal("no pack was rewritten")
	}
	fresh := gcHost(t, bs, clk)
	live, keys := recordedChunks(t, fresh)
	if len(keys) == 0 {
		t.Fatal("no record left")
	}
	for id := range live {
		if _, err := fresh.Get(ctx, id); err != nil {
			t.Fatalf("a committed record's chunk: %v", err)
		}
	}
}
