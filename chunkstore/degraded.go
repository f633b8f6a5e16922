package chunkstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sync/errgroup"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// Degraded refreshes of a bucket (BlobOpenOptions.Warn). A bucket is read
// by many hosts at once, and every refresh reads each segment, journal
// entry and list it has not seen: one damaged object would stop every
// command on every host, repair included. With Warn set a refresh skips
// it instead, and each skip is made safe where it matters:
//
//   - a damaged index/H: that pack's chunks are unknown to this cache, so
//     a writer stores them again and a reader gets not-found; gc cannot
//     tell what the pack holds, so it never marks or sweeps it (GC).
//   - a damaged meta/ entry: what it did is missing from this catalog; gc
//     counts it as a record its view lacks and sweeps nothing
//     (catalogChangedSinceView), so no chunk it names is swept.
//   - a damaged gc/ list: which packs it condemned or swept is unknown, so
//     every commit check refuses (checkView) and gc refuses to run.
//   - a damaged damaged/ list: its frames stay indexed; reading them fails
//     their checks as before repair listed them.
//
// engram repair, holding the gc lease, replaces or removes them
// (fixBucket).

// refreshDamage is what one refresh skipped, by object name.
type refreshDamage struct {
	segs    map[ID]error
	journal map[string]error
	lists   map[string]error
}

func newRefreshDamage() *refreshDamage {
	return &refreshDamage{segs: map[ID]error{}, journal: map[string]error{}, lists: map[string]error{}}
}

func (s *BlobStore) degraded() bool { return s.warn != nil }

// warnOnce tells the user about a skipped object once per process, not
// at every refresh of a long-running one.
func (s *BlobStore) warnOnce(name, msg string) {
	if _, seen := s.warned.LoadOrStore(name, true); !seen && s.warn != nil {
		s.warn(msg)
	}
}

func (s *BlobStore) skipSegment(d *refreshDamage, h ID, err error) {
	d.segs[h] = err
	s.warnOnce(indexObject(h), fmt.Sprintf("%s/%s: index segment damaged (%v); skipped: this host does not know that pack's chunks until `engram repair` replaces it", s.bs, indexObject(h), err))
}

func (s *BlobStore) skipJournal(d *refreshDamage, name string, err error) {
	d.journal[name] = err
	s.warnOnce(name, fmt.Sprintf("%s/%s: catalog journal entry damaged (%v); skipped: what it recorded is missing and gc sweeps nothing until `engram repair`", s.bs, name, err))
}

func (s *BlobStore) skipList(d *refreshDamage, name string, err error) {
	if d != nil {
		d.lists[name] = err
	}
	what := "commits and gc are refused"
	if strings.HasPrefix(name, blobDamagePrefix) {
		what = "its frames stay indexed"
	}
	s.warnOnce(name, fmt.Sprintf("%s/%s: list damaged (%v); skipped: %s until `engram repair` replaces it", s.bs, name, err, what))
}

// checkJournalBody is applyJournal's parse without the apply, so that a
// refresh can skip an entry no program can apply. An entry of a newer
// version is not damage (ErrFormatVersion).
func checkJournalBody(b []byte) error {
	var j journal
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	if j.V > journalVersion {
		return fmt.Errorf("journal version %d: %w", j.V, ErrFormatVersion)
	} else if j.V != journalVersion {
		return fmt.Errorf("bad journal version %d", j.V)
	}
	for _, op := range j.Ops {
		if op.Op != "put" && op.Op != "del" {
			return fmt.Errorf("unknown journal op %q", op.Op)
		}
	}
	return nil
}

// journalParallel is how many journal entries are read at once: a new
// cache reads every entry, one small GET each, so one at a time would
// cost a round trip per commit ever made in the bucket.
const journalParallel = 16

// journalRead is one entry as fetchJournal found it.
type journalRead struct {
	body    []byte
	gone    bool  // removed (by repair) since the listing
	bad     error // damaged: too large, or not what its name's hash says
	bodyErr error // checkJournalBody's verdict on an intact entry
}

