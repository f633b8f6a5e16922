package chunkstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// Garbage collection of a bucket store, in two phases with a time margin
// (kopia's model; docs/DESIGN.md). A gc run, holding the lease object:
//
//  1. sweeps every pending list whose mark is older than the margin (as
//     of the refresh the caller's live set came from): a pack it names
//     that still holds no live indexed chunk is deleted (segment first,
//     then pack); the list is replaced by a done marker;
//  2. rewrites: the live chunks of each pack under the threshold go into
//     new packs (and segments), so the old pack holds nothing the index
//     needs once it is condemned;
//  3. marks: the packs holding no live indexed chunk, those just
//     rewritten, and pack objects without a segment go into a new pending
//     list. Nothing is deleted.
//
// Writers see pending lists on refresh and do not deduplicate against a
// chunk whose indexed copy is condemned (they store it again). A writer
// whose view predates a list and that would commit after the list's
// margin has passed refuses to commit (ErrStaleView), as does one whose
// view is older than DefaultGCMargin.
const (
	blobGCPrefix    = "gc/"
	gcPendingPrefix = "gc/condemned-"
	gcDonePrefix    = "gc/done-"
	gcLeaseName     = "gc/lease"
	gcListVersion   = 1
	maxGCList       = 256 << 20
	// DefaultGCMargin is how long a condemned pack waits before gc may
	// delete it, and how old a writer's view may be when it commits.
	DefaultGCMargin = 24 * time.Hour
	// DefaultGCLeaseTimeout is when a gc lease left by a killed gc is
	// stale.
	DefaultGCLeaseTimeout = time.Hour
)

// ErrStaleView means a writer's view of a bucket store is older than gc's
// margin allows for a commit; open the store again (or refresh it) and redo
// the work: store the chunks again, so they are deduplicated anew, before
// committing again.
var ErrStaleView = errors.New("this process's view of the store is older than gc's margin; nothing was committed, run again")

// ErrGCRunning means another gc holds the store's lease.
var ErrGCRunning = errors.New("another gc is running on this store")

// gcList is a pending (condemned) list or a done marker.
type gcList struct {
	V       int      `json:"v"`
	Time    int64    `json:"time_ns"`   // when the packs were marked
	Margin  int64    `json:"margin_ns"` // how long they wait
	Packs   []string `json:"packs,omitempty"`
	Orphans []string `json:"orphans,omitempty"` // pack objects without a segment

	// damaged is why a list that could not be read was skipped
	// (degraded.go); such a list names no packs.
	damaged error
}

func parseGCName(name string) (pending bool, t int64, ok bool) {
	var rest string
	switch {
	case strings.HasPrefix(name, gcPendingPrefix):
		pending, rest = true, name[len(gcPendingPrefix):]
	case strings.HasPrefix(name, gcDonePrefix):
		rest = name[len(gcDonePrefix):]
	default:
		return false, 0, false
	}
	if len(rest) != 33 || rest[16] != '-' {
		return false, 0, false
	}
	v, err := strconv.ParseUint(rest[:16], 16, 63)
	return pending, int64(v), err == nil
}

func decodeGCList(b []byte) (*gcList, error) {
	var l gcList
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, err
	}
	if l.V != gcListVersion {
		if l.V > gcListVersion {
			return nil, fmt.Errorf("gc list version %d: %w", l.V, ErrFormatVersion)
		}
		return nil, fmt.Errorf("bad gc list version %d", l.V)
	}
	if l.Margin < 0 || l.Time <= 0 {
		return nil, errors.New("gc list with a bad time or margin")
	}
	return &l, nil
}

// gcNames lists the gc lists and done markers in bs.
func gcNames(ctx context.Context, bs blob.Store) ([]string, error) {
	var names []string
	err := bs.List(ctx, blobGCPrefix, func(in blob.Info) error {
		if _, _, ok := parseGCName(in.Name); ok {
			names = append(names, in.Name)
		}
		return nil
	})
	return names, err
}

