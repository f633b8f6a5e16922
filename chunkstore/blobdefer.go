package chunkstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Deferred durability (OpenOptions.DeferSync): PutMany of a directory
// store writes each pack and its segment to temporary files and returns;
// the fsyncs, links and the cache commit of all of them happen together at
// the next durable point: Update (before its journal object, the commit
// point), a read of a staged chunk (Get, GetMany, Lookup), a read of the
// whole index (Stats, ForEach, Verify, GC, Repair), Close, or when the staged packs pass
// stageMaxPacks, stageMaxBytes or stageMaxAge. Until then has() counts
// staged chunks as stored, so the writer's own dedup sees them. Order at
// a durable point (docs/DESIGN.md "Durability"): every staged file
// fsynced, then the packs linked and their directories fsynced, then the
// segments linked and index/ fsynced, then the cache commits (a
// transaction per pack, indexAhead). A crash
// before the links leaves only temporary files; after, the states of a
// crash between a pack and its segment in the synchronous path.

const (
	stageMaxPacks = 64
	stageMaxBytes = 256 << 20
	// stageMaxAge keeps staged files well clear of dir.Open's removal of
	// temporary files older than an hour, and bounds what a slow writer
	// holds back.
	stageMaxAge = 30 * time.Second
)

// stager is the staged write of blob/dir.
type stager interface {
	WriteTemp(ctx context.Context, parts ...[]byte) (string, error)
	SyncTemps(ctx context.Context, tmps []string) error
	LinkTemps(ctx context.Context, tmps, names []string) error
	RemoveTemps(tmps []string)
}

type stagedPack struct {
	h               ID
	size            int64
	ents            []indexed
	seg             []byte
	packTmp, segTmp string
}

type staging struct {
	st    stager
	n     atomic.Int64 // staged packs not yet committed to the cache
	flush sync.Mutex   // one durable point at a time, so a flush returns only once all earlier puts are indexed

	mu     sync.Mutex
	packs  []*stagedPack
	ids    map[ID]int // chunk -> staged packs holding it
	bytes  int64
	oldest time.Time
}

// stage writes a pack (its parts, size bytes in all) and its segment as
// temporary files and records them for the next durable point; it returns
// the number of chunks staged.
func (s *BlobStore) stage(ctx context.Context, h ID, pack [][]byte, size int64, seg []byte, ents []indexed) (int, error) {
	g := s.staged
	pt, err := g.st.WriteTemp(ctx, pack...)
	if err != nil {
		return 0, err
	}
	st, err := g.st.WriteTemp(ctx, seg)
	if err != nil {
		g.st.RemoveTemps([]string{pt})
		return 0, err
	}
	p := &stagedPack{h: h, size: size, ents: ents, seg: seg, packTmp: pt, segTmp: st}
	g.mu.Lock()
	if len(g.packs) == 0 {
		g.oldest = time.Now()
		// A writer that stalls (a long zero run, a slow source) still
		// makes its packs durable within stageMaxAge.
		time.AfterFunc(stageMaxAge, func() {
			if !s.closed.Load() {
				_ = s.flushStaged(context.Background())
			}
		})
	}
	g.packs = append(g.packs, p)
	g.n.Add(1)
	n := 0
	for _, x := range ents {
		if g.ids[x.id] == 0 {
			n++
		}
		g.ids[x.id]++
	}
	g.bytes += p.size
	full := len(g.packs) >= stageMaxPacks || g.bytes >= stageMaxBytes || time.Since(g.oldest) > stageMaxAge
	g.mu.Unlock()
	if full {
		return n, s.flushStaged(ctx)
	}
	return n, nil
}

// stagedHas marks in out the ids of staged packs.
func (s *BlobStore) stagedHas(ids []ID, out []bool) {
	g := s.staged
	if g == nil || g.n.Load() == 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, id := range ids {
		if g.ids[id] > 0 {
			out[i] = true
		}
	}
}

// flushFor runs a durable point when one of ids is staged: a read of it
// needs it indexed. Reads of anything else (an overlay's parent manifest,
// read while its new chunks are staged) leave the staged packs be.
func (s *BlobStore) flushFor(ctx context.Context, ids []ID) error {
	g := s.staged
	if g == nil || g.n.Load() == 0 {
		return nil
	}
	g.mu.Lock()
	hit := false
	for _, id := range ids {
		if g.ids[id] > 0 {
			hit = true
			break
		}
	}
	g.mu.Unlock()
	if !hit {
		return nil
	}
	return s.flushStaged(ctx)
}

// flushStaged is the durable point: it returns once every pack staged
// before the call is durable, named and in the cache.
func (s *BlobStore) flushStaged(ctx context.Context) error {
	g := s.staged
	if g == nil || g.n.Load() == 0 {
		return nil
	}
	packs, done, err := s.publishStaged(ctx)
	if err != nil || len(packs) == 0 {
		done(err)
		return err
	}
	ctx = context.WithoutCancel(ctx)
	if packs, err = s.indexAhead(ctx, packs); err == nil {
		err = s.db.update(ctx, func(tx *bolt.Tx) error { return indexStaged(tx, packs) })
	}
	done(err)
	return err
}

