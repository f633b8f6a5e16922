package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// qemuIn runs a qemu tool with dir as working directory, so relative names
// (external data files) resolve the same for qemu and for us.
func qemuIn(t testing.TB, dir, tool string, args ...string) string {
	t.Helper()
	cmd := exec.Command(tool, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed:") {
		t.Fatalf("%s %v: %v\n%s", tool, args, err, out)
	}
	return string(out)
}

// writeRandomRaw writes a raw file of size bytes with random, patterned
// and zero regions, sparse where zero.
func writeRandomRaw(t testing.TB, path string, size int64, seed int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewSource(seed))
	for off := int64(0); off < size; {
		n := int64(1+r.Intn(64)) << 10
		if off+n > size {
			n = size - off
		}
		buf := make([]byte, n)
		switch r.Intn(3) {
		case 0: // random: incompressible
			r.Read(buf)
		case 1: // compressible text-like pattern
			for i := range buf {
				buf[i] = byte('a' + (i/7)%26)
			}
		case 2: // hole
			off += n
			continue
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		off += n
	}
}

type fixture struct {
	name  string
	build func(t *testing.T, dir string) string // returns the image to open
}

func qio(t *testing.T, img string, cmds ...string) { t.Helper(); qemutest.IO(t, img, "qcow2", cmds...) }

// standardWrites exercises full clusters, partial clusters, and zeroing.
func standardWrites(size int64) []string {
	return []string{
		"write -P 0x11 0 64k",
		"write -P 0x22 100k 3k",
		fmt.Sprintf("write -P 0x33 %d 1M", size/2),
		fmt.Sprintf("write -P 0x44 %d 4k", size-4096),
	}
}

