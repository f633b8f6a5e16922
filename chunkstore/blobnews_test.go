package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/faulty"
	"github.com/engram-vm/engram/chunkstore/blob/mem"
)

// newsHost is a host whose polls are never rate-limited, so a test
// decides when it looks; claimWait as given.
func newsHost(t *testing.T, bs blob.Store, claimWait time.Duration) *BlobStore {
	t.Helper()
	s := newBlobHost(t, bs)
	s.news.interval, s.news.aloneInterval, s.news.claimWait = 0, 0, claimWait
	return s
}

// Another host stored chunks between this host's batches: this host
// learns it from news/ (no refresh) and stores only the rest.
func TestBlobNewsBetweenBatches(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	a, b := newsHost(t, bs, time.Minute), newsHost(t, bs, time.Minute)
	shared, own := mkChunks(1, 20, 20000), mkChunks(100, 5, 20000)
	if n, err := a.PutMany(ctx, shared); err != nil || n != len(shared) {
		t.Fatalf("a: PutMany = %d, %v", n, err)
	}
	if n, err := b.PutMany(ctx, append(append([]Chunk{}, shared...), own...)); err != nil || n != len(own) {
		t.Fatalf("b: PutMany = %d, %v; want only its own %d chunks stored", n, err, len(own))
	}
	if n := len(objects(t, bs, blobPacksPrefix)); n != 2 {
		t.Fatalf("%d packs, want 2 (a's, then b's own chunks)", n)
	}
	if st := b.NewsStats(); st.PacksMerged != 1 || st.Polls == 0 {
		t.Errorf("b's news: %+v, want a's pack merged from news/", st)
	}
	for _, c := range shared {
		if got, err := b.Get(ctx, c.ID); err != nil || string(got) != string(c.Data) {
			t.Fatalf("b: Get %s: %v", c.ID.Short(), err)
		}
	}
}

// A chunk another host has claimed is held back, not compressed, until
// that host's pack is announced; then it is not stored again.
func TestBlobNewsClaimHeld(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	a, b := newsHost(t, bs, time.Hour), newsHost(t, bs, time.Hour)
	cs := mkChunks(1, 20, 20000)
	mine, held, own, err := a.claimFor(ctx, cs)
	if err != nil || len(mine) != len(cs) || len(held) != 0 || own == nil {
		t.Fatalf("a: claimFor = %d mine, %d held, claim %v, %v", len(mine), len(held), own != nil, err)
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result)
	go func() {
		n, err := b.PutMany(ctx, cs)
		done <- result{n, err}
	}()
	// Until b holds the chunks back (a condition, not a time).
	for b.NewsStats().Waited == 0 {
		select {
		case r := <-done:
			t.Fatalf("b: PutMany returned %d, %v before a stored the chunks it claimed", r.n, r.err)
		case <-time.After(time.Millisecond):
		}
	}
	if n, _, err := a.storeFresh(ctx, mine, own); err != nil || n != len(cs) {
		t.Fatalf("a: store = %d, %v", n, err)
	}
	a.release(own)
	r := <-done
	if r.err != nil || r.n != 0 {
		t.Fatalf("b: PutMany = %d, %v; want 0 stored", r.n, r.err)
	}
	if n := len(objects(t, bs, blobPacksPrefix)); n != 1 {
		t.Fatalf("%d packs, want a's only", n)
	}
	if st := b.NewsStats(); st.Waited != len(cs) || st.Skipped != len(cs) || st.ClaimsSeen != 1 {
		t.Errorf("b's news: %+v", st)
	}
}

