package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sync/errgroup"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/qcow2"
)

// ErrExists is returned when the output file exists and Force is not set.
var ErrExists = errors.New("output file exists (use --force to overwrite)")

// ErrNotRegular is returned (in a *NotRegularError) when the output path
// exists and is not a regular file, Force or not: a restore is published by
// renaming the finished file over the path, which would replace a device
// node such as /dev/sdb with a file, or fail on a directory only once all
// is written.
var ErrNotRegular = errors.New("not a regular file")

// NotRegularError says what the output path is instead of a regular file.
type NotRegularError struct {
	Path string
	Mode os.FileMode // of the file the path leads to (symlinks followed)
}

func (e *NotRegularError) Error() string {
	return fmt.Sprintf("%s is %s, not a regular file: a restore would replace it with the file it writes", e.Path, e.Kind())
}

func (e *NotRegularError) Unwrap() error { return ErrNotRegular }

// Kind names the file type: "a directory", "a device", "a pipe or socket"
// or "a special file".
func (e *NotRegularError) Kind() string {
	switch m := e.Mode; {
	case m.IsDir():
		return "a directory"
	case m&os.ModeDevice != 0:
		return "a device"
	case m&(os.ModeNamedPipe|os.ModeSocket) != 0:
		return "a pipe or socket"
	}
	return "a special file"
}

// CheckOutput returns a *NotRegularError when path exists and is not a
// regular file (through symlinks); an absent or unreadable path passes
// (the restore says why it cannot write there). ToFile checks it itself.
func CheckOutput(path string) error {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().IsRegular() {
		return nil
	}
	return &NotRegularError{Path: path, Mode: fi.Mode()}
}

// Progress receives how many guest bytes have been written.
type Progress interface {
	Start(total int64)
	Add(n int64)
	Finish()
}

// Options say what to write; the zero value writes a qcow2 with 64 KiB
// clusters.
type Options struct {
	Format      string // "qcow2" (default) or "raw"
	ClusterSize int    // qcow2 cluster size; 0 = 64 KiB
	Compress    bool   // qcow2 compressed clusters (zstd)
	ExtendedL2  bool   // qcow2 subclusters (allocation per cluster/32), as the source had
	Force       bool   // overwrite an existing output file
	Workers     int    // fetch workers; 0 = GOMAXPROCS+1 (a bucket: ReadParallelism)
	Progress    Progress
	// Backing makes the qcow2 output an overlay holding only the clusters
	// that differ from it.
	Backing *Backing
}

// sink is where chunks go, in guest order.
type sink interface {
	WriteAt(p []byte, off int64) (int, error)
}

