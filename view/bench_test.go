package view

import (
	"context"
	"io"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
)

// BenchmarkSequentialRead reads a 64 MiB image (three quarters data) with
// ReadSlices in 1 MiB steps, as the mount does, on a cold Set each time:
// the in-place read path without FUSE or NBD.
//
//	go test -run - -bench SequentialRead -benchmem ./view/
func BenchmarkSequentialRead(b *testing.B) {
	st := chunkstore.NewTestStore(b)
	img := makeImage(b, st, 64<<20, 24)
	b.SetBytes(int64(len(img.guest)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		set := NewSet(st, Options{})
		d, err := set.Open(context.Background(), img.id)
		if err != nil {
			b.Fatal(err)
		}
		r := d.NewReader()
		for off := int64(0); off < d.Size(); off += 1 << 20 {
			if _, err := r.ReadSlices(off, 1<<20); err != nil && err != io.EOF {
				b.Fatal(err)
			}
		}
		r.Close()
		set.Close()
	}
}
