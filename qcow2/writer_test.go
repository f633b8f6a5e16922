package qcow2

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// writerModel drives a Writer and keeps the expected guest content in memory.
type writerModel struct {
	t       *testing.T
	w       *Writer
	path    string
	raw     []byte
	cs      int64
	unit    int64 // what a write owns: the subcluster (plain ExtendedL2) or the cluster
	backing bool
	touched map[int64]bool // guest units the overlay owns
	// Plain ExtendedL2 images: subclusters expected allocated (nil otherwise).
	alloc map[int64]bool
}

func newWriterModel(t *testing.T, dir string, opts WriterOptions, base []byte) *writerModel {
	t.Helper()
	path := filepath.Join(dir, "out.qcow2")
	w, err := Create(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, w.size)
	copy(raw, base)
	m := &writerModel{t: t, w: w, path: path, raw: raw, cs: w.clusterSize, unit: w.unitSize, backing: opts.BackingFile != "", touched: map[int64]bool{}}
	if opts.ExtendedL2 && opts.Compression == "" {
		m.alloc = map[int64]bool{}
	}
	return m
}

// touch applies the Writer's rule: the first write to a guest unit makes
// the whole unit the overlay's, unwritten bytes reading zero.
func (m *writerModel) touch(off, n int64) {
	for u := off / m.unit; u*m.unit < off+n; u++ {
		if !m.touched[u] {
			m.touched[u] = true
			clear(m.raw[u*m.unit : min((u+1)*m.unit, int64(len(m.raw)))])
		}
	}
}

// allocWrite records which subclusters a write of p at off allocates: those
// that get a non-zero byte.
func (m *writerModel) allocWrite(off int64, p []byte) {
	if m.alloc == nil {
		return
	}
	for len(p) > 0 {
		k := min(m.unit-off%m.unit, int64(len(p)))
		if !bytes.Equal(p[:k], make([]byte, k)) {
			m.alloc[off/m.unit] = true
		}
		off += k
		p = p[k:]
	}
}

// allocZero records that WriteZeroes deallocates whole subclusters (the
// last one also when the range reaches the end of the disk).
func (m *writerModel) allocZero(off, n int64) {
	if m.alloc == nil {
		return
	}
	end := off + n
	if end == m.w.size {
		end = (end + m.unit - 1) / m.unit * m.unit
	}
	for u := (off + m.unit - 1) / m.unit; (u+1)*m.unit <= end; u++ {
		delete(m.alloc, u)
	}
}

// allocBytes is what qemu-img map should report as data in the top layer.
func (m *writerModel) allocBytes() int64 {
	var n int64
	for u := range m.alloc {
		n += min(m.unit, m.w.size-u*m.unit)
	}
	return n
}

// mapDataBytes sums the data extents of the top layer in qemu-img map.
func mapDataBytes(t *testing.T, path string) int64 {
	var n int64
	for _, e := range qemutest.Map(t, path) {
		if e.Data && e.Depth == 0 {
			n += e.Length
		}
	}
	return n
}

func (m *writerModel) write(off int64, p []byte) {
	m.t.Helper()
	n, err := m.w.WriteAt(p, off)
	if err != nil || n != len(p) {
		m.t.Fatalf("WriteAt(%d bytes at %d) = %d, %v", len(p), off, n, err)
	}
	m.touch(off, int64(len(p)))
	m.allocWrite(off, p)
	copy(m.raw[off:], p)
}

func (m *writerModel) zeroes(off, n int64) {
	m.t.Helper()
	if err := m.w.WriteZeroes(off, n); err != nil {
		m.t.Fatalf("WriteZeroes(%d, %d): %v", off, n, err)
	}
	m.touch(off, n)
	m.allocZero(off, n)
	clear(m.raw[off : off+n])
}

