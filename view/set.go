package view

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
)

// DefaultCacheSize is the memory budget of a Set made with CacheSize 0.
const DefaultCacheSize = 256 << 20

// MinCacheSize is the smallest budget a Set accepts; smaller ones are
// raised to it (read-ahead and parallel fetches need some room).
const MinCacheSize = 16 << 20

// Options configure a Set.
type Options struct {
	// CacheSize is the memory budget in bytes for decoded blocks, decoded
	// manifest pages and the chunk store's decompressed blocks (the part
	// BlockCacheBytes names, which the opener of the store passes as
	// chunkstore.OpenOptions.BlockCacheBytes). 0 means DefaultCacheSize.
	CacheSize int64
	// Pins, if not nil, records every engram Open returns in this
	// process's pin file, so gc keeps its chunks while it is in use.
	Pins *Pins
	// Fetchers is the number of chunk loads from the store that run at
	// once (the workers that fetch the chunks of a request in parallel
	// and run read-ahead); 0 means 4*GOMAXPROCS, at least 8.
	Fetchers int
}

func (o Options) budget() int64 {
	switch {
	case o.CacheSize == 0:
		return DefaultCacheSize
	case o.CacheSize < MinCacheSize:
		return MinCacheSize
	}
	return o.CacheSize
}

// BlockCacheBytes is the part of a budget of cacheSize bytes (0: the
// default) that belongs to the chunk store's block cache: open the store
// with chunkstore.OpenOptions{BlockCacheBytes: view.BlockCacheBytes(n)}
// and give NewSet Options{CacheSize: n}; the Set keeps the rest.
//
// Why a sixteenth: the Set caches the store's decoded blocks itself (its
// chunk cache holds whole blocks and hands out slices of them), and the
// blocks of both caches are the same memory; the store's cache only
// needs to bridge loads of one block by several batches at once and the
// reads of manifest pages.
func BlockCacheBytes(cacheSize int64) int64 {
	return Options{CacheSize: cacheSize}.budget() / 16
}

// A Set opens engrams of one store under one memory budget: one chunk
// cache and one page cache shared by every open Disk. Safe for concurrent
// use.
type Set struct {
	store  chunkstore.Reader
	pins   *Pins
	chunks *blockLRU
	pages  *lru[pageKey, []engram.ChunkRef]

	// Loads from the store run on long-lived workers (a goroutine per
	// chunk would grow a fresh stack for zstd and BLAKE3 every time);
	// request work goes first, read-ahead fills idle workers.
	fetch    chan struct{} // semaphore over every load from the store
	demand   chan job      // chunks of requests
	ahead    chan job      // read-ahead
	quit     chan struct{}
	closed   sync.Once
	workers  sync.WaitGroup
	queued   sync.WaitGroup // read-ahead jobs not done yet (tests wait on it)
	maxAhead int64          // read-ahead window of one Reader

	mu    sync.Mutex
	disks map[engram.ID]*Disk

	readCached, readWaited, readLoaded atomic.Int64
}

type pageKey struct {
	id   chunkstore.ID
	size int64 // the image size the page was checked against
}

// NewSet returns a Set reading from store.
func NewSet(store chunkstore.Reader, opts Options) *Set {
	total := opts.budget()
	pages := total / 16
	chunks := total - BlockCacheBytes(opts.CacheSize) - pages
	n := opts.Fetchers
	if n <= 0 {
		n = max(8, 4*runtime.GOMAXPROCS(0))
	}
	s := &Set{
		store:  store,
		pins:   opts.Pins,
		chunks: newBlockLRU(chunks),
		pages:  newLRU[pageKey, []engram.ChunkRef](pages),
		fetch:  make(chan struct{}, n),
		demand: make(chan job, 4*n),
		ahead:  make(chan job, 4*n),
		quit:   make(chan struct{}),
		// A window of an eighth of the chunk cache lets several
		// sequential readers run ahead without evicting each other's
		// chunks before they are read.
		maxAhead: min(32<<20, chunks/8),
		disks:    map[engram.ID]*Disk{},
	}
	s.workers.Add(n)
	for range n {
		go s.work()
	}
	return s
}

// job is work for a worker: a batch of chunks a read needs (run), or a
// batch of read-ahead (refs of d) loaded into the cache.
type job struct {
	run  func()
	d    *Disk
	refs []engram.ChunkRef
}

