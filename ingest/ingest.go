package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/qcow2"
)

// Source is a guest disk with an extent map: a *qcow2.Image.
type Source interface {
	io.ReaderAt
	Size() int64
	Extents(off, length int64) ([]qcow2.Extent, error)
}

// Progress receives how many guest bytes have been processed. The null
// implementation is nil.
type Progress interface {
	Start(total int64)
	Add(n int64)
	Finish()
}

// Options tune an ingest; the zero value is fine.
type Options struct {
	Workers  int      // hashing and compressing goroutines; 0 = GOMAXPROCS
	Progress Progress // nil: none
	// HashOnly computes the manifest without storing data chunks (only the
	// pages go to the store): how restore --backing learns the content of
	// a backing file that was never ingested.
	HashOnly bool

	// known: the data is most likely in the store already (a --reread of
	// a layer whose fingerprint is in the catalog), so flat reads start
	// mapped instead of waiting for the first batch to say so.
	known bool
	// prior: that layer's engram; a re-read of the same size is cut where
	// its chunks lie instead of chunked (see guide), and chunked as usual
	// if the image turns out to differ.
	prior *engram.Root
}

const (
	readSize    = 4 << 20 // bytes per read job: big sequential reads
	mapWindow   = 1 << 30 // guest range asked of the extent map at once
	batchChunks = 256     // chunks per store batch
	batchBytes  = 8 << 20 // raw bytes per store batch: each is one store commit (fsyncs), so not too small
	inFlight    = 256     // chunks between the producer and the collector
	// Chunks go to the hashers and on to the collector in groups of up
	// to groupChunks chunks or groupBytes bytes: one channel send and at
	// most one goroutine wake-up per group instead of per chunk (on the
	// template's re-read, ~7,500 chunks, that was ~5% of its CPU), while
	// the last group keeps the other core waiting well under 1 ms.
	groupChunks = 16
	groupBytes  = 1 << 20
	// batchOwners is how many read buffers one batch may borrow from.
	batchOwners = 3
	// pageBatchBytes is manifest pages per store batch: the store still
	// cuts them into blocks of block_size, one commit holds all the pages
	// of an image up to ~24 GiB.
	pageBatchBytes = 4 << 20
)

// Result is what Run produced: the manifest and what it cost.
type Result struct {
	ID    engram.ID
	Root  engram.Root
	Enc   []byte // root encoding, for engram.Commit
	Stats engram.IngestStats
	// Sketch is the engram's signature, built from every ref of the
	// manifest (new and reused chunks alike).
	Sketch []byte
	guided bool // cut where Options.prior's chunks lie (tests)
	spans  int  // guided chunks borrowed from two mapped reads (tests)
}

// chunkJob is one chunk of the manifest in guest order: new data to hash
// and store, or (reuse) a chunk of the parent manifest that is kept as is.
type chunkJob struct {
	off   int64
	data  []byte
	owner *readBuf // data is borrowed from this read buffer; nil: data is the chunker's
	id    chunkstore.ID
	n     uint32
	reuse bool
	// check: a guided chunk (see guide), which must hash to want.
	check bool
	want  chunkstore.ID
}

// readBuf is a read buffer that chunks borrow from (see
// NewBorrowingSplitter): it goes back to its pool (or, mapped, its pages
// are released), and its read token is returned, when the last chunk that
// borrowed from it is done.
type readBuf struct {
	refs   atomic.Int32
	done   func()
	full   bool // a whole readSize read: worth lending out
	mapped bool // a slice of the image file's mapping (see qcow2.Image.Mapped)
}

func (r *readBuf) hold() { r.refs.Add(1) }

func (r *readBuf) release() {
	if r.refs.Add(-1) == 0 {
		r.done()
	}
}

// releaseData hands a chunk's bytes back: to its read buffer if borrowed,
// else to the chunker's pool.
func releaseData(ch *Chunker, data []byte, owner *readBuf) {
	if owner != nil {
		owner.release()
		return
	}
	ch.PutBuf(data)
}

// producer emits the manifest's chunks in guest order and returns how many
// guest bytes it read. It calls flush before it waits for anything but
// emit itself (a read), so the chunks emitted so far go on to be hashed
// and stored: emit holds them back to send them in groups, and they may
// borrow the very buffers the read waits for.
type producer func(ctx context.Context, emit func(chunkJob) error, flush func() error) (read int64, err error)