// ToFile restores engram id into path.
func ToFile(ctx context.Context, r chunkstore.Reader, id engram.ID, path string, opts Options) (err error) {
	root, err := engram.LoadRoot(ctx, r, id)
	if err != nil {
		return err
	}
	format := opts.Format
	if format == "" {
		format = "qcow2"
	}
	if format != "qcow2" && format != "raw" {
		return fmt.Errorf("output format %q: want qcow2 or raw", format)
	}
	if opts.Backing != nil && format != "qcow2" {
		return fmt.Errorf("a backing file needs qcow2 output, not %s", format)
	}
	if err := CheckOutput(path); err != nil {
		return err
	}
	if !opts.Force {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s: %w", path, ErrExists)
		}
	}
	// A symbolic link is written through to its target, as cp and
	// qemu-img convert do: the link stays, its target gets the image.
	target, err := OutputPath(path)
	if err != nil {
		return err
	}
	dir := filepath.Dir(target)
	if st, err := os.Stat(dir); err != nil {
		return fmt.Errorf("output directory %s: %w", dir, err)
	} else if !st.IsDir() {
		return fmt.Errorf("output directory %s: not a directory", dir)
	}
	o, err := createOutput(dir, filepath.Base(target), path)
	if err != nil {
		return err
	}
	f := o.f
	defer func() {
		if err != nil {
			o.discard()
		}
	}()

	var out sink
	var finish func() error
	switch format {
	case "raw":
		if err := f.Truncate(root.Size); err != nil {
			return err // it names the file
		}
		out = f
		if d := o.openDirect(); d != nil {
			defer d.Close()
			out = newDirectSink(f, d)
		}
		// os errors name the file already ("sync F: ...").
		finish = func() error {
			if err := f.Sync(); err != nil {
				return err
			}
			return f.Close()
		}
	case "qcow2":
		wo := qcow2.WriterOptions{Size: root.Size, ClusterSize: opts.ClusterSize, ExtendedL2: opts.ExtendedL2}
		if b := opts.Backing; b != nil {
			wo.BackingFile, wo.BackingFormat = b.Name, b.Format
			// Overlays own whole clusters; subclusters would hide backing data.
			wo.ExtendedL2 = false
		}
		if opts.Compress {
			wo.Compression = "zstd"
		} else if d := o.openDirect(); d != nil {
			defer d.Close()
			wo.Direct = d
		}
		w, err := qcow2.NewWriter(f, wo)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		defer func() {
			if err != nil {
				w.Abort()
			}
		}()
		if b := opts.Backing; b != nil {
			cs := int64(opts.ClusterSize)
			if cs == 0 {
				cs = 64 << 10
			}
			if err := writeOverlay(ctx, r, root, w, cs, b, opts.Progress); err != nil {
				return err
			}
			// out stays nil: the overlay is written already.
		} else {
			out = w
		}
		finish = w.Close // fsyncs and closes f
	}
	if out != nil {
		wb := newWriteback(out, f)
		err := stream(ctx, r, root, wb, opts, true)
		wb.stop()
		if err != nil {
			return err
		}
	}
	if err := finish(); err != nil {
		return err // it names the file
	}
	// Again: a device or pipe may have been made at path while we wrote.
	if err := CheckOutput(path); err != nil {
		return err
	}
	if err := o.publish(target, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// OutputPath is the file ToFile writes for path: path itself, or the
// file a symbolic link at path points to (through every link). A dangling
// link is refused, as cp does: its target may be a name the user never
// meant to create.
func OutputPath(path string) (string, error) {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSymlink == 0 {
		return path, nil
	}
	t, err := filepath.EvalSymlinks(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s: not writing through a dangling symbolic link", path)
	}
	if err != nil {
		return "", fmt.Errorf("%s: symbolic link: %w", path, err)
	}
	return t, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// ToWriter streams engram id as a raw image to w (e.g. stdout), zeros
// included.
func ToWriter(ctx context.Context, r chunkstore.Reader, id engram.ID, w io.Writer, opts Options) error {
	root, err := engram.LoadRoot(ctx, r, id)
	if err != nil {
		return err
	}
	s := &streamSink{w: w}
	if err := stream(ctx, r, root, s, opts, false); err != nil {
		return err
	}
	return s.zeroTo(root.Size)
}

// streamSink turns in-order WriteAt calls into a stream, filling gaps.
type streamSink struct {
	w   io.Writer
	pos int64
}

var zeros = make([]byte, 1<<20)

func (s *streamSink) zeroTo(off int64) error {
	for s.pos < off {
		n := min(off-s.pos, int64(len(zeros)))
		if _, err := s.w.Write(zeros[:n]); err != nil {
			return err
		}
		s.pos += n
	}
	return nil
}

func (s *streamSink) WriteAt(p []byte, off int64) (int, error) {
	if off < s.pos {
		return 0, fmt.Errorf("stream: write at %#x behind position %#x", off, s.pos)
	}
	if err := s.zeroTo(off); err != nil {
		return 0, err
	}
	n, err := s.w.Write(p)
	s.pos += int64(n)
	return n, err
}

// job is a run of consecutive chunks of the manifest, fetched into one
// buffer (the chunks back to back) and written in as few WriteAt calls as
// the run has contiguous pieces. It is fetched in pieces, each one
// GetMany, by whichever workers are free: see stream.
type job struct {
	seq  int64
	refs []engram.ChunkRef
	buf  *[]byte
	left atomic.Int32 // pieces not fetched yet
}

// piece is refs[lo:hi] of a job, at byte off of its buffer.
type piece struct {
	j      *job
	lo, hi int
	off    int
}

const (
	// jobBytes is the raw size of a job: several compressed blocks, and
	// large writes.
	jobBytes = 4 << 20
	// jobChunks bounds the chunks of one job (small chunks of a sparse
	// image would otherwise make many tiny writes per job anyway).
	jobChunks = 256
	// pieceBytes is the least a piece of a job holds before it is cut at
	// the next block start: about two blocks, so the workers decode the
	// blocks of the oldest job side by side, and the first block of each
	// piece still gets its decode slack (the last one of a GetMany gets
	// none). Pieces of one block took more CPU, not less wall.
	pieceBytes = 1536 << 10
	// placeBatch is how many chunks of the manifest one BlockStarts call
	// asks about.
	placeBatch = 512
	// writeDepth is how many jobs' writes may be in flight at once (for a
	// startSink): the next write is in the kernel's hands while the
	// goroutine of the last one waits for a core that decoders are using.
	writeDepth = 3
)

// alignedBuf returns an empty buffer of capacity n whose memory starts on a
// qcow2.DirectAlign boundary: chunks are multiples of 4 KiB, so the runs
// of a job stay aligned and go to disk past the page cache.
func alignedBuf(n int) []byte {
	b := make([]byte, n+qcow2.DirectAlign)
	skip := -int(uintptrOf(b)) & (qcow2.DirectAlign - 1)
	return b[skip : skip : skip+n]
}

// uintptrOf is the address of b's memory.
func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// extraProcs counts the restores that run with addProcs' extra Ps.
var extraProcs struct {
	mu    sync.Mutex
	users int
	base  int
}

// addProcs raises GOMAXPROCS by n until undo is called, and returns the
// value it had before (the calls nest: the first raises it, the last puts
// it back).
//
// A goroutine in a blocking system call keeps its P until sysmon takes
// it, and sysmon, finding nothing to take while the decoders run, sleeps
// up to 10 ms between looks: each O_DIRECT write of a job (2-5 ms on this
// disk) then kept one of 2 Ps, so the decoders ran on one core while
// others were runnable. Traces of restores to a file showed ~3 goroutines
// runnable on average in the 20 ms spans where fewer than 1.5 cores ran.
// The extra Ps are for the waiters of those writes; the CPU-bound work
// stays bounded by the workers and the decoder's concurrency.
func addProcs(n int) (base int, undo func()) {
	extraProcs.mu.Lock()
	defer extraProcs.mu.Unlock()
	if extraProcs.users == 0 {
		extraProcs.base = runtime.GOMAXPROCS(0)
		runtime.GOMAXPROCS(extraProcs.base + n)
	}
	extraProcs.users++
	return extraProcs.base, func() {
		extraProcs.mu.Lock()
		defer extraProcs.mu.Unlock()
		if extraProcs.users--; extraProcs.users == 0 {
			runtime.GOMAXPROCS(extraProcs.base)
		}
	}
}

// stream fetches every chunk of root in parallel and writes them to out in
// guest order.
//
// Jobs are written in order, so a job fetched slowly holds up the buffers
// of all those after it. Each job of a local store is therefore cut into
// pieces of about two blocks, and the workers take them in guest order:
// the oldest job's blocks are decoded first, on all cores at once, rather
// than each job on one worker at the pace of the others (with whole jobs
// per worker, their fetch times ranged 3-87 ms for the same 3-4 MiB, and
// the producer waited for a free buffer while cores idled). A bucket's
// job stays one piece: GetMany merges its frames into few ranged GETs.
func stream(ctx context.Context, r chunkstore.Reader, root engram.Root, out sink, opts Options, blockingWrites bool) error {
	cores := runtime.GOMAXPROCS(0)
	if blockingWrites {
		base, undo := addProcs(writeDepth)
		defer undo()
		cores = base
	}
	rp, _ := r.(chunkstore.ReadParallelism)
	remote := rp != nil && rp.ReadParallelism() > 0
	workers := opts.Workers
	if workers <= 0 {
		// One more worker than cores: a worker may wait for a pack read
		// or a decoder.
		workers = cores + 1
		// A bucket wants more requests in flight than a disk.
		if p, ok := r.(chunkstore.ReadParallelism); ok {
			workers = max(workers, p.ReadParallelism())
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	pieces := make(chan piece, workers)
	done := make(chan *job, workers)
	// Job buffers in flight: being fetched, waiting for their turn, being
	// written.
	tokenCount := 2*cores + writeDepth + 2
	if remote {
		tokenCount = workers + writeDepth + 2
	}
	tokens := make(chan struct{}, tokenCount)
	// Job buffers are kept for the whole restore, not in a sync.Pool: one
	// that GC empties makes new buffers, which the kernel must fault in
	// and zero again.
	free := make(chan *[]byte, tokenCount)
	if ar := newArena(tokenCount, jobBytes); ar != nil {
		// g.Wait below has returned before this runs: no goroutine
		// holds a buffer then.
		defer ar.release()
		for _, b := range ar.bufs {
			free <- b
		}
	}

	prog := opts.Progress
	if prog != nil {
		prog.Start(root.Size)
		defer prog.Finish()
	}

	g.Go(func() error {
		defer close(pieces)
		var seq int64
		var cur []engram.ChunkRef
		var curStarts []bool // block starts in cur, when the store tells
		var curBytes int
		flush := func() error {
			if len(cur) == 0 {
				return nil
			}
			select {
			case tokens <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			j := &job{seq: seq, refs: cur}
			select {
			case j.buf = <-free:
			default:
				b := alignedBuf(jobBytes + 256<<10)
				j.buf = &b
			}
			if cap(*j.buf) < curBytes {
				*j.buf = alignedBuf(curBytes)
			}
			*j.buf = (*j.buf)[:curBytes]
			var ps []piece
			lo, off, n := 0, 0, 0
			for i, c := range cur {
				if i > lo && curStarts != nil && curStarts[i] && n >= pieceBytes {
					ps = append(ps, piece{j: j, lo: lo, hi: i, off: off})
					lo, off, n = i, off+n, 0
				}
				n += int(c.Length)
			}
			ps = append(ps, piece{j: j, lo: lo, hi: len(cur), off: off})
			j.left.Store(int32(len(ps)))
			for _, p := range ps {
				select {
				case pieces <- p:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			seq++
			cur, curStarts, curBytes = nil, nil, 0
			return nil
		}
		// Jobs are cut just before a chunk that starts a block where the
		// store can tell (BlockStarter), so that no block is shared by two
		// jobs: each is decoded straight into one job's buffer, none goes
		// through the block cache (a buffer to allocate, a copy out, a
		// fetcher waiting for another's decode). Pieces are cut the same
		// way.
		var pend []engram.ChunkRef // read from the manifest, not in a job yet
		var ids []chunkstore.ID
		var starts []bool
		cutAt, cutBytes := 0, 0 // the last block start in cur, and the bytes before it
		place := func() error {
			ids = ids[:0]
			for _, c := range pend {
				ids = append(ids, c.ID)
			}
			starts = slices.Grow(starts[:0], len(pend))[:len(pend)]
			// An error here (a chunk not found) is left to the fetch,
			// which names its guest offset: jobs are then cut anywhere.
			known, err := chunkstore.BlockStarts(ctx, r, ids, starts)
			known = known && err == nil
			for i, c := range pend {
				if len(cur) > 0 && (curBytes+int(c.Length) > jobBytes || len(cur) >= jobChunks) {
					if known && cutAt > 0 && cutBytes >= jobBytes/2 {
						rest := slices.Clone(cur[cutAt:])
						var restStarts []bool
						if curStarts != nil {
							restStarts = slices.Clone(curStarts[cutAt:])
							curStarts = curStarts[:cutAt]
						}
						cur, curBytes = cur[:cutAt], cutBytes
						if err := flush(); err != nil {
							return err
						}
						cur, curStarts = rest, restStarts
						for _, c := range rest {
							curBytes += int(c.Length)
						}
					} else if err := flush(); err != nil {
						return err
					}
					cutAt = 0
				}
				if known && starts[i] && len(cur) > 0 {
					cutAt, cutBytes = len(cur), curBytes
				}
				if known && !remote {
					// Pieces only where every chunk of cur is known.
					if len(cur) == 0 || curStarts != nil {
						curStarts = append(curStarts, starts[i])
					}
				} else {
					curStarts = nil
				}
				cur = append(cur, c)
				curBytes += int(c.Length)
			}
			pend = pend[:0]
			return nil
		}
		err := engram.ForEachChunk(ctx, r, root, func(c engram.ChunkRef) error {
			if pend = append(pend, c); len(pend) >= placeBatch {
				return place()
			}
			return nil
		})
		if err != nil {
			return err
		}
		if err := place(); err != nil {
			return err
		}
		return flush()
	})
	var fetchers sync.WaitGroup
	for range workers {
		fetchers.Add(1)
		g.Go(func() error {
			defer fetchers.Done()
			var ids []chunkstore.ID
			var bufs [][]byte
			for p := range pieces {
				j := p.j
				b := *j.buf
				refs := j.refs[p.lo:p.hi]
				ids, bufs = ids[:0], bufs[:0]
				off := p.off
				for _, ref := range refs {
					ids = append(ids, ref.ID)
					// Not capped: GetMany sees the buffers lie back to back
					// and decodes whole blocks straight into them (it
					// writes no further than its own buffers).
					bufs = append(bufs, b[off:off+int(ref.Length)])
					off += int(ref.Length)
				}
				if err := chunkstore.GetMany(ctx, r, ids, bufs); err != nil {
					return fetchError(refs, ids, err)
				}
				if j.left.Add(-1) > 0 {
					continue
				}
				select {
				case done <- j:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})
	}
	go func() { fetchers.Wait(); close(done) }()

	// The writer takes jobs in guest order and starts their writes; the
	// waiters finish them (several at once: see startSink) and recycle
	// the buffers.
	started := make(chan startedJob, tokenCount)
	var waiters sync.WaitGroup
	for range writeDepth {
		waiters.Add(1)
		g.Go(func() error {
			defer waiters.Done()
			for sj := range started {
				for _, wait := range sj.waits {
					if err := wait(); err != nil {
						return fmt.Errorf("write guest %#x: %w", sj.refs[0].Offset, err)
					}
				}
				*sj.buf = (*sj.buf)[:0]
				select {
				case free <- sj.buf:
				default: // cannot happen: tokens bound the buffers
				}
				<-tokens
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(started)
		pending := map[int64]*job{}
		var next, written int64
		var waits []func() error
		for j := range done {
			pending[j.seq] = j
			for {
				j, ok := pending[next]
				if !ok {
					break
				}
				delete(pending, next)
				next++
				var err error
				if waits, err = startJob(out, j, waits[:0]); err != nil {
					return err
				}
				select {
				case started <- startedJob{job: j, waits: slices.Clone(waits)}:
				case <-ctx.Done():
					return ctx.Err()
				}
				if prog != nil {
					end := j.refs[len(j.refs)-1].End()
					prog.Add(end - written)
					written = end
				}
			}
		}
		if len(pending) > 0 {
			return ctx.Err()
		}
		if prog != nil {
			prog.Add(root.Size - written)
		}
		return nil
	})
	return g.Wait()
}

// startSink is a sink whose writes can be started in order and finished
// later, several at once (qcow2.Writer.StartWriteAt): a write to the disk
// then waits in the kernel while the next is issued, instead of leaving the
// disk idle while the writer goroutine waits to be scheduled again.
type startSink interface {
	StartWriteAt(p []byte, off int64) (wait func() error, err error)
}

// startedJob is a job whose writes are started; waits finish them.
type startedJob struct {
	*job
	waits []func() error
}

// startJob writes a fetched job, one write per run of chunks that are
// contiguous in the guest: started, their waits appended to waits, when
// out is a startSink, else done.
func startJob(out sink, j *job, waits []func() error) ([]func() error, error) {
	ss, _ := out.(startSink)
	b := *j.buf
	pos := 0
	for i := 0; i < len(j.refs); {
		start := j.refs[i].Offset
		end := j.refs[i].End()
		k := i + 1
		for k < len(j.refs) && j.refs[k].Offset == end {
			end = j.refs[k].End()
			k++
		}
		n := int(end - start)
		if ss != nil {
			wait, err := ss.StartWriteAt(b[pos:pos+n], start)
			if err != nil {
				return waits, fmt.Errorf("write guest %#x: %w", start, err)
			}
			waits = append(waits, wait)
		} else if _, err := out.WriteAt(b[pos:pos+n], start); err != nil {
			return waits, fmt.Errorf("write guest %#x: %w", start, err)
		}
		pos += n
		i = k
	}
	return waits, nil
}

// fetchError names the guest offset of the chunk err is about.
func fetchError(refs []engram.ChunkRef, ids []chunkstore.ID, err error) error {
	var id chunkstore.ID
	var le *chunkstore.LengthError
	var nf *chunkstore.NotFoundError
	var ce *chunkstore.CorruptChunkError
	switch {
	case errors.As(err, &le):
		id = le.ID
	case errors.As(err, &nf):
		id = nf.ID
	case errors.As(err, &ce):
		id = ce.ID
	default:
		return fmt.Errorf("chunks at guest %#x..%#x: %w", refs[0].Offset, refs[len(refs)-1].End(), err)
	}
	for _, ref := range refs {
		if ref.ID == id {
			if le != nil {
				return fmt.Errorf("chunk %s at guest %#x: %d bytes, manifest says %d", ref.ID.Short(), ref.Offset, le.Len, ref.Length)
			}
			return fmt.Errorf("chunk at guest %#x: %w", ref.Offset, err)
		}
	}
	return fmt.Errorf("chunks at guest %#x..%#x: %w", refs[0].Offset, refs[len(refs)-1].End(), err)
}
