package qcow2

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/engram-vm/engram/internal/qemutest"
)

// alignedTestBuf returns n bytes starting on a DirectAlign boundary.
func alignedTestBuf(n int) []byte {
	b := make([]byte, n+DirectAlign)
	skip := -int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) & (DirectAlign - 1)
	return b[skip : skip+n]
}

// TestWriterDirect writes the same image with and without an O_DIRECT
// descriptor, aligned and unaligned writes mixed, and wants the two files
// byte for byte the same (and a clean, correct image).
func TestWriterDirect(t *testing.T) {
	for _, ext := range []bool{false, true} {
		dir := t.TempDir()
		size := int64(8<<20 + 512)
		rng := rand.New(rand.NewSource(7))
		type op struct {
			off int64
			p   []byte
		}
		var ops []op
		for range 80 {
			aligned := rng.Intn(3) != 0
			off := rng.Int63n(size)
			n := 1 + rng.Int63n(512<<10)
			if aligned {
				off &^= DirectAlign - 1
				n = (n + DirectAlign - 1) &^ (DirectAlign - 1)
			}
			n = min(n, size-off)
			p := alignedTestBuf(int(n))
			copy(p, writerTestData(rng, n))
			if !aligned && len(p) > 1 {
				p = p[1:] // unaligned memory as well
			}
			ops = append(ops, op{off, p})
		}
		// started: the in-order pass goes through StartWriteAt with up
		// to three waits in flight at once (never two that overlap).
		write := func(name string, direct, started bool) string {
			path := filepath.Join(dir, name)
			f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			opts := WriterOptions{Size: size, ExtendedL2: ext}
			if direct {
				fd, err := unix.Open(path, unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatalf("open %s O_DIRECT: %v", path, err)
				}
				d := os.NewFile(uintptr(fd), path)
				defer d.Close()
				opts.Direct = d
			}
			w, err := NewWriter(f, opts)
			if err != nil {
				t.Fatal(err)
			}
			// Writes go in guest order, as restore issues them, then
			// the same bytes again out of order (overwrites in place).
			sorted := append([]op(nil), ops...)
			for i := range sorted {
				for j := i + 1; j < len(sorted); j++ {
					if sorted[j].off < sorted[i].off {
						sorted[i], sorted[j] = sorted[j], sorted[i]
					}
				}
			}
			var wg sync.WaitGroup
			var inflight []op
			var waitErr error
			var mu sync.Mutex
			drain := func() {
				wg.Wait()
				inflight = inflight[:0]
				if waitErr != nil {
					t.Fatal(waitErr)
				}
			}
			for k, o := range append(sorted, ops...) {
				if !started || k >= len(sorted) {
					drain()
					if _, err := w.WriteAt(o.p, o.off); err != nil {
						t.Fatal(err)
					}
					continue
				}
				for _, f := range inflight {
					if len(inflight) >= 3 || (f.off < o.off+int64(len(o.p)) && o.off < f.off+int64(len(f.p))) {
						drain()
						break
					}
				}
				wait, err := w.StartWriteAt(o.p, o.off)
				if err != nil {
					t.Fatal(err)
				}
				inflight = append(inflight, o)
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := wait(); err != nil {
						mu.Lock()
						waitErr = err
						mu.Unlock()
					}
				}()
			}
			drain()
			if direct && (w.direct == nil || w.nDirect == 0) {
				t.Fatalf("extended L2 %v: no write went through O_DIRECT (%d, turned off: %v)", ext, w.nDirect, w.direct == nil)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			return path
		}
		plain, direct := write("plain.qcow2", false, false), write("direct.qcow2", true, false)
		started := write("started.qcow2", true, true)
		a, _ := os.ReadFile(plain)
		b, _ := os.ReadFile(direct)
		c, _ := os.ReadFile(started)
		if !bytes.Equal(a, b) {
			t.Fatalf("extended L2 %v: image written through O_DIRECT differs from the plain one", ext)
		}
		if !bytes.Equal(a, c) {
			t.Fatalf("extended L2 %v: image written with StartWriteAt differs from the plain one", ext)
		}
		qemutest.Check(t, direct)
		qemutest.Check(t, started)
		im, err := Open(direct, Options{})
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, size)
		if _, err := im.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		im.Close()
		// The last write is there whole, and so is every write no later
		// one overlaps.
		for k, o := range ops {
			end := o.off + int64(len(o.p))
			covered := false
			for _, l := range ops[k+1:] {
				covered = covered || (l.off < end && o.off < l.off+int64(len(l.p)))
			}
			if !covered && !bytes.Equal(got[o.off:end], o.p) {
				t.Fatalf("extended L2 %v: write %d at %#x+%d reads back different", ext, k, o.off, len(o.p))
			}
		}
	}
}

// A started write that fails makes the image unfinished, and Close refuses
// to finish an image while started writes are not waited for.
func TestWriterStartWriteAtErrors(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) (*Writer, *os.File) {
		path := filepath.Join(dir, name)
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		// Read-only: every write through it fails (EBADF), as a failing
		// disk would.
		d, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		w, err := NewWriter(f, WriterOptions{Size: 4 << 20, Direct: d})
		if err != nil {
			t.Fatal(err)
		}
		return w, d
	}
	p := alignedTestBuf(1 << 20)
	copy(p, bytes.Repeat([]byte("engram"), len(p)/6))

	w, _ := open("fail.qcow2")
	wait, err := w.StartWriteAt(p, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(); err == nil {
		t.Fatal("write through a read-only descriptor: no error")
	}
	if _, err := w.WriteAt(p, 1<<20); err == nil {
		t.Fatal("write after a failed started write: no error")
	}
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "fail.qcow2") {
		t.Fatalf("Close after a failed started write: %v", err)
	}

	w, _ = open("unwaited.qcow2")
	if _, err := w.StartWriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "not waited for") {
		t.Fatalf("Close with a started write not waited for: %v", err)
	}
}
