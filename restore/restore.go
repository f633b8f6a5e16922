package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/qcow2"
)

// ErrExists is returned when the output file exists and Force is not set.
var ErrExists = errors.New("output file exists (use --force to overwrite)")

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
	Workers     int    // 0 = GOMAXPROCS
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
	if !opts.Force {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s: %w", path, ErrExists)
		}
	}
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil {
		return fmt.Errorf("output directory %s: %w", dir, err)
	} else if !st.IsDir() {
		return fmt.Errorf("output directory %s: not a directory", dir)
	}
	o, err := createOutput(dir, filepath.Base(path))
	if err != nil {
		return err
	}
	f, tmp := o.f, o.name
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
			return fmt.Errorf("%s: %w", tmp, err)
		}
		out = f
		finish = func() error {
			if err := f.Sync(); err != nil {
				return fmt.Errorf("sync: %w", err)
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
		if err := stream(ctx, r, root, out, opts); err != nil {
			return err
		}
	}
	if err := finish(); err != nil {
		return fmt.Errorf("%s: %w", tmp, err)
	}
	if err := o.publish(path); err != nil {
		return err
	}
	return syncDir(dir)
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
	if err := stream(ctx, r, root, s, opts); err != nil {
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

type fetched struct {
	seq  int64
	ref  engram.ChunkRef
	data []byte
}

// stream fetches every chunk of root in parallel and writes them to out in
// guest order.
func stream(ctx context.Context, r chunkstore.Reader, root engram.Root, out sink, opts Options) error {
	workers := opts.Workers
	if workers <= 0 {
		// Consecutive chunks share compressed blocks, which are decompressed
		// once while other fetchers wait; more fetchers than cores keep
		// several blocks in work at once.
		workers = 4 * runtime.GOMAXPROCS(0)
	}
	g, ctx := errgroup.WithContext(ctx)
	refs := make(chan fetched, 4*workers)
	done := make(chan fetched, 4*workers)
	tokens := make(chan struct{}, 16*workers) // bounds chunks held for reordering

	prog := opts.Progress
	if prog != nil {
		prog.Start(root.Size)
		defer prog.Finish()
	}

	g.Go(func() error {
		defer close(refs)
		var seq int64
		return engram.ForEachChunk(ctx, r, root, func(c engram.ChunkRef) error {
			select {
			case tokens <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case refs <- fetched{seq: seq, ref: c}:
			case <-ctx.Done():
				return ctx.Err()
			}
			seq++
			return nil
		})
	})
	var fetchers sync.WaitGroup
	for range workers {
		fetchers.Add(1)
		g.Go(func() error {
			defer fetchers.Done()
			for f := range refs {
				data, err := r.Get(ctx, f.ref.ID)
				if err != nil {
					return fmt.Errorf("chunk at guest %#x: %w", f.ref.Offset, err)
				}
				if len(data) != int(f.ref.Length) {
					return fmt.Errorf("chunk %s at guest %#x: %d bytes, manifest says %d", f.ref.ID.Short(), f.ref.Offset, len(data), f.ref.Length)
				}
				f.data = data
				select {
				case done <- f:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})
	}
	go func() { fetchers.Wait(); close(done) }()

	g.Go(func() error {
		pending := map[int64]fetched{}
		var next, written int64
		for f := range done {
			pending[f.seq] = f
			for {
				f, ok := pending[next]
				if !ok {
					break
				}
				delete(pending, next)
				next++
				<-tokens
				if _, err := out.WriteAt(f.data, f.ref.Offset); err != nil {
					return fmt.Errorf("write guest %#x: %w", f.ref.Offset, err)
				}
				if prog != nil {
					prog.Add(f.ref.End() - written)
					written = f.ref.End()
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
