package dir

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
)

const tmpDir = ".tmp"

// Store is a directory of objects.
type Store struct {
	root string
}

var (
	_ blob.Store       = (*Store)(nil)
	_ blob.StrayLister = (*Store)(nil)
)

// Open opens the object directory root, creating it (and its parents)
// when create is set; otherwise a missing root is blob.ErrNotExist.
// Temporary files older than an hour (left by killed writers) are removed.
func Open(root string, create bool) (*Store, error) {
	if create {
		if err := os.MkdirAll(filepath.Join(root, tmpDir), 0o755); err != nil {
			return nil, fmt.Errorf("dir %s: %w", root, err)
		}
	}
	fi, err := os.Stat(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("dir %s: %w", root, blob.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("dir %s: %w", root, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("dir %s: not a directory", root)
	}
	if err := os.MkdirAll(filepath.Join(root, tmpDir), 0o755); err != nil {
		return nil, fmt.Errorf("dir %s: %w", root, err)
	}
	if des, err := os.ReadDir(filepath.Join(root, tmpDir)); err == nil {
		for _, de := range des {
			if fi, err := de.Info(); err == nil && time.Since(fi.ModTime()) > time.Hour {
				_ = os.Remove(filepath.Join(root, tmpDir, de.Name()))
			}
		}
	}
	return &Store{root: root}, nil
}

// String is the directory itself, so that STORE + "/" + object, as the
// messages name objects, is the object's file.
func (s *Store) String() string { return s.root }

// Close does nothing.
func (s *Store) Close() error { return nil }

func (s *Store) path(name string) string { return filepath.Join(s.root, filepath.FromSlash(name)) }

func (s *Store) errf(op, name string, err error) error {
	return fmt.Errorf("%s: %s %s: %w", s, op, name, err)
}

// checkWrite refuses a name that is not an object's, or lies in the
// temporary directory, and a cancelled ctx, before op writes name.
func (s *Store) checkWrite(ctx context.Context, op, name string) error {
	if err := blob.CheckName(name); err != nil {
		return fmt.Errorf("%s: %s: %w", s, op, err)
	}
	if strings.HasPrefix(name, tmpDir+"/") || name == tmpDir {
		return s.errf(op, name, blob.ErrBadName)
	}
	if err := ctx.Err(); err != nil {
		return s.errf(op, name, err)
	}
	return nil
}

// Put writes data to a temporary file and links it to name.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	return s.put(ctx, "put", name, data)
}

// Replace writes name in place of what is there (blob.Replacer): a
// temporary file renamed over it, so a reader opens the old file or the
// new one.
func (s *Store) Replace(ctx context.Context, name string, data []byte) error {
	return s.put(ctx, "replace", name, data)
}

func (s *Store) put(ctx context.Context, op, name string, data []byte) error {
	if err := s.checkWrite(ctx, op, name); err != nil {
		return err
	}
	final := s.path(name)
	if op == "put" {
		if fi, err := os.Lstat(final); err == nil {
			return s.errf(op, name, existing(final, fi))
		}
	}
	parent := filepath.Dir(final)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return s.errf(op, name, err)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(s.root, tmpDir, hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return s.errf(op, name, err)
	}
	defer os.Remove(tmp)
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return s.errf(op, name, err)
	}
	if op == "replace" {
		err = os.Rename(tmp, final)
	} else if err = os.Link(tmp, final); errors.Is(err, fs.ErrExist) {
		return s.errf(op, name, existingAt(final))
	}
	if err != nil {
		return s.errf(op, name, err)
	}
	if err := syncDir(parent); err != nil {
		return s.errf(op, name, err)
	}
	return nil
}

// existing is ErrExist for a file already at path, and an error naming
// what else is in the way: a directory there is not the object, and
// calling it ErrExist made repair report a segment restored that stayed
// unreadable.
func existing(path string, fi fs.FileInfo) error {
	if fi.Mode().IsRegular() {
		return blob.ErrExist
	}
	return fmt.Errorf("%s is %s, not an object file; move it away", path, what(fi.Mode()))
}

// what names a file type that is not an object's.
func what(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "a special file (" + m.Type().String() + ")"
}

