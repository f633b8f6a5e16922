package qcow2

import (
	"os"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fileMap is a read-only shared mapping of a whole file, made on first use
// so that callers who only ReadAt never pay for it. A file that cannot be
// mapped (a file system without mmap, a 32-bit address space) leaves b nil
// and Mapped answers "not mapped": the caller reads with ReadAt.
type fileMap struct {
	once sync.Once
	f    *os.File
	size int64 // the file's size at open: nothing past it is handed out
	b    []byte
}

func newFileMap(f *os.File, size int64) *fileMap { return &fileMap{f: f, size: size} }

func (m *fileMap) get() []byte {
	m.once.Do(func() {
		if m.size <= 0 || strconv.IntSize < 64 {
			return
		}
		b, err := unix.Mmap(int(m.f.Fd()), 0, int(m.size), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return
		}
		m.b = b
	})
	return m.b
}

func (m *fileMap) close() error {
	m.once.Do(func() {}) // never map after Close
	if m.b == nil {
		return nil
	}
	b := m.b
	m.b = nil
	return unix.Munmap(b)
}

// Mapped returns guest bytes [off, off+n) of the chain as a slice of a
// read-only mapping of the file that stores them, without copying, when
// they are plain (uncompressed) data stored contiguously in one file —
// most of an image written sequentially. ok is false when they are not
// (compressed, zero, unallocated, split across files or host runs, or the
// file cannot be mapped): read them with ReadAt instead.
//
// The slice is valid until Close. Its pages count in the process's resident
// set once touched; Release drops them again. If the file shrinks while it
// is mapped, touching the lost pages faults (SIGBUS): touch the slice only
// in goroutines that run with debug.SetPanicOnFault(true) and turn that
// panic into an error.
func (im *Image) Mapped(off, n int64) (b []byte, ok bool, err error) {
	if off < 0 || n <= 0 || n > im.size-off {
		return nil, false, nil
	}
	return im.mapped(off, n)
}

func (im *Image) mapped(off, n int64) ([]byte, bool, error) {
	if im.q == nil {
		return im.dmap.slice(off, n)
	}
	host := int64(-1)
	under := false // the whole range falls through to the backing file
	for got := int64(0); got < n; {
		s, err := im.q.lookup(off+got, n-got)
		if err != nil {
			return nil, false, err
		}
		switch {
		case s.kind == segData && !under && (got == 0 || s.host == host+got):
			if got == 0 {
				host = s.host
			}
		case s.kind == segUnalloc && im.backing != nil && (got == 0 || under):
			under = true
		default:
			return nil, false, nil
		}
		got += s.n
	}
	if under {
		if n > im.backing.size-off {
			return nil, false, nil // partly past a short backing file: zeros
		}
		return im.backing.mapped(off, n)
	}
	return im.dmap.slice(host, n)
}

func (m *fileMap) slice(host, n int64) ([]byte, bool, error) {
	if m == nil || host < 0 || n > m.size-host {
		return nil, false, nil // past the end of the file: ReadAt gives the zeros
	}
	b := m.get()
	if b == nil {
		return nil, false, nil
	}
	return b[host : host+n : host+n], true, nil
}

// Release tells the kernel the process is done with b, a slice from Mapped,
// for now: its pages leave the resident set (the page cache keeps them, and
// touching b again reads them back). Ingest releases each mapped read once
// its chunks are stored, so its peak RSS does not grow with the image.
func Release(b []byte) {
	page := os.Getpagesize()
	if len(b) < page {
		return
	}
	// Only whole pages inside b: neighbours may still be in use (dropping
	// them would be safe, since they read back, but costs a fault).
	start := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) & uintptr(page-1))
	if start != 0 {
		start = page - start
	}
	end := start + (len(b)-start)&^(page-1)
	if end-start < page {
		return
	}
	_ = unix.Madvise(b[start:end], unix.MADV_DONTNEED)
}

// Prefault maps the pages of b, a slice from Mapped, in one call
// (MADV_POPULATE_READ, Linux 5.14) instead of one fault per few pages when
// they are first touched; where the kernel lacks it this does nothing.
func Prefault(b []byte) {
	if len(b) > 0 {
		_ = unix.Madvise(b, unix.MADV_POPULATE_READ)
	}
}
