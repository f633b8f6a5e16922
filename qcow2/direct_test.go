package qcow2

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
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
		write := func(name string, direct bool) string {
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
			for _, o := range append(sorted, ops...) {
				if _, err := w.WriteAt(o.p, o.off); err != nil {
					t.Fatal(err)
				}
			}
			if direct && (w.direct == nil || w.nDirect == 0) {
				t.Fatalf("extended L2 %v: no write went through O_DIRECT (%d, turned off: %v)", ext, w.nDirect, w.direct == nil)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			return path
		}
		plain, direct := write("plain.qcow2", false), write("direct.qcow2", true)
		a, _ := os.ReadFile(plain)
		b, _ := os.ReadFile(direct)
		if !bytes.Equal(a, b) {
			t.Fatalf("extended L2 %v: image written through O_DIRECT differs from the plain one", ext)
		}
		qemutest.Check(t, direct)
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
