package qcow2

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// nulPaddedBacking makes an overlay on base.raw whose header's backing
// name length covers 16 NUL bytes after the name.
func nulPaddedBacking(t *testing.T, dir string) string {
	t.Helper()
	base := filepath.Join(dir, "base.raw")
	qemutest.Create(t, "raw", base, "4M")
	qemutest.IO(t, base, "raw", "write -P 0x31 0 1M")
	p := filepath.Join(dir, "over.qcow2")
	qemutest.Create(t, "qcow2", p, "4M", "backing_file=base.raw", "backing_fmt=raw")
	qemutest.IO(t, p, "qcow2", "write -P 0x32 512k 1M")
	patch(t, p, func(b []byte) {
		off, n := be.Uint64(b[offBackingFileOffset:]), be.Uint32(b[offBackingFileSize:])
		if string(b[off:off+uint64(n)]) != "base.raw" || !bytes.Equal(b[off+uint64(n):off+uint64(n)+16], make([]byte, 16)) {
			t.Fatalf("unexpected backing name layout")
		}
		be.PutUint32(b[offBackingFileSize:], n+16)
	})
	return p
}

// A backing name whose length covers trailing NULs is cut at the first
// NUL, as QEMU reads it (a C string).
func TestBackingNameNULPadded(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	p := nulPaddedBacking(t, dir)
	if out := qemutest.Img(t, "info", p); !strings.Contains(out, "backing file: base.raw (actual path: "+filepath.Join(dir, "base.raw")+")\n") {
		t.Fatalf("qemu-img info:\n%s", out)
	}
	want := filepath.Join(dir, "want.raw")
	qemutest.ToRaw(t, p, want)
	wb, _ := os.ReadFile(want)

	im, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if in := im.Info(); in.BackingFile != "base.raw" || in.BackingPath != filepath.Join(dir, "base.raw") {
		t.Fatalf("backing file %q at %q", in.BackingFile, in.BackingPath)
	}
	got := make([]byte, im.Size())
	if _, err := im.ReadAt(got, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(got, wb) {
		t.Fatal("guest bytes differ from qemu-img convert")
	}
}

func TestCName(t *testing.T) {
	for in, want := range map[string]string{"": "", "a": "a", "a\x00": "a", "base.raw\x00\x00x": "base.raw", "\x00abc": ""} {
		if got := cName([]byte(in)); got != want {
			t.Errorf("cName(%q) = %q, want %q", in, got, want)
		}
	}
}