// finish closes the image and judges it with qemu-img check and compare.
func (m *writerModel) finish() {
	m.t.Helper()
	if err := m.w.Close(); err != nil {
		m.t.Fatal(err)
	}
	rawPath := m.path + ".raw"
	if err := os.WriteFile(rawPath, m.raw, 0o644); err != nil {
		m.t.Fatal(err)
	}
	qemutest.Check(m.t, m.path)
	qemutest.Compare(m.t, m.path, rawPath, "-f", "qcow2", "-F", "raw")
	if m.alloc != nil {
		if got, want := mapDataBytes(m.t, m.path), m.allocBytes(); got != want {
			m.t.Errorf("qemu-img map shows %d bytes of data, want %d (%d subclusters of %d bytes)", got, want, len(m.alloc), m.unit)
		}
	}
}

func writerTestData(rng *rand.Rand, n int64) []byte {
	p := make([]byte, n)
	switch rng.Intn(3) {
	case 0: // incompressible
		rng.Read(p)
	case 1: // compressible: short runs of one byte
		for i := range p {
			p[i] = byte(i/97) ^ 0x5a
		}
	default: // mostly zero with a few bytes set
		for i := 0; i < len(p); i += 1 + rng.Intn(700) {
			p[i] = byte(1 + rng.Intn(255))
		}
	}
	return p
}

func TestWriterRandom(t *testing.T) {
	qemutest.Require(t)
	for _, cs := range []int64{512, 4096, 65536, 2 << 20} {
		for _, comp := range []string{"", "zstd", "deflate"} {
			for _, withBacking := range []bool{false, true} {
				name := fmt.Sprintf("cluster=%d/comp=%s/backing=%v", cs, comp, withBacking)
				t.Run(name, func(t *testing.T) {
					writerRandomCase(t, cs, comp, withBacking, false)
				})
			}
		}
	}
}

// TestWriterExtendedL2Random is TestWriterRandom with subclusters: besides
// check and compare, qemu-img map must show exactly the subclusters the
// model expects allocated.
func TestWriterExtendedL2Random(t *testing.T) {
	qemutest.Require(t)
	for _, tc := range []struct {
		cs   int64
		comp string
	}{{16 << 10, ""}, {64 << 10, ""}, {2 << 20, ""}, {64 << 10, "zstd"}} {
		for _, withBacking := range []bool{false, true} {
			name := fmt.Sprintf("cluster=%d/comp=%s/backing=%v", tc.cs, tc.comp, withBacking)
			t.Run(name, func(t *testing.T) {
				writerRandomCase(t, tc.cs, tc.comp, withBacking, true)
			})
		}
	}
}

