package chunkstore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/zeebo/xxh3"
	bolt "go.etcd.io/bbolt"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// What other hosts stored since this host last looked (issue 12: four
// hosts ingesting clones of one template each uploaded the template).
//
// Every pack a writer commits is announced by an empty object
// news/T-H.pack (T: 16 hex digits of the writer's clock in ns, H the
// pack hash), written after the pack's index segment; before it
// compresses a batch a writer puts news/T-R.claim listing the chunk IDs
// it is about to store. news/ names sort by time, so a writer learns
// what is new with one LIST that starts after the newest name it saw
// (less newsWindow, for late arrivals and skewed clocks), not a listing
// of index/. It merges the announced packs into its cache before it
// decides what to store, and again before it uploads. Chunks that a live
// claim covers it does not compress: it stores its other chunks, then
// waits for the claimed ones to be announced, and stores itself whatever
// is still missing once no live claim covers it (a claim lives claimWait
// from when this process first saw it, so a dead claimer costs a wait,
// never a chunk). Of two hosts whose claims race, the later name yields
// the chunks both cover, once it has listed the earlier one.
//
// Safety does not rest on any of this: a chunk is skipped only when the
// cache indexes it from a committed pack and segment (merged as a
// full Refresh would, the condemned packs of the gc lists the cache
// holds counting as missing for dedup), so a lost, late or garbled news
// object costs at most a duplicate that gc removes.
const (
	blobNewsPrefix = "news/"
	claimMagic     = "EGCL"
	claimVersion   = 1
	claimFixed     = 16 // magic, version, n, reserved
	// maxClaimChunks bounds a claim (2 MiB); a batch with more chunks is
	// stored without one.
	maxClaimChunks = 1 << 16
	maxClaimObject = claimFixed + maxClaimChunks*32 + 8
	// claimMinBytes: smaller batches (catalog chunks, a few pages) are
	// not worth a claim's PUT and LIST.
	claimMinBytes = 64 << 10
	// claimFirstPacks: a writer claims its first packs whatever it has
	// seen, as hosts started together have not seen each other yet.
	claimFirstPacks = 4
)

// newsState is one process's view of news/.
type newsState struct {
	// interval: polls closer together than this are skipped (LIST cost),
	// aloneInterval when no other writer was seen lately;
	// window: how far behind the newest name seen a listing starts;
	// claimWait: how long a claim holds off this process. Fields, not
	// constants, for tests.
	interval, aloneInterval, window, claimWait time.Duration

	pollMu sync.Mutex       // one poll at a time
	mu     sync.Mutex       // guards the rest
	after  int64            // list news/ names from this time on (0: not set)
	last   time.Time        // when the last poll listed
	seen   map[string]int64 // names listed or written, by time; pruned behind after
	// packs this process announced, and when it last listed a name it did
	// not write: a writer that is alone (not in its first packs, nothing
	// foreign for claimWait) writes no claims.
	packs       int
	lastForeign time.Time
	since       int64           // the first Refresh's start (clock of names, ns)
	claims      map[ID][]*claim // chunk -> the claims that cover it
	stats       NewsStats
}

// NewsStats counts what news/ saved this process (for tests and
// benchmarks).
type NewsStats struct {
	Polls         int // listings of news/
	PacksMerged   int // packs learned from news/ between refreshes
	ClaimsWritten int
	ClaimsSeen    int   // other writers' claims read
	Waited        int   // chunks held back for another writer's claim
	Skipped       int   // held chunks another writer stored meanwhile
	FramesDropped int   // frames compressed but found stored before upload
	BytesSkipped  int64 // raw bytes of Skipped and of the dropped frames
}

type claim struct {
	name string
	seen time.Time // when this process first saw (or wrote) it
	ids  []ID
	done bool // this process's own claim whose PutMany has returned
}

func newNewsState() *newsState {
	return &newsState{interval: 50 * time.Millisecond, aloneInterval: time.Second, window: 2 * time.Second, claimWait: 10 * time.Second,
		seen: map[string]int64{}, claims: map[ID][]*claim{}}
}

// NewsStats returns what news/ saved this process so far.
func (s *BlobStore) NewsStats() NewsStats {
	s.news.mu.Lock()
	defer s.news.mu.Unlock()
	return s.news.stats
}