// fetchJournal reads and checks the entries names, journalParallel at a
// time. err is a failure to reach the store (not damage), the first in
// name order.
func (s *BlobStore) fetchJournal(ctx context.Context, names []string) ([]journalRead, error) {
	out := make([]journalRead, len(names))
	errs := make([]error, len(names))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(journalParallel)
	for i, name := range names {
		g.Go(func() error {
			b, err := blob.ReadAll(gctx, s.bs, name, maxJournalObject)
			switch {
			case errors.Is(err, blob.ErrNotExist):
				out[i].gone = true
			case err != nil && !errors.Is(err, blob.ErrRange):
				errs[i] = err
				return err
			case err == nil:
				out[i].body, out[i].bad = b, journalIntact(name, b)
				if out[i].bad == nil {
					out[i].bodyErr = checkJournalBody(b)
				}
			default:
				out[i].bad = err
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		// The first failure in name order that is not the others being
		// called off because of it.
		for _, e := range errs {
			if e != nil && (ctx.Err() != nil || !errors.Is(e, context.Canceled)) {
				return nil, e
			}
		}
		return nil, err
	}
	return out, nil
}

// readJournal reads the entries names into bodies (those not there yet).
// An entry gone since the listing (repair removed it) is left out; a
// damaged one fails the refresh, or is skipped when degraded.
func (s *BlobStore) readJournal(ctx context.Context, names []string, bodies map[string][]byte, d *refreshDamage) error {
	var want []string
	for _, name := range names {
		if _, ok := bodies[name]; !ok && d.journal[name] == nil {
			want = append(want, name)
		}
	}
	got, err := s.fetchJournal(ctx, want)
	if err != nil {
		return err
	}
	for i, name := range want {
		r := got[i]
		if r.gone {
			continue
		}
		err := r.bad
		if err == nil && s.degraded() {
			// Degraded, a body this version cannot apply is skipped too,
			// but one of a newer format still stops the refresh.
			if errors.Is(r.bodyErr, ErrFormatVersion) {
				return fmt.Errorf("%s: %s: %w", s.bs, name, r.bodyErr)
			}
			err = r.bodyErr
		}
		if err != nil {
			if !s.degraded() {
				return fmt.Errorf("%s: %s: %w: %w (engram repair removes it and rebuilds the catalog)", s.bs, name, ErrJournalDamaged, err)
			}
			s.skipJournal(d, name, err)
			continue
		}
		bodies[name] = r.body
	}
	return nil
}

// emitDamage reports what the last refresh skipped as verify problems.
func (s *BlobStore) emitDamage(emit func(Problem)) {
	d := s.damage.Load()
	if d == nil {
		return
	}
	var ps []Problem
	for h, err := range d.segs {
		ps = append(ps, Problem{Pack: s.bs.String() + "/" + indexObject(h), Err: fmt.Errorf("index segment damaged (%v); engram repair replaces it from its pack", err)})
	}
	for n, err := range d.journal {
		ps = append(ps, Problem{Pack: s.bs.String() + "/" + n, Err: fmt.Errorf("catalog journal entry damaged (%v); engram repair removes it and rebuilds the catalog", err)})
	}
	for n, err := range d.lists {
		ps = append(ps, Problem{Pack: s.bs.String() + "/" + n, Err: fmt.Errorf("list damaged (%v); engram repair replaces it", err)})
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Pack < ps[j].Pack })
	for _, p := range ps {
		emit(p)
	}
}

// verifyJournal reads every journal entry but those the last refresh
// skipped (emitDamage names them): a cache that applied an entry before
// it was damaged never reads it again, so only verify tells that host.
func (s *BlobStore) verifyJournal(ctx context.Context, emit func(Problem)) error {
	names, err := journalNames(ctx, s.bs)
	if err != nil {
		return err
	}
	if d := s.damage.Load(); d != nil {
		names = slices.DeleteFunc(names, func(n string) bool { return d.journal[n] != nil })
	}
	got, err := s.fetchJournal(ctx, names)
	if err != nil {
		return err
	}
	for i, n := range names {
		err := got[i].bad
		if err == nil && !errors.Is(got[i].bodyErr, ErrFormatVersion) {
			err = got[i].bodyErr
		}
		if err != nil {
			emit(Problem{Pack: s.bs.String() + "/" + n, Err: fmt.Errorf("catalog journal entry damaged (%v); engram repair removes it and rebuilds the catalog", err)})
		}
	}
	return nil
}

// verifyStrays names what sits where a journal entry or an index segment
// belongs but is no object (a directory in a directory store): a listing
// skips it, so without this the entry it replaced was simply absent and
// verify said the store was fine.
func (s *BlobStore) verifyStrays(ctx context.Context, emit func(Problem)) error {
	sl, ok := s.bs.(blob.StrayLister)
	if !ok {
		return nil
	}
	kinds := []struct {
		prefix, what, fix string
		ours              func(string) bool
	}{
		{blobMetaPrefix, "catalog journal entry", "engram repair then rebuilds the catalog from catalog chunks",
			func(n string) bool { _, ok := parseJournalName(n); return ok }},
		{blobIndexPrefix, "index segment", "engram repair then replaces it from its pack",
			func(n string) bool { _, err := ParseID(strings.TrimPrefix(n, blobIndexPrefix)); return err == nil }},
	}
	var ps []Problem
	for _, k := range kinds {
		err := sl.ListStrays(ctx, k.prefix, func(n, what string) error {
			if k.ours(n) {
				ps = append(ps, Problem{Pack: s.bs.String() + "/" + n,
					Err: fmt.Errorf("%s unreadable: %s, not an object file; move it away, %s", k.what, what, k.fix)})
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Pack < ps[j].Pack })
	for _, p := range ps {
		emit(p)
	}
	return nil
}

// fixBucket is Repair's first step on a bucket, under the gc lease: the
// damaged objects a degraded refresh skips. A segment is replaced by the
// copy at the end of its pack (the same bytes its writer put, so hosts
// that merged it before the damage agree), a gc list by a done marker
// (fixBucketLists), a damage list is removed. Damaged journal entries are
// only reported, and this cache's catalog is replayed without them: the
// caller rebuilds the catalog from catalog chunks (MetadataLost) before
// RemoveDamagedJournal deletes them, so that no gc sweeps by a catalog
// that lacks their records in between (while they are listed, gc sweeps
// nothing).
func (s *BlobStore) fixBucket(ctx context.Context, rep *RepairReport) error {
	segs, err := fixSegments(ctx, s.bs)
	rep.Problems = append(rep.Problems, segs...)
	if err != nil {
		return err
	}
	lists, err := s.fixBucketLists(ctx)
	rep.Problems = append(rep.Problems, lists...)
	if err != nil {
		return err
	}
	names, err := journalNames(ctx, s.bs)
	if err != nil {
		return err
	}
	var bad []string
	for _, n := range names {
		b, err := blob.ReadAll(ctx, s.bs, n, maxJournalObject)
		if errors.Is(err, blob.ErrNotExist) {
			continue
		}
		if err != nil && !errors.Is(err, blob.ErrRange) {
			return err
		}
		if err == nil {
			if err = journalIntact(n, b); err == nil {
				if err = checkJournalBody(b); err == nil || errors.Is(err, ErrFormatVersion) {
					continue
				}
			}
		}
		bad = append(bad, n)
		rep.Problems = append(rep.Problems, Problem{Pack: s.bs.String() + "/" + n,
			Err: fmt.Errorf("catalog journal entry damaged (%v): removed once the catalog is rebuilt from catalog chunks", err)})
	}
	s.dropJournal.Store(&bad)
	if len(bad) > 0 {
		rep.MetadataLost = true
		// This cache may have applied them before the damage: replay the
		// journal without them, so that the rebuilt catalog journals what
		// they did.
		err := s.db.update(ctx, func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketUser, bucketBlobMeta} {
				if err := tx.DeleteBucket(b); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
					return err
				}
				if _, err := tx.CreateBucket(b); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if len(segs)+len(lists)+len(bad) == 0 {
		return nil
	}
	return s.Refresh(ctx)
}

// RemoveDamagedJournal deletes the journal entries the last Repair of a
// bucket found damaged, once the caller has rebuilt the catalog from
// catalog chunks (engram.RecoverCatalog), and returns what it removed.
func (s *BlobStore) RemoveDamagedJournal(ctx context.Context) ([]Problem, error) {
	p := s.dropJournal.Swap(nil)
	if p == nil || len(*p) == 0 {
		return nil, nil
	}
	// Read again: only what is still damaged goes.
	out, err := removeDamaged(ctx, s.bs, *p, maxJournalObject, func(n string, b []byte) error {
		if err := journalIntact(n, b); err != nil {
			return err
		}
		if err := checkJournalBody(b); err != nil && !errors.Is(err, ErrFormatVersion) {
			return err
		}
		return nil
	}, func(err error) error { return fmt.Errorf("catalog journal entry damaged (%v): removed", err) })
	if err != nil {
		return out, err
	}
	return out, s.Refresh(ctx)
}

// fixBucketLists replaces each gc list that cannot be read by a done
// marker of the same mark time with no margin, put before the damaged
// list is deleted: what the list condemned is unknown, so every writer
// whose view did not see the marker is refused once (checkView) rather
// than commit against a pack a sweep may have taken; a pack it condemned
// is marked again by the next gc. Unreadable damage lists are removed
// (verify finds the damage again, and Repair lists it anew).
func (s *BlobStore) fixBucketLists(ctx context.Context) ([]Problem, error) {
	names, err := gcNames(ctx, s.bs)
	if err != nil {
		return nil, err
	}
	var out []Problem
	for _, n := range names {
		b, err := blob.ReadAll(ctx, s.bs, n, maxGCList)
		if errors.Is(err, blob.ErrNotExist) {
			continue
		}
		if err != nil && !errors.Is(err, blob.ErrRange) {
			return out, err
		}
		if err == nil {
			if _, err = decodeGCList(b); err == nil || errors.Is(err, ErrFormatVersion) {
				continue
			}
		}
		_, t, _ := parseGCName(n)
		t = max(t, 1)
		body, _ := json.Marshal(gcList{V: gcListVersion, Time: t})
		done := fmt.Sprintf("%s%016x-%s", gcDonePrefix, t, Sum(body).String()[:16])
		if perr := s.bs.Put(ctx, done, body); perr != nil && !errors.Is(perr, blob.ErrExist) {
			return out, perr
		}
		if derr := s.bs.Delete(ctx, n); derr != nil {
			return out, derr
		}
		out = append(out, Problem{Pack: s.bs.String() + "/" + n,
			Err: fmt.Errorf("gc list damaged (%v): replaced by %s, which refuses commits of older views once", err, done)})
	}
	dmg, err := fixLists(ctx, s.bs, blobDamagePrefix)
	return append(out, dmg...), err
}

// damagedListCommitError is a commit check refused by a damaged gc list:
// both ErrStaleView (nothing was committed) and ErrListDamaged (running
// again does not help before repair), with a message saying so.
type damagedListCommitError struct{ msg string }

func (e *damagedListCommitError) Error() string { return e.msg }

func (e *damagedListCommitError) Is(target error) bool {
	return target == ErrStaleView || target == ErrListDamaged
}