// existingAt is existing for what is at path now.
func existingAt(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return existing(path, fi)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Get reads length bytes at off (length < 0: to the end).
func (s *Store) Get(ctx context.Context, name string, off, length int64) ([]byte, error) {
	var buf []byte
	err := s.read(ctx, name, off, length, func(n int64) []byte {
		buf = make([]byte, n)
		return buf
	})
	if err != nil {
		return nil, err
	}
	return buf, nil
}

// GetInto implements blob.IntoGetter.
func (s *Store) GetInto(ctx context.Context, name string, off int64, p []byte) error {
	return s.read(ctx, name, off, int64(len(p)), func(int64) []byte { return p })
}

// read reads length bytes at off (length < 0: to the end) into the buffer
// alloc gives it for the length, once the range is known to be there.
func (s *Store) read(ctx context.Context, name string, off, length int64, alloc func(n int64) []byte) error {
	if err := blob.CheckName(name); err != nil {
		return fmt.Errorf("%s: get: %w", s, err)
	}
	if err := blob.CheckRange(off, length); err != nil {
		return s.errf("get", name, err)
	}
	if err := ctx.Err(); err != nil {
		return s.errf("get", name, err)
	}
	f, err := os.Open(s.path(name))
	if errors.Is(err, fs.ErrNotExist) {
		return s.errf("get", name, blob.ErrNotExist)
	}
	if err != nil {
		return s.errf("get", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return s.errf("get", name, err)
	}
	if !fi.Mode().IsRegular() {
		return s.errf("get", name, blob.ErrNotExist)
	}
	size := fi.Size()
	if length < 0 {
		length = size - off
		if length > blob.MaxWholeRead {
			return s.errf("get", name, fmt.Errorf("%d bytes: %w", size, blob.ErrRange))
		}
	}
	if off > size || length < 0 || off+length > size {
		return s.errf("get", name, fmt.Errorf("%d bytes at %d of a %d-byte object: %w", length, off, size, blob.ErrRange))
	}
	if _, err := f.ReadAt(alloc(length), off); err != nil {
		if errors.Is(err, io.EOF) {
			return s.errf("get", name, fmt.Errorf("object shrank: %w", blob.ErrRange))
		}
		return s.errf("get", name, err)
	}
	return nil
}

// List walks the directories the prefix can match.
func (s *Store) List(ctx context.Context, prefix string, fn func(blob.Info) error) error {
	return s.ListAfter(ctx, prefix, "", fn)
}

// ListAfter is List of the names after after (filtered: a directory
// store is for tests and single hosts, its listings are local).
func (s *Store) ListAfter(ctx context.Context, prefix, after string, fn func(blob.Info) error) error {
	return s.walk(ctx, prefix, func(name string, de fs.DirEntry) error {
		if de.IsDir() || !de.Type().IsRegular() || !strings.HasPrefix(name, prefix) || name <= after {
			return nil
		}
		fi, err := de.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return err
		}
		return fn(blob.Info{Name: name, Size: fi.Size(), ModTime: fi.ModTime()})
	})
}

// ListStrays implements blob.StrayLister: every directory under prefix
// (each may stand where an object belongs; the caller knows which names
// are objects' and filters) and every file under it that is not a
// regular file.
func (s *Store) ListStrays(ctx context.Context, prefix string, fn func(name, what string) error) error {
	return s.walk(ctx, prefix, func(name string, de fs.DirEntry) error {
		if name == "." || !strings.HasPrefix(name, prefix) || de.Type().IsRegular() {
			return nil
		}
		return fn(name, what(de.Type()))
	})
}

// walk calls visit with the slash name of every entry under the
// directories the prefix can match, the store's own .tmp left out; the
// walk starts from the deepest directory the prefix fixes and skips
// directories that cannot hold a match.
func (s *Store) walk(ctx context.Context, prefix string, visit func(name string, de fs.DirEntry) error) error {
	if err := blob.CheckPrefix(prefix); err != nil {
		return fmt.Errorf("%s: list: %w", s, err)
	}
	start := s.root
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = s.path(prefix[:i])
	}
	err := filepath.WalkDir(start, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		rel, rerr := filepath.Rel(s.root, p)
		if rerr != nil {
			return rerr
		}
		name := filepath.ToSlash(rel)
		if de.IsDir() {
			if name == tmpDir {
				return filepath.SkipDir
			}
			if name != "." && !strings.HasPrefix(name+"/", prefix) && !strings.HasPrefix(prefix, name+"/") {
				return filepath.SkipDir
			}
		}
		return visit(name, de)
	})
	if err != nil {
		return fmt.Errorf("%s: list %q: %w", s, prefix, err)
	}
	return nil
}