func fixtures() []fixture {
	var fs []fixture
	const size = 8 << 20
	for _, cs := range []string{"512", "4k", "64k", "2M"} {
		fs = append(fs, fixture{"v3-cluster-" + cs, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "img.qcow2")
			qemutest.Create(t, "qcow2", p, "8M", "cluster_size="+cs)
			qio(t, p, append(standardWrites(size), "write -z 16k 64k", "write -P 0x55 3M 1536", "write -z 3M 512")...)
			return p
		}})
	}
	fs = append(fs, fixture{"v2-compat-0.10", func(t *testing.T, dir string) string {
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Create(t, "qcow2", p, "8M", "compat=0.10")
		qio(t, p, append(standardWrites(size), "write -z 0 16k")...)
		return p
	}})
	for _, ct := range []string{"zlib", "zstd"} {
		for _, cs := range []string{"512", "64k", "2M"} {
			ct, cs := ct, cs
			fs = append(fs, fixture{"compressed-" + ct + "-" + cs, func(t *testing.T, dir string) string {
				src := filepath.Join(dir, "src.raw")
				writeRandomRaw(t, src, 6<<20, 7)
				p := filepath.Join(dir, "img.qcow2")
				qemutest.Img(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type="+ct+",cluster_size="+cs, src, p)
				// Overwrite a little so plain and compressed clusters mix.
				qio(t, p, "write -P 0x66 1M 8k", "write -z 2M 64k")
				return p
			}})
		}
	}
	fs = append(fs, fixture{"extended-l2", func(t *testing.T, dir string) string {
		base := filepath.Join(dir, "base.qcow2")
		qemutest.Create(t, "qcow2", base, "8M")
		qio(t, base, "write -P 0xbb 0 8M")
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Create(t, "qcow2", p, "8M", "extended_l2=on", "cluster_size=64k", "backing_file=base.qcow2", "backing_fmt=qcow2")
		qio(t, p, "write -P 0x11 0 4k", "write -P 0x22 10k 2k", "write -z 64k 4k", "write -z 130k 2k",
			"write -P 0x33 1M 200k", "write -z 2M 64k", "write -P 0x44 3M 66k")
		return p
	}})
	fs = append(fs, fixture{"extended-l2-compressed-zstd", func(t *testing.T, dir string) string {
		src := filepath.Join(dir, "src.raw")
		writeRandomRaw(t, src, 4<<20, 11)
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Img(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "extended_l2=on,cluster_size=32k,compression_type=zstd", src, p)
		qio(t, p, "write -P 0x5b 64k 3k", "write -z 1M 2k")
		return p
	}})
	fs = append(fs, fixture{"extended-l2-standalone", func(t *testing.T, dir string) string {
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Create(t, "qcow2", p, "8M", "extended_l2=on", "cluster_size=128k")
		qio(t, p, "write -P 0x11 0 4k", "write -P 0x22 12k 4k", "write -z 256k 8k", "write -P 0x33 1M 300k")
		return p
	}})
	for _, rawExt := range []string{"off", "on"} {
		rawExt := rawExt
		fs = append(fs, fixture{"data-file-raw-" + rawExt, func(t *testing.T, dir string) string {
			qemuIn(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=img.data,data_file_raw="+rawExt, "img.qcow2", "8M")
			args := []string{"-f", "qcow2"}
			for _, c := range append(standardWrites(size), "write -z 20k 8k") {
				args = append(args, "-c", c)
			}
			qemuIn(t, dir, "qemu-io", append(args, "img.qcow2")...)
			return filepath.Join(dir, "img.qcow2")
		}})
	}
	fs = append(fs, fixture{"chain-raw-base-3-deep", func(t *testing.T, dir string) string {
		base := filepath.Join(dir, "base.raw")
		qemutest.Create(t, "raw", base, "8M")
		qemutest.IO(t, base, "raw", "write -P 0xa0 0 2M", "write -P 0xa1 5M 1M")
		prev, prevFmt := "base.raw", "raw"
		for i, cmds := range [][]string{
			{"write -P 0xb0 1M 2M", "write -z 0 64k"},
			{"write -P 0xc0 1536k 64k", "write -z 5M 128k", "write -P 0xc1 7M 4k"},
			{"write -P 0xd0 1600k 1k", "write -z 1M 4k", "write -P 0xd1 5200k 8k"},
		} {
			name := fmt.Sprintf("l%d.qcow2", i+1)
			p := filepath.Join(dir, name)
			qemutest.Create(t, "qcow2", p, "8M", "backing_file="+prev, "backing_fmt="+prevFmt)
			qio(t, p, cmds...)
			prev, prevFmt = name, "qcow2"
		}
		return filepath.Join(dir, prev)
	}})
	fs = append(fs, fixture{"backing-smaller", func(t *testing.T, dir string) string {
		base := filepath.Join(dir, "base.qcow2")
		qemutest.Create(t, "qcow2", base, "1M")
		qio(t, base, "write -P 0x77 0 1M")
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Create(t, "qcow2", p, "8M", "backing_file=base.qcow2", "backing_fmt=qcow2")
		qio(t, p, "write -P 0x88 512k 64k", "write -P 0x99 2M 64k")
		return p
	}})
	fs = append(fs, fixture{"raw-backing-smaller", func(t *testing.T, dir string) string {
		base := filepath.Join(dir, "base.img")
		if err := os.WriteFile(base, bytes.Repeat([]byte{0x5a}, 1000_000), 0o644); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Create(t, "qcow2", p, "4M", "backing_file=base.img", "backing_fmt=raw")
		qio(t, p, "write -P 0x88 512k 4k")
		return p
	}})
	fs = append(fs, fixture{"snapshots", func(t *testing.T, dir string) string {
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Create(t, "qcow2", p, "8M")
		qio(t, p, standardWrites(size)...)
		qemutest.Img(t, "snapshot", "-c", "s1", p)
		qio(t, p, "write -P 0xee 0 32k", "write -z 4M 1M", "write -P 0xef 6M 100k")
		qemutest.Img(t, "snapshot", "-c", "s2", p)
		qio(t, p, "write -P 0xf0 8k 8k")
		return p
	}})
	for _, pre := range []string{"metadata", "full"} {
		pre := pre
		fs = append(fs, fixture{"prealloc-" + pre, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "img.qcow2")
			qemutest.Create(t, "qcow2", p, "8M", "preallocation="+pre)
			qio(t, p, "write -P 0x12 1M 64k", "write -z 3M 64k")
			return p
		}})
	}
	for _, rb := range []string{"1", "64"} {
		rb := rb
		fs = append(fs, fixture{"refcount-bits-" + rb, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "img.qcow2")
			qemutest.Create(t, "qcow2", p, "4M", "refcount_bits="+rb, "lazy_refcounts=on")
			qio(t, p, "write -P 0x12 1M 64k")
			return p
		}})
	}
	fs = append(fs, fixture{"backing-format-probed", func(t *testing.T, dir string) string {
		base := filepath.Join(dir, "base.img")
		qemutest.Create(t, "raw", base, "4M")
		qemutest.IO(t, base, "raw", "write -P 0x21 0 1M")
		mid := filepath.Join(dir, "mid.qcow2")
		qemutest.Create(t, "qcow2", mid, "4M", "backing_file=base.img", "backing_fmt=raw")
		qio(t, mid, "write -P 0x22 512k 1M")
		p := filepath.Join(dir, "top.qcow2")
		qemutest.Create(t, "qcow2", p, "4M", "backing_file=mid.qcow2", "backing_fmt=qcow2")
		qio(t, p, "write -P 0x23 1M 64k")
		// Retype the backing format extensions to an unknown type (skipped):
		// the formats are then probed, by qemu and by us.
		for _, f := range []string{mid, p} {
			patch(t, f, func(b []byte) {
				i := bytes.Index(b[:4096], []byte{0xe2, 0x79, 0x2a, 0xca})
				if i < 0 {
					t.Fatal("no backing format extension")
				}
				copy(b[i:], []byte{0x12, 0x34, 0x56, 0x78})
			})
		}
		return p
	}})
	fs = append(fs, fixture{"sparse-raw", func(t *testing.T, dir string) string {
		p := filepath.Join(dir, "disk.img")
		qemutest.Create(t, "raw", p, "8M")
		qemutest.IO(t, p, "raw", "write -P 0x31 1M 64k", "write -P 0x32 7M 1M")
		return p
	}})
	return fs
}

