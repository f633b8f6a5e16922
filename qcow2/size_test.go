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

// A header size that is not a multiple of 512 is read as QEMU reads it:
// the partial last sector is not part of the guest (qemu-img info shows
// the size rounded down), so a restore has the size qemu-img sees.
func TestVirtualSizeRoundsDownLikeQEMU(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "odd.qcow2")
	qemutest.Create(t, "qcow2", p, "4M")
	qemutest.IO(t, p, "qcow2", "write -P 0x5a 3M 1M")
	patch(t, p, func(b []byte) { be.PutUint64(b[offSize:], 4<<20+700) })
	want := filepath.Join(dir, "want.raw")
	qemutest.ToRaw(t, p, want)
	wb, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	im, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if got := im.Info().VirtualSize; got != int64(len(wb)) {
		t.Fatalf("virtual size %d, qemu-img reads %d bytes", got, len(wb))
	}
	got, err := io.ReadAll(io.NewSectionReader(im, 0, im.Size()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, wb) {
		t.Fatal("guest bytes differ from qemu-img convert's")
	}
}

// A path that is not a regular file is refused saying what it is.
func TestOpenNamesWhatIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	_, err := Open(dir, Options{})
	if err == nil || !strings.Contains(err.Error(), "not a regular file (a directory)") {
		t.Fatalf("Open of a directory: %v", err)
	}
}
