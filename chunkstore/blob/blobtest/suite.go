package blobtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// Options tune Run for a slow implementation.
type Options struct {
	// BigObject is the size of the large-object test (default 17 MiB:
	// above minio-go's 16 MiB multipart threshold, so an S3 store proves
	// it still PUTs create-only in one request).
	BigObject int
}

// Run runs the suite; newStore returns an empty store (the test's
// cleanup closes and removes it).
func Run(t *testing.T, newStore func(t *testing.T) blob.Store, opts Options) {
	if opts.BigObject == 0 {
		opts.BigObject = 17 << 20
	}
	ctx := context.Background()
	data := func(n int, seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7) + seed
		}
		return b
	}
	mustPut := func(t *testing.T, s blob.Store, name string, b []byte) {
		t.Helper()
		if err := s.Put(ctx, name, b); err != nil {
			t.Fatalf("Put(%s): %v", name, err)
		}
	}

	t.Run("PutGet", func(t *testing.T) {
		s := newStore(t)
		want := data(1000, 1)
		mustPut(t, s, "a/b/c", want)
		got, err := s.Get(ctx, "a/b/c", 0, -1)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Get = %d bytes, %v; want %d bytes", len(got), err, len(want))
		}
		mustPut(t, s, "empty", nil)
		got, err = s.Get(ctx, "empty", 0, -1)
		if err != nil || len(got) != 0 {
			t.Fatalf("Get(empty) = %d bytes, %v", len(got), err)
		}
	})

	t.Run("CreateOnly", func(t *testing.T) {
		s := newStore(t)
		first := data(100, 1)
		mustPut(t, s, "x", first)
		err := s.Put(ctx, "x", data(200, 2))
		if !errors.Is(err, blob.ErrExist) {
			t.Fatalf("second Put: %v, want ErrExist", err)
		}
		got, err := s.Get(ctx, "x", 0, -1)
		if err != nil || !bytes.Equal(got, first) {
			t.Fatalf("object changed by a refused Put: %d bytes, %v", len(got), err)
		}
	})

	t.Run("ConcurrentCreate", func(t *testing.T) {
		s := newStore(t)
		const n = 8
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { errs[i] = s.Put(ctx, "race", data(4096, byte(i))) })
		}
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil && won >= 0:
				t.Fatalf("Puts %d and %d both created the object", won, i)
			case err == nil:
				won = i
			case !errors.Is(err, blob.ErrExist):
				t.Fatalf("Put %d: %v", i, err)
			}
		}
		if won < 0 {
			t.Fatal("no Put created the object")
		}
		got, err := s.Get(ctx, "race", 0, -1)
		if err != nil || !bytes.Equal(got, data(4096, byte(won))) {
			t.Fatalf("object is not the winner's bytes: %v", err)
		}
	})

	t.Run("GetMissing", func(t *testing.T) {
		s := newStore(t)
		if _, err := s.Get(ctx, "nope", 0, -1); !errors.Is(err, blob.ErrNotExist) {
			t.Fatalf("Get(missing) = %v, want ErrNotExist", err)
		}
		if _, err := s.Get(ctx, "no/such/dir", 0, 10); !errors.Is(err, blob.ErrNotExist) {
			t.Fatalf("Get(missing ranged) = %v, want ErrNotExist", err)
		}
	})

	t.Run("Range", func(t *testing.T) {
		s := newStore(t)
		b := data(10000, 3)
		mustPut(t, s, "r", b)
		for _, c := range []struct{ off, n int64 }{{0, 1}, {0, 10000}, {1, 9999}, {9999, 1}, {5000, 100}, {4096, -1}, {10000, -1}, {10000, 0}, {0, 0}} {
			got, err := s.Get(ctx, "r", c.off, c.n)
			end := int64(len(b))
			if c.n >= 0 {
				end = c.off + c.n
			}
			if err != nil || !bytes.Equal(got, b[c.off:end]) {
				t.Errorf("Get(%d, %d) = %d bytes, %v; want %d bytes", c.off, c.n, len(got), err, end-c.off)
			}
		}
		for _, c := range []struct{ off, n int64 }{{9999, 2}, {10001, 1}, {20000, 10}, {10001, -1}, {-1, 5}} {
			if got, err := s.Get(ctx, "r", c.off, c.n); !errors.Is(err, blob.ErrRange) {
				t.Errorf("Get(%d, %d) = %d bytes, %v; want ErrRange", c.off, c.n, len(got), err)
			}
		}
	})

	t.Run("GetInto", func(t *testing.T) {
		s := newStore(t)
		ig, ok := s.(blob.IntoGetter)
		if !ok {
			t.Skip("the store reads into no caller's buffer")
		}
		b := data(10000, 5)
		mustPut(t, s, "r", b)
		for _, c := range []struct{ off, n int64 }{{0, 1}, {0, 10000}, {1, 9999}, {9999, 1}, {5000, 100}, {10000, 0}, {0, 0}} {
			p := bytes.Repeat([]byte{0xee}, int(c.n))
			if err := ig.GetInto(ctx, "r", c.off, p); err != nil || !bytes.Equal(p, b[c.off:c.off+c.n]) {
				t.Errorf("GetInto(%d, %d) = %v, or other bytes", c.off, c.n, err)
			}
		}
		for _, c := range []struct{ off, n int64 }{{9999, 2}, {10001, 1}, {20000, 10}, {-1, 5}} {
			if err := ig.GetInto(ctx, "r", c.off, make([]byte, max(c.n, 0))); !errors.Is(err, blob.ErrRange) {
				t.Errorf("GetInto(%d, %d) = %v, want ErrRange", c.off, c.n, err)
			}
		}
		if err := ig.GetInto(ctx, "nope", 0, make([]byte, 10)); !errors.Is(err, blob.ErrNotExist) {
			t.Errorf("GetInto(missing) = %v, want ErrNotExist", err)
		}
	})

	t.Run("List", func(t *testing.T) {
		s := newStore(t)
		names := []string{"packs/aa/1", "packs/aa/2", "packs/ab/3", "index/1", "index/2", "records/x", "packsx"}
		for i, n := range names {
			mustPut(t, s, n, data(i*10, byte(i)))
		}
		list := func(prefix string) []blob.Info {
			t.Helper()
			var out []blob.Info
			if err := s.List(ctx, prefix, func(in blob.Info) error { out = append(out, in); return nil }); err != nil {
				t.Fatalf("List(%q): %v", prefix, err)
			}
			slices.SortFunc(out, func(a, b blob.Info) int { return cmpString(a.Name, b.Name) })
			return out
		}
		namesOf := func(ins []blob.Info) []string {
			var o []string
			for _, in := range ins {
				o = append(o, in.Name)
			}
			return o
		}
		all := list("")
		want := slices.Clone(names)
		slices.Sort(want)
		if !slices.Equal(namesOf(all), want) {
			t.Fatalf("List(\"\") = %v, want %v", namesOf(all), want)
		}
		for _, in := range all {
			i := slices.Index(names, in.Name)
			if in.Size != int64(i*10) {
				t.Errorf("%s: size %d, want %d", in.Name, in.Size, i*10)
			}
			if in.ModTime.IsZero() {
				t.Errorf("%s: no modification time", in.Name)
			}
		}
		for prefix, want := range map[string][]string{
			"packs/":    {"packs/aa/1", "packs/aa/2", "packs/ab/3"},
			"packs/a":   {"packs/aa/1", "packs/aa/2", "packs/ab/3"},
			"packs/aa/": {"packs/aa/1", "packs/aa/2"},
			"packs":     {"packs/aa/1", "packs/aa/2", "packs/ab/3", "packsx"},
			"index/2":   {"index/2"},
			"nothing/":  nil,
			"rec":       {"records/x"},
		} {
			if got := namesOf(list(prefix)); !slices.Equal(got, want) {
				t.Errorf("List(%q) = %v, want %v", prefix, got, want)
			}
		}
		// ListAfter: time-ordered names, listed from a point on.
		for _, c := range []struct {
			prefix, after string
			want          []string
		}{
			{"packs/", "packs/aa/1", []string{"packs/aa/2", "packs/ab/3"}},
			{"packs/", "packs/ab/3", nil},
			{"packs/", "", []string{"packs/aa/1", "packs/aa/2", "packs/ab/3"}},
			{"packs/", "a", []string{"packs/aa/1", "packs/aa/2", "packs/ab/3"}},
			{"index/", "index/1", []string{"index/2"}},
			{"", "packs/ab", []string{"packs/ab/3", "packsx", "records/x"}},
		} {
			var got []string
			err := s.ListAfter(ctx, c.prefix, c.after, func(in blob.Info) error { got = append(got, in.Name); return nil })
			if err != nil {
				t.Fatalf("ListAfter(%q, %q): %v", c.prefix, c.after, err)
			}
			slices.Sort(got)
			if !slices.Equal(got, c.want) {
				t.Errorf("ListAfter(%q, %q) = %v, want %v", c.prefix, c.after, got, c.want)
			}
		}
		stop := errors.New("stop")
		n := 0
		err := s.List(ctx, "", func(blob.Info) error { n++; return stop })
		if !errors.Is(err, stop) || n != 1 {
			t.Errorf("List with a failing callback: %v after %d calls, want stop after 1", err, n)
		}
	})

	t.Run("Delete", func(t *testing.T) {
		s := newStore(t)
		mustPut(t, s, "d/1", data(10, 1))
		if err := s.Delete(ctx, "d/1"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if _, err := s.Get(ctx, "d/1", 0, -1); !errors.Is(err, blob.ErrNotExist) {
			t.Fatalf("Get after Delete: %v", err)
		}
		if err := s.Delete(ctx, "d/1"); err != nil {
			t.Fatalf("Delete(missing): %v", err)
		}
		if err := s.Delete(ctx, "never/was"); err != nil {
			t.Fatalf("Delete(never existed): %v", err)
		}
		mustPut(t, s, "d/1", data(20, 2))
		if got, err := s.Get(ctx, "d/1", 0, -1); err != nil || len(got) != 20 {
			t.Fatalf("Put after Delete: %d bytes, %v", len(got), err)
		}
	})

	t.Run("Replace", func(t *testing.T) {
		s := newStore(t)
		r, ok := s.(blob.Replacer)
		if !ok {
			t.Skip("not a blob.Replacer")
		}
		if err := r.Replace(ctx, "r/1", data(10, 1)); err != nil {
			t.Fatalf("Replace(missing): %v", err)
		}
		if err := r.Replace(ctx, "r/1", data(30, 2)); err != nil {
			t.Fatalf("Replace: %v", err)
		}
		if got, err := s.Get(ctx, "r/1", 0, -1); err != nil || !bytes.Equal(got, data(30, 2)) {
			t.Fatalf("Get after Replace: %d bytes, %v", len(got), err)
		}
		if err := s.Put(ctx, "r/1", data(5, 3)); !errors.Is(err, blob.ErrExist) {
			t.Fatalf("Put over a replaced object: %v, want ErrExist", err)
		}
		n := 0
		if err := s.List(ctx, "r/", func(blob.Info) error { n++; return nil }); err != nil || n != 1 {
			t.Fatalf("List after Replace: %d objects, %v", n, err)
		}
		if err := r.Replace(ctx, "../x", nil); !errors.Is(err, blob.ErrBadName) {
			t.Fatalf("Replace(bad name): %v, want ErrBadName", err)
		}
	})

	t.Run("BadNames", func(t *testing.T) {
		s := newStore(t)
		for _, n := range []string{"", "/a", "a/", "a//b", "../x", "a/../b", "./a", "a b", "a\x00b", "ü", string(make([]byte, blob.MaxNameLen+1))} {
			if err := s.Put(ctx, n, []byte("x")); !errors.Is(err, blob.ErrBadName) {
				t.Errorf("Put(%q) = %v, want ErrBadName", n, err)
			}
			if _, err := s.Get(ctx, n, 0, -1); !errors.Is(err, blob.ErrBadName) {
				t.Errorf("Get(%q) = %v, want ErrBadName", n, err)
			}
			if err := s.Delete(ctx, n); !errors.Is(err, blob.ErrBadName) {
				t.Errorf("Delete(%q) = %v, want ErrBadName", n, err)
			}
		}
		if err := s.List(ctx, "../", func(blob.Info) error { return nil }); !errors.Is(err, blob.ErrBadName) {
			t.Errorf("List(../) = %v, want ErrBadName", err)
		}
	})

	t.Run("Cancelled", func(t *testing.T) {
		s := newStore(t)
		mustPut(t, s, "c", data(10, 1))
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := s.Put(cctx, "c2", data(10, 1)); !errors.Is(err, context.Canceled) {
			t.Errorf("Put: %v, want context.Canceled", err)
		}
		if _, err := s.Get(cctx, "c", 0, -1); !errors.Is(err, context.Canceled) {
			t.Errorf("Get: %v, want context.Canceled", err)
		}
		if _, err := s.Get(ctx, "c2", 0, -1); !errors.Is(err, blob.ErrNotExist) {
			t.Errorf("a cancelled Put left an object: %v", err)
		}
	})

	t.Run("BigObject", func(t *testing.T) {
		s := newStore(t)
		b := data(opts.BigObject, 9)
		mustPut(t, s, "big", b)
		if err := s.Put(ctx, "big", data(opts.BigObject, 1)); !errors.Is(err, blob.ErrExist) {
			t.Fatalf("second Put of a big object: %v, want ErrExist", err)
		}
		got, err := s.Get(ctx, "big", int64(len(b))-100, 100)
		if err != nil || !bytes.Equal(got, b[len(b)-100:]) {
			t.Fatalf("tail of big object: %v", err)
		}
		got, err = s.Get(ctx, "big", 0, -1)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("whole big object: %d bytes, %v", len(got), err)
		}
	})

	t.Run("String", func(t *testing.T) {
		s := newStore(t)
		if s.String() == "" {
			t.Fatal("String() is empty")
		}
		_ = fmt.Sprint(s)
	})
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