func TestAgainstQemu(t *testing.T) {
	qemutest.Require(t)
	for _, fx := range fixtures() {
		t.Run(fx.name, func(t *testing.T) {
			dir := t.TempDir()
			p := fx.build(t, dir)
			var warns []string
			im, err := Open(p, Options{Warn: func(m string) { warns = append(warns, m) }})
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			checkBytes(t, dir, im, p)
			checkMap(t, dir, im, p)
		})
	}
}

// checkBytes compares a full read with qemu-img convert -O raw, both in
// large sequential reads and in concurrent odd-sized reads.
func checkBytes(t *testing.T, dir string, im *Image, p string) {
	t.Helper()
	rawPath := filepath.Join(dir, "want.raw")
	qemuIn(t, dir, "qemu-img", "convert", "-O", "raw", p, rawPath)
	want, err := os.ReadFile(rawPath)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(want)) != im.Size() {
		t.Fatalf("size %d, qemu-img says %d", im.Size(), len(want))
	}
	got := make([]byte, im.Size())
	for off := 0; off < len(got); off += 1 << 20 {
		end := min(off+1<<20, len(got))
		if n, err := im.ReadAt(got[off:end], int64(off)); err != nil && !(err == io.EOF && end == len(got)) || n != end-off {
			t.Fatalf("ReadAt %d: n=%d err=%v", off, n, err)
		}
	}
	diff(t, got, want)
	checkMapped(t, im, want)

	// Concurrent unaligned reads.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			r := rand.New(rand.NewSource(seed))
			for i := 0; i < 100; i++ {
				off := r.Int63n(im.Size())
				n := r.Intn(100_000) + 1
				buf := make([]byte, n)
				m, err := im.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:m], want[off:off+int64(m)]) {
					errs <- fmt.Errorf("ReadAt(%d, %d) differs from qemu", off, n)
					return
				}
			}
		}(int64(g))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Past the end.
	if n, err := im.ReadAt(make([]byte, 10), im.Size()); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt(Size) = %d, %v; want 0, EOF", n, err)
	}
}

func diff(t *testing.T, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("guest data differs from qemu-img convert at %#x: got %#x want %#x", i, got[i], want[i])
		}
	}
}

type mapKey struct {
	Depth               int
	Present, Zero, Data bool
}

type normEntry struct {
	Start, Length int64
	mapKey
}

func normalize(in []normEntry) []normEntry {
	var out []normEntry
	for _, e := range in {
		if n := len(out); n > 0 && out[n-1].mapKey == e.mapKey && out[n-1].Start+out[n-1].Length == e.Start {
			out[n-1].Length += e.Length
			continue
		}
		out = append(out, e)
	}
	return out
}

