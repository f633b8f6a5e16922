package mem

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// Store keeps objects in a map. The zero value is not usable; call New.
type Store struct {
	mu   sync.Mutex
	objs map[string]obj
	now  func() time.Time
}

type obj struct {
	data []byte
	mod  time.Time
}

var _ blob.Store = (*Store)(nil)

// New returns an empty store.
func New() *Store { return &Store{objs: map[string]obj{}, now: time.Now} }

func (s *Store) String() string { return "mem" }

// Close does nothing.
func (s *Store) Close() error { return nil }

// Put creates name (blob.ErrExist if it exists).
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	if err := blob.CheckName(name); err != nil {
		return fmt.Errorf("mem: put: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mem: put %s: %w", name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.objs[name]; ok {
		return fmt.Errorf("mem: put %s: %w", name, blob.ErrExist)
	}
	s.objs[name] = obj{bytes.Clone(data), s.now()}
	return nil
}

// Replace puts name in place of what is there (blob.Replacer).
func (s *Store) Replace(ctx context.Context, name string, data []byte) error {
	if err := blob.CheckName(name); err != nil {
		return fmt.Errorf("mem: replace: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mem: replace %s: %w", name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.objs[name] = obj{bytes.Clone(data), s.now()}
	return nil
}

// Get returns a copy of the range asked for.
func (s *Store) Get(ctx context.Context, name string, off, length int64) ([]byte, error) {
	if err := blob.CheckName(name); err != nil {
		return nil, fmt.Errorf("mem: get: %w", err)
	}
	if err := blob.CheckRange(off, length); err != nil {
		return nil, fmt.Errorf("mem: get %s: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("mem: get %s: %w", name, err)
	}
	s.mu.Lock()
	o, ok := s.objs[name]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("mem: get %s: %w", name, blob.ErrNotExist)
	}
	size := int64(len(o.data))
	if length < 0 {
		length = size - off
	}
	if off > size || length < 0 || off+length > size || length > blob.MaxWholeRead {
		return nil, fmt.Errorf("mem: get %s: %d bytes at %d of a %d-byte object: %w", name, length, off, size, blob.ErrRange)
	}
	return bytes.Clone(o.data[off : off+length : off+length]), nil
}

// List visits the objects under prefix.
func (s *Store) List(ctx context.Context, prefix string, fn func(blob.Info) error) error {
	return s.ListAfter(ctx, prefix, "", fn)
}

// ListAfter visits the objects under prefix whose names sort after after.
func (s *Store) ListAfter(ctx context.Context, prefix, after string, fn func(blob.Info) error) error {
	if err := blob.CheckPrefix(prefix); err != nil {
		return fmt.Errorf("mem: list: %w", err)
	}
	s.mu.Lock()
	var infos []blob.Info
	for n, o := range s.objs {
		if strings.HasPrefix(n, prefix) && n > after {
			infos = append(infos, blob.Info{Name: n, Size: int64(len(o.data)), ModTime: o.mod})
		}
	}
	s.mu.Unlock()
	for _, in := range infos {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("mem: list %s: %w", prefix, err)
		}
		if err := fn(in); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes name; a missing name is not an error.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := blob.CheckName(name); err != nil {
		return fmt.Errorf("mem: delete: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mem: delete %s: %w", name, err)
	}
	s.mu.Lock()
	delete(s.objs, name)
	s.mu.Unlock()
	return nil
}

// Corrupt flips the bits of byte off of object name, for rot tests. It
// reports whether the object and offset exist.
func (s *Store) Corrupt(name string, off int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objs[name]
	if !ok || off < 0 || off >= int64(len(o.data)) {
		return false
	}
	o.data[off] ^= 0xff
	return true
}
