package view

import (
	"fmt"
	"io"
	"sync"

	"github.com/engram-vm/engram/engram"
)

// Sequential-read detection: a read that starts within seqSlack of where
// the last one ended counts as sequential (the kernel and NBD clients keep
// several reads in flight, so they arrive slightly out of order). After
// seqReads of them the Reader reads ahead, starting with a window of
// firstAhead bytes and doubling it up to the Set's limit.
const (
	seqSlack   = 1 << 20
	seqReads   = 2
	firstAhead = 1 << 20
)

// Reader reads one Disk for one client (an open file, an NBD connection).
// It is safe for concurrent use; its read-ahead follows the pattern of all
// its callers together.
type Reader struct {
	d *Disk

	mu      sync.Mutex
	closed  bool
	lastEnd int64 // end of the last read
	seq     int   // consecutive sequential reads
	window  int64 // current read-ahead window
	front   int64 // read-ahead has been issued up to here
	wg      sync.WaitGroup
	closing chan struct{}
}

// Disk returns the disk r reads.
func (r *Reader) Disk() *Disk { return r.d }

// ReadAt reads len(p) bytes at off like os.File.ReadAt: holes read as
// zeros; at or past the end it returns the bytes before the end and
// io.EOF.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("engram %s: negative offset %d", r.d.id.Short(), off)
	}
	size := r.d.root.Size
	if off >= size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > size-off {
		n = int(size - off)
	}
	seq := r.note(off, int64(n))
	if err := r.d.read(p[:n], off, seq); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// ReadSlices returns the guest bytes of [off, off+n) like ReadAt, but as
// slices to be used in order without a copy (writev): bytes of cached
// chunks and shared zeros for holes. Nobody may write to them. At or past
// the end it returns what lies before the end and io.EOF.
func (r *Reader) ReadSlices(off int64, n int) ([][]byte, error) {
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("engram %s: negative offset %d or length %d", r.d.id.Short(), off, n)
	}
	size := r.d.root.Size
	if off >= size {
		return nil, io.EOF
	}
	end := size
	if int64(n) < size-off {
		end = off + int64(n)
	}
	seq := r.note(off, end-off)
	out, err := r.d.readSlices(off, end, seq)
	if err != nil {
		return nil, err
	}
	if end-off < int64(n) {
		return out, io.EOF
	}
	return out, nil
}

// note updates the sequential detection with a read of n bytes at off,
// starts read-ahead when the reads are sequential and says whether they
// are.
func (r *Reader) note(off, n int64) (seq bool) {
	end := off + n
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return false
	}
	if off >= r.lastEnd-seqSlack && off <= r.lastEnd+seqSlack && (r.lastEnd > 0 || off == 0) {
		r.seq++
		r.lastEnd = max(r.lastEnd, end)
	} else {
		r.seq, r.window, r.front = 0, 0, 0
		r.lastEnd = end
	}
	maxAhead := r.d.set.maxAhead
	seq = r.seq >= seqReads
	if !seq || maxAhead <= 0 {
		r.mu.Unlock()
		return seq
	}
	if r.window == 0 {
		r.window = min(firstAhead, maxAhead)
	} else if r.front-r.lastEnd < r.window/2 {
		// The reader keeps up with the read-ahead: widen it.
		r.window = min(2*r.window, maxAhead)
	}
	from := max(r.front, r.lastEnd)
	to := min(r.lastEnd+r.window, r.d.root.Size)
	if from >= to || to-from < r.window/4 && to < r.d.root.Size {
		// Issue read-ahead in steps of a quarter window, not per read.
		r.mu.Unlock()
		return true
	}
	r.front = to
	r.wg.Add(1)
	r.mu.Unlock()
	go r.ahead(from, to)
	return true
}

// Read-ahead batches: a run of chunks loaded with one GetMany, as large
// as a restore job.
const (
	batchBytes  = 4 << 20
	batchChunks = 256
)

// ahead queues the chunks of [from, to) that are not cached for the Set's
// workers, in batches, which load them into the cache. Errors are
// dropped: the read that needs the chunk will meet and report them.
func (r *Reader) ahead(from, to int64) {
	defer r.wg.Done()
	s := r.d.set
	var batch []engram.ChunkRef
	var n int64
	send := func() bool {
		if len(batch) == 0 {
			return true
		}
		s.queued.Add(1)
		select {
		case s.ahead <- job{d: r.d, refs: batch}:
			batch, n = nil, 0
			return true
		case <-r.closing:
		case <-s.quit:
		}
		s.queued.Done()
		return false
	}
	_ = r.d.walk(from, to, func(ref engram.ChunkRef) error {
		if s.chunks.has(ref.ID) {
			return nil
		}
		if len(batch) > 0 && (n+int64(ref.Length) > batchBytes || len(batch) >= batchChunks) && !send() {
			return errStop
		}
		batch = append(batch, ref)
		n += int64(ref.Length)
		return nil
	})
	send()
}

// Extents calls fn for consecutive runs covering [off, off+length) (cut at
// the end of the disk), in order; data=false is a hole that reads as
// zeros. Adjacent chunks form one run.
func (r *Reader) Extents(off, length int64, fn func(off, length int64, data bool) error) error {
	if length < 0 {
		return fmt.Errorf("engram %s: negative length %d", r.d.id.Short(), length)
	}
	end := off + length
	if end < off { // overflow
		end = r.d.root.Size
	}
	return r.d.extents(off, end, fn)
}

// SeekData returns the first offset at or after off inside data, like
// lseek(SEEK_DATA): an error wrapping syscall.ENXIO when there is none or
// off is at or past the end.
func (r *Reader) SeekData(off int64) (int64, error) { return r.d.seekData(off) }

// SeekHole returns the first offset at or after off inside a hole (the
// end of the disk counts as one), like lseek(SEEK_HOLE): ENXIO at or past
// the end.
func (r *Reader) SeekHole(off int64) (int64, error) { return r.d.seekHole(off) }

// Close stops queueing read-ahead; what is queued still loads into the
// cache. It never fails.
func (r *Reader) Close() error {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.closing)
	}
	r.mu.Unlock()
	r.wg.Wait()
	return nil
}