// publishStaged takes the staged packs and makes them durable under their
// names; the caller indexes them in a cache transaction (indexStaged) and
// then calls done with its outcome. Until done, other durable points wait,
// so each returns only once all earlier puts are indexed. Update indexes
// the last of them in the transaction of its journal object.
func (s *BlobStore) publishStaged(ctx context.Context) ([]*stagedPack, func(error), error) {
	g := s.staged
	if g == nil || g.n.Load() == 0 {
		return nil, func(error) {}, nil
	}
	g.flush.Lock()
	g.mu.Lock()
	packs := g.packs
	g.packs, g.bytes = nil, 0
	g.mu.Unlock()
	done := func(err error) {
		defer g.flush.Unlock()
		g.mu.Lock()
		defer g.mu.Unlock()
		if err != nil {
			// Kept staged: has() still answers for them, so nothing is
			// committed on top of them until a durable point succeeds
			// (linking and indexing again are harmless).
			g.packs = append(packs, g.packs...)
			for _, p := range packs {
				g.bytes += p.size
			}
			return
		}
		for _, p := range packs {
			for _, x := range p.ents {
				if g.ids[x.id]--; g.ids[x.id] <= 0 {
					delete(g.ids, x.id)
				}
			}
			g.st.RemoveTemps([]string{p.packTmp, p.segTmp})
		}
		g.n.Add(-int64(len(packs)))
	}
	if len(packs) == 0 {
		return nil, done, nil
	}
	ctx = context.WithoutCancel(ctx) // the packs are written: finish what a cancelled caller started
	tmps := make([]string, 0, 2*len(packs))
	packTmps, packNames := make([]string, len(packs)), make([]string, len(packs))
	segTmps, segNames := make([]string, len(packs)), make([]string, len(packs))
	for i, p := range packs {
		packTmps[i], packNames[i] = p.packTmp, packObject(p.h)
		segTmps[i], segNames[i] = p.segTmp, indexObject(p.h)
		tmps = append(tmps, p.packTmp, p.segTmp)
	}
	err := g.st.SyncTemps(ctx, tmps)
	// Packs first, then their segments: a segment never names a pack that
	// is not there.
	t0 := s.now()
	if err == nil {
		err = testKillDuring("pack-put", func() error { return g.st.LinkTemps(ctx, packTmps, packNames) })
	}
	if err == nil {
		testKill("after-pack")
		err = g.st.LinkTemps(ctx, segTmps, segNames)
	}
	if err == nil {
		// A gc may have swept a pack as an orphan before its segment was
		// linked (blobgc.go); the temporary files are still there.
		hs := make([]ID, len(packs))
		for i, p := range packs {
			hs[i] = p.h
		}
		err = s.packsLanded(ctx, t0, hs, func(i int) error {
			return g.st.LinkTemps(ctx, packTmps[i:i+1], packNames[i:i+1])
		})
	}
	if err != nil {
		done(err)
		return nil, func(error) {}, fmt.Errorf("chunkstore: writing packs: %w", err)
	}
	return packs, done, nil
}

// indexStaged merges the segments of published packs into the cache.
func indexStaged(tx *bolt.Tx, packs []*stagedPack) error {
	for _, p := range packs {
		if _, err := mergeSegment(tx, p.h, p.size, p.ents, p.seg, false, nil); err != nil {
			return err
		}
	}
	return nil
}

// dropStaged removes the temporary files of packs no durable point took
// (Close after a failed flush).
func (s *BlobStore) dropStaged() {
	g := s.staged
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range g.packs {
		g.st.RemoveTemps([]string{p.packTmp, p.segTmp})
	}
	g.packs = nil
}

// indexAhead indexes every pack but the last in a cache transaction of
// its own and returns the last, for the caller's transaction. One
// transaction over many packs' random chunk IDs rewrites most of the
// tree's leaves, and bbolt reuses the pages a transaction frees only in
// later ones: cache/index.db would keep a second copy of the tree as free
// pages (0.7 MB, a quarter of the file, on the bench's overlay fleet).
// One pack per transaction, as a PutMany without DeferSync indexes, costs
// two fdatasyncs each (~75 µs here). A crash between them leaves durable
// packs indexed, which is what PutMany without DeferSync leaves too.
func (s *BlobStore) indexAhead(ctx context.Context, packs []*stagedPack) ([]*stagedPack, error) {
	for len(packs) > 1 {
		p := packs[:1]
		if err := s.db.update(ctx, func(tx *bolt.Tx) error { return indexStaged(tx, p) }); err != nil {
			return nil, err
		}
		packs = packs[1:]
	}
	return packs, nil
}

// DiscardStaged drops the packs staged since the last durable point and
// removes their temporary files, so that Close does not make them
// durable: for a writer that gives up because the disk is full, whose
// staged packs no commit will name and would keep the space the store
// needs to run gc. It waits for a durable point under way; what that one
// took stays durable.
func (s *BlobStore) DiscardStaged() {
	g := s.staged
	if g == nil {
		return
	}
	g.flush.Lock()
	defer g.flush.Unlock()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range g.packs {
		g.st.RemoveTemps([]string{p.packTmp, p.segTmp})
	}
	g.n.Add(-int64(len(g.packs)))
	g.packs, g.bytes, g.ids = nil, 0, map[ID]int{}
}
