package faulty_test

import (
	"context"
	"errors"
	"testing"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/blobtest"
	"github.com/engram-vm/engram/chunkstore/blob/faulty"
	"github.com/engram-vm/engram/chunkstore/blob/mem"
)

// Without faults the wrapper keeps the contract.
func TestConformance(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) blob.Store { return faulty.New(mem.New()) }, blobtest.Options{})
}

func TestFaults(t *testing.T) {
	ctx := context.Background()
	s := faulty.New(mem.New())
	s.Add(faulty.Fault{Op: faulty.Put, Prefix: "packs/", Skip: 1, Times: 1})
	if err := s.Put(ctx, "packs/1", []byte("a")); err != nil {
		t.Fatalf("skipped call failed: %v", err)
	}
	if err := s.Put(ctx, "packs/2", []byte("b")); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("second call: %v, want ErrInjected", err)
	}
	if _, err := s.Get(ctx, "packs/2", 0, -1); !errors.Is(err, blob.ErrNotExist) {
		t.Fatalf("a Put failed before running left an object: %v", err)
	}
	if err := s.Put(ctx, "packs/2", []byte("b")); err != nil {
		t.Fatalf("fault fired more than Times: %v", err)
	}

	// A lost reply: the object is written, the caller sees an error, a
	// retry sees ErrExist.
	s.Add(faulty.Fault{Op: faulty.Put, Prefix: "index/", After: true, Times: 1})
	if err := s.Put(ctx, "index/1", []byte("i")); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("After fault: %v", err)
	}
	if err := s.Put(ctx, "index/1", []byte("i")); !errors.Is(err, blob.ErrExist) {
		t.Fatalf("retry after a lost reply: %v, want ErrExist", err)
	}

	hooked := ""
	stop := errors.New("killed")
	s.Add(faulty.Fault{Op: faulty.Delete, Hook: func(name string) error { hooked = name; return stop }})
	if err := s.Delete(ctx, "packs/1"); !errors.Is(err, stop) || hooked != "packs/1" {
		t.Fatalf("hook: %v, %q", err, hooked)
	}
	if _, err := s.Get(ctx, "packs/1", 0, -1); err != nil {
		t.Fatalf("a hook that failed still ran the delete: %v", err)
	}
	if s.Calls(faulty.Put) != 5 || s.Calls(faulty.Delete) != 1 {
		t.Fatalf("calls: put %d delete %d", s.Calls(faulty.Put), s.Calls(faulty.Delete))
	}
	s.Clear()
	if err := s.Delete(ctx, "packs/1"); err != nil {
		t.Fatalf("after Clear: %v", err)
	}
}