// jobGroup is chunks of the manifest in guest order, numbered by seq.
type jobGroup struct {
	seq  int64
	jobs []chunkJob
}

// Run reads all of src through its extent map, stores its new chunks in st
// and returns the manifest. It does not commit the engram: the caller
// records it with engram.Commit, so a cancelled or failed run leaves only
// unreferenced chunks behind.
func Run(ctx context.Context, st chunkstore.Store, src Source, opts Options) (*Result, error) {
	pol := &mapPolicy{always: opts.HashOnly}
	pol.mapped.Store(opts.known)
	return run(ctx, st, src, opts, pol)
}

// run is Run with the policy for mapped reads given (tests force it).
func run(ctx context.Context, st chunkstore.Store, src Source, opts Options, pol *mapPolicy) (*Result, error) {
	ch, err := storeChunker(st)
	if err != nil {
		return nil, err
	}
	// total is only for the progress bar: walking the extent map twice
	// costs ~0.5 ms before the first byte is read, in every command.
	var total int64
	if opts.Progress != nil {
		if total, err = dataBytes(src, int64(ch.p.Align)); err != nil {
			return nil, err
		}
	}
	if p := opts.prior; p != nil && p.Size == src.Size() && !opts.HashOnly {
		gd := &guide{ch: ch}
		res, err := pipeline(ctx, st, ch, src.Size(), total, opts, pol, func(ctx context.Context, emit func(chunkJob) error, flush func() error) (int64, error) {
			gd.cur = engram.NewCursor(ctx, st, *p)
			return produceFlat(ctx, src, ch, workers(opts), emit, flush, opts.Progress, pol, gd)
		})
		if err == nil {
			res.guided, res.spans = true, gd.spans
		}
		if !errors.Is(err, errChanged) && !errors.Is(err, errPriorUnreadable) {
			return res, err
		}
	}
	return pipeline(ctx, st, ch, src.Size(), total, opts, pol, func(ctx context.Context, emit func(chunkJob) error, flush func() error) (int64, error) {
		return produceFlat(ctx, src, ch, workers(opts), emit, flush, opts.Progress, pol, nil)
	})
}

func workers(opts Options) int {
	if opts.Workers > 0 {
		return opts.Workers
	}
	return runtime.GOMAXPROCS(0)
}

