package qcow2

import (
	"io"
	"path/filepath"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// BenchmarkReadAt reads a fully allocated 256 MiB qcow2 image (64 KiB
// clusters) sequentially in 1 MiB requests. Compare with
// `qemu-img convert -O raw` of the same image.
func BenchmarkReadAt(b *testing.B) {
	qemutest.Require(b)
	p := filepath.Join(b.TempDir(), "bench.qcow2")
	qemutest.Create(b, "qcow2", p, "256M")
	qemutest.IO(b, p, "qcow2", "write -P 0xab 0 256M")
	im, err := Open(p, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer im.Close()
	buf := make([]byte, 1<<20)
	b.SetBytes(im.Size())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for off := int64(0); off < im.Size(); off += int64(len(buf)) {
			if _, err := im.ReadAt(buf, off); err != nil && err != io.EOF {
				b.Fatal(err)
			}
		}
	}
}