// checkMap compares Extents with qemu-img map --output=json, ignoring host
// offsets, after merging adjacent entries with equal status.
func checkMap(t *testing.T, dir string, im *Image, p string) {
	t.Helper()
	var m []qemutest.MapEntry
	if dir != "" {
		out := qemuIn(t, dir, "qemu-img", "map", "--output=json", p)
		m = parseMap(t, out)
	}
	var want, got []normEntry
	for _, e := range m {
		want = append(want, normEntry{e.Start, e.Length, mapKey{e.Depth, e.Present, e.Zero, e.Data}})
	}
	ext, err := im.Extents(0, im.Size())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ext {
		got = append(got, normEntry{e.Start, e.Length, mapKey{e.Depth, e.Present, e.Zero, e.Data}})
	}
	want, got = normalize(want), normalize(got)
	if fmt.Sprint(want) != fmt.Sprint(got) {
		t.Fatalf("Extents differ from qemu-img map\n got: %v\nwant: %v", got, want)
	}
	checkCover(t, ext, 0, im.Size())

	// This layer decides exactly what qemu-img map reports present at depth 0.
	var wantLayer, gotLayer []normEntry
	for _, e := range m {
		wantLayer = append(wantLayer, normEntry{e.Start, e.Length, mapKey{Present: e.Present && e.Depth == 0}})
	}
	lext, err := im.LayerExtents(0, im.Size())
	if err != nil {
		t.Fatal(err)
	}
	checkCover(t, lext, 0, im.Size())
	for _, e := range lext {
		if e.Depth != 0 || !e.Present && (e.Data || e.Zero) {
			t.Fatalf("bad layer extent %+v", e)
		}
		gotLayer = append(gotLayer, normEntry{e.Start, e.Length, mapKey{Present: e.Present}})
	}
	wantLayer, gotLayer = normalize(wantLayer), normalize(gotLayer)
	if fmt.Sprint(wantLayer) != fmt.Sprint(gotLayer) {
		t.Fatalf("LayerExtents differ from qemu-img map at depth 0\n got: %v\nwant: %v", gotLayer, wantLayer)
	}
	// A sub-range maps to the same extents, clipped.
	if im.Size() > 3<<20 {
		sub, err := im.Extents(1<<20+512, 2<<20)
		if err != nil {
			t.Fatal(err)
		}
		checkCover(t, sub, 1<<20+512, 3<<20+512)
	}
}

func checkCover(t *testing.T, ext []Extent, off, end int64) {
	t.Helper()
	for _, e := range ext {
		if e.Start != off || e.Length <= 0 {
			t.Fatalf("extents do not cover the range in order at %d: %+v", off, e)
		}
		// A zero extent may keep its host cluster (ZERO_ALLOC) and offset.
		if e.Data && !e.Compressed && e.Offset < 0 || (e.Compressed || !e.Data && !e.Zero) && e.Offset != -1 {
			t.Fatalf("bad Offset in %+v", e)
		}
		off += e.Length
	}
	if off != end {
		t.Fatalf("extents end at %d, want %d", off, end)
	}
}

func parseMap(t *testing.T, out string) []qemutest.MapEntry {
	t.Helper()
	f := filepath.Join(t.TempDir(), "map.json")
	_ = f
	var m []qemutest.MapEntry
	if err := jsonUnmarshal([]byte(out), &m); err != nil {
		t.Fatalf("qemu-img map: %v: %s", err, out)
	}
	return m
}

func TestOpenErrorsAreTyped(t *testing.T) {
	_, err := Open(filepath.Join(t.TempDir(), "nope.qcow2"), Options{})
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// checkMapped compares every slice Mapped hands out (aligned windows of
// several sizes and random ranges) with qemu-img's bytes.
func checkMapped(t *testing.T, im *Image, want []byte) {
	t.Helper()
	try := func(off, n int64) {
		b, ok, err := im.Mapped(off, n)
		if err != nil {
			t.Fatalf("Mapped(%#x, %#x): %v", off, n, err)
		}
		if ok && (int64(len(b)) != n || !bytes.Equal(b, want[off:off+n])) {
			t.Fatalf("Mapped(%#x, %#x) differs from qemu", off, n)
		}
		if ok {
			Release(b)
			Prefault(b)
			if !bytes.Equal(b, want[off:off+n]) {
				t.Fatalf("Mapped(%#x, %#x) differs from qemu after Release", off, n)
			}
		}
	}
	size := int64(len(want))
	for _, w := range []int64{4096, 64 << 10, 1 << 20} {
		for off := int64(0); off < size; off += w {
			try(off, min(w, size-off))
		}
	}
	r := rand.New(rand.NewSource(1))
	for range 200 {
		off := r.Int63n(size)
		try(off, 1+r.Int63n(min(size-off, 3<<20)))
	}
	if _, ok, _ := im.Mapped(size-1, 2); ok {
		t.Fatal("Mapped past the end succeeded")
	}
}
