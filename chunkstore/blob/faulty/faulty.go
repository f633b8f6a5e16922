package faulty

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// Op names a Store method.
type Op string

// The operations a fault can match.
const (
	Put    Op = "put"
	Get    Op = "get"
	List   Op = "list"
	Delete Op = "delete"
	// Replace is blob.Replace of the inner store (atomic when it is a
	// blob.Replacer).
	Replace Op = "replace"
)

// ErrInjected is the error a Fault returns when it sets none.
var ErrInjected = errors.New("injected fault")

// Fault describes one injected failure.
type Fault struct {
	Op     Op
	Prefix string // names (for List: the prefix) it applies to; "" all
	// Skip lets this many matching calls through before the fault fires.
	Skip int
	// Times is how many calls fail once it fires (0: every one).
	Times int
	// Err is returned (default ErrInjected).
	Err error
	// After runs the operation first and then returns Err: the write
	// happened but the caller thinks it failed.
	After bool
	// Hook, if set, is called with the name before the fault acts; if it
	// returns a non-nil error that is returned instead and nothing runs.
	Hook func(name string) error
}

// Store is a blob.Store with faults.
type Store struct {
	blob.Store
	mu     sync.Mutex
	faults []*state
	calls  map[Op]int
}

type state struct {
	f     Fault
	seen  int
	fired int
}

var (
	_ blob.Store    = (*Store)(nil)
	_ blob.Replacer = (*Store)(nil)
)

// New wraps inner.
func New(inner blob.Store) *Store { return &Store{Store: inner, calls: map[Op]int{}} }

// Add installs a fault; the first installed fault that matches a call acts.
func (s *Store) Add(f Fault) {
	if f.Err == nil {
		f.Err = ErrInjected
	}
	s.mu.Lock()
	s.faults = append(s.faults, &state{f: f})
	s.mu.Unlock()
}

// Clear removes every fault.
func (s *Store) Clear() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

// Calls returns how many times op was called.
func (s *Store) Calls(op Op) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// match returns the fault acting on this call, if any.
func (s *Store) match(op Op, name string) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[op]++
	for _, st := range s.faults {
		if st.f.Op != op || !strings.HasPrefix(name, st.f.Prefix) {
			continue
		}
		st.seen++
		if st.seen <= st.f.Skip {
			continue
		}
		if st.f.Times > 0 && st.fired >= st.f.Times {
			continue
		}
		st.fired++
		f := st.f
		return &f
	}
	return nil
}

func (s *Store) do(op Op, name string, run func() error) error {
	f := s.match(op, name)
	if f == nil {
		return run()
	}
	if f.Hook != nil {
		if err := f.Hook(name); err != nil {
			return err
		}
	}
	if f.After {
		if err := run(); err != nil {
			return err
		}
	}
	return f.Err
}

// Put may fail before or after writing.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	return s.do(Put, name, func() error { return s.Store.Put(ctx, name, data) })
}

// Replace may fail before or after replacing.
func (s *Store) Replace(ctx context.Context, name string, data []byte) error {
	return s.do(Replace, name, func() error { return blob.Replace(ctx, s.Store, name, data) })
}

// Get may fail.
func (s *Store) Get(ctx context.Context, name string, off, length int64) ([]byte, error) {
	var b []byte
	err := s.do(Get, name, func() error {
		var err error
		b, err = s.Store.Get(ctx, name, off, length)
		return err
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

// List may fail (with After: after visiting everything).
func (s *Store) List(ctx context.Context, prefix string, fn func(blob.Info) error) error {
	return s.do(List, prefix, func() error { return s.Store.List(ctx, prefix, fn) })
}

// ListAfter fails as List does.
func (s *Store) ListAfter(ctx context.Context, prefix, after string, fn func(blob.Info) error) error {
	return s.do(List, prefix, func() error { return s.Store.ListAfter(ctx, prefix, after, fn) })
}

// Delete may fail before or after deleting.
func (s *Store) Delete(ctx context.Context, name string) error {
	return s.do(Delete, name, func() error { return s.Store.Delete(ctx, name) })
}

func (s *Store) String() string { return "faulty " + s.Store.String() }
