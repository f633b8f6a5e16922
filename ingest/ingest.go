package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
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
}

const (
	readSize    = 4 << 20 // bytes per read job: big sequential reads
	mapWindow   = 1 << 30 // guest range asked of the extent map at once
	batchChunks = 128     // chunks per store batch
	batchBytes  = 8 << 20 // raw bytes per store batch
	inFlight    = 1024    // chunks between the chunker and the collector
)

// Result is what Run produced: the manifest and what it cost.
type Result struct {
	ID    engram.ID
	Root  engram.Root
	Enc   []byte // root encoding, for engram.Commit
	Stats engram.IngestStats
}

type readJob struct {
	seq int64
	off int64
	n   int
}

type readResult struct {
	job readJob
	buf *[]byte
}

type chunkJob struct {
	seq  int64
	off  int64
	data []byte
	id   chunkstore.ID
}

// Run reads src, stores its new chunks in st and returns the manifest. It
// does not commit the engram: the caller records it with engram.Commit, so
// a cancelled or failed run leaves only unreferenced chunks behind.
func Run(ctx context.Context, st chunkstore.Store, src Source, opts Options) (*Result, error) {
	start := time.Now()
	ch, err := NewChunker(st.Params().Chunking)
	if err != nil {
		return nil, err
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	size := src.Size()
	align := int64(ch.p.Align)

	total, err := dataBytes(src, align)
	if err != nil {
		return nil, err
	}
	prog := opts.Progress
	if prog != nil {
		prog.Start(total)
		defer prog.Finish()
	}

	g, ctx := errgroup.WithContext(ctx)
	jobs := make(chan readJob, workers)
	results := make(chan readResult, workers)
	readTokens := make(chan struct{}, 2*workers+2) // bounds read buffers in flight
	chunks := make(chan chunkJob, 2*workers)
	hashed := make(chan chunkJob, 2*workers)
	chunkTokens := make(chan struct{}, inFlight) // bounds chunks in flight
	batches := make(chan []chunkstore.Chunk, workers)
	readPool := sync.Pool{New: func() any { b := make([]byte, readSize); return &b }}

	// Planner: 4 KiB-aligned read jobs over the allocated data, in order.
	g.Go(func() error {
		defer close(jobs)
		var seq int64
		return forDataSpans(src, align, func(off, end int64) error {
			for off < end {
				n := min(end-off, readSize)
				select {
				case readTokens <- struct{}{}:
				case <-ctx.Done():
					return ctx.Err()
				}
				select {
				case jobs <- readJob{seq: seq, off: off, n: int(n)}:
				case <-ctx.Done():
					return ctx.Err()
				}
				seq++
				off += n
			}
			return nil
		})
	})

	// Readers: decompression of compressed clusters happens here, in parallel.
	var readers sync.WaitGroup
	for range workers {
		readers.Add(1)
		g.Go(func() error {
			defer readers.Done()
			for j := range jobs {
				bp := readPool.Get().(*[]byte)
				b := (*bp)[:j.n]
				if _, err := src.ReadAt(b, j.off); err != nil && !(errors.Is(err, io.EOF) && j.off+int64(j.n) >= size) {
					return fmt.Errorf("read guest %#x+%#x: %w", j.off, j.n, err)
				}
				select {
				case results <- readResult{job: j, buf: bp}:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})
	}
	go func() { readers.Wait(); close(results) }()

	// Chunker: puts reads back in order and cuts them into chunks.
	g.Go(func() error {
		defer close(chunks)
		var seq int64
		sp := ch.NewSplitter(func(off int64, data []byte) error {
			select {
			case chunkTokens <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case chunks <- chunkJob{seq: seq, off: off, data: data}:
			case <-ctx.Done():
				return ctx.Err()
			}
			seq++
			return nil
		})
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
				err := sp.Write(r.job.off, (*r.buf)[:r.job.n])
				readPool.Put(r.buf)
				<-readTokens
				if err != nil {
					return err
				}
				if prog != nil {
					prog.Add(int64(r.job.n))
				}
			}
		}
		if len(pending) > 0 {
			return ctx.Err()
		}
		return sp.Flush()
	})

	// Hashers.
	var hashers sync.WaitGroup
	for range workers {
		hashers.Add(1)
		g.Go(func() error {
			defer hashers.Done()
			for c := range chunks {
				c.id = chunkstore.Sum(c.data)
				select {
				case hashed <- c:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})
	}
	go func() { hashers.Wait(); close(hashed) }()

	// Storers: look up, compress and store new chunks, many batches at once.
	var newChunks, newBytes int64
	var statMu sync.Mutex
	var storers sync.WaitGroup
	for range workers {
		storers.Add(1)
		g.Go(func() error {
			defer storers.Done()
			for b := range batches {
				added, nb, err := storeBatch(ctx, st, b)
				for _, c := range b {
					ch.PutBuf(c.Data)
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
		})
	}

	// Collector: chunk refs in guest order into the manifest; chunks into
	// store batches.
	var res Result
	g.Go(func() error {
		defer close(batches)
		var batch []chunkstore.Chunk
		var bytesInBatch int
		send := func() error {
			if len(batch) == 0 {
				return nil
			}
			select {
			case batches <- batch:
			case <-ctx.Done():
				return ctx.Err()
			}
			batch, bytesInBatch = nil, 0
			return nil
		}
		add := func(c chunkstore.Chunk) error {
			batch = append(batch, c)
			bytesInBatch += len(c.Data)
			if len(batch) >= batchChunks || bytesInBatch >= batchBytes {
				return send()
			}
			return nil
		}
		// Pages are small and not from the pool; PutBuf ignores them.
		b := engram.NewBuilder(size, add)
		pending := map[int64]chunkJob{}
		var next int64
		for c := range hashed {
			pending[c.seq] = c
			for {
				c, ok := pending[next]
				if !ok {
					break
				}
				delete(pending, next)
				next++
				<-chunkTokens
				if err := b.Add(engram.ChunkRef{Offset: c.off, Length: uint32(len(c.data)), ID: c.id}); err != nil {
					return err
				}
				if err := add(chunkstore.Chunk{ID: c.id, Data: c.data}); err != nil {
					return err
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
		res.Stats.Chunks = b.Chunks()
		res.Stats.StoredBytes = b.DataBytes()
		return send()
	})

	if err := g.Wait(); err != nil {
		return nil, err
	}
	res.Stats.DataBytes = total
	res.Stats.NewChunks = newChunks
	res.Stats.NewBytes = newBytes
	res.Stats.Duration = time.Since(start)
	return &res, nil
}

// storeBatch stores the chunks of b the store does not hold yet and
// returns how many it added and their raw bytes.
func storeBatch(ctx context.Context, st chunkstore.Store, b []chunkstore.Chunk) (int, int64, error) {
	ids := make([]chunkstore.ID, len(b))
	for i, c := range b {
		ids[i] = c.ID
	}
	have, err := st.HasMany(ctx, ids)
	if err != nil {
		return 0, 0, err
	}
	var missing []chunkstore.Chunk
	var nb int64
	seen := make(map[chunkstore.ID]bool, len(b))
	for i, c := range b {
		if !have[i] && !seen[c.ID] {
			seen[c.ID] = true
			missing = append(missing, c)
			nb += int64(len(c.Data))
		}
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

// forDataSpans calls fn for each guest range that holds data (not zero,
// not unallocated), widened to the align grid and merged, in order.
func forDataSpans(src Source, align int64, fn func(off, end int64) error) error {
	size := src.Size()
	var curOff, curEnd int64 = -1, -1
	for w := int64(0); w < size; w += mapWindow {
		exts, err := src.Extents(w, min(mapWindow, size-w))
		if err != nil {
			return err
		}
		for _, e := range exts {
			if !e.Data || e.Zero || e.Length <= 0 {
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
