package dir_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/blobtest"
	"github.com/engram-vm/engram/chunkstore/blob/dir"
)

func TestConformance(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) blob.Store {
		s, err := dir.Open(filepath.Join(t.TempDir(), "objs"), true)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, blobtest.Options{})
}

func TestOpenMissing(t *testing.T) {
	if _, err := dir.Open(filepath.Join(t.TempDir(), "nope"), false); !errors.Is(err, blob.ErrNotExist) {
		t.Fatalf("Open(missing) = %v, want ErrNotExist", err)
	}
}

// A killed writer leaves only a temporary file, which List does not show.
func TestTempInvisible(t *testing.T) {
	root := t.TempDir()
	s, err := dir.Open(root, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, ".tmp", "deadbeef"), []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := s.List(context.Background(), "", func(blob.Info) error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("List saw %d objects (%v), want none", n, err)
	}
	if err := s.Put(context.Background(), ".tmp/x", []byte("x")); !errors.Is(err, blob.ErrBadName) {
		t.Fatalf("Put(.tmp/x) = %v, want ErrBadName", err)
	}
}
