package chunkstore

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/mem"
	"github.com/engram-vm/engram/chunkstore/blob/s3"
	"github.com/engram-vm/engram/chunkstore/blob/s3/s3test"
)

// On a bucket with thousands of journal entries (one every 10 s, so
// about 7 hours of them), a refresh of a cache
// that has them lists meta/ from its newest entry (one LIST request), not
// all of it (one per 1000 names); counted by a proxy in front of the
// server.
func TestS3RefreshListsFromLastEntry(t *testing.T) {
	ctx := context.Background()
	cfg := s3test.Config(t)
	cfg.Prefix = "store"
	target, err := url.Parse(cfg.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	var metaLists, requests atomic.Int64
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if q := r.URL.Query(); q.Get("list-type") == "2" && strings.HasSuffix(q.Get("prefix"), "/meta/") {
			metaLists.Add(1)
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close) // after the host's verify (cleanups run last first)
	cfg.Endpoint = srv.URL
	bs, err := s3.Open(ctx, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	initBlob(t, bs, InitOptions{})
	const n = 2500
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				body := []byte(fmt.Sprintf(`{"v":1,"ops":[{"op":"put","b":"bg==","k":"%s","v":"dg=="}]}`, b64(fmt.Sprint(i))))
				if err := bs.Put(ctx, journalName(int64(1e18)+int64(i)*int64(10*time.Second), body), body); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	metaLists.Store(0)
	s := newBlobHost(t, bs) // a new cache: lists everything
	full := metaLists.Load()
	metaLists.Store(0)
	requests.Store(0)
	if err := s.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	partial, all := metaLists.Load(), requests.Load()
	var keys int
	_ = s.View(ctx, func(tx MetaTx) error {
		return tx.ForEach([]byte("n"), nil, func(k, v []byte) error { keys++; return nil })
	})
	t.Logf("%d journal entries: opening a new cache lists meta/ in %d requests, a refresh in %d (%d requests in all)", n, full, partial, all)
	if keys != n || partial != 1 || full < n/1000 {
		t.Fatalf("%d keys applied, %d/%d LIST requests", keys, full, partial)
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// A journal entry dated at the largest time a name can carry (put by a
// broken host or by hand) leaves no name for the next commit: the commit
// fails and says which entry, instead of writing its record under a name
// no reader parses (a wrapped, negative time), which every host would
// skip: the record would be lost.
func TestBlobJournalEndOfTime(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	body := []byte(`{"v":1,"ops":[{"op":"put","b":"Yg==","k":"a2V5","v":"dg=="}]}`)
	last := journalName(math.MaxInt64, body)
	if err := bs.Put(ctx, last, body); err != nil {
		t.Fatal(err)
	}
	s := newBlobHost(t, bs)
	err := s.Update(ctx, func(tx MetaTx) error { return tx.Put([]byte("b"), []byte("k2"), []byte("v")) })
	if err == nil || !strings.Contains(err.Error(), last) {
		t.Fatalf("commit after %s: %v, want an error naming it", last, err)
	}
	var names []string
	_ = bs.List(ctx, blobMetaPrefix, func(in blob.Info) error { names = append(names, in.Name); return nil })
	if len(names) != 1 {
		t.Fatalf("journal after the refused commit: %q", names)
	}
}

// slowMeta is a blob store whose GETs of journal entries take a while
// (a round trip), counting how many are in flight at once; fail makes
// the GET of that entry fail as an unreachable server would.
type slowMeta struct {
	blob.Store
	in, peak atomic.Int32
	fail     string
}

func (s *slowMeta) Get(ctx context.Context, name string, off, n int64) ([]byte, error) {
	if !strings.HasPrefix(name, blobMetaPrefix) {
		return s.Store.Get(ctx, name, off, n)
	}
	if name == s.fail {
		return nil, fmt.Errorf("get %s: %w", name, blob.ErrUnreachable)
	}
	in := s.in.Add(1)
	defer s.in.Add(-1)
	for p := s.peak.Load(); in > p && !s.peak.CompareAndSwap(p, in); p = s.peak.Load() {
	}
	time.Sleep(2 * time.Millisecond)
	return s.Store.Get(ctx, name, off, n)
}

// A new cache reads the bucket's journal entries several at a time (one
// GET each, so one at a time would cost a round trip per commit ever
// made), applies all of them, and a failure to reach the bucket names
// the first entry it could not read.
func TestBlobJournalReadParallel(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	a := newBlobHost(t, bs)
	const n = 60
	for i := range n {
		if err := a.Update(ctx, func(tx MetaTx) error {
			return tx.Put([]byte("n"), fmt.Appendf(nil, "k%02d", i), []byte("v"))
		}); err != nil {
			t.Fatal(err)
		}
	}
	slow := &slowMeta{Store: bs}
	fresh := newBlobHost(t, slow)
	_ = fresh.View(ctx, func(tx MetaTx) error {
		for i := range n {
			if tx.Get([]byte("n"), fmt.Appendf(nil, "k%02d", i)) == nil {
				t.Errorf("fresh cache lacks k%02d", i)
			}
		}
		return nil
	})
	if p := slow.peak.Load(); p < 2 || p > journalParallel {
		t.Errorf("%d journal GETs in flight at most, want 2..%d", p, journalParallel)
	}
	names := objects(t, bs, blobMetaPrefix)
	bad := &slowMeta{Store: bs, fail: names[len(names)/2]}
	_, err := OpenBlob(ctx, nopClose{bad}, BlobOpenOptions{CacheRoot: t.TempDir()})
	if !errors.Is(err, blob.ErrUnreachable) || !strings.Contains(err.Error(), bad.fail) {
		t.Fatalf("open with %s unreachable: %v", bad.fail, err)
	}
}