// A host that claimed chunks and died (at its claim, in its pack's PUT,
// between pack and segment) makes the others wait at most claimWait and
// store the chunks themselves: a claim never makes a chunk go missing.
func TestBlobNewsDeadClaimer(t *testing.T) {
	ctx := context.Background()
	for _, dieAt := range []string{"after-claim", "pack-put", "segment-put"} {
		t.Run(dieAt, func(t *testing.T) {
			bs := mem.New()
			initBlob(t, bs, InitOptions{})
			fb := faulty.New(bs)
			a := newBlobHostNoVerify(t, fb)
			a.news.interval, a.news.aloneInterval = 0, 0
			b := newsHost(t, bs, time.Millisecond)
			clk := &fakeClock{t: time.Now()} // a µs a call: b's wait ends after about a thousand looks
			b.clock = clk.now
			cs := mkChunks(1, 20, 20000)
			switch dieAt {
			case "after-claim":
				if _, _, _, err := a.claimFor(ctx, cs); err != nil {
					t.Fatal(err)
				}
			case "pack-put", "segment-put":
				prefix := map[string]string{"pack-put": blobPacksPrefix, "segment-put": blobIndexPrefix}[dieAt]
				fb.Add(faulty.Fault{Op: faulty.Put, Prefix: prefix})
				if _, err := a.PutMany(ctx, cs); !errors.Is(err, faulty.ErrInjected) {
					t.Fatalf("a: PutMany = %v, want the injected fault", err)
				}
			}
			if n := len(objects(t, bs, blobNewsPrefix)); n != 1 {
				t.Fatalf("%d news objects, want a's claim only", n)
			}
			if n, err := b.PutMany(ctx, cs); err != nil || n != len(cs) {
				t.Fatalf("b: PutMany = %d, %v; want all %d stored", n, err, len(cs))
			}
			if st := b.NewsStats(); st.Waited != len(cs) {
				t.Errorf("b's news: %+v, want a's claim honoured until it expired", st)
			}
			fresh := newBlobHost(t, bs)
			for _, c := range cs {
				if _, err := fresh.Get(ctx, c.ID); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// Two hosts that claim the same chunks before seeing each other's
// claim: the later name yields, once it has listed the earlier one.
func TestBlobNewsClaimRace(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	clk := &fakeClock{t: time.Now()}
	a, b := newsHost(t, bs, time.Hour), newsHost(t, bs, time.Hour)
	a.clock, b.clock = clk.now, clk.now
	cs := mkChunks(1, 20, 20000)
	// Neither has listed the other's claim before writing its own.
	amine, aheld, aown, err := a.claimFor(ctx, cs)
	if err != nil {
		t.Fatal(err)
	}
	bmine, bheld, bown, err := b.claimFor(ctx, cs)
	if err != nil {
		t.Fatal(err)
	}
	if aown == nil || bown == nil || aown.name >= bown.name {
		t.Fatalf("claims %v, %v: want a's to sort first", aown, bown)
	}
	if len(amine) != len(cs) || len(aheld) != 0 || len(bmine) != 0 || len(bheld) != len(cs) {
		t.Fatalf("a stores %d, holds %d; b stores %d, holds %d; want a all, b none", len(amine), len(aheld), len(bmine), len(bheld))
	}
}

// A pack another host announces that a gc list in this cache condemns
// is merged as condemned: this host stores its chunks again rather than
// deduplicate against a copy the sweep may take.
func TestBlobNewsCondemned(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	a, b := newsHost(t, bs, time.Minute), newsHost(t, bs, time.Minute)
	cs := mkChunks(1, 10, 20000)
	if _, err := a.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	// gc on a third host marks a's pack (nothing references it yet).
	g := newBlobHost(t, bs)
	if _, err := g.GC(ctx, func(ID) bool { return false }, GCOptions{Margin: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.gcLists(ctx); err != nil { // b knows the list, not the pack
		t.Fatal(err)
	}
	if n, err := b.PutMany(ctx, cs); err != nil || n != 0 {
		t.Fatalf("b: PutMany = %d, %v", n, err)
	}
	if st := b.NewsStats(); st.PacksMerged != 1 {
		t.Fatalf("b's news: %+v, want a's pack merged", st)
	}
	if n := len(objects(t, bs, blobPacksPrefix)); n != 2 {
		t.Fatalf("%d packs, want a's condemned one and b's new copy", n)
	}
	have, err := b.HasForDedup(ctx, ids(cs))
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range have {
		if !h {
			t.Fatalf("chunk %d: not stored outside the condemned pack", i)
		}
	}
}

func TestClaimRoundTrip(t *testing.T) {
	in := ids(mkChunks(1, 3, 100))
	out, err := decodeClaim(encodeClaim(in))
	if err != nil || len(out) != len(in) {
		t.Fatalf("decodeClaim = %v, %v", out, err)
	}
	for i := range in {
		if in[i] != out[i] {
			t.Fatal("claim IDs differ")
		}
	}
	for _, name := range []string{"news/0000000000000001-0123456789abcdef.claim", "news/0000000000000001-" + in[0].String() + ".pack"} {
		if _, _, _, ok := parseNewsName(name); !ok {
			t.Errorf("%s: not parsed", name)
		}
	}
	for _, name := range []string{"news/x", "news/0000000000000001-0123.claim", "news/000000000000000g-0123456789abcdef.claim", "index/00"} {
		if _, _, _, ok := parseNewsName(name); ok {
			t.Errorf("%s: parsed", name)
		}
	}
}

// FuzzClaim: claims come from other hosts; decoding never panics and
// never allocates past the body's size.
func FuzzClaim(f *testing.F) {
	f.Add(encodeClaim(ids(mkChunks(1, 3, 100))))
	f.Add(encodeClaim(nil))
	f.Add([]byte(claimMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		if out, err := decodeClaim(b); err == nil && len(out)*32 > len(b) {
			t.Fatalf("%d IDs from %d bytes", len(out), len(b))
		}
		_, _, _, _ = parseNewsName(string(b))
	})
}

// A claim with an earlier name that is listed only after this host's own
// check (its PUT landed late): this host still yields before uploading.
func TestBlobNewsLateEarlierClaim(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	a := newsHost(t, bs, time.Hour)
	cs := mkChunks(1, 20, 20000)
	mine, _, own, err := a.claimFor(ctx, cs)
	if err != nil || own == nil || len(mine) != len(cs) {
		t.Fatalf("claimFor: %d mine, %v", len(mine), err)
	}
	t0, _, _, _ := parseNewsName(own.name)
	late := fmt.Sprintf("%s%016x-%016x.claim", blobNewsPrefix, t0-1, 1)
	if err := bs.Put(ctx, late, encodeClaim(ids(cs))); err != nil {
		t.Fatal(err)
	}
	n, yielded, err := a.storeFresh(ctx, mine, own)
	if err != nil || n != 0 || len(yielded) != len(cs) {
		t.Fatalf("storeFresh = %d stored, %d yielded, %v; want all yielded", n, len(yielded), err)
	}
	if n := len(objects(t, bs, blobPacksPrefix)); n != 0 {
		t.Fatalf("%d packs uploaded", n)
	}
}

// gc deletes news/ objects past newsKeep and keeps the recent ones.
func TestBlobNewsPrunedByGC(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	s := gcHost(t, bs, clk)
	if _, err := s.PutMany(ctx, mkChunks(1, 10, 20000)); err != nil {
		t.Fatal(err)
	}
	if n := len(objects(t, bs, blobNewsPrefix)); n == 0 {
		t.Fatal("no news/ objects written")
	}
	live := func(ID) bool { return true }
	if _, err := s.GC(ctx, live, GCOptions{Margin: testMargin}); err != nil {
		t.Fatal(err)
	}
	if n := len(objects(t, bs, blobNewsPrefix)); n == 0 {
		t.Fatal("gc deleted recent news/ objects")
	}
	clk.advance(newsKeep + time.Second)
	if _, err := s.GC(ctx, live, GCOptions{Margin: testMargin}); err != nil {
		t.Fatal(err)
	}
	if got := objects(t, bs, blobNewsPrefix); len(got) != 0 {
		t.Fatalf("news/ objects left after newsKeep: %v", got)
	}
}