// Delete removes name; a missing name is not an error.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := blob.CheckName(name); err != nil {
		return fmt.Errorf("%s: delete: %w", s, err)
	}
	if err := ctx.Err(); err != nil {
		return s.errf("delete", name, err)
	}
	p := s.path(name)
	if err := os.Remove(p); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return s.errf("delete", name, err)
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return s.errf("delete", name, err)
	}
	return nil
}

// The staged write: Put split in three so that a writer of many objects
// pays for durability once (chunkstore's OpenOptions.DeferSync) instead of
// four fsyncs per object, each waiting on the disk in turn. WriteTemp
// writes an object's bytes to a temporary file, not synced; SyncTemps
// fsyncs a set of them at once; LinkTemps gives synced files their names
// and fsyncs each directory they land in. A crash before LinkTemps leaves
// only temporary files, which Open removes once they are an hour old.

// syncParallel bounds the fsyncs SyncTemps and LinkTemps run at once: the
// filesystem folds concurrent ones into one journal commit.
const syncParallel = 16

// WriteTemp writes the concatenation of parts to a new temporary file and
// returns its path.
func (s *Store) WriteTemp(ctx context.Context, parts ...[]byte) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("%s: write: %w", s, err)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(s.root, tmpDir, hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", fmt.Errorf("%s: write: %w", s, err)
	}
	for _, p := range parts {
		if _, err = f.Write(p); err != nil {
			break
		}
	}
	if err == nil {
		startWriteback(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("%s: %w", s, err) // a *PathError: names tmp and the operation
	}
	return tmp, nil
}

// SyncTemps fsyncs the temporary files of WriteTemp, in parallel.
func (s *Store) SyncTemps(ctx context.Context, tmps []string) error {
	return parallel(ctx, tmps, func(p string) error {
		if err := syncFile(p); err != nil {
			return fmt.Errorf("%s: sync %s: %w", s, p, err)
		}
		return nil
	})
}

// LinkTemps links each synced temporary file tmps[i] to object names[i] (a
// name that exists already is left as it is: objects are named by their
// content) and fsyncs every directory it linked into, in parallel. The
// temporary files stay; RemoveTemps removes them.
func (s *Store) LinkTemps(ctx context.Context, tmps, names []string) error {
	if len(tmps) != len(names) {
		return fmt.Errorf("%s: link: %d files for %d names", s, len(tmps), len(names))
	}
	dirs := map[string]bool{}
	for i, name := range names {
		if err := s.checkWrite(ctx, "link", name); err != nil {
			return err
		}
		final := s.path(name)
		parent := filepath.Dir(final)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return s.errf("link", name, err)
		}
		if err := os.Link(tmps[i], final); errors.Is(err, fs.ErrExist) {
			if err := existingAt(final); !errors.Is(err, blob.ErrExist) {
				return s.errf("link", name, err)
			}
		} else if err != nil {
			return s.errf("link", name, err)
		}
		dirs[parent] = true
	}
	list := make([]string, 0, len(dirs))
	for d := range dirs {
		list = append(list, d)
	}
	return parallel(ctx, list, func(d string) error {
		if err := syncDir(d); err != nil {
			return fmt.Errorf("%s: sync %s: %w", s, d, err)
		}
		return nil
	})
}

// RemoveTemps removes temporary files of WriteTemp (best effort).
func (s *Store) RemoveTemps(tmps []string) {
	for _, p := range tmps {
		_ = os.Remove(p)
	}
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// parallel runs fn on every item, syncParallel at a time, and returns the
// first error.
func parallel(ctx context.Context, items []string, fn func(string) error) error {
	sem := make(chan struct{}, syncParallel)
	errs := make(chan error, len(items))
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			errs <- err
			break
		}
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			errs <- fn(it)
		}()
	}
	for range cap(sem) {
		sem <- struct{}{}
	}
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