func writerRandomCase(t *testing.T, cs int64, comp string, withBacking, ext bool) {
	dir := t.TempDir()
	size := int64(3<<20 + 1536) // not a multiple of the cluster size
	if cs == 2<<20 {
		size = 16 << 20
	}
	rng := rand.New(rand.NewSource(cs*7 + int64(len(comp))*3 + map[bool]int64{true: 1}[withBacking] + map[bool]int64{true: 5}[ext]))
	opts := WriterOptions{Size: size, ClusterSize: int(cs), Compression: comp, ExtendedL2: ext}
	var base []byte
	if withBacking {
		fmtName := "qcow2"
		if cs == 4096 {
			fmtName = "raw"
		}
		backing := filepath.Join(dir, "backing."+fmtName)
		qemutest.Create(t, fmtName, backing, fmt.Sprint(size))
		qemutest.IO(t, backing, fmtName,
			fmt.Sprintf("write -P 0x5a 0 %d", size/3),
			fmt.Sprintf("write -P 0xa5 %d %d", size/2, size/4),
			fmt.Sprintf("write -P 0x11 %d 4096", size-4096))
		rawBacking := filepath.Join(dir, "backing.raw-copy")
		qemutest.ToRaw(t, backing, rawBacking)
		var err error
		if base, err = os.ReadFile(rawBacking); err != nil {
			t.Fatal(err)
		}
		opts.BackingFile, opts.BackingFormat = backing, fmtName
	}
	m := newWriterModel(t, dir, opts, base)

	// Compressed images take writes in increasing guest order (a flushed
	// compressed cluster cannot be rewritten); plain ones take any order.
	ordered := comp != ""
	var pos int64 // compressed: no op may start before this cluster start
	for i := 0; i < 60; i++ {
		n := 1 + rng.Int63n(3*cs)
		if rng.Intn(8) == 0 {
			n = 1 + rng.Int63n(256<<10)
		}
		var off int64
		if ordered {
			off = pos + rng.Int63n(cs) + rng.Int63n(4)*cs
		} else {
			off = rng.Int63n(m.w.size)
		}
		if off >= m.w.size {
			break
		}
		n = min(n, m.w.size-off)
		switch r := rng.Intn(10); {
		case r < 6:
			p := writerTestData(rng, n)
			if ext && rng.Intn(2) == 0 {
				// Zero some subclusters so data writes leave holes.
				sub := cs / subclustersPerCluster
				for s := off / sub * sub; s < off+n; s += sub {
					if rng.Intn(3) == 0 {
						clear(p[max(s-off, 0):min(s+sub-off, n)])
					}
				}
			}
			m.write(off, p)
		case r < 7:
			m.write(off, make([]byte, n))
		default:
			if rng.Intn(2) == 0 { // cluster aligned
				off = off / cs * cs
				n = min((n+cs-1)/cs*cs, m.w.size-off)
			}
			m.zeroes(off, n)
		}
		pos = (off + n - 1) / cs * cs
	}
	// Make sure the interesting entry kinds were produced.
	m.w.wFlushCompressed()
	kinds := map[string]int{}
	for gc := int64(0); gc < (m.w.size+cs-1)/cs; gc++ {
		e, bm := m.w.wEntry(gc), m.w.wBitmap(gc)
		switch {
		case e&entryCompressed != 0:
			kinds["compressed"]++
		case e&offsetMask != 0:
			kinds["plain"]++
		case e == entryZero || bm>>32 != 0:
			kinds["zero"]++
		}
		if ext && e&offsetMask != 0 && e&entryCompressed == 0 && bm&allSubclusters != allSubclusters {
			kinds["partly allocated"]++
		}
	}
	if ext && comp == "" && kinds["partly allocated"] == 0 {
		t.Errorf("random writes left no cluster partly allocated: %v", kinds)
	}
	few := cs == 2<<20 // only 8 clusters: random writes cover them all
	if (comp == "" && kinds["plain"] == 0) || (comp != "" && kinds["compressed"] == 0) || (withBacking && !few && kinds["zero"] == 0) {
		t.Errorf("random writes produced too few kinds of L2 entries: %v", kinds)
	}
	shared := 0
	for _, rc := range m.w.refcounts {
		if rc > 1 {
			shared++
		}
	}
	if comp != "" && cs > 512 && !few && shared == 0 {
		t.Error("no host cluster holds more than one compressed cluster")
	}
	m.finish()
}

func TestWriterGuestOrder(t *testing.T) {
	qemutest.Require(t)
	m := newWriterModel(t, t.TempDir(), WriterOptions{Size: 8 << 20}, nil)
	rng := rand.New(rand.NewSource(1))
	for _, c := range []int64{0, 3, 4, 10, 50, 51, 127} {
		p := make([]byte, 65536)
		rng.Read(p)
		m.write(c*65536, p[:1000+rng.Intn(64536)])
	}
	if got := m.w.AllocatedClusters(); got != 7 {
		t.Errorf("AllocatedClusters = %d, want 7", got)
	}
	m.finish()
	var last int64 = -1
	for _, e := range qemutest.Map(t, m.path) {
		if !e.Data || e.Offset == nil {
			continue
		}
		if *e.Offset <= last {
			t.Fatalf("guest %#x maps to host %#x, not after previous host %#x", e.Start, *e.Offset, last)
		}
		last = *e.Offset
	}
	if last < 0 {
		t.Fatal("qemu-img map shows no data")
	}
}