// journalNames lists every catalog journal entry in bs.
func journalNames(ctx context.Context, bs blob.Store) ([]string, error) {
	var names []string
	err := bs.List(ctx, blobMetaPrefix, func(in blob.Info) error {
		if _, ok := parseJournalName(in.Name); ok {
			names = append(names, in.Name)
		}
		return nil
	})
	return names, err
}

// gcLists lists gc/ and returns the lists by name, reading only those the
// cache does not hold yet.
func (s *BlobStore) gcLists(ctx context.Context) (map[string]*gcList, error) {
	names, err := gcNames(ctx, s.bs)
	if err != nil {
		return nil, err
	}
	cached := map[string][]byte{}
	err = s.db.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobGC).ForEach(func(k, v []byte) error { cached[string(k)] = bytes.Clone(v); return nil })
	})
	if err != nil {
		return nil, err
	}
	out := map[string]*gcList{}
	fresh := map[string][]byte{}
	for _, n := range names {
		b, ok := cached[n]
		if !ok {
			b, err = blob.ReadAll(ctx, s.bs, n, maxGCList)
			if pend, _, _ := parseGCName(n); pend && errors.Is(err, blob.ErrNotExist) {
				// Swept since the listing, which may have missed its done
				// marker (put before the pending list is deleted): read that
				// instead. Skipped, a commit check counted no list newer than
				// its view and passed while the sweep deleted its packs
				// (TestBlobGCSweepDuringCommitCheck).
				n = gcDonePrefix + n[len(gcPendingPrefix):]
				b, ok = cached[n]
				if !ok {
					b, err = blob.ReadAll(ctx, s.bs, n, maxGCList)
				}
			}
			if !ok {
				if errors.Is(err, blob.ErrNotExist) {
					continue // a done marker deleted meanwhile, a day after its sweep
				} else if errors.Is(err, blob.ErrRange) && s.degraded() {
					b = nil // too large to be a list: damaged, below
				} else if err != nil {
					return nil, err
				}
				fresh[n] = b
			}
		}
		l, err := decodeGCList(b)
		if err != nil {
			if errors.Is(err, ErrFormatVersion) {
				return nil, fmt.Errorf("%s: %s: %w", s.bs, n, err)
			}
			if !s.degraded() {
				return nil, fmt.Errorf("%s: %s: %w: %w (engram repair removes it)", s.bs, n, ErrListDamaged, err)
			}
			// Its mark's time from its name; what it condemned is unknown.
			_, t, _ := parseGCName(n)
			delete(fresh, n)
			out[n] = &gcList{V: gcListVersion, Time: max(t, 1), damaged: err}
			continue
		}
		out[n] = l
	}
	stale := false
	for n := range cached {
		stale = stale || out[n] == nil
	}
	if !stale && len(fresh) == 0 {
		// Nothing to write: an empty bbolt commit still writes and
		// fdatasyncs a meta page, ~6 ms at every Refresh (each command's
		// open) on a busy disk.
		return out, nil
	}
	err = s.db.update(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketBlobGC)
		for n := range cached {
			if out[n] == nil {
				if err := bk.Delete([]byte(n)); err != nil {
					return err
				}
			}
		}
		for n, b := range fresh {
			if err := bk.Put([]byte(n), b); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// condemnedSet is every pack hash named by a pending list.
func condemnedSet(lists map[string]*gcList) map[ID]bool {
	out := map[ID]bool{}
	for n, l := range lists {
		if !strings.HasPrefix(n, gcPendingPrefix) {
			continue
		}
		for _, p := range l.Packs {
			if h, err := ParseID(p); err == nil {
				out[h] = true
			}
		}
	}
	return out
}

// refreshPacks merges the segments named in segs (index/ names, listed
// after gc/ gave lists) that the cache lacks. When a pack it indexed is
// gone (gc swept it) or the set of condemned packs changed, it rebuilds
// the chunk index from its copies of the segments, so every cache agrees
// on which copy of a chunk is indexed.
func (s *BlobStore) refreshPacks(ctx context.Context, lists map[string]*gcList, segs []string, d *refreshDamage) error {
	cond := condemnedSet(lists)
	dmg, dmgChanged, err := s.damageLists(ctx, d)
	if err != nil {
		return err
	}
	listed := map[ID]bool{}
	for _, name := range segs {
		if h, err := ParseID(strings.TrimPrefix(name, blobIndexPrefix)); err == nil {
			listed[h] = true
		}
	}
	var missing []ID // listed, no local copy
	rebuild := dmgChanged
	err = s.db.view(ctx, func(tx *bolt.Tx) error {
		known := tx.Bucket(bucketBlobHash)
		segsB := tx.Bucket(bucketBlobSegs)
		for h := range listed {
			if segsB.Get(h[:]) == nil {
				missing = append(missing, h)
			}
		}
		err := known.ForEach(func(k, v []byte) error {
			h := ID(k)
			if !listed[h] {
				rebuild = true // swept
			}
			if cond[h] != (tx.Bucket(bucketBlobCond).Get(v) != nil) {
				rebuild = true // condemned or reprieved
			}
			return nil
		})
		return err
	})
	if err != nil {
		return err
	}
	sort.Slice(missing, func(i, j int) bool { return bytes.Compare(missing[i][:], missing[j][:]) < 0 })
	fetched, err := s.readSegments(ctx, missing)
	if err != nil {
		return err
	}
	if s.degraded() {
		// Not merged, so not kept in blob.segs: the next refresh reads it
		// again (and finds it replaced once repair has run).
		for h, b := range fetched {
			if _, err := decodeSegment(b); err != nil && !errors.Is(err, ErrFormatVersion) {
				s.skipSegment(d, h, err)
				delete(fetched, h)
			}
		}
	}
	if !rebuild && len(fetched) == 0 {
		return nil
	}
	err = s.db.update(ctx, func(tx *bolt.Tx) error {
		segsB := tx.Bucket(bucketBlobSegs)
		todo := map[ID][]byte{}
		for h, b := range fetched {
			todo[h] = b
		}
		if rebuild {
			for _, b := range [][]byte{bucketChunks, bucketPacks, bucketBlobPacks, bucketBlobHash, bucketBlobCond} {
				if err := tx.DeleteBucket(b); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
					return err
				}
				if _, err := tx.CreateBucket(b); err != nil {
					return err
				}
			}
			var gone [][]byte
			err := segsB.ForEach(func(k, v []byte) error {
				h := ID(k)
				if !listed[h] {
					gone = append(gone, bytes.Clone(k))
				} else if _, ok := todo[h]; !ok {
					todo[h] = bytes.Clone(v)
				}
				return nil
			})
			if err != nil {
				return err
			}
			for _, k := range gone {
				if err := segsB.Delete(k); err != nil {
					return err
				}
			}
		}
		hs := make([]ID, 0, len(todo))
		for h := range todo {
			hs = append(hs, h)
		}
		sort.Slice(hs, func(i, j int) bool { return bytes.Compare(hs[i][:], hs[j][:]) < 0 })
		for _, h := range hs {
			b := todo[h]
			ents, size, err := s.parseSegment(h, b)
			if err != nil {
				return err
			}
			if _, err := mergeSegment(tx, h, size, ents, b, cond[h], dmg[h]); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil && rebuild {
		s.cache.reset() // pack numbers were handed out anew
	}
	return err
}

// checkCommit is the writer's side of gc: called before a commit point is
// written, it refuses when a gc may have deleted what this view relied on.
func (s *BlobStore) checkCommit(ctx context.Context) error {
	// The view of this commit's deduplication: the oldest since the last
	// check (dedupView), taken here so decisions made from now on count
	// for the next commit. A refused writer redoes its work (ErrStaleView),
	// and the redone decisions set the view its next commit is checked on.
	v := s.dedupView.Swap(nil)
	if v == nil {
		v = s.currentView()
	}
	return s.checkView(ctx, v)
}

// currentView is the view of the last refresh, with the gc lists it
// listed (none while a refresh is under way).
func (s *BlobStore) currentView() *viewLists {
	view := s.viewTime.Load()
	if v := s.viewGC.Load(); v != nil && v.time == view {
		return v
	}
	return &viewLists{time: view}
}

func (s *BlobStore) checkView(ctx context.Context, v *viewLists) error {
	view, seen := v.time, v.ids
	now := s.now()
	if now-view > int64(DefaultGCMargin) {
		return fmt.Errorf("%s: view from %s: %w", s.bs, time.Unix(0, view).UTC().Format(time.RFC3339), ErrStaleView)
	}
	// The lists this view knew (those the refresh that made it listed), by
	// the mark's name without its pending/done prefix. A list's time is
	// when its gc started marking, so a view that started after that time
	// may still have listed gc/ before the list arrived: a list the view
	// did not see counts as newer than the view, whatever its time. Not
	// the lists the cache holds now: a commit check (this one's gcLists
	// below, an earlier one's, another process's on the same cache) adds
	// lists to the cache without condemning their packs in the index, so a
	// writer that commits twice without a refresh would count as seen a
	// list its deduplication never heeded (TestBlobGCListLearntByCommit).
	// Nor the lists of a refresh after the deduplication (dedupView:
	// TestBlobGCListLearntByRead).
	lists, err := s.gcLists(ctx)
	if err != nil {
		return err
	}
	for n, l := range lists {
		if l.damaged != nil {
			return &damagedListCommitError{fmt.Sprintf("%s: %s: gc list damaged (%v): nothing was committed, since whether gc swept what this commit relies on cannot be told until `engram repair` replaces it", s.bs, n, l.damaged)}
		}
		if (l.Time > view || !seen[gcMarkID(n)]) && now >= l.Time+l.Margin {
			return fmt.Errorf("%s: gc marked packs (%s) after this view and its margin of %s has passed: %w", s.bs, n, time.Duration(l.Margin), ErrStaleView)
		}
	}
	return nil
}

// packsLanded is the writer's side of gc's sweep of orphans (pack objects
// without a segment): called once the segments of the packs hs are in
// place, the pack objects having been put after t0 (this host's clock),
// it makes sure those a gc may have swept as orphans meanwhile are there,
// putting them again (put(i) puts hs[i]) where they are not. A writer
// stalled between a pack and its segment for a whole margin finds its
// pack condemned as an orphan and swept; its segment would then name a
// missing pack, which every later view indexes and deduplicates against
// (its own commit is refused, but a retry or any other writer builds on
// it: TestBlobGCOrphanSegmentLate).
//
// Why it is enough: a sweep deletes an orphan h only when a pending list
// naming it is due by the sweep's view, and only after its own look (under
// the lease) found no segment of h. That list was marked after the pack
// was put (its gc listed packs/ after it), so its time is after t0, and it
// was due before that look, so before the segment landed, so before the
// listing here: this listing holds it (pending, or its done marker, put
// before the pending list is deleted). No such list: nothing can sweep h
// as an orphan any more. One: wait until no gc holds the lease (the sweep
// that looked before the segment landed has then deleted or not; any later
// one looks after it and keeps h), and put what is missing.
func (s *BlobStore) packsLanded(ctx context.Context, t0 int64, hs []ID, put func(int) error) error {
	if s.local.exclusive() || len(hs) == 0 {
		return nil // no gc runs beside this writer
	}
	var names []string
	err := s.bs.List(ctx, blobGCPrefix, func(in blob.Info) error {
		if _, t, ok := parseGCName(in.Name); ok && t > t0 {
			names = append(names, in.Name)
		}
		return nil
	})
	if err != nil {
		return err
	}
	now := s.now()
	// Done markers name no packs: one that is due may have swept any of
	// hs. So may a list whose done marker is gone already (a day after its
	// margin), and one swept between the listing and its read.
	all := now-t0 > int64(DefaultGCMargin)
	swept := map[ID]bool{}
	for _, n := range names {
		b, err := blob.ReadAll(ctx, s.bs, n, maxGCList)
		if errors.Is(err, blob.ErrNotExist) {
			all = true
			continue
		}
		if err != nil {
			return err
		}
		l, err := decodeGCList(b)
		if err != nil {
			return fmt.Errorf("%s: %s: %w", s.bs, n, err)
		}
		if now < l.Time+l.Margin {
			continue // not due: a sweep of it looks after the segments landed
		}
		if pending, _, _ := parseGCName(n); !pending {
			all = true
			continue
		}
		for _, o := range l.Orphans {
			if h, err := ParseID(o); err == nil {
				swept[h] = true
			}
		}
	}
	var todo []int
	for i, h := range hs {
		if all || swept[h] {
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	if err := s.awaitNoGC(ctx); err != nil {
		return err
	}
	for _, i := range todo {
		_, err := s.bs.Get(ctx, packObject(hs[i]), 0, 1)
		if err == nil || errors.Is(err, blob.ErrRange) {
			continue
		}
		if !errors.Is(err, blob.ErrNotExist) {
			return err
		}
		if err := put(i); err != nil && !errors.Is(err, blob.ErrExist) {
			return fmt.Errorf("chunkstore: putting pack %s again (gc swept it as an orphan before its segment landed): %w", hs[i], err)
		}
	}
	return nil
}

// awaitNoGC waits until no gc holds the lease, or the one holding it is
// stale (DefaultGCLeaseTimeout).
func (s *BlobStore) awaitNoGC(ctx context.Context) error {
	for {
		b, err := blob.ReadAll(ctx, s.bs, gcLeaseName, 64<<10)
		if errors.Is(err, blob.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		var l gcLease
		if json.Unmarshal(b, &l) != nil {
			return fmt.Errorf("%s: unreadable %s: cannot tell whether a gc runs (remove it if none does)", s.bs, gcLeaseName)
		}
		if time.Duration(s.now()-l.Time) >= DefaultGCLeaseTimeout {
			alive, err := s.leaseAlive(ctx, l)
			if err != nil {
				return err
			}
			if time.Duration(s.now()-alive) >= DefaultGCLeaseTimeout {
				return nil
			}
		}
		t := time.NewTimer(s.news.interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// viewLists is the gc lists a refresh listed (gcMarkID), with its time.
type viewLists struct {
	time int64
	ids  map[string]bool
}

// gcMarkID is a gc list's name without its prefix: the same for a
// pending list and the done marker that replaces it.
func gcMarkID(name string) string {
	if r, ok := strings.CutPrefix(name, gcPendingPrefix); ok {
		return r
	}
	return strings.TrimPrefix(name, gcDonePrefix)
}

type gcLease struct {
	Host string `json:"host"`
	PID  int    `json:"pid"`
	Time int64  `json:"time_ns"`
}

func (s *BlobStore) takeLease(ctx context.Context, timeout time.Duration) error {
	host, _ := os.Hostname()
	body, _ := json.Marshal(gcLease{Host: host, PID: os.Getpid(), Time: s.now()})
	for try := 0; ; try++ {
		err := s.bs.Put(ctx, gcLeaseName, body)
		if err == nil {
			return nil
		}
		if !errors.Is(err, blob.ErrExist) || try > 0 {
			return err
		}
		if s.local.exclusive() {
			// A directory store under the exclusive flock: no other gc or
			// repair runs, so the lease is a killed one's (the kernel
			// dropped its flock). Waiting out its timeout made every
			// repair after a killed one refuse for an hour.
			if err := s.bs.Delete(ctx, gcLeaseName); err != nil {
				return err
			}
			s.deleteBeats(ctx)
			continue
		}
		b, gerr := blob.ReadAll(ctx, s.bs, gcLeaseName, 64<<10)
		var l gcLease
		if gerr != nil || json.Unmarshal(b, &l) != nil {
			return fmt.Errorf("%s: %w (unreadable %s; remove it if no gc runs)", s.bs, ErrGCRunning, gcLeaseName)
		}
		alive, err := s.leaseAlive(ctx, l)
		if err != nil {
			return err
		}
		if time.Duration(s.now()-alive) < timeout {
			age := time.Duration(s.now() - l.Time)
			return fmt.Errorf("%s: %w (pid %d on %s, for %s)", s.bs, ErrGCRunning, l.PID, l.Host, age.Round(time.Second))
		}
		if err := s.bs.Delete(ctx, gcLeaseName); err != nil { // stale: its gc was killed
			return err
		}
		s.deleteBeats(ctx)
	}
}

// refuseStrayJournal fails gc when something that is no object sits at a
// journal entry's name (a directory in a directory store): the records
// it held are unknown, so their engrams' chunks would look unreferenced
// and gc would delete them, catalog copies included. A damaged entry
// stops gc the same way (the open fails).
func (s *BlobStore) refuseStrayJournal(ctx context.Context) error {
	sl, ok := s.bs.(blob.StrayLister)
	if !ok {
		return nil
	}
	var stray, kind string
	err := sl.ListStrays(ctx, blobMetaPrefix, func(n, what string) error {
		if _, ok := parseJournalName(n); !ok {
			return nil
		}
		stray, kind = n, what
		return errStopList
	})
	if stray != "" {
		return fmt.Errorf("%s/%s is %s, not a catalog journal entry: gc sweeps nothing while the records it held are unknown; move it away and run engram repair: %w", s.bs, stray, kind, ErrJournalDamaged)
	}
	return err
}

// GC collects the garbage of a bucket store in two phases (see the top of
// blobgc.go). live must come from this store's current view (the catalog
// as of its last refresh); GC does not refresh before it is done, so no
// record newer than live counts. opts.Margin is the time a condemned pack
// waits (0: DefaultGCMargin). A pack whose live bytes fall under
// opts.Threshold (0: 0.5) has its live chunks rewritten into new packs and
// is then condemned with the dead ones (blobrewrite.go).
func (s *BlobStore) GC(ctx context.Context, live func(ID) bool, opts GCOptions) (GCStats, error) {
	var st GCStats
	if err := s.check(true); err != nil {
		return st, err
	}
	if err := s.refuseStrayJournal(ctx); err != nil {
		return st, err
	}
	if err := s.flushStaged(ctx); err != nil {
		return st, err
	}
	if s.local.exclusive() {
		return s.gcNow(ctx, live, opts) // a directory with no other writer: dirgc.go
	}
	margin := opts.Margin
	if margin == 0 {
		margin = DefaultGCMargin
	}
	leaseTimeout := opts.LeaseTimeout
	if leaseTimeout == 0 {
		leaseTimeout = DefaultGCLeaseTimeout
	}
	view := s.viewTime.Load()
	if !opts.DryRun {
		if err := s.takeLease(ctx, leaseTimeout); err != nil {
			return st, err
		}
		defer s.beatLease(ctx, leaseTimeout/4)()
	}
	lists, err := s.gcLists(ctx)
	if err != nil {
		return st, err
	}
	for _, n := range slices.Sorted(maps.Keys(lists)) {
		if l := lists[n]; l.damaged != nil {
			return st, fmt.Errorf("%s: %s: %w (%v): gc cannot tell what it condemned; nothing was swept or marked, run engram repair", s.bs, n, ErrListDamaged, l.damaged)
		}
	}
	packs, err := s.gcPacks(ctx, live, &st)
	if err != nil {
		return st, err
	}
	// Pack objects without a segment (a writer killed between the two),
	// but for those whose segment copy holds needed chunks (neededOrphans).
	var orphans []ID
	orphanSize := map[ID]int64{}
	// A pack whose damaged segment the view skipped holds chunks gc cannot
	// know: it is kept, neither marked nor swept, until repair.
	var skipped map[ID]error
	if d := s.damage.Load(); d != nil {
		skipped = d.segs
	}
	err = s.bs.List(ctx, blobPacksPrefix, func(in blob.Info) error {
		i := strings.LastIndexByte(in.Name, '/')
		h, err := ParseID(in.Name[i+1:])
		if err == nil && packs[h] == nil && skipped[h] == nil {
			orphans = append(orphans, h)
			orphanSize[h] = in.Size
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	keep, err := s.neededOrphans(ctx, orphans, orphanSize, live)
	if err != nil {
		return st, err
	}
	orphans = slices.DeleteFunc(orphans, func(h ID) bool { return keep[h] })
	st.Unindexed = s.packNames(keep)
	pending := map[ID]bool{} // condemned by a list not yet due, or swept now
	names := make([]string, 0, len(lists))
	for n := range lists {
		names = append(names, n)
	}
	sort.Strings(names)
	// A record committed since this view (by a writer that passed its
	// commit check before a mark) is not in live: sweep nothing this run.
	changed, err := s.catalogChangedSinceView(ctx)
	if err != nil {
		return st, err
	}
	// Phase 2 of earlier runs: sweep.
	for _, n := range names {
		l := lists[n]
		if !strings.HasPrefix(n, gcPendingPrefix) {
			continue
		}
		if l.Time+l.Margin > view || changed {
			for _, p := range append(slices.Clone(l.Packs), l.Orphans...) {
				if h, err := ParseID(p); err == nil {
					pending[h] = true
				}
			}
			continue
		}
		for _, p := range l.Packs {
			h, err := ParseID(p)
			if err != nil {
				continue
			}
			pi := packs[h]
			if pi == nil || pi.live {
				continue // gone already, or live again: reprieved
			}
			st.PacksDeleted++
			st.BytesFreed += pi.size
			pending[h] = true
			if opts.DryRun {
				continue
			}
			// Segment first: a pack nothing indexes is an orphan, a segment
			// without its pack would be damage.
			if err := s.bs.Delete(ctx, indexObject(h)); err != nil {
				return st, err
			}
			if err := s.bs.Delete(ctx, packObject(h)); err != nil {
				return st, err
			}
		}
		for _, p := range l.Orphans {
			h, err := ParseID(p)
			if err != nil || packs[h] != nil || keep[h] {
				continue // its segment arrived (judged as a pack next time), or it holds needed chunks
			}
			// Looked at again under the lease, not as of this view: a
			// writer stalled between its pack and its segment may have put
			// the segment since this view listed index/. Deleting the pack
			// now would leave a segment naming a missing pack, which every
			// later view indexes and writers deduplicate against. A writer
			// whose segment lands after this look finds its pack gone once
			// this run's lease is released, and puts it again
			// (packsLanded).
			if _, err := s.bs.Get(ctx, indexObject(h), 0, 1); err == nil || errors.Is(err, blob.ErrRange) {
				continue
			} else if !errors.Is(err, blob.ErrNotExist) {
				return st, err
			}
			st.PacksDeleted++
			pending[h] = true
			if opts.DryRun {
				continue
			}
			if err := s.bs.Delete(ctx, packObject(h)); err != nil {
				return st, err
			}
		}
		if opts.DryRun {
			continue
		}
		done, _ := json.Marshal(gcList{V: gcListVersion, Time: l.Time, Margin: l.Margin})
		if err := s.bs.Put(ctx, gcDonePrefix+n[len(gcPendingPrefix):], done); err != nil && !errors.Is(err, blob.ErrExist) {
			return st, err
		}
		if err := s.bs.Delete(ctx, n); err != nil {
			return st, err
		}
	}
	// Done markers outlive their sweep by DefaultGCMargin, so a writer
	// whose view predates the mark still sees it (checkCommit).
	now := s.now()
	for _, n := range names {
		l := lists[n]
		if strings.HasPrefix(n, gcDonePrefix) && now > l.Time+l.Margin+int64(DefaultGCMargin) && !opts.DryRun {
			if err := s.bs.Delete(ctx, n); err != nil {
				return st, err
			}
		}
	}
	// Rewrite the live chunks of packs under the threshold, so that they
	// can be condemned with the dead ones.
	rewritten, damaged, err := s.rewriteSparse(ctx, packs, pending, live, opts, &st)
	if err != nil {
		// What is written is duplicates, merged like any and removed by a
		// later gc; nothing is condemned this run.
		return st, errors.Join(err, damaged)
	}
	// Phase 1: mark (timed after the rewrite, which may take a while: the
	// margin runs from when the list can be seen).
	now = s.now()
	mark := gcList{V: gcListVersion, Time: now, Margin: int64(margin)}
	for h, pi := range packs {
		if !pi.live && !pending[h] {
			mark.Packs = append(mark.Packs, h.String())
		}
	}
	for _, h := range rewritten {
		mark.Packs = append(mark.Packs, h.String())
	}
	for _, h := range orphans {
		if !pending[h] {
			mark.Orphans = append(mark.Orphans, h.String())
		}
	}
	sort.Strings(mark.Packs)
	sort.Strings(mark.Orphans)
	if (len(mark.Packs) > 0 || len(mark.Orphans) > 0) && !opts.DryRun {
		body, err := json.Marshal(mark)
		if err != nil {
			return st, err
		}
		name := fmt.Sprintf("%s%016x-%s", gcPendingPrefix, now, Sum(body).String()[:16])
		if err := s.bs.Put(ctx, name, body); err != nil && !errors.Is(err, blob.ErrExist) {
			return st, err
		}
	}
	if opts.DryRun {
		return st, nil
	}
	// Unfinished multipart uploads older than the margin (never engram's
	// own: it uploads in one request) cost storage for nothing.
	if ua, ok := s.bs.(blob.UploadAborter); ok {
		n, err := ua.AbortStaleUploads(ctx, time.Now().Add(-margin))
		st.UploadsAborted += int64(n)
		if err != nil {
			return st, err
		}
	}
	if err := s.pruneNews(ctx); err != nil {
		return st, errors.Join(err, damaged)
	}
	return st, errors.Join(s.Refresh(ctx), damaged)
}

// catalogChangedSinceView reports whether meta/ holds a journal entry the
// cache has not applied.
func (s *BlobStore) catalogChangedSinceView(ctx context.Context) (bool, error) {
	applied := map[string]bool{}
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobMeta).ForEach(func(k, _ []byte) error { applied[string(k)] = true; return nil })
	})
	if err != nil {
		return false, err
	}
	changed := false
	err = s.bs.List(ctx, blobMetaPrefix, func(in blob.Info) error {
		if _, ok := parseJournalName(in.Name); ok && !applied[in.Name] {
			changed = true
			return errStopList
		}
		return nil
	})
	if errors.Is(err, errStopList) {
		err = nil
	}
	return changed, err
}

// parseSegment decodes the index segment b of pack h and works out the
// pack's size from it (header, frames, segment copy, footer).
func (s *BlobStore) parseSegment(h ID, b []byte) ([]indexed, int64, error) {
	ents, err := decodeSegment(b)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %s: %w: %w (engram repair replaces it from its pack)", s.bs, indexObject(h), ErrIndexDamaged, err)
	}
	size := int64(packHeaderSize)
	for _, x := range ents {
		size = max(size, x.e.FrameOff+int64(x.e.FrameLen))
	}
	return ents, size + int64(len(b)) + packFooterSize, nil
}