// produceFlat plans 4 MiB aligned reads over the data extents, runs them on
// n readers (decompression of compressed clusters happens here, in
// parallel), puts them back in order and cuts them into chunks: with the
// chunker, or where gd (non-nil) says.
func produceFlat(ctx context.Context, src Source, ch *Chunker, n int, emit func(chunkJob) error, flushJobs func() error, prog Progress, pol *mapPolicy, gd *guide) (int64, error) {
	size := src.Size()
	align := int64(ch.p.Align)
	type readJob struct {
		seq, off int64
		n        int
	}
	type readResult struct {
		job  readJob
		buf  *[]byte // nil: data is mapped
		data []byte
		cls  []byte // Classify of data
	}
	g, ctx := errgroup.WithContext(ctx)
	jobs := make(chan readJob, n)
	results := make(chan readResult, n)
	// tokens bound the read buffers alive, including those chunks still
	// borrow from. A store batch is closed once it borrows from
	// batchOwners buffers, so the one the collector is filling never pins
	// all of them and it always gets the chunks that complete it.
	tokens := make(chan struct{}, 2*n+batchOwners+2)
	pool := sync.Pool{New: func() any { b := make([]byte, readSize); return &b }}
	ms, _ := src.(mappedSource)

	g.Go(func() error {
		defer close(jobs)
		var seq int64
		return forDataSpans(src, align, func(off, end int64) error {
			for off < end {
				l := min(end-off, readSize)
				if err := send(ctx, tokens, struct{}{}); err != nil {
					return err
				}
				if err := send(ctx, jobs, readJob{seq: seq, off: off, n: int(l)}); err != nil {
					return err
				}
				seq++
				off += l
			}
			return nil
		})
	})
	var readers sync.WaitGroup
	for range n {
		readers.Add(1)
		g.Go(guard(func() error {
			defer readers.Done()
			for j := range jobs {
				if ms != nil && pol.useMap() {
					// Zero-copy: hash (and look up) the chunks straight
					// from the file's pages; only new chunks are copied,
					// when they are stored.
					b, ok, err := ms.Mapped(j.off, int64(j.n))
					if err != nil {
						return fmt.Errorf("read guest %#x+%#x: %w", j.off, j.n, err)
					}
					if ok {
						qcow2.Prefault(b)
						var cls []byte
						if gd == nil {
							cls = ch.Classify(b, make([]byte, 0, (len(b)+int(align)-1)/int(align)))
						}
						if err := send(ctx, results, readResult{job: j, data: b, cls: cls}); err != nil {
							return err
						}
						continue
					}
				}
				bp := pool.Get().(*[]byte)
				b := (*bp)[:j.n]
				if _, err := src.ReadAt(b, j.off); err != nil && !(errors.Is(err, io.EOF) && j.off+int64(j.n) >= size) {
					return fmt.Errorf("read guest %#x+%#x: %w", j.off, j.n, err)
				}
				var cls []byte
				if gd == nil {
					cls = ch.Classify(b, make([]byte, 0, (len(b)+int(align)-1)/int(align)))
				}
				if err := send(ctx, results, readResult{job: j, buf: bp, data: b, cls: cls}); err != nil {
					return err
				}
			}
			return nil
		}))
	}
	go func() { readers.Wait(); close(results) }()

	var read int64
	g.Go(guard(func() error {
		var cur *readBuf
		cut := func(off int64, data []byte, borrowed, check bool, want chunkstore.ID) error {
			j := chunkJob{off: off, data: data, n: uint32(len(data)), check: check, want: want}
			lend := cur.full || cur.mapped
			if borrowed && lend {
				cur.hold()
				j.owner = cur
			}
			if borrowed && !lend {
				// A small read (a short extent) would pin a whole
				// buffer for one chunk: copy, as before. (A mapped
				// one pins no memory.)
				j.data = ch.sizedCopy(data)
			}
			if err := emit(j); err != nil {
				if j.owner != nil {
					cur.release()
				}
				return err
			}
			return nil
		}
		sp := ch.NewBorrowingSplitter(func(off int64, data []byte, borrowed bool) error {
			return cut(off, data, borrowed, false, chunkstore.ID{})
		})
		write := func(off int64, data, cls []byte) error { return sp.WriteClassified(off, data, cls) }
		flush := sp.Flush
		if gd != nil {
			gd.emit = func(off int64, data []byte, borrowed bool, want chunkstore.ID) error {
				return cut(off, data, borrowed, true, want)
			}
			gd.lend = func() *readBuf {
				if !cur.mapped {
					return nil
				}
				cur.hold()
				return cur
			}
			gd.emitSpan = func(off int64, data []byte, head, tail *readBuf, want chunkstore.ID) error {
				sp := &readBuf{full: true, mapped: true, done: func() { head.release(); tail.release() }}
				sp.hold()
				if err := emit(chunkJob{off: off, data: data, n: uint32(len(data)), check: true, want: want, owner: sp}); err != nil {
					sp.release()
					return err
				}
				return nil
			}
			write = func(off int64, data, _ []byte) error { return gd.write(off, data) }
			flush = gd.finish
		}
		pending := map[int64]readResult{}
		var next int64
		for r := range results {
			pending[r.job.seq] = r
			for {
				r, ok := pending[next]
				if !ok {
					break
				}
				delete(pending, next)
				next++
				cur = &readBuf{full: r.job.n == readSize, mapped: r.buf == nil}
				if bp, data := r.buf, r.data; bp != nil {
					cur.done = func() { pool.Put(bp); <-tokens }
				} else {
					cur.done = func() { qcow2.Release(data); <-tokens }
				}
				cur.hold() // the splitter's, while it cuts this buffer
				err := write(r.job.off, r.data, r.cls)
				cur.release()
				if err == nil {
					err = flushJobs() // the next read may wait for this one's chunks
				}
				if err != nil {
					return err
				}
				read += int64(r.job.n)
				if prog != nil {
					prog.Add(int64(r.job.n))
				}
			}
		}
		if len(pending) > 0 {
			return ctx.Err()
		}
		return flush()
	}))
	err := g.Wait()
	return read, err
}

