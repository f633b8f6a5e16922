package view

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"syscall"

	"github.com/engram-vm/engram/engram"
)

// Disk is one engram as a read-only disk. Its methods are safe for
// concurrent use; reads go through a Reader.
type Disk struct {
	set  *Set
	id   engram.ID
	root engram.Root

	dataOnce  sync.Once
	dataBytes int64 // -1: not known yet
	dataErr   error
}

// ID returns the engram's ID.
func (d *Disk) ID() engram.ID { return d.id }

// Size returns the virtual size.
func (d *Disk) Size() int64 { return d.root.Size }

// DataBytes returns the bytes covered by data extents (what st_blocks and
// du report). It comes from the ingest record; for an engram without one
// it is counted from the manifest on first use (0 if that fails).
func (d *Disk) DataBytes() int64 {
	d.dataOnce.Do(func() {
		if d.dataBytes >= 0 {
			return
		}
		var n int64
		d.dataErr = d.walk(0, d.root.Size, func(r engram.ChunkRef) error { n += int64(r.Length); return nil })
		d.dataBytes = n
	})
	return d.dataBytes
}

// NewReader returns a reader with its own sequential-read detection; use
// one per open file or connection.
func (d *Disk) NewReader() *Reader { return &Reader{d: d, closing: make(chan struct{})} }

// walk calls fn, in guest order, for every chunk ref that overlaps
// [off, end). fn may return errStop to end the walk without an error.
func (d *Disk) walk(off, end int64, fn func(engram.ChunkRef) error) error {
	if off >= end {
		return nil
	}
	// A chunk belongs to the page where it starts and may reach
	// MaxChunkLen into the next one, so the page before off counts too.
	first := uint64(0)
	if off >= engram.PageSpan {
		first = uint64(off/engram.PageSpan) - 1
	}
	pages := d.root.Pages
	i := sort.Search(len(pages), func(i int) bool { return pages[i].Index >= first })
	for ; i < len(pages) && int64(pages[i].Index)*engram.PageSpan < end; i++ {
		refs, err := d.set.page(d, pages[i])
		if err != nil {
			return err
		}
		j := sort.Search(len(refs), func(j int) bool { return refs[j].End() > off })
		for ; j < len(refs) && refs[j].Offset < end; j++ {
			if err := fn(refs[j]); err != nil {
				if errors.Is(err, errStop) {
					return nil
				}
				return err
			}
		}
	}
	return nil
}

// read fills p with the guest bytes at off; the range lies inside the
// disk. seq says the read is part of a sequential run (see fetch).
func (d *Disk) read(p []byte, off int64, seq bool) error {
	end := off + int64(len(p))
	var refs []engram.ChunkRef
	pos := off
	err := d.walk(off, end, func(r engram.ChunkRef) error {
		if r.Offset > pos {
			clear(p[pos-off : r.Offset-off])
		}
		pos = r.End()
		refs = append(refs, r)
		return nil
	})
	if err != nil {
		return err
	}
	if pos < end {
		clear(p[pos-off:])
	}
	return d.fetch(refs, seq, func(_ int, r engram.ChunkRef, b []byte) {
		lo, hi := max(r.Offset, off), min(r.End(), end)
		copy(p[lo-off:hi-off], b[lo-r.Offset:hi-r.Offset])
	})
}

// zeros is what holes are read from by readSlices; nobody writes it.
var zeros = make([]byte, 1<<20)

