package chunkstore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// packName is the file name of pack num under packs/: 8 hex digits.
func packName(num uint32) string { return fmt.Sprintf("%08x.pack", num) }

func parsePackName(name string) (uint32, bool) {
	hexPart, ok := strings.CutSuffix(name, ".pack")
	if !ok || len(hexPart) != 8 {
		return 0, false
	}
	n, err := strconv.ParseUint(hexPart, 16, 32)
	return uint32(n), err == nil
}

// packReaders caches read-only handles of pack files. A handle in use is
// never closed under its user; unused ones are closed when the cache is
// over its size or when GC drops the pack.
type packReaders struct {
	dir   string // the packs directory
	mu    sync.Mutex
	files map[uint32]*packFile
}

type packFile struct {
	num     uint32
	f       *os.File
	size    int64 // at open; reads beyond it re-stat
	refs    int
	dropped bool
}

const maxOpenPacks = 64

func newPackReaders(dir string) *packReaders {
	return &packReaders{dir: dir, files: map[uint32]*packFile{}}
}

func (r *packReaders) path(num uint32) string { return filepath.Join(r.dir, packName(num)) }

func (r *packReaders) get(num uint32) (*packFile, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if pf := r.files[num]; pf != nil {
		pf.refs++
		return pf, nil
	}
	f, err := os.Open(r.path(num))
	if err != nil {
		return nil, err
	}
	if len(r.files) >= maxOpenPacks {
		for n, pf := range r.files {
			if pf.refs == 0 {
				pf.f.Close()
				delete(r.files, n)
			}
		}
	}
	pf := &packFile{num: num, f: f, refs: 1}
	r.files[num] = pf
	return pf, nil
}

func (r *packReaders) put(pf *packFile) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pf.refs--
	if pf.refs == 0 && pf.dropped {
		pf.f.Close()
	}
}

// drop forgets pack num (GC deleted or rewrote it).
func (r *packReaders) drop(num uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if pf := r.files[num]; pf != nil {
		delete(r.files, num)
		pf.dropped = true
		if pf.refs == 0 {
			pf.f.Close()
		}
	}
}

func (r *packReaders) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for n, pf := range r.files {
		pf.dropped = true
		if pf.refs == 0 {
			pf.f.Close()
		}
		delete(r.files, n)
	}
}

// readAt reads exactly len(b) bytes at off from pack num.
func (r *packReaders) readAt(num uint32, b []byte, off int64) error {
	pf, err := r.get(num)
	if err != nil {
		return err
	}
	defer r.put(pf)
	n, err := pf.f.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if errors.Is(err, io.EOF) {
		fi, serr := pf.f.Stat()
		if serr == nil {
			return fmt.Errorf("pack ends at 0x%x, frame needs 0x%x..0x%x: %w", fi.Size(), off, off+int64(len(b)), io.ErrUnexpectedEOF)
		}
		return io.ErrUnexpectedEOF
	}
	return err
}

// packWriter is the pack the writer appends to.
type packWriter struct {
	num       uint32
	path      string
	f         *os.File
	size      int64 // bytes written
	committed int64 // bytes the index knows about
	isNew     bool  // no pack record committed yet
}