// wall is the time claims expire by: s.clock in tests, so that they
// expire by the test's clock and not by how fast the test runs.
func (s *BlobStore) wall() time.Time {
	if s.clock != nil {
		return s.clock()
	}
	return time.Now()
}

func newsTimeName(t int64) string { return fmt.Sprintf("%s%016x", blobNewsPrefix, max(t, 0)) }

// parseNewsName returns the time of a news/ name, the pack hash of a
// pack announcement, and whether it is a claim.
func parseNewsName(name string) (t int64, pack ID, isClaim, ok bool) {
	rest, found := strings.CutPrefix(name, blobNewsPrefix)
	if !found || len(rest) < 18 || rest[16] != '-' {
		return 0, pack, false, false
	}
	v, err := strconv.ParseUint(rest[:16], 16, 63)
	if err != nil {
		return 0, pack, false, false
	}
	rest = rest[17:]
	if r, ok := strings.CutSuffix(rest, ".claim"); ok {
		_, err := hex.DecodeString(r)
		return int64(v), pack, true, err == nil && len(r) == 16
	}
	if r, ok := strings.CutSuffix(rest, ".pack"); ok {
		h, err := ParseID(r)
		return int64(v), h, false, err == nil && len(r) == 64
	}
	return 0, pack, false, false
}

func encodeClaim(ids []ID) []byte {
	b := make([]byte, claimFixed, claimFixed+len(ids)*32+8)
	copy(b, claimMagic)
	binary.LittleEndian.PutUint32(b[4:], claimVersion)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(ids)))
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return binary.LittleEndian.AppendUint64(b, xxh3.Hash(b))
}

// decodeClaim checks and decodes a claim body; the count is checked
// against the body's size before anything is allocated.
func decodeClaim(b []byte) ([]ID, error) {
	if len(b) < claimFixed+8 || string(b[:4]) != claimMagic {
		return nil, errors.New("not a claim")
	}
	if v := binary.LittleEndian.Uint32(b[4:]); v != claimVersion {
		return nil, fmt.Errorf("claim version %d, this program reads %d", v, claimVersion)
	}
	n := uint64(binary.LittleEndian.Uint32(b[8:]))
	if n > maxClaimChunks || uint64(len(b)) != claimFixed+n*32+8 {
		return nil, fmt.Errorf("claim of %d bytes cannot hold %d chunk IDs", len(b), n)
	}
	if sum := binary.LittleEndian.Uint64(b[len(b)-8:]); sum != xxh3.Hash(b[:len(b)-8]) {
		return nil, errors.New("claim checksum mismatch")
	}
	out := make([]ID, n)
	for i := range out {
		copy(out[i][:], b[claimFixed+32*i:])
	}
	return out, nil
}

// newsFrom moves the listing cursor to t less the window (Refresh has
// merged every segment listed at t); it never moves back.
func (s *BlobStore) newsFrom(t int64) {
	n := s.news
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.since == 0 {
		n.since = t
	}
	n.after = max(n.after, t-int64(n.window))
}

