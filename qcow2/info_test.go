package qcow2

import (
	"bytes"
	"compress/flate"
	"path/filepath"
	"strings"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
	"github.com/klauspost/compress/zstd"
)

func TestInfo(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	j := func(n string) string { return filepath.Join(dir, n) }
	qemutest.Create(t, "raw", j("base.raw"), "2M")
	qemutest.Create(t, "qcow2", j("mid.qcow2"), "2M", "compat=0.10", "backing_file=base.raw", "backing_fmt=raw")
	qemutest.Create(t, "qcow2", j("top.qcow2"), "4M", "backing_file=mid.qcow2", "backing_fmt=qcow2",
		"cluster_size=16k", "extended_l2=on", "compression_type=zstd", "refcount_bits=1")
	qemutest.Img(t, "snapshot", "-c", "s1", j("top.qcow2"))
	qemutest.Img(t, "bitmap", "--add", j("top.qcow2"), "b1")
	qemutest.Img(t, "bitmap", "--add", j("top.qcow2"), "b2")
	im, err := Open(j("top.qcow2"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	got := im.Info()
	want := Info{Path: j("top.qcow2"), Format: "qcow2", Version: 3, ClusterSize: 16384, VirtualSize: 4 << 20,
		BackingFile: "mid.qcow2", BackingFormat: "qcow2", BackingPath: j("mid.qcow2"),
		CompressionType: "zstd", ExtendedL2: true, RefcountBits: 1, Snapshots: 1, Bitmaps: 2, FileSize: got.FileSize}
	if got != want {
		t.Fatalf("Info\n got %+v\nwant %+v", got, want)
	}
	if im.Depth() != 2 || im.Backing().Depth() != 1 || im.Backing().Backing().Backing() != nil {
		t.Fatalf("depths %d %d", im.Depth(), im.Backing().Depth())
	}
	mid := im.Backing().Info()
	if mid.Version != 2 || mid.RefcountBits != 16 || mid.BackingFormat != "raw" || mid.CompressionType != "deflate" {
		t.Fatalf("mid Info %+v", mid)
	}
	base := im.Backing().Backing()
	if base.Format() != "raw" || base.Info().Version != 0 || base.Size() != 2<<20 || base.Path() != j("base.raw") {
		t.Fatalf("base %+v", base.Info())
	}

	// Raw external data file, and the dirty bit (fine for reading).
	qemuIn(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=d.raw,data_file_raw=on,lazy_refcounts=on", "ext.qcow2", "1M")
	patch(t, j("ext.qcow2"), func(b []byte) { b[offIncompatibleFeatures+7] |= IncompatDirty })
	ext, err := Open(j("ext.qcow2"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Close()
	if i := ext.Info(); i.DataFile != j("d.raw") || !i.RawExternal || !i.Dirty || !i.LazyRefcounts {
		t.Fatalf("ext Info %+v", i)
	}
}

func TestDecompress(t *testing.T) {
	const cs = 4096
	want := bytes.Repeat([]byte("0123456789abcdef"), cs/16)
	enc, _ := zstd.NewWriter(nil)
	frame := func(b []byte) []byte { return enc.EncodeAll(b, nil) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	skippable := []byte{0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3}
	var fl bytes.Buffer
	w, _ := flate.NewWriter(&fl, 6)
	w.Write(want)
	w.Close()
	var flLong bytes.Buffer
	w, _ = flate.NewWriter(&flLong, 6)
	w.Write(append(want, want...))
	w.Close()
	for _, c := range []struct {
		name string
		zstd bool
		in   []byte
		err  string
	}{
		{"zstd one frame + padding", true, cat(frame(want), make([]byte, 300)), ""},
		{"zstd two frames + next cluster", true, cat(frame(want[:1000]), frame(want[1000:]), frame(want)), ""},
		{"zstd skippable frame", true, cat(skippable, frame(want)), ""},
		{"zstd short", true, frame(want[:100]), "ends before"},
		{"zstd too long", true, frame(append(want, want...)), "more than a cluster"},
		{"zstd frame crosses the cluster end", true, cat(frame(want[:100]), frame(want)), "more than a cluster"},
		{"zstd garbage", true, []byte("not zstd at all"), "bad frame magic"},
		{"zstd truncated", true, frame(want)[:20], "truncated"},
		{"deflate", false, cat(fl.Bytes(), []byte{1, 2, 3}), ""},
		{"deflate longer stream stops at the cluster, as QEMU", false, flLong.Bytes(), ""},
		{"deflate short", false, fl.Bytes()[:fl.Len()/2], "deflate"},
	} {
		q := &qlayer{zstd: c.zstd}
		out := make([]byte, cs)
		err := q.decompress(out, c.in)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.err == "" && !bytes.Equal(out, want):
			t.Errorf("%s: wrong data", c.name)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: error %v, want %q", c.name, err, c.err)
		}
	}
}
