package dir_test

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
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

// GetInto reads what Get reads, into the caller's buffer, with Get's
// errors.
func TestGetInto(t *testing.T) {
	ctx := context.Background()
	s, err := dir.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("0123456789abcdef")
	if err := s.Put(ctx, "packs/ab/obj", data); err != nil {
		t.Fatal(err)
	}
	var ig blob.IntoGetter = s
	for _, c := range []struct{ off, n int64 }{{0, 16}, {3, 5}, {16, 0}, {15, 1}} {
		want, err := s.Get(ctx, "packs/ab/obj", c.off, c.n)
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, c.n)
		if err := ig.GetInto(ctx, "packs/ab/obj", c.off, p); err != nil || string(p) != string(want) {
			t.Fatalf("GetInto(%d, %d) = %q, %v; Get gives %q", c.off, c.n, p, err, want)
		}
	}
	if err := ig.GetInto(ctx, "packs/ab/obj", 10, make([]byte, 7)); !errors.Is(err, blob.ErrRange) {
		t.Fatalf("GetInto past the end = %v, want ErrRange", err)
	}
	if err := ig.GetInto(ctx, "packs/ab/nope", 0, make([]byte, 1)); !errors.Is(err, blob.ErrNotExist) {
		t.Fatalf("GetInto of a missing object = %v, want ErrNotExist", err)
	}
	if err := ig.GetInto(ctx, "../x", 0, make([]byte, 1)); !errors.Is(err, blob.ErrBadName) {
		t.Fatalf("GetInto(../x) = %v, want ErrBadName", err)
	}
}

// A directory where an object belongs is not the object: Put says what is
// in the way instead of ErrExist (repair took ErrExist as "already there").
func TestPutOverDirectory(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s, err := dir.Open(root, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "index", "abc"), 0o755); err != nil {
		t.Fatal(err)
	}
	err = s.Put(ctx, "index/abc", []byte("x"))
	if err == nil || errors.Is(err, blob.ErrExist) || !strings.Contains(err.Error(), "is a directory") {
		t.Fatalf("Put over a directory = %v, want an error saying a directory is in the way", err)
	}
	if err := s.Put(ctx, "index/def", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "index/def", []byte("x")); !errors.Is(err, blob.ErrExist) {
		t.Fatalf("Put over a file = %v, want ErrExist", err)
	}
}

// ListStrays names what List skips: directories and special files under
// the prefix, not regular files, not what lies outside it.
func TestListStrays(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s, err := dir.Open(root, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "meta/file", []byte("x")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"meta/dir", "index/other"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("file", filepath.Join(root, "meta", "link")); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	if err := s.ListStrays(ctx, "meta/", func(n, what string) error { got[n] = what; return nil }); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"meta/dir": "a directory", "meta/link": "a symbolic link"}
	if !maps.Equal(got, want) {
		t.Fatalf("ListStrays(meta/) = %v, want %v", got, want)
	}
}