// pollNews lists news/ past the cursor (unless the last listing is less
// than interval old and force is false), merges the packs announced that
// the cache lacks and records the claims.
func (s *BlobStore) pollNews(ctx context.Context, force bool) error {
	if s.soleWriter {
		return nil
	}
	n := s.news
	n.pollMu.Lock()
	defer n.pollMu.Unlock()
	n.mu.Lock()
	if now := s.wall(); !force && now.Sub(n.last) < n.intervalLocked(now) {
		n.mu.Unlock()
		return nil
	}
	after := newsTimeName(n.after)
	if n.after == 0 {
		after = newsTimeName(s.now() - int64(n.window))
	}
	n.mu.Unlock()
	type item struct {
		name    string
		pack    ID
		isClaim bool
	}
	var items []item
	newest := int64(0)
	err := s.bs.ListAfter(ctx, blobNewsPrefix, after, func(in blob.Info) error {
		t, h, isClaim, ok := parseNewsName(in.Name)
		if !ok {
			return nil
		}
		newest = max(newest, t)
		n.mu.Lock()
		_, dup := n.seen[in.Name]
		n.mu.Unlock()
		if !dup {
			items = append(items, item{in.Name, h, isClaim})
		}
		return nil
	})
	if err != nil {
		return err
	}
	now := s.wall()
	var packs []ID
	var claims []*claim
	for _, it := range items {
		if !it.isClaim {
			packs = append(packs, it.pack)
			continue
		}
		b, err := blob.ReadAll(ctx, s.bs, it.name, maxClaimObject)
		if errors.Is(err, blob.ErrNotExist) {
			continue // pruned
		}
		if err != nil {
			return err
		}
		ids, err := decodeClaim(b)
		if err != nil {
			continue // a claim that does not decode holds nothing off
		}
		claims = append(claims, &claim{name: it.name, seen: now, ids: ids})
	}
	merged, err := s.mergeNewPacks(ctx, packs)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.last = now
	n.stats.Polls++
	for _, it := range items {
		// Names from before this process's first refresh are history, not
		// a writer working beside this one.
		if t, _, _, _ := parseNewsName(it.name); n.since != 0 && t >= n.since {
			n.lastForeign = now
		}
	}
	n.stats.PacksMerged += merged
	for _, it := range items {
		t, _, _, _ := parseNewsName(it.name)
		n.seen[it.name] = t
	}
	for _, c := range claims {
		n.stats.ClaimsSeen++
		for _, id := range c.ids {
			n.claims[id] = append(n.claims[id], c)
		}
	}
	if newest > 0 {
		// Not past this host's own clock: a host whose clock runs ahead
		// must not make the others skip what is announced meanwhile.
		n.after = max(n.after, min(newest, s.now())-int64(n.window))
	}
	for name, t := range n.seen {
		if t < n.after {
			delete(n.seen, name)
		}
	}
	for id, cs := range n.claims {
		live := cs[:0]
		for _, c := range cs {
			if !n.expired(c, now) {
				live = append(live, c)
			}
		}
		if len(live) == 0 {
			delete(n.claims, id)
		} else {
			n.claims[id] = live
		}
	}
	return nil
}

// intervalLocked is the poll interval: interval while other writers are
// about, aloneInterval once nothing foreign was listed for claimWait.
func (n *newsState) intervalLocked(now time.Time) time.Duration {
	if n.alone(now) {
		return n.aloneInterval
	}
	return n.interval
}

// alone says that this writer has written its first packs and has seen
// nothing of other writers for claimWait: it then neither claims nor
// polls often.
func (n *newsState) alone(now time.Time) bool {
	return n.packs >= claimFirstPacks && now.Sub(n.lastForeign) >= n.claimWait
}

func (n *newsState) expired(c *claim, now time.Time) bool {
	return c.done || now.Sub(c.seen) >= n.claimWait
}

// mergeNewPacks reads the segments of the announced packs the cache
// lacks and merges them as Refresh would.
func (s *BlobStore) mergeNewPacks(ctx context.Context, packs []ID) (int, error) {
	if len(packs) == 0 {
		return 0, nil
	}
	// Under refreshMu: a Refresh between its listing of index/ and its
	// look at the cache would take a pack merged here for one gc swept.
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	var todo []ID
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		for _, h := range packs {
			if tx.Bucket(bucketBlobHash).Get(h[:]) == nil {
				todo = append(todo, h)
			}
		}
		return nil
	})
	if err != nil || len(todo) == 0 {
		return 0, err
	}
	segs := map[ID][]byte{}
	for _, h := range todo {
		b, err := blob.ReadAll(ctx, s.bs, indexObject(h), maxSegment)
		if errors.Is(err, blob.ErrNotExist) {
			continue // swept since
		}
		if err != nil {
			return 0, err
		}
		if _, err := decodeSegment(b); err != nil && s.degraded() && !errors.Is(err, ErrFormatVersion) {
			// As a refresh does (degraded.go): its chunks are stored again.
			s.skipSegment(newRefreshDamage(), h, err)
			continue
		}
		segs[h] = b
	}
	merged := 0
	err = s.db.update(ctx, func(tx *bolt.Tx) error {
		// The condemned packs as of the gc lists this cache holds; a list
		// it has not seen yet makes the next Refresh rebuild (and the
		// commit check refuse when its margin has passed).
		lists := map[string]*gcList{}
		_ = tx.Bucket(bucketBlobGC).ForEach(func(k, v []byte) error {
			if l, err := decodeGCList(v); err == nil {
				lists[string(k)] = l
			}
			return nil
		})
		cond := condemnedSet(lists)
		for _, h := range todo {
			b, ok := segs[h]
			if !ok {
				continue
			}
			ents, size, err := s.parseSegment(h, b)
			if err != nil {
				return err
			}
			if tx.Bucket(bucketBlobHash).Get(h[:]) == nil {
				merged++
			}
			if _, err := mergeSegment(tx, h, size, ents, b, cond[h], nil); err != nil {
				return err
			}
		}
		return nil
	})
	return merged, err
}