// send delivers v on c unless ctx ends first.
func send[T any](ctx context.Context, c chan<- T, v T) error {
	select {
	case c <- v:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pipeline runs produce and, behind it, hashes new chunks on all cores,
// builds the manifest in guest order and stores new chunks in batches.
func pipeline(ctx context.Context, st chunkstore.Store, ch *Chunker, size, total int64, opts Options, pol *mapPolicy, produce producer) (*Result, error) {
	start := time.Now()
	n := workers(opts)
	if opts.Progress != nil {
		opts.Progress.Start(total)
		defer opts.Progress.Finish()
	}
	g, ctx := errgroup.WithContext(ctx)
	chunks := make(chan jobGroup, 2*n)
	hashed := make(chan jobGroup, 2*n)
	// Spent groups' slices are reused: every group in flight fits.
	groups := make(chan []chunkJob, inFlight+4*n)
	tokens := make(chan struct{}, inFlight) // bounds chunks in flight
	batches := make(chan batch, n)

	var read int64
	g.Go(guard(func() error { // an incremental producer reads mapped bytes
		defer close(chunks)
		var seq int64
		var err error
		var cur []chunkJob
		var curBytes int
		flush := func() error {
			if len(cur) == 0 {
				return nil
			}
			grp := jobGroup{seq: seq, jobs: cur}
			seq++
			cur, curBytes = nil, 0
			return send(ctx, chunks, grp)
		}
		read, err = produce(ctx, func(c chunkJob) error {
			if err := send(ctx, tokens, struct{}{}); err != nil {
				return err
			}
			if cur == nil {
				select {
				case cur = <-groups:
				default:
					cur = make([]chunkJob, 0, groupChunks)
				}
			}
			cur = append(cur, c)
			if curBytes += len(c.data); len(cur) >= groupChunks || curBytes >= groupBytes {
				return flush()
			}
			return nil
		}, flush)
		if err == nil {
			err = flush()
		}
		return err
	}))

	var hashers sync.WaitGroup
	for range n {
		hashers.Add(1)
		g.Go(guard(func() error {
			defer hashers.Done()
			for grp := range chunks {
				for i := range grp.jobs {
					if c := &grp.jobs[i]; !c.reuse {
						c.id = chunkstore.Sum(c.data)
					}
				}
				if err := send(ctx, hashed, grp); err != nil {
					return err
				}
			}
			return nil
		}))
	}
	go func() { hashers.Wait(); close(hashed) }()

	var newChunks, newBytes int64
	var statMu sync.Mutex
	for range n {
		g.Go(guard(func() error {
			for b := range batches {
				added, nb, err := storeBatch(ctx, st, ch, b, pol)
				for i, c := range b.chunks {
					releaseData(ch, c.Data, b.owners[i])
				}
				if err != nil {
					return err
				}
				statMu.Lock()
				newChunks += int64(added)
				newBytes += nb
				statMu.Unlock()
			}
			return nil
		}))
	}

	var res Result
	g.Go(func() error {
		defer close(batches)
		var cur batch
		var bytesInBatch, owners int
		var lastOwner *readBuf
		flush := func() error {
			if len(cur.chunks) == 0 {
				return nil
			}
			if err := send(ctx, batches, cur); err != nil {
				return err
			}
			cur, bytesInBatch, owners, lastOwner = batch{}, 0, 0, nil
			return nil
		}
		add := func(c chunkstore.Chunk, owner *readBuf) error {
			cur.chunks = append(cur.chunks, c)
			cur.owners = append(cur.owners, owner)
			bytesInBatch += len(c.Data)
			if owner != nil && owner != lastOwner {
				owners++ // chunks come in guest order: a new owner is a new buffer
				lastOwner = owner
			}
			if len(cur.chunks) >= batchChunks || bytesInBatch >= batchBytes || owners >= batchOwners {
				return flush()
			}
			return nil
		}
		// Pages are small and not from the pool; PutBuf ignores them. They
		// are stored in batches of their own, so they share blocks with
		// each other and not with data: reading a manifest back (an
		// overlay's parent, restore, diff) then inflates a few small
		// blocks instead of a 1 MiB data block per page.
		var pages batch
		var pageBytes int
		flushPages := func() error {
			if len(pages.chunks) == 0 {
				return nil
			}
			if err := send(ctx, batches, pages); err != nil {
				return err
			}
			pages, pageBytes = batch{}, 0
			return nil
		}
		b := engram.NewBuilder(size, func(c chunkstore.Chunk) error {
			pages.chunks = append(pages.chunks, c)
			pages.owners = append(pages.owners, nil)
			if pageBytes += len(c.Data); pageBytes >= pageBatchBytes {
				return flushPages()
			}
			return nil
		})
		sk := engram.NewSketchBuilder()
		pending := map[int64]jobGroup{}
		var next int64
		for grp := range hashed {
			pending[grp.seq] = grp
			for {
				grp, ok := pending[next]
				if !ok {
					break
				}
				delete(pending, next)
				next++
				for _, c := range grp.jobs {
					<-tokens
					if c.check && c.id != c.want {
						releaseData(ch, c.data, c.owner)
						return errChanged
					}
					ref := engram.ChunkRef{Offset: c.off, Length: c.n, ID: c.id}
					if err := b.Add(ref); err != nil {
						return err
					}
					sk.Add(ref)
					switch {
					case c.reuse:
					case opts.HashOnly:
						releaseData(ch, c.data, c.owner)
					default:
						if err := add(chunkstore.Chunk{ID: c.id, Data: c.data}, c.owner); err != nil {
							return err
						}
					}
				}
				clear(grp.jobs) // no references into read buffers while it waits
				select {
				case groups <- grp.jobs[:0]:
				default:
				}
			}
		}
		if len(pending) > 0 || ctx.Err() != nil {
			return ctx.Err()
		}
		root, enc, id, err := b.Finish()
		if err != nil {
			return err
		}
		res.ID, res.Root, res.Enc = id, root, enc
		res.Sketch = sk.Encode()
		res.Stats.Chunks = b.Chunks()
		res.Stats.StoredBytes = b.DataBytes()
		if err := flushPages(); err != nil {
			return err
		}
		return flush()
	})

	if err := g.Wait(); err != nil {
		return nil, err
	}
	res.Stats.DataBytes = read
	res.Stats.NewChunks = newChunks
	res.Stats.NewBytes = newBytes
	res.Stats.Duration = time.Since(start)
	return &res, nil
}

// batch is chunks to store together, with the read buffer each one's
// bytes are borrowed from (nil: its own buffer).
type batch struct {
	chunks []chunkstore.Chunk
	owners []*readBuf
}

// storeBatch stores the chunks of b the store does not hold yet and
// returns how many it added and their raw bytes. New chunks borrowed from
// the image's mapping are copied first: the store must never touch mapped
// pages (a file that shrinks under them faults, and only ingest's own
// goroutines turn that into an error).
func storeBatch(ctx context.Context, st chunkstore.Store, ch *Chunker, b batch, pol *mapPolicy) (int, int64, error) {
	ids := make([]chunkstore.ID, len(b.chunks))
	for i, c := range b.chunks {
		ids[i] = c.ID
	}
	// A bucket store counts a chunk whose only copy gc has condemned as
	// missing, so it is stored again (found by TestS3GCDuringIngest: with
	// HasMany, a re-run ingest built on condemned packs that the next gc
	// swept, and committed engrams lost chunks).
	has := st.HasMany
	if d, ok := st.(chunkstore.Deduper); ok {
		has = d.HasForDedup
	}
	have, err := has(ctx, ids)
	if err != nil {
		return 0, 0, err
	}
	var missing []chunkstore.Chunk
	var copied [][]byte
	defer func() {
		for _, d := range copied {
			ch.PutBuf(d)
		}
	}()
	var nb, known int64
	seen := make(map[chunkstore.ID]bool, len(b.chunks))
	for i, c := range b.chunks {
		if have[i] {
			known += int64(len(c.Data))
		}
		if !have[i] && !seen[c.ID] {
			seen[c.ID] = true
			if o := b.owners[i]; o != nil && o.mapped {
				// The file may be changing under us (an image in use):
				// what is stored must be what was hashed, so hash the
				// private copy again.
				c.Data = ch.sizedCopy(c.Data)
				copied = append(copied, c.Data)
				if got := chunkstore.Sum(c.Data); got != c.ID {
					return 0, 0, fmt.Errorf("guest data changed while it was read (chunk %s now hashes to %s): is the image in use?", c.ID.Short(), got.Short())
				}
			}
			missing = append(missing, c)
			nb += int64(len(c.Data))
		}
	}
	if pol != nil {
		pol.record(known, nb)
	}
	if len(missing) == 0 {
		return 0, 0, nil
	}
	added, err := st.PutMany(ctx, missing)
	if err != nil {
		return 0, 0, err
	}
	if added < len(missing) {
		// Another batch stored some of them first; count bytes in proportion.
		nb = nb * int64(added) / int64(len(missing))
	}
	return added, nb, nil
}

// mapPolicy decides whether a flat read uses the file's mapping. A mapped
// read saves pread's copy of every byte (on the template ~0.07 CPU-s per
// 481 MB, mostly kernel time), but each new chunk read from it must then be
// copied out and hashed again before it is stored (see storeBatch), ~0.33
// CPU-s per 481 MB of new data: mapping pays only while under about a
// fifth of the bytes are new. So reads are mapped while under policyNew of
// the recent bytes stored were new, and copied (pread into the buffer the
// store compresses from, hashed once) otherwise and until the first batch
// says (or Options.known hints): a first ingest hashes every byte once, a
// re-ingest maps all but its first few reads (all of them with --reread).
type mapPolicy struct {
	always bool
	mapped atomic.Bool
	mu     sync.Mutex
	known  int64 // recent bytes the store held, halved past policyWindow
	fresh  int64 // recent new bytes, likewise
}

const (
	policyNew    = 8        // map while new bytes are under 1/policyNew of recent ones
	policyWindow = 64 << 20 // recent: the counts are halved past this, so the policy follows an image whose later part differs
)

func (p *mapPolicy) useMap() bool { return p == nil || p.always || p.mapped.Load() }

func (p *mapPolicy) record(known, newBytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.known += known
	p.fresh += newBytes
	for p.known+p.fresh > policyWindow {
		p.known, p.fresh = p.known/2, p.fresh/2
	}
	p.mapped.Store(policyNew*p.fresh < p.known+p.fresh)
}

// mappedSource is a Source that can hand out guest bytes without a copy
// (*qcow2.Image).
type mappedSource interface {
	Mapped(off, n int64) ([]byte, bool, error)
}

// guard runs fn with memory faults turned into an error instead of a
// crash: chunks are read straight from the image file's mapping, and a
// file truncated under it faults (SIGBUS) when the lost pages are touched.
func guard(fn func() error) func() error {
	return func() (err error) {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if r := recover(); r != nil {
				f, ok := r.(interface{ Addr() uintptr })
				if !ok {
					panic(r)
				}
				err = fmt.Errorf("memory fault reading the mapped image file at %#x (did it shrink while it was read?): %v", f.Addr(), r)
			}
		}()
		return fn()
	}
}

// forDataSpans calls fn for each guest range that holds data (not zero,
// not unallocated), widened to the align grid and merged, in order.
func forDataSpans(src Source, align int64, fn func(off, end int64) error) error {
	return forSpans(src.Size(), align, src.Extents, func(e qcow2.Extent) bool { return e.Data && !e.Zero }, fn)
}

// forSpans calls fn for the ranges of the extents that keep accepts,
// widened to the align grid and merged, in order.
func forSpans(size, align int64, extents func(off, length int64) ([]qcow2.Extent, error), keep func(qcow2.Extent) bool, fn func(off, end int64) error) error {
	var curOff, curEnd int64 = -1, -1
	for w := int64(0); w < size; w += mapWindow {
		exts, err := extents(w, min(mapWindow, size-w))
		if err != nil {
			return err
		}
		for _, e := range exts {
			if !keep(e) || e.Length <= 0 {
				continue
			}
			s := e.Start / align * align
			end := min((e.Start+e.Length+align-1)/align*align, size)
			if curEnd >= s {
				curEnd = max(curEnd, end)
				continue
			}
			if curEnd > curOff {
				if err := fn(curOff, curEnd); err != nil {
					return err
				}
			}
			curOff, curEnd = s, end
		}
	}
	if curEnd > curOff {
		return fn(curOff, curEnd)
	}
	return nil
}

// dataBytes is how many guest bytes forDataSpans will visit.
func dataBytes(src Source, align int64) (int64, error) {
	var n int64
	err := forDataSpans(src, align, func(off, end int64) error { n += end - off; return nil })
	return n, err
}

// AllocatedBytes is how many guest bytes of src hold data (through its
// whole chain), on the 4 KiB grid: what a full ingest reads.
func AllocatedBytes(src Source) (int64, error) { return dataBytes(src, 4096) }
