package qcow2

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// exercise opens p and reads and maps a bounded part of it. It must return
// (an error or data) and never panic.
func exercise(t testing.TB, p string) error {
	im, err := Open(p, Options{})
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("error %T %v is not *Error", err, err)
		}
		return err
	}
	defer im.Close()
	typed := func(err error) error {
		var e *Error
		if err != nil && !errors.As(err, &e) {
			t.Fatalf("error %T %v is not *Error", err, err)
		}
		return err
	}
	buf := make([]byte, 64<<10)
	for off := int64(0); off < min(im.Size(), 1<<20); off += int64(len(buf)) {
		n, err := im.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			return typed(err)
		}
		// What the mapping hands out is what ReadAt reads.
		if m, ok, err := im.Mapped(off, int64(n)); err != nil {
			return typed(err)
		} else if ok && !bytes.Equal(m, buf[:n]) {
			t.Fatalf("Mapped(%#x, %#x) differs from ReadAt", off, n)
		}
	}
	if _, err := im.Extents(0, min(im.Size(), 64<<20)); err != nil {
		return typed(err)
	}
	_, err = im.LayerExtents(0, min(im.Size(), 64<<20))
	return typed(err)
}

// hostileBases builds small valid images whose metadata is then damaged.
func hostileBases(t *testing.T, dir string) []string {
	src := filepath.Join(dir, "src.raw")
	writeRandomRaw(t, src, 256<<10, 3)
	plain := filepath.Join(dir, "plain.qcow2")
	qemutest.Img(t, "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=512", src, plain)
	qio(t, plain, "write -z 4k 2k")
	comp := filepath.Join(dir, "comp.qcow2")
	qemutest.Img(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=512,compression_type=zstd", src, comp)
	ext := filepath.Join(dir, "ext.qcow2")
	qemutest.Create(t, "qcow2", ext, "1M", "extended_l2=on", "cluster_size=16k")
	qio(t, ext, "write -P 1 0 3k", "write -z 8k 1k", "write -P 2 100k 40k")
	return []string{plain, comp, ext}
}

func TestHostileTruncateAndFlip(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	r := rand.New(rand.NewSource(1))
	for _, base := range hostileBases(t, dir) {
		orig, err := os.ReadFile(base)
		if err != nil {
			t.Fatal(err)
		}
		if err := exercise(t, base); err != nil {
			t.Fatalf("valid image %s: %v", base, err)
		}
		mut := filepath.Join(dir, "mut.qcow2")
		try := func(b []byte) {
			if err := os.WriteFile(mut, b, 0o644); err != nil {
				t.Fatal(err)
			}
			exercise(t, mut)
		}
		// Truncations.
		step := max(1, len(orig)/80)
		for n := 0; n < len(orig); n += step {
			try(orig[:n])
		}
		// Byte flips: every header byte, then random bytes in the metadata
		// (tables sit in the first part of these small files).
		for i := 0; i < 128; i++ {
			for _, v := range []byte{0xff, 0x01, 0x00} {
				b := append([]byte(nil), orig...)
				b[i] ^= v
				if v == 0 {
					b[i] = 0
				}
				try(b)
			}
		}
		for i := 0; i < 250; i++ {
			b := append([]byte(nil), orig...)
			for k := 0; k < 1+r.Intn(4); k++ {
				j := r.Intn(min(len(b), 64<<10))
				b[j] = byte(r.Intn(256))
			}
			try(b)
		}
	}
}