// claimFor splits fresh into the chunks this call stores (mine, under a
// claim it writes when they are worth one) and those a live claim of
// another call (this process's or another host's) covers.
func (s *BlobStore) claimFor(ctx context.Context, fresh []Chunk) (mine, held []Chunk, own *claim, err error) {
	if s.soleWriter {
		return fresh, nil, nil, nil
	}
	n := s.news
	// A chunk indexed in a condemned copy is stored again, but its claim
	// is over: the claimer stored it, and nobody else will.
	indexed, err := s.has(ctx, chunkIDs(fresh), false)
	if err != nil {
		return nil, nil, nil, err
	}
	now := s.wall()
	n.mu.Lock()
	for i, c := range fresh {
		if !indexed[i] && n.coveredLocked(c.ID, nil, now) {
			held = append(held, c)
		} else {
			mine = append(mine, c)
		}
	}
	n.mu.Unlock()
	raw := 0
	for _, c := range mine {
		raw += len(c.Data)
	}
	n.mu.Lock()
	alone := n.alone(now)
	n.mu.Unlock()
	if alone || raw < claimMinBytes || len(mine) > maxClaimChunks {
		return mine, held, nil, nil
	}
	ids := chunkIDs(mine)
	var r [8]byte
	_, _ = rand.Read(r[:])
	t := max(s.now(), 0)
	own = &claim{name: fmt.Sprintf("%s%016x-%s.claim", blobNewsPrefix, t, hex.EncodeToString(r[:])), seen: now, ids: ids}
	// Known before it is in the bucket, or a poll of another call would
	// read it back as a stranger's.
	n.mu.Lock()
	n.seen[own.name] = t
	n.stats.ClaimsWritten++
	for _, id := range ids {
		n.claims[id] = append(n.claims[id], own)
	}
	n.mu.Unlock()
	if err := s.bs.Put(ctx, own.name, encodeClaim(ids)); err != nil && !errors.Is(err, blob.ErrExist) {
		s.release(own)
		return nil, nil, nil, fmt.Errorf("chunkstore: writing claim: %w", err)
	}
	// Claims that raced ours: the earlier name keeps what both cover.
	if err := s.pollNews(ctx, true); err != nil {
		return nil, nil, nil, err
	}
	have, err := s.has(ctx, ids, true)
	if err != nil {
		s.release(own)
		return nil, nil, nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	keep := mine[:0]
	for i, c := range mine {
		switch {
		case have[i]: // announced meanwhile
		case n.coveredLocked(c.ID, own, now):
			held = append(held, c)
		default:
			keep = append(keep, c)
		}
	}
	return keep, held, own, nil
}

// coveredLocked says whether a live claim other than own covers id (with
// own set: a claim whose name sorts before own's).
func (n *newsState) coveredLocked(id ID, own *claim, now time.Time) bool {
	for _, c := range n.claims[id] {
		if c == own || n.expired(c, now) {
			continue
		}
		if own == nil || c.name < own.name {
			return true
		}
	}
	return false
}

func chunkIDs(cs []Chunk) []ID {
	out := make([]ID, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}

// release marks a claim of this process done: its chunks are stored, or
// its PutMany failed and nobody should wait for them any longer.
func (s *BlobStore) release(c *claim) {
	if c == nil {
		return
	}
	s.news.mu.Lock()
	c.done = true
	s.news.mu.Unlock()
}

// awaitHeld waits while a live claim covers one of held and the cache
// does not index it, polling news/, and returns the chunks still missing
// (to be stored by the caller).
func (s *BlobStore) awaitHeld(ctx context.Context, held []Chunk) ([]Chunk, error) {
	n := s.news
	n.mu.Lock()
	n.stats.Waited += len(held)
	n.mu.Unlock()
	total, count := 0, len(held)
	for _, c := range held {
		total += len(c.Data)
	}
	for {
		ids := chunkIDs(held)
		have, err := s.has(ctx, ids, true)
		if err != nil {
			return nil, err
		}
		indexed, err := s.has(ctx, ids, false)
		if err != nil {
			return nil, err
		}
		missing := held[:0]
		var pending []bool // still worth waiting for
		for i, c := range held {
			if !have[i] {
				missing = append(missing, c)
				pending = append(pending, !indexed[i])
			}
		}
		held = missing
		now := s.wall()
		n.mu.Lock()
		waiting := false
		for i, c := range held {
			if pending[i] && n.coveredLocked(c.ID, nil, now) {
				waiting = true
				break
			}
		}
		if !waiting {
			left := 0
			for _, c := range held {
				left += len(c.Data)
			}
			n.stats.Skipped += count - len(held)
			n.stats.BytesSkipped += int64(total - left)
			n.mu.Unlock()
			return held, nil
		}
		n.mu.Unlock()
		t := time.NewTimer(n.interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		if err := s.pollNews(ctx, false); err != nil {
			return nil, err
		}
	}
}

// dropStored leaves out the frames whose chunks the cache indexes now
// (another host stored them while this one compressed): uploading them
// would only make duplicates. Under claim own it also yields (drops and
// returns the chunks of) the frames whose every chunk is missing and
// covered by an earlier claim listed only now: a claim's name carries the
// time before its PUT, so two hosts that claim at once can each list the
// other's claim only after their own check, and then the later name must
// still give way, or both upload.
func (s *BlobStore) dropStored(ctx context.Context, frames []encFrame, own *claim) ([]encFrame, []Chunk, error) {
	if s.soleWriter {
		return frames, nil, nil
	}
	if err := s.pollNews(ctx, own != nil); err != nil {
		return nil, nil, err
	}
	var ids []ID
	for _, fr := range frames {
		for _, c := range fr.chunks {
			ids = append(ids, c.ID)
		}
	}
	have, err := s.has(ctx, ids, true)
	if err != nil {
		return nil, nil, err
	}
	keep := frames[:0]
	i := 0
	var dropped int
	var raw int64
	var yielded []Chunk
	now := s.wall()
	for _, fr := range frames {
		all, claimed := true, own != nil
		var r int64
		s.news.mu.Lock()
		for _, c := range fr.chunks {
			all = all && have[i]
			claimed = claimed && !have[i] && s.news.coveredLocked(c.ID, own, now)
			i++
		}
		s.news.mu.Unlock()
		if claimed {
			yielded = append(yielded, fr.chunks...)
			continue
		}
		if all {
			for _, c := range fr.chunks {
				r += int64(len(c.Data))
			}
			dropped++
			raw += r
			continue
		}
		keep = append(keep, fr)
	}
	if dropped > 0 {
		s.news.mu.Lock()
		s.news.stats.FramesDropped += dropped
		s.news.stats.BytesSkipped += raw
		s.news.mu.Unlock()
	}
	return keep, yielded, nil
}

// announce writes news/T-H.pack for a pack whose segment is in the
// bucket. It is advice to other writers, so a failure is not an error:
// they learn of the pack at their next Refresh.
func (s *BlobStore) announce(ctx context.Context, h ID) {
	if s.soleWriter {
		return
	}
	t := max(s.now(), 0)
	name := fmt.Sprintf("%s%016x-%s.pack", blobNewsPrefix, t, h)
	s.news.mu.Lock()
	s.news.seen[name] = t
	s.news.packs++
	s.news.mu.Unlock()
	_ = s.bs.Put(ctx, name, nil)
}

// newsKeep is how long gc keeps news/ objects: they advise writers
// working at the same moment (claimWait, newsWindow), never later ones.
const newsKeep = time.Hour

// pruneNews deletes the news/ objects older than newsKeep (by this
// host's clock); gc calls it.
func (s *BlobStore) pruneNews(ctx context.Context) error {
	cut := newsTimeName(s.now() - int64(newsKeep))
	var old []string
	err := s.bs.List(ctx, blobNewsPrefix, func(in blob.Info) error {
		if in.Name < cut {
			old = append(old, in.Name)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, name := range old {
		if err := s.bs.Delete(ctx, name); err != nil {
			return err
		}
	}
	return nil
}