func (s *Set) work() {
	defer s.workers.Done()
	run := func(j job) {
		if j.run != nil {
			j.run()
		} else {
			s.loadMany(j.d, j.refs, true, nil)
		}
	}
	for {
		select {
		case j := <-s.demand:
			run(j)
			continue
		default:
		}
		select {
		case j := <-s.demand:
			run(j)
		case j := <-s.ahead:
			run(j)
			s.queued.Done()
		case <-s.quit:
			return
		}
	}
}

// Close stops the Set's workers. Close every Reader first: a read still
// running may never finish.
func (s *Set) Close() error {
	s.closed.Do(func() { close(s.quit) })
	s.workers.Wait()
	return nil
}

// Open returns engram id as a Disk. Only the root is read; pages are
// decoded when a read needs them. Opening an engram twice returns the same
// Disk.
func (s *Set) Open(ctx context.Context, id engram.ID) (*Disk, error) {
	if d := s.cached(id); d != nil {
		return d, nil
	}
	e, err := engram.Get(ctx, s.store, id)
	if err != nil {
		return nil, err
	}
	return s.OpenEntry(ctx, e)
}

// OpenEntry is Open for a caller that has the catalog entry already (from
// engram.List), which saves reading the catalog again.
func (s *Set) OpenEntry(ctx context.Context, e *engram.Entry) (*Disk, error) {
	if d := s.cached(e.ID); d != nil {
		return d, nil
	}
	root, err := engram.LoadRoot(ctx, s.store, e.ID)
	if err != nil {
		return nil, err
	}
	if s.pins != nil {
		if err := s.pins.pin(ctx, s.store, e.ID); err != nil {
			return nil, err
		}
	}
	d := &Disk{set: s, id: e.ID, root: root, dataBytes: -1}
	for _, r := range e.Records {
		d.dataBytes = max(d.dataBytes, r.Stats.StoredBytes)
	}
	if d.dataBytes <= 0 {
		d.dataBytes = -1 // unknown (a reused record): counted on first use
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.disks[e.ID]; old != nil {
		return old, nil
	}
	s.disks[e.ID] = d
	return d, nil
}

func (s *Set) cached(id engram.ID) *Disk {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.disks[id]
}

// CacheStats says how the Set's caches are used.
type CacheStats struct {
	ChunkBytes, ChunkHits, ChunkMisses int64
	PageBytes, PageHits, PageMisses    int64
	// Of the chunks reads needed: found cached, found being loaded (by
	// read-ahead or another read), loaded by the read itself.
	ReadCached, ReadWaited, ReadLoaded int64
}

// Stats returns the current cache usage.
func (s *Set) Stats() CacheStats {
	var st CacheStats
	st.ChunkBytes, st.ChunkHits, st.ChunkMisses = s.chunks.usage()
	st.PageBytes, st.PageHits, st.PageMisses = s.pages.usage()
	st.ReadCached, st.ReadWaited, st.ReadLoaded = s.readCached.Load(), s.readWaited.Load(), s.readLoaded.Load()
	return st
}

// chunk returns the bytes of ref, from the cache or the store.
func (s *Set) chunk(d *Disk, ref engram.ChunkRef) ([]byte, error) {
	b, j, err := s.chunks.get(ref.ID, func() (*chunkstore.Block, int, error) {
		s.fetch <- struct{}{}
		defer func() { <-s.fetch }()
		return s.loadOne(ref.ID)
	})
	return s.take(d, ref, b, j, err)
}

// loadOne reads the block of chunk id alone.
func (s *Set) loadOne(id chunkstore.ID) (*chunkstore.Block, int, error) {
	bs, idx := []*chunkstore.Block{nil}, []int{0}
	err := chunkstore.GetBlocks(context.Background(), s.store, []chunkstore.ID{id}, bs, idx)
	return bs[0], idx[0], err
}

// take returns the bytes of ref, chunk j of block b, given b or the error
// of its load: the chunk is checked against its ID (once per block) and
// its length against the manifest. A chunk that fails its hash is dropped
// from the cache, so a later read asks the store again (and fails again
// if the store has no good copy).
func (s *Set) take(d *Disk, ref engram.ChunkRef, blk *chunkstore.Block, j int, err error) ([]byte, error) {
	var b []byte
	if err == nil {
		if b, err = blk.Chunk(j); err != nil {
			s.chunks.forget(ref.ID, blk)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("engram %s: chunk %s at guest %#x: %w", d.id.Short(), ref.ID.Short(), ref.Offset, err)
	}
	if len(b) != int(ref.Length) {
		return nil, fmt.Errorf("engram %s: chunk %s at guest %#x: %d bytes, manifest says %d: %w",
			d.id.Short(), ref.ID.Short(), ref.Offset, len(b), ref.Length, engram.ErrBadManifest)
	}
	return b, nil
}

// loadMany loads the blocks of the chunks of refs that are neither cached
// nor being loaded into the cache the way restore reads them: one
// GetBlocks (one index transaction, each compressed block decoded once)
// instead of a Get per chunk; each chunk is verified when first taken. If got is not nil it is called for every
// refs[i] with its bytes or error; chunks another goroutine is loading
// are waited for, never loaded twice. Errors are not cached: if the batch
// fails, each chunk is tried alone, so one bad chunk fails only the reads
// that need it.
func (s *Set) loadMany(d *Disk, refs []engram.ChunkRef, whole bool, got func(int, []byte, error)) {
	ids := make([]chunkstore.ID, len(refs))
	for i, r := range refs {
		ids[i] = r.ID
	}
	mine := make([]bool, len(refs))
	s.chunks.reserve(ids, mine)
	var mids []chunkstore.ID
	for i, r := range refs {
		if mine[i] {
			mids = append(mids, r.ID)
		}
	}
	if len(mids) > 0 {
		errs := make([]error, len(mids))
		blocks, idx := make([]*chunkstore.Block, len(mids)), make([]int, len(mids))
		s.fetch <- struct{}{}
		if chunkstore.GetBlocks(context.Background(), s.store, mids, blocks, idx) != nil {
			for k, id := range mids {
				blocks[k], idx[k], errs[k] = s.loadOne(id)
			}
		}
		<-s.fetch
		if !whole {
			s.copySparse(blocks, idx, errs)
		}
		for k, id := range mids {
			if got == nil && errs[k] == nil {
				// Read-ahead checks its chunks now, on a worker: else the
				// read that takes them hashes them on its own critical
				// path. A mismatch is remembered by the block and reported
				// by that read.
				_, _ = blocks[k].Chunk(idx[k])
			}
			s.chunks.finish(id, blocks[k], idx[k], errs[k])
		}
		k := 0
		for i := range refs {
			if mine[i] {
				if got != nil {
					b, err := s.take(d, refs[i], blocks[k], idx[k], errs[k])
					got(i, b, err)
				}
				k++
			}
		}
	}
	if got == nil {
		return
	}
	for i, r := range refs {
		if !mine[i] {
			b, err := s.chunk(d, r)
			got(i, b, err)
		}
	}
}

// copySparse replaces each block of which the batch wants less than a
// quarter by copies of the chunks it wants: a random read would otherwise
// keep a whole block (1 MiB by default) in the cache for a 64 KiB chunk,
// and a warm set of random reads would no longer fit (measured: p99 of
// warm 4 KiB reads went from 0.2 to 6 ms at the default budget).
func (s *Set) copySparse(blocks []*chunkstore.Block, idx []int, errs []error) {
	wanted := map[*chunkstore.Block]int64{}
	for k, b := range blocks {
		if errs[k] == nil {
			n := int64(0)
			if c, err := b.Chunk(idx[k]); err == nil {
				n = int64(len(c))
			}
			wanted[b] += n
		}
	}
	for k, b := range blocks {
		if errs[k] != nil || b.Chunks() == 1 || 4*wanted[b] >= b.Size() {
			continue
		}
		if c, err := b.Copy(idx[k]); err == nil {
			blocks[k], idx[k] = c, 0
		} else {
			blocks[k], errs[k] = nil, err
		}
	}
}

// page returns the decoded refs of page p of d.
func (s *Set) page(d *Disk, p engram.PageRef) ([]engram.ChunkRef, error) {
	refs, err := s.pages.get(pageKey{p.ID, d.root.Size}, func() ([]engram.ChunkRef, int64, error) {
		s.fetch <- struct{}{}
		defer func() { <-s.fetch }()
		refs, err := engram.LoadPage(context.Background(), s.store, d.root, p)
		return refs, int64(len(refs))*48 + 64, err
	})
	if err != nil {
		return nil, fmt.Errorf("engram %s: %w", d.id.Short(), err)
	}
	return refs, nil
}

// errStop ends a walk early; it never escapes the package.
var errStop = errors.New("stop")
