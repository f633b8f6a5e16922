package restore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/engram-vm/engram/qcow2"
)

// output is the file a restore writes before it becomes the target. Where
// the file system allows, it is an anonymous O_TMPFILE file that gets a
// name only when complete, so a restore killed at any point leaves nothing
// behind; elsewhere it is a hidden temp file beside the target, removed on
// error.
type output struct {
	f      *os.File
	name   string   // what messages call it
	tmp    string   // named temp file; "" for an anonymous one
	keeper *os.File // second descriptor of an anonymous file, kept to link it
}

// createOutput makes the output for dir/base; errors of its I/O name
// shown, the path the user gave, since the file has no name of its own
// until publish (or only a hidden one).
func createOutput(dir, base, shown string) (*output, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o644)
	if err == nil {
		kfd, derr := unix.Dup(fd)
		if derr == nil {
			unix.CloseOnExec(kfd)
			return &output{f: os.NewFile(uintptr(fd), shown), name: shown, keeper: os.NewFile(uintptr(kfd), shown)}, nil
		}
		unix.Close(fd)
	}
	f, err := os.CreateTemp(dir, "."+base+".engram-tmp-*")
	if err != nil {
		return nil, fmt.Errorf("%s: create temporary output in %s: %w", shown, dir, err)
	}
	o := &output{f: f, name: shown, tmp: f.Name()}
	// The same descriptor under the shown name, so os errors name it.
	if fd, err := unix.Dup(int(f.Fd())); err == nil {
		unix.CloseOnExec(fd)
		o.f = os.NewFile(uintptr(fd), shown)
		f.Close()
	}
	return o, nil
}

// publish gives the finished, synced and closed output the name path;
// errors name shown.
func (o *output) publish(path, shown string) error {
	if o.keeper != nil {
		defer o.keeper.Close()
		// linkat cannot replace a file, so link under a temp name and rename.
		tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".engram-tmp-"+strconv.Itoa(os.Getpid()))
		os.Remove(tmp)
		src := "/proc/self/fd/" + strconv.Itoa(int(o.keeper.Fd()))
		if err := unix.Linkat(unix.AT_FDCWD, src, unix.AT_FDCWD, tmp, unix.AT_SYMLINK_FOLLOW); err != nil {
			return fmt.Errorf("%s: link the finished output in: %w", shown, err)
		}
		o.tmp = tmp
	}
	if err := os.Rename(o.tmp, path); err != nil {
		os.Remove(o.tmp)
		return fmt.Errorf("%s: rename the finished output onto it: %w", shown, unwrapPath(err))
	}
	return nil
}

// unwrapPath drops the paths an *os.LinkError or *fs.PathError carries, which
// name the hidden temp file.
func unwrapPath(err error) error {
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Err
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// openDirect opens a second, O_DIRECT descriptor of the output for the
// qcow2 writer's aligned data writes (qcow2.WriterOptions.Direct), or
// returns nil where the file system has no O_DIRECT (then everything goes
// through the page cache, as before).
func (o *output) openDirect() *os.File {
	name := o.tmp
	if name == "" {
		name = "/proc/self/fd/" + strconv.Itoa(int(o.f.Fd()))
	}
	fd, err := unix.Open(name, unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(fd), o.name)
}

// directSink writes the raw output's aligned runs through the O_DIRECT
// descriptor, the rest through the file, as qcow2.WriterOptions.Direct
// does for qcow2 output.
// Writes of a raw image go to fixed offsets, so they can all be in flight
// at once: StartWriteAt leaves the whole write to wait.
type directSink struct {
	f      *os.File
	direct atomic.Pointer[os.File] // nil once the file system refused it
}

func newDirectSink(f, direct *os.File) *directSink {
	s := &directSink{f: f}
	s.direct.Store(direct)
	return s
}

func (s *directSink) WriteAt(p []byte, off int64) (int, error) {
	const a = qcow2.DirectAlign
	if d := s.direct.Load(); d != nil && off%a == 0 && len(p)%a == 0 && uintptr(unsafe.Pointer(unsafe.SliceData(p)))%a == 0 {
		n, err := d.WriteAt(p, off)
		if !errors.Is(err, unix.EINVAL) {
			return n, err
		}
		s.direct.Store(nil) // refused: the page cache from now on
	}
	return s.f.WriteAt(p, off)
}

func (s *directSink) StartWriteAt(p []byte, off int64) (func() error, error) {
	return func() error {
		_, err := s.WriteAt(p, off)
		return err
	}, nil
}

// discard drops an unfinished output.
func (o *output) discard() {
	o.f.Close()
	if o.keeper != nil {
		o.keeper.Close()
	} else if err := os.Remove(o.tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		_ = err // nothing more to do; the name is hidden
	}
}

// writeback asks the kernel to start writing the output's dirty pages
// every writebackEvery bytes, from its own goroutine, so that the final
// fsync finds little left to write instead of waiting for all of it.
type writeback struct {
	sink
	f    *os.File
	n    int64
	kick chan struct{}
	done chan struct{}
}

const writebackEvery = 32 << 20

func newWriteback(out sink, f *os.File) *writeback {
	w := &writeback{sink: out, f: f, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for range w.kick {
			// Whole file, start only (no wait): an error here is not
			// ours to report, the fsync that follows will.
			_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
		}
	}()
	return w
}

func (w *writeback) WriteAt(p []byte, off int64) (int, error) {
	n, err := w.sink.WriteAt(p, off)
	w.count(n)
	return n, err
}

// count notes n more bytes written (by the one goroutine that writes).
func (w *writeback) count(n int) {
	if w.n += int64(n); w.n >= writebackEvery {
		w.n = 0
		select {
		case w.kick <- struct{}{}:
		default: // one is under way
		}
	}
}

// StartWriteAt starts the write in the sink when it can (startSink), else
// does it.
func (w *writeback) StartWriteAt(p []byte, off int64) (func() error, error) {
	ss, ok := w.sink.(startSink)
	if !ok {
		_, err := w.WriteAt(p, off)
		return func() error { return nil }, err
	}
	wait, err := ss.StartWriteAt(p, off)
	if err == nil {
		w.count(len(p))
	}
	return wait, err
}

// stop ends the goroutine; call it before closing the file.
func (w *writeback) stop() {
	close(w.kick)
	<-w.done
}