func TestWriterSparseHuge(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	size := int64(8 << 30)
	path := filepath.Join(dir, "big.qcow2")
	w, err := Create(path, WriterOptions{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	rawPath := filepath.Join(dir, "big.raw")
	raw, err := os.Create(rawPath)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if err := raw.Truncate(size); err != nil {
		t.Fatal(err)
	}
	p := bytes.Repeat([]byte("engram!"), 65536/7+1)[:65536]
	for _, off := range []int64{0, 4 << 30, size - 65536} {
		if _, err := w.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		if _, err := raw.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > 1<<20 {
		t.Errorf("8 GiB image with 3 clusters takes %d bytes", st.Size())
	}
	qemutest.Check(t, path)
	qemutest.Compare(t, path, rawPath, "-f", "qcow2", "-F", "raw")
}

func TestWriterManyRefcountBlocks(t *testing.T) {
	qemutest.Require(t)
	for _, comp := range []string{"", "zstd"} {
		t.Run("comp="+comp, func(t *testing.T) {
			// 512-byte clusters: a refcount block covers 256 clusters and the
			// refcount table 64 blocks, so 10 MiB of data needs several
			// refcount table clusters.
			size := int64(10 << 20)
			if comp != "" {
				size = 2 << 20 // still 16 refcount blocks; zstd under -race is slow
			}
			m := newWriterModel(t, t.TempDir(), WriterOptions{Size: size, ClusterSize: 512, Compression: comp}, nil)
			rng := rand.New(rand.NewSource(2))
			for off := int64(0); off < m.w.size; off += 65536 {
				p := make([]byte, 65536)
				if comp == "" {
					rng.Read(p)
				} else {
					for i := range p {
						p[i] = byte(rng.Intn(4))
					}
				}
				m.write(off, p)
			}
			m.finish()
			hdr := make([]byte, writerHeaderLen)
			f, err := os.Open(m.path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.ReadAt(hdr, 0); err != nil {
				t.Fatal(err)
			}
			if n := binary.BigEndian.Uint32(hdr[offRefcountTableClusters:]); comp == "" && n < 2 {
				t.Errorf("refcount_table_clusters = %d, want >= 2", n)
			}
		})
	}
}

func TestWriterEdgeWrites(t *testing.T) {
	qemutest.Require(t)
	for _, comp := range []string{"", "deflate"} {
		t.Run("comp="+comp, func(t *testing.T) {
			m := newWriterModel(t, t.TempDir(), WriterOptions{Size: 64<<10 + 512, ClusterSize: 4096, Compression: comp}, nil)
			seq := func(n int, b byte) []byte {
				p := make([]byte, n)
				for i := range p {
					p[i] = b + byte(i%13)
				}
				return p
			}
			// In increasing guest order, so the compressed image takes it too.
			m.write(5, seq(3, 1))              // tiny, unaligned
			m.write(100, seq(3000, 2))         // overlaps it in the same cluster
			m.write(4095, seq(3, 3))           // crosses a cluster boundary
			m.write(4097, seq(9000, 4))        // overlaps it, spans three clusters
			m.zeroes(12500, 100)               // partial zero inside written data
			m.write(16384, seq(4096, 5))       // exactly one cluster
			m.zeroes(16384, 4096)              // and zero it again
			m.write(20000, nil)                // zero-length
			m.zeroes(24576, 4096)              // whole unwritten cluster
			m.write(m.w.size-700, seq(700, 6)) // last bytes, last (partial) cluster
			m.write(m.w.size, nil)             // zero-length at the end
			if comp == "" {
				m.write(50, seq(30, 7))       // back to early clusters
				m.write(4000, seq(5000, 8))   // overlapping several old writes
				m.zeroes(8192, 4096)          // zero a written whole cluster
				m.write(30000, seq(10000, 9)) // then fill in between
			}
			for _, bad := range []struct{ off, n int64 }{{m.w.size - 1, 2}, {m.w.size + 1, 0}, {-1, 1}} {
				if _, err := m.w.WriteAt(make([]byte, bad.n), bad.off); !errors.Is(err, ErrWriterOutOfRange) {
					t.Errorf("WriteAt(%d bytes at %d) = %v, want ErrWriterOutOfRange", bad.n, bad.off, err)
				}
				if err := m.w.WriteZeroes(bad.off, max(bad.n, 1)); !errors.Is(err, ErrWriterOutOfRange) {
					t.Errorf("WriteZeroes(%d, %d) = %v, want ErrWriterOutOfRange", bad.off, bad.n, err)
				}
			}
			m.finish()
			if err := m.w.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if err := m.w.Abort(); err != nil {
				t.Errorf("Abort after Close: %v", err)
			}
			if _, err := m.w.WriteAt([]byte{1}, 0); !errors.Is(err, ErrWriterClosed) {
				t.Errorf("WriteAt after Close = %v, want ErrWriterClosed", err)
			}
		})
	}
}

func TestWriterCompressedRewrite(t *testing.T) {
	qemutest.Require(t)
	m := newWriterModel(t, t.TempDir(), WriterOptions{Size: 1 << 20, ClusterSize: 4096, Compression: "zstd"}, nil)
	p := bytes.Repeat([]byte{7}, 4096)
	m.write(0, p)
	m.write(8192, p)
	_, err := m.w.WriteAt(p[:10], 100)
	if !errors.Is(err, ErrWriterCompressedRewrite) {
		t.Fatalf("rewrite of a flushed compressed cluster = %v, want ErrWriterCompressedRewrite", err)
	}
	if err := m.w.WriteZeroes(0, 4096); !errors.Is(err, ErrWriterCompressedRewrite) {
		t.Fatalf("zeroing a flushed compressed cluster = %v, want ErrWriterCompressedRewrite", err)
	}
	m.write(8192+100, p[:10]) // the pending cluster takes more writes
	m.finish()                // the refused writes left the image valid
}

func TestWriterEmptyAndTiny(t *testing.T) {
	qemutest.Require(t)
	for _, size := range []int64{0, 1000} {
		m := newWriterModel(t, t.TempDir(), WriterOptions{Size: size}, nil)
		if size > 0 {
			m.write(999, []byte{1})
		}
		m.finish()
		var info struct {
			VirtualSize int64 `json:"virtual-size"`
		}
		if err := json.Unmarshal([]byte(qemutest.Img(t, "info", "--output=json", m.path)), &info); err != nil {
			t.Fatal(err)
		}
		if want := (size + 511) &^ 511; info.VirtualSize != want {
			t.Errorf("virtual size %d, want %d", info.VirtualSize, want)
		}
	}
}

func TestWriterInfo(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	backing := filepath.Join(dir, "base.qcow2")
	qemutest.Create(t, "qcow2", backing, "4M")
	for _, tc := range []struct {
		comp, wantComp string
		cs             int
		backing        bool
	}{
		{"", "zlib", 65536, false},
		{"zstd", "zstd", 4096, true},
		{"deflate", "zlib", 2 << 20, true},
	} {
		path := filepath.Join(dir, fmt.Sprintf("info-%s-%d.qcow2", tc.comp, tc.cs))
		opts := WriterOptions{Size: 4 << 20, ClusterSize: tc.cs, Compression: tc.comp}
		if tc.backing {
			opts.BackingFile, opts.BackingFormat = backing, "qcow2"
		}
		w, err := Create(path, opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt(bytes.Repeat([]byte("abc"), 1000), 12345); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		var info struct {
			VirtualSize    int64  `json:"virtual-size"`
			ClusterSize    int    `json:"cluster-size"`
			Format         string `json:"format"`
			BackingFile    string `json:"backing-filename"`
			BackingFormat  string `json:"backing-filename-format"`
			FormatSpecific struct {
				Data struct {
					Compat          string `json:"compat"`
					CompressionType string `json:"compression-type"`
					RefcountBits    int    `json:"refcount-bits"`
				} `json:"data"`
			} `json:"format-specific"`
		}
		out := qemutest.Img(t, "info", "--output=json", path)
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatal(err)
		}
		d := info.FormatSpecific.Data
		if info.VirtualSize != 4<<20 || info.ClusterSize != tc.cs || info.Format != "qcow2" ||
			d.Compat != "1.1" || d.RefcountBits != 16 || d.CompressionType != tc.wantComp ||
			info.BackingFile != opts.BackingFile || info.BackingFormat != opts.BackingFormat {
			t.Errorf("%s: unexpected qemu-img info:\n%s", path, out)
		}
		qemutest.Check(t, path)
	}
}

func TestWriterOptionErrors(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("b", 600)
	for _, tc := range []struct {
		opts WriterOptions
		want string
	}{
		{WriterOptions{Size: 1 << 20, ClusterSize: 1000}, "cluster size 1000"},
		{WriterOptions{Size: 1 << 20, ClusterSize: 256}, "cluster size 256"},
		{WriterOptions{Size: 1 << 20, ClusterSize: 4 << 20}, "cluster size 4194304"},
		{WriterOptions{Size: -1}, "negative virtual size"},
		{WriterOptions{Size: 1 << 40, ClusterSize: 512}, "32 MiB limit"},
		{WriterOptions{Size: 1 << 20, Compression: "lz4"}, `unknown compression "lz4"`},
		{WriterOptions{Size: 1 << 20, BackingFile: "base", BackingFormat: "vmdk"}, `backing format "vmdk"`},
		{WriterOptions{Size: 1 << 20, BackingFile: "base"}, `backing format ""`},
		{WriterOptions{Size: 1 << 20, BackingFormat: "raw"}, "without a backing file"},
		{WriterOptions{Size: 1 << 20, BackingFile: strings.Repeat("x", 1024), BackingFormat: "raw"}, "at most 1023"},
		{WriterOptions{Size: 1 << 20, ClusterSize: 512, BackingFile: long, BackingFormat: "raw"}, "more than one 512-byte cluster"},
		{WriterOptions{Size: 1 << 20, ClusterSize: 8192, ExtendedL2: true}, "at least 16384 bytes, have 8192"},
		// 32 MiB of L1 maps 64 TiB with 16 KiB clusters and 128-bit L2
		// entries (128 TiB with 64-bit ones), as qemu-img create agrees.
		{WriterOptions{Size: 128 << 40, ClusterSize: 16384, ExtendedL2: true}, "32 MiB limit"},
	} {
		path := filepath.Join(dir, "bad.qcow2")
		w, err := Create(path, tc.opts)
		if err == nil {
			w.Abort()
			t.Errorf("Create(%+v) succeeded", tc.opts)
			continue
		}
		if !errors.Is(err, ErrWriterOptions) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("Create(%+v) = %v, want ErrWriterOptions naming the file and %q", tc.opts, err, tc.want)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Create(%+v) left a file behind", tc.opts)
		}
	}
	for _, opts := range []WriterOptions{{Size: 128 << 40, ClusterSize: 16384}, {Size: 64 << 40, ClusterSize: 16384, ExtendedL2: true}} {
		w, err := Create(filepath.Join(dir, "l1.qcow2"), opts)
		if err != nil {
			t.Fatalf("Create(%+v): %v", opts, err)
		}
		w.Abort()
	}
	// 1 TiB works with 64 KiB clusters, and a long name fits in 64 KiB.
	w, err := Create(filepath.Join(dir, "tib.qcow2"), WriterOptions{Size: 1 << 40, BackingFile: long, BackingFormat: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	w.Abort()

	f, err := os.Create(filepath.Join(dir, "nonempty"))
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("x"))
	if _, err := NewWriter(f, WriterOptions{Size: 1 << 20}); !errors.Is(err, ErrWriterOptions) {
		t.Errorf("NewWriter on a non-empty file = %v", err)
	}
	f.Close()
}

func TestWriterNewWriterAbort(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "restore-*.tmp")
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(f, WriterOptions{Size: 1 << 20, Compression: "zstd"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("Close after Abort: %v", err)
	}
	if err := w.WriteZeroes(0, 512); !errors.Is(err, ErrWriterClosed) {
		t.Errorf("WriteZeroes after Abort = %v, want ErrWriterClosed", err)
	}
	var hdr [4]byte
	if n, _ := f.ReadAt(hdr[:], 0); n == 4 && binary.BigEndian.Uint32(hdr[:]) == Magic {
		t.Error("aborted image has a qcow2 header")
	}
}

// BenchmarkWriter measures sequential 64 KiB guest writes into an
// uncompressed image with 64 KiB clusters, Close (and its fsync) included.
func BenchmarkWriter(b *testing.B) { benchmarkWriter(b, false) }

// BenchmarkWriterExtendedL2 is BenchmarkWriter with 2 KiB subclusters.
func BenchmarkWriterExtendedL2(b *testing.B) { benchmarkWriter(b, true) }

func benchmarkWriter(b *testing.B, ext bool) {
	const total = 256 << 20
	p := make([]byte, 64<<10)
	rand.New(rand.NewSource(1)).Read(p)
	dir := b.TempDir()
	b.SetBytes(total)
	for i := 0; b.Loop(); i++ {
		path := filepath.Join(dir, fmt.Sprintf("bench%d.qcow2", i))
		w, err := Create(path, WriterOptions{Size: total, ExtendedL2: ext})
		if err != nil {
			b.Fatal(err)
		}
		for off := int64(0); off < total; off += int64(len(p)) {
			if _, err := w.WriteAt(p, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
		os.Remove(path)
	}
}

// A host cluster shared by so many compressed clusters that its 16-bit
// refcount is full makes the next compressed cluster start a new host cluster.
func TestWriterRefcountSaturation(t *testing.T) {
	qemutest.Require(t)
	m := newWriterModel(t, t.TempDir(), WriterOptions{Size: 1 << 20, ClusterSize: 4096, Compression: "zstd"}, nil)
	p := bytes.Repeat([]byte{9}, 4096)
	m.write(0, p)
	m.write(4096, p) // flushes cluster 0 into host cluster 1
	hc := m.w.end >> m.w.clusterBits
	saved := m.w.refcounts[hc]
	m.w.refcounts[hc] = writerMaxRefcount
	m.write(8192, p) // flushes guest cluster 1
	e := m.w.wEntry(1)
	host := e & (uint64(1)<<(62-(m.w.clusterBits-8)) - 1)
	if e&entryCompressed == 0 || host != uint64(hc+1)*4096 {
		t.Fatalf("entry %#x: want compressed data at the start of host cluster %d", e, hc+1)
	}
	m.w.refcounts[hc] = saved
	m.finish()
}

// Parallel WriteAt calls on distinct ranges are allowed (io.WriterAt).
func TestWriterConcurrentWrites(t *testing.T) {
	qemutest.Require(t)
	m := newWriterModel(t, t.TempDir(), WriterOptions{Size: 4 << 20, ClusterSize: 4096}, nil)
	const parts = 8
	part := m.w.size / parts
	done := make(chan error, parts)
	for i := range int64(parts) {
		p := bytes.Repeat([]byte{byte(i + 1)}, int(part))
		copy(m.raw[i*part:], p)
		go func() {
			for off := int64(0); off < part; off += 12345 {
				n := min(12345, part-off)
				if _, err := m.w.WriteAt(p[off:off+n], i*part+off); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range parts {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	m.finish()
}

// TestWriterExtendedL2 checks subcluster allocation by hand: 64 KiB
// clusters have 2 KiB subclusters, and only subclusters that get data count.
func TestWriterExtendedL2(t *testing.T) {
	qemutest.Require(t)
	for _, withBacking := range []bool{false, true} {
		t.Run(fmt.Sprintf("backing=%v", withBacking), func(t *testing.T) {
			dir := t.TempDir()
			const size = 1 << 20
			opts := WriterOptions{Size: size, ExtendedL2: true}
			var base []byte
			if withBacking {
				backing := filepath.Join(dir, "base.raw")
				base = bytes.Repeat([]byte{0x5a}, size)
				if err := os.WriteFile(backing, base, 0o644); err != nil {
					t.Fatal(err)
				}
				opts.BackingFile, opts.BackingFormat = backing, "raw"
			}
			m := newWriterModel(t, dir, opts, base)
			p := bytes.Repeat([]byte{7}, 4096)
			step := func(what string, want int64) {
				t.Helper()
				if got := m.allocBytes(); got != want {
					t.Fatalf("after %s: model has %d bytes allocated, want %d", what, got, want)
				}
			}
			m.write(0, p)
			step("4 KiB into a fresh cluster", 4096) // 2 subclusters, not the 64 KiB cluster
			m.write(65536+2048+10, p[:100])
			step("100 bytes inside a subcluster", 6144) // its other bytes read zero, not backing
			m.write(65536+8192, make([]byte, 6000))
			step("zeros into the allocated cluster", 6144) // zero subclusters, nothing allocated
			m.zeroes(0, 2048)
			step("zeroing a whole subcluster", 4096)
			m.write(100, p[:10])
			step("rewriting the zeroed subcluster", 6144) // the rest must read zero, not old data
			m.zeroes(size-3000, 3000)                     // partial + whole subcluster at the end
			m.write(size-1, []byte{1})
			step("the last byte", 8192)
			if got := m.w.AllocatedClusters(); got != 3 {
				t.Errorf("AllocatedClusters = %d, want 3 (host clusters stay whole)", got)
			}
			m.finish() // check, compare, and qemu-img map must show 8192 data bytes

			var info struct {
				FormatSpecific struct {
					Data struct {
						ExtendedL2 bool `json:"extended-l2"`
					} `json:"data"`
				} `json:"format-specific"`
			}
			out := qemutest.Img(t, "info", "--output=json", m.path)
			if err := json.Unmarshal([]byte(out), &info); err != nil {
				t.Fatal(err)
			}
			if !info.FormatSpecific.Data.ExtendedL2 {
				t.Errorf("qemu-img info does not show extended-l2 true:\n%s", out)
			}
			// Our own reader agrees with the model too.
			img, err := Open(m.path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			got := make([]byte, size)
			if _, err := img.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !img.Info().ExtendedL2 || !bytes.Equal(got, m.raw) {
				t.Errorf("reader: ExtendedL2 = %v, content equal to the model = %v", img.Info().ExtendedL2, bytes.Equal(got, m.raw))
			}
		})
	}
}

// TestWriterErrorNamesFileOnce: an I/O error of the output file (a full
// disk, here a closed file) names the file once, not "F: write F: ...".
func TestWriterErrorNamesFileOnce(t *testing.T) {
	for _, compression := range []string{"", "zstd"} {
		p := filepath.Join(t.TempDir(), "out.qcow2")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		w, err := NewWriter(f, WriterOptions{Size: 4 << 20, Compression: compression})
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		data := bytes.Repeat([]byte{1, 2, 3, 4}, 1<<18) // 1 MiB: whole clusters
		_, err = w.WriteAt(data, 0)
		if err == nil {
			err = w.Close()
		}
		if err == nil || strings.Count(err.Error(), p) != 1 || !errors.Is(err, os.ErrClosed) {
			t.Errorf("compression %q: %v, want one mention of %s", compression, err, p)
		}
	}
}