// readSlices returns the guest bytes of [off, end), inside the disk, as
// slices of cached chunks and of zeros, in order.
func (d *Disk) readSlices(off, end int64, seq bool) ([][]byte, error) {
	var refs []engram.ChunkRef
	err := d.walk(off, end, func(r engram.ChunkRef) error {
		refs = append(refs, r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	data := make([][]byte, len(refs))
	err = d.fetch(refs, seq, func(i int, r engram.ChunkRef, b []byte) {
		lo, hi := max(r.Offset, off), min(r.End(), end)
		data[i] = b[lo-r.Offset : hi-r.Offset]
	})
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, 2*len(refs)+1)
	hole := func(n int64) {
		for n > 0 {
			k := min(n, int64(len(zeros)))
			out = append(out, zeros[:k])
			n -= k
		}
	}
	pos := off
	for i, r := range refs {
		if lo := max(r.Offset, off); lo > pos {
			hole(lo - pos)
		}
		out = append(out, data[i])
		pos = min(r.End(), end)
	}
	hole(end - pos)
	return out, nil
}

// fetch gets the bytes of every ref and calls put(i, refs[i], bytes) for
// each, from this or a worker goroutine (never twice for one i). Cached
// chunks are put here and now (handing them to a worker costs more than
// the copy). The missing ones are loaded in batches of up to batchBytes
// through GetBlocks, as restore loads them: this goroutine loads the first
// batch itself while workers load the others. The blocks loaded are
// cached whole when seq (the next reads will want the rest of them), else
// only when the read wants a good part of them (Set.copySparse).
func (d *Disk) fetch(refs []engram.ChunkRef, seq bool, put func(int, engram.ChunkRef, []byte)) error {
	var missing []int
	for i, r := range refs {
		blk, j, cached, loading := d.set.chunks.peek(r.ID)
		if cached {
			// A chunk that fails its hash or length is loaded again below,
			// which reports the error.
			if b, err := d.set.take(d, r, blk, j, nil); err == nil {
				d.set.readCached.Add(1)
				put(i, r, b)
				continue
			}
		}
		switch {
		case loading:
			d.set.readWaited.Add(1)
		default:
			d.set.readLoaded.Add(1)
		}
		missing = append(missing, i)
	}
	if len(missing) == 0 {
		return nil
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	got := func(k int, b []byte, err error) {
		if err == nil {
			put(k, refs[k], b)
			return
		}
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	// Cut missing into batches; each is a slice of refs indices.
	var batches [][]int
	var n int64
	for k, i := range missing {
		if k == 0 || n+int64(refs[i].Length) > batchBytes || len(batches[len(batches)-1]) >= batchChunks {
			batches = append(batches, nil)
			n = 0
		}
		batches[len(batches)-1] = append(batches[len(batches)-1], i)
		n += int64(refs[i].Length)
	}
	load := func(idx []int) {
		brefs := make([]engram.ChunkRef, len(idx))
		for j, i := range idx {
			brefs[j] = refs[i]
		}
		d.set.loadMany(d, brefs, seq, func(j int, b []byte, err error) { got(idx[j], b, err) })
	}
	for _, idx := range batches[1:] {
		wg.Add(1)
		d.set.demand <- job{run: func() { load(idx); wg.Done() }}
	}
	load(batches[0])
	wg.Wait()
	return firstErr
}

// extents calls fn for consecutive runs covering [off, end), merging
// adjacent chunks into one data run.
func (d *Disk) extents(off, end int64, fn func(off, length int64, data bool) error) error {
	end = min(end, d.root.Size)
	if off < 0 {
		return fmt.Errorf("engram %s: negative offset %d", d.id.Short(), off)
	}
	if off >= end {
		return nil
	}
	pos := off
	var runStart, runEnd int64 = -1, -1
	flush := func() error {
		if runStart < 0 {
			return nil
		}
		s, e := runStart, runEnd
		runStart, runEnd = -1, -1
		return fn(s, e-s, true)
	}
	var cbErr error
	err := d.walk(off, end, func(r engram.ChunkRef) error {
		lo, hi := max(r.Offset, off), min(r.End(), end)
		if lo > pos {
			if cbErr = flush(); cbErr != nil {
				return cbErr
			}
			if cbErr = fn(pos, lo-pos, false); cbErr != nil {
				return cbErr
			}
		}
		if runStart < 0 {
			runStart = lo
		}
		runEnd, pos = hi, hi
		return nil
	})
	if err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	if pos < end {
		return fn(pos, end-pos, false)
	}
	return nil
}

// ErrNoData wraps syscall.ENXIO: SeekData past the last data, or a seek
// at or past the end of the disk.
var ErrNoData = fmt.Errorf("no data past this offset: %w", syscall.ENXIO)

// seekData returns the first offset >= off that is in a data extent.
func (d *Disk) seekData(off int64) (int64, error) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off >= d.root.Size {
		return 0, ErrNoData
	}
	found := int64(-1)
	err := d.walk(off, d.root.Size, func(r engram.ChunkRef) error {
		found = max(r.Offset, off)
		return errStop
	})
	if err != nil {
		return 0, err
	}
	if found < 0 {
		return 0, ErrNoData
	}
	return found, nil
}

// seekHole returns the first offset >= off that is in a hole; the end of
// the disk counts as one.
func (d *Disk) seekHole(off int64) (int64, error) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off >= d.root.Size {
		return 0, ErrNoData
	}
	pos := off
	err := d.walk(off, d.root.Size, func(r engram.ChunkRef) error {
		if r.Offset > pos {
			return errStop
		}
		pos = max(pos, r.End())
		return nil
	})
	if err != nil {
		return 0, err
	}
	return min(pos, d.root.Size), nil
}
