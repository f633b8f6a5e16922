package qcow2

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// markCorrupt sets the corrupt bit (incompatible feature bit 1) of the
// qcow2 v3 image at p.
func markCorrupt(t *testing.T, p string) {
	t.Helper()
	patch(t, p, func(b []byte) { b[offIncompatibleFeatures+7] |= IncompatCorrupt })
}

// damageFirstL2Entry sets a reserved bit in the first entry of the first
// L2 table of the qcow2 image at p.
func damageFirstL2Entry(t *testing.T, p string) {
	t.Helper()
	patch(t, p, func(b []byte) {
		l1 := be.Uint64(b[offL1TableOffset:])
		l2 := be.Uint64(b[l1:]) & offsetMask
		if l2 == 0 {
			t.Fatal("no L2 table")
		}
		b[l2+7] |= 0x02 // bit 1: reserved in a standard L2 entry
	})
}

// An image with the corrupt bit is read as QEMU reads it (read-only, the
// same guest bytes as qemu-img convert), with a warning and CorruptMarked.
func TestCorruptBitReadsLikeQEMU(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "c.qcow2")
	qemutest.Create(t, "qcow2", p, "4M")
	qemutest.IO(t, p, "qcow2", "write -P 0x5a 0 1M", "write -z 1M 64k", "write -P 0x6b 3M 128k")
	markCorrupt(t, p)
	before, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "want.raw")
	qemutest.ToRaw(t, p, want)
	wb, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}

	var warns []string
	im, err := Open(p, Options{Warn: func(m string) { warns = append(warns, m) }})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if len(warns) != 1 || !strings.HasPrefix(warns[0], p+": warning: image is marked corrupt") {
		t.Fatalf("warnings %q", warns)
	}
	if !im.Info().CorruptMarked {
		t.Error("Info.CorruptMarked is false")
	}
	got := make([]byte, im.Size())
	if _, err := im.ReadAt(got, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(got, wb) {
		t.Fatal("guest bytes differ from qemu-img convert")
	}
	after, _ := os.ReadFile(p)
	if !bytes.Equal(before, after) {
		t.Fatal("reading changed the image")
	}
}

// The corrupt bit does not relax any structural check: a damaged L2 entry
// is still an error, naming the file once.
func TestCorruptBitKeepsChecks(t *testing.T) {
	qemutest.Require(t)
	p := filepath.Join(t.TempDir(), "c.qcow2")
	qemutest.Create(t, "qcow2", p, "4M")
	qemutest.IO(t, p, "qcow2", "write -P 0x5a 0 1M")
	markCorrupt(t, p)
	damageFirstL2Entry(t, p)
	im, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	_, err = im.ReadAt(make([]byte, 4096), 0)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ReadAt: %v, want ErrCorrupt", err)
	}
	if msg := err.Error(); strings.Count(msg, p) != 1 || !strings.Contains(msg, "reserved bits set") {
		t.Fatalf("message %q: want the path once and the reserved bits", msg)
	}
}
