package qcow2

// # Writer layout
//
// A Writer produces a qcow2 v3 image (refcount_order 4, no snapshots,
// optionally extended L2 entries) laid out as:
//
//	cluster 0        header, header extensions (backing format, end), backing name
//	data             one host cluster per written guest cluster, appended in the
//	                 order guest clusters are first written (so guest order when
//	                 the caller writes in guest order); compressed clusters are
//	                 packed back to back in the same region
//	L2 tables        only the ones that map something, in L1 index order
//	L1 table         l1_size entries, padded to whole clusters
//	refcount table   enough clusters for the refcount blocks
//	refcount blocks  16-bit refcounts covering every cluster of the file
//
// Why this order: data is streamed while the caller writes, but the L2
// tables, the L1 table and the refcounts are only final when the last write
// is in, so they are kept in memory and appended at Close behind the data.
// Putting all metadata last also lets Close compute the number of refcount
// blocks from the final file size in one fixed-point step, with nothing
// allocated afterwards. The header is written last of all: a crash before
// Close finishes leaves a file without the qcow2 magic, never an image that
// looks valid and is not.
//
// The Writer never reads the backing file. The first write to a guest
// cluster makes the whole cluster belong to the new image: bytes of that
// cluster the caller does not write read as zero, not as backing data. An
// overlay writer therefore writes whole clusters (or WriteZeroes the rest).
//
// # Extended L2 entries
//
// With WriterOptions.ExtendedL2 the unit of ownership is the subcluster
// (cluster/32) instead of the cluster, so an image restored from a source
// made with extended_l2=on allocates no more than the source did. L2 entries
// are 128 bits: the usual descriptor, then a bitmap with one allocation bit
// (bits 0..31) and one reads-as-zero bit (bits 32..63) per subcluster. As in
// QEMU, the first data write to a guest cluster appends a whole host cluster,
// but only the subclusters that received non-zero bytes are marked
// allocated; those that received only zeros read zero, and untouched ones
// keep reading from the backing file (or as zero without one).
// Bytes of a newly allocated subcluster that the caller does not write read
// as zero, which with a backing file hides the backing data of the rest of
// that subcluster (the same rule as above, one subcluster wide). Host bytes
// of subclusters that are not allocated are kept zero (zeroing an allocated
// subcluster overwrites it) so that a later partial write needs no fill.
// Zero subclusters get the zero bit when there is a backing file and nothing
// otherwise; a cluster with zero bits but no host cluster has descriptor 0.
// Compressed clusters have no subclusters (bitmap 0, as the spec requires):
// a compressed image owns whole clusters as described above, and a cluster
// stored plain because it did not shrink marks only its non-zero subclusters
// allocated.
//
// Compressed images keep one guest cluster in memory and compress it when a
// write moves to another cluster (or at Close); clusters that do not shrink
// are stored plain, as QEMU does. A flushed compressed cluster cannot be
// written again (ErrWriterCompressedRewrite): write in increasing guest order.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/bits"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// Writer errors, testable with errors.Is.
var (
	// ErrWriterClosed is returned by Writer methods called after Close or Abort.
	ErrWriterClosed = errors.New("qcow2 writer is closed")
	// ErrWriterOptions wraps every invalid WriterOptions error.
	ErrWriterOptions = errors.New("invalid qcow2 writer options")
	// ErrWriterOutOfRange is returned for writes outside [0, Size).
	ErrWriterOutOfRange = errors.New("write outside the virtual disk")
	// ErrWriterCompressedRewrite is returned when a compressed image is
	// written to a guest cluster that was already compressed and flushed.
	// The Writer keeps only the current guest cluster in memory; writing in
	// increasing guest order never hits this. The refused write changes
	// nothing and the Writer stays usable.
	ErrWriterCompressedRewrite = errors.New("write to a compressed cluster that was already flushed")
	// ErrWriterTooLarge is returned when the image outgrows a qcow2 or QEMU
	// limit (host offsets, refcount table size).
	ErrWriterTooLarge = errors.New("qcow2 image too large")
)

const (
	writerDefaultClusterSize = 65536
	writerRefcountOrder      = 4 // 16-bit refcounts, what qemu-img uses
	writerMaxRefcount        = math.MaxUint16
	writerSectorSize         = 512
	writerHeaderLen          = headerV3CompressionTypeLen
	// Host offsets in L1/L2 entries have 56 bits.
	writerMaxHostOffset = int64(1) << 56
)

// WriterOptions configure a new image.
type WriterOptions struct {
	Size          int64  // virtual size in bytes (rounded up to 512 like qemu-img)
	ClusterSize   int    // power of two 512..2 MiB; 0 = 65536
	BackingFile   string // optional, written verbatim into the header
	BackingFormat string // "qcow2" or "raw"; required when BackingFile != ""
	Compression   string // "" (none), "zstd" or "deflate": data clusters are written compressed
	// ExtendedL2 writes 128-bit L2 entries with subcluster bitmaps
	// (incompatible feature bit 4); needs ClusterSize >= 16 KiB.
	ExtendedL2 bool
	// Direct, when not nil, is a second descriptor of the same file opened
	// with O_DIRECT. Data writes whose memory, host offset and length are
	// multiples of DirectAlign go through it, past the page cache (copying
	// into the page cache cost a restore more CPU than hashing); the rest,
	// and all metadata, go through the file. The first write the file
	// system refuses (EINVAL) turns it off. The caller closes it.
	Direct *os.File
}

// DirectAlign is the alignment of writes through WriterOptions.Direct: a
// page, so no page is ever written both through the page cache and past it.
const DirectAlign = 4096

// Writer writes a sparse qcow2 v3 image. See the layout comment at the top of
// writer.go. It is safe for concurrent use, but writes are serialized.
type Writer struct {
	mu      sync.Mutex
	f       *os.File
	direct  *os.File // O_DIRECT descriptor for aligned data writes, or nil
	nDirect int64    // writes that went through direct (tests)
	name    string
	opts    WriterOptions

	size        int64
	clusterBits uint
	clusterSize int64
	l2Entries   int64 // entries per L2 table
	l1Size      int64
	backing     bool
	compress    bool
	extL2       bool
	unitBits    uint  // log2 of the unit a write owns: subcluster (plain extL2) or cluster
	unitSize    int64 // 1 << unitBits

	// L1 index -> L2 table (cluster/8 words), created on first use. With
	// extended L2 entries, guest cluster i of a table is words 2i
	// (descriptor) and 2i+1 (subcluster bitmap).
	l2        map[int64][]uint64
	end       int64    // host offset where the next data byte goes
	refcounts []uint16 // per host cluster; only kept for compressed images
	allocated int64
	zero      []byte // cluster of zeros: zero test and zero writes

	// Compressed images: the guest cluster being filled (-1 when none).
	cur  int64
	buf  []byte
	cbuf bytes.Buffer
	zenc *zstd.Encoder
	fenc *flate.Writer

	err    error // sticky: after a failed write the image is not finished
	closed bool

	// StartWriteAt: the direct data writes of the call being placed, and
	// how many calls' writes are not done yet.
	deferred *[]directWrite
	started  int

	// With Direct: the file is fallocated up to prealloc (0: not yet;
	// -1: the file system cannot), see wPrealloc.
	prealloc int64
}

// directWrite is a data write through Direct left to StartWriteAt's wait.
type directWrite struct {
	p   []byte
	off int64
}

// writerGeometry is what Create validates up front.
type writerGeometry struct {
	size        int64
	clusterBits uint
	l1Size      int64
}

func writerCheckOptions(name string, opts WriterOptions) (writerGeometry, error) {
	var g writerGeometry
	bad := func(format string, a ...any) (writerGeometry, error) {
		return g, fmt.Errorf("%s: %s: %w", name, fmt.Sprintf(format, a...), ErrWriterOptions)
	}
	if opts.Size < 0 {
		return bad("negative virtual size %d", opts.Size)
	}
	if opts.Size > math.MaxInt64-writerSectorSize {
		return bad("virtual size %d too large", opts.Size)
	}
	g.size = (opts.Size + writerSectorSize - 1) &^ (writerSectorSize - 1)

	cs := opts.ClusterSize
	if cs == 0 {
		cs = writerDefaultClusterSize
	}
	if cs < 1<<minClusterBits || cs > 1<<maxClusterBits || cs&(cs-1) != 0 {
		return bad("cluster size %d is not a power of two between 512 and 2 MiB", opts.ClusterSize)
	}
	g.clusterBits = uint(bits.TrailingZeros(uint(cs)))

	entryBytes := 8
	if opts.ExtendedL2 {
		// QEMU: subclusters must be at least 512 bytes.
		if cs < 1<<minClusterBitsExtL2 {
			return bad("extended L2 entries need a cluster size of at least %d bytes, have %d", 1<<minClusterBitsExtL2, cs)
		}
		entryBytes = 16
	}
	// One L1 entry maps one L2 table of cs/entryBytes clusters.
	perL1 := int64(cs) * int64(cs/entryBytes)
	g.l1Size = (g.size + perL1 - 1) / perL1
	if g.l1Size*8 > maxL1Bytes {
		return bad("virtual size %d needs an L1 table of %d bytes with %d-byte clusters, over QEMU's 32 MiB limit; use a larger cluster size",
			g.size, g.l1Size*8, cs)
	}

	switch opts.Compression {
	case "", "zstd", "deflate":
	default:
		return bad("unknown compression %q (want \"zstd\" or \"deflate\")", opts.Compression)
	}

	if opts.BackingFile == "" {
		if opts.BackingFormat != "" {
			return bad("backing format %q given without a backing file", opts.BackingFormat)
		}
	} else {
		if opts.BackingFormat != "qcow2" && opts.BackingFormat != "raw" {
			return bad("backing format %q (want \"qcow2\" or \"raw\")", opts.BackingFormat)
		}
		if len(opts.BackingFile) > maxBackingNameLen {
			return bad("backing file name is %d bytes, QEMU allows at most %d", len(opts.BackingFile), maxBackingNameLen)
		}
		if strings.IndexByte(opts.BackingFile, 0) >= 0 {
			return bad("backing file name contains a NUL byte")
		}
	}
	if n := len(writerHeaderBytes(opts, g, 0, 0, 0)); n > cs {
		return bad("header, extensions and backing file name take %d bytes, more than one %d-byte cluster", n, cs)
	}
	return g, nil
}

// Create creates (or truncates) path and returns a Writer for it. Options
// are validated before the file is touched.
func Create(path string, opts WriterOptions) (*Writer, error) {
	if _, err := writerCheckOptions(path, opts); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	w, err := NewWriter(f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

// NewWriter returns a Writer that writes into f, which must be open for
// writing and empty. The Writer owns f from then on: Close and Abort close
// it. When NewWriter fails, f is left open for the caller.
func NewWriter(f *os.File, opts WriterOptions) (*Writer, error) {
	name := f.Name()
	g, err := writerCheckOptions(name, opts)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() != 0 {
		return nil, fmt.Errorf("%s: file is not empty (%d bytes); the writer needs an empty file: %w", name, st.Size(), ErrWriterOptions)
	}
	cs := int64(1) << g.clusterBits
	l2Entries, unitBits := cs/8, g.clusterBits
	if opts.ExtendedL2 {
		l2Entries = cs / 16
		if opts.Compression == "" {
			unitBits = g.clusterBits - 5 // 32 subclusters
		}
	}
	w := &Writer{
		f:           f,
		direct:      opts.Direct,
		name:        name,
		opts:        opts,
		size:        g.size,
		clusterBits: g.clusterBits,
		clusterSize: cs,
		l2Entries:   l2Entries,
		l1Size:      g.l1Size,
		backing:     opts.BackingFile != "",
		compress:    opts.Compression != "",
		extL2:       opts.ExtendedL2,
		unitBits:    unitBits,
		unitSize:    int64(1) << unitBits,
		l2:          make(map[int64][]uint64),
		end:         cs, // cluster 0 is the header
		zero:        make([]byte, cs),
		cur:         -1,
	}
	if w.compress {
		w.buf = make([]byte, cs)
		w.refcounts = []uint16{1} // header cluster
		switch opts.Compression {
		case "zstd":
			// No checksum, like QEMU's own zstd clusters; one frame per cluster.
			w.zenc, err = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
		case "deflate":
			w.fenc, err = flate.NewWriter(&w.cbuf, flate.DefaultCompression)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	return w, nil
}

// AllocatedClusters returns the number of guest clusters that have data
// stored so far (plain or compressed, including the one a compressed Writer
// is still filling). Zero-flagged and skipped clusters are not counted.
func (w *Writer) AllocatedClusters() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := w.allocated
	if w.cur >= 0 {
		n++
	}
	return n
}

// WriteAt writes guest bytes at guest offset off. Any offset and length
// inside the virtual size is allowed. An all-zero write to an unallocated
// cluster (subcluster, with ExtendedL2) allocates nothing (with a backing
// file it marks it as reading zero). See the layout comment for what the
// unwritten bytes of a touched cluster or subcluster read as.
func (w *Writer) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.wUsable(); err != nil {
		return 0, err
	}
	if err := w.wCheckRange("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := w.wWrite(p, off); err != nil {
		w.wFailUnlessRefused(err)
		return 0, err
	}
	return len(p), nil
}

// StartWriteAt is WriteAt except that the data writes that go through
// WriterOptions.Direct are left to wait, which does them without the
// writer's lock and returns their error: several callers' waits keep
// several writes in flight, so the disk does not idle while one caller is
// scheduled again after its write. Clusters are placed in the order of the
// StartWriteAt calls, as with WriteAt. p must stay unchanged until wait
// returns, and every wait must return before Close (which fails
// otherwise). An error of wait is sticky, as one of WriteAt.
func (w *Writer) StartWriteAt(p []byte, off int64) (wait func() error, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.wUsable(); err != nil {
		return nil, err
	}
	if err := w.wCheckRange("write", off, int64(len(p))); err != nil {
		return nil, err
	}
	var writes []directWrite
	w.deferred = &writes
	err = w.wWrite(p, off)
	w.deferred = nil
	if err != nil {
		// Placed clusters read whatever their writes leave: the image is
		// unfinished either way (the error is sticky unless a refusal
		// changed nothing, and then nothing was placed).
		w.wFailUnlessRefused(err)
		if len(writes) > 0 {
			w.wFail(err)
		}
		return nil, err
	}
	w.started++
	return func() error {
		var err error
		for _, d := range writes {
			if err = w.directWriteAt(d.p, d.off); err != nil {
				break
			}
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		w.started--
		if err != nil {
			w.wFail(err)
		}
		return err
	}, nil
}

// directWriteAt does one write StartWriteAt left to its wait: through the
// O_DIRECT descriptor, or the file if the file system refuses it.
func (w *Writer) directWriteAt(p []byte, off int64) error {
	w.mu.Lock()
	d := w.direct
	w.mu.Unlock()
	if d != nil {
		_, err := d.WriteAt(p, off)
		if !errors.Is(err, syscall.EINVAL) {
			if err != nil {
				return w.fileErr("", err)
			}
			return nil
		}
		w.mu.Lock()
		w.direct = nil
		w.mu.Unlock()
	}
	if _, err := w.f.WriteAt(p, off); err != nil {
		return w.fileErr("", err)
	}
	return nil
}

// WriteZeroes makes [off, off+length) read as zero. Whole clusters get the
// v3 zero flag without a host cluster when there is a backing file (and
// nothing at all without one, as unallocated clusters already read zero);
// a whole cluster that already has a host cluster is overwritten with zeros;
// partial clusters get zero bytes written (see WriteAt). With ExtendedL2 the
// same holds per subcluster, except that a zeroed allocated subcluster is
// also marked unallocated (and zero, with a backing file); compressed
// images zero by whole clusters as without ExtendedL2.
func (w *Writer) WriteZeroes(off, length int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.wUsable(); err != nil {
		return err
	}
	if err := w.wCheckRange("zero write", off, length); err != nil {
		return err
	}
	for length > 0 {
		gc, in := off>>w.clusterBits, off&(w.clusterSize-1)
		k := min(w.clusterSize-in, length)
		if err := w.wZeroInCluster(gc, in, k, off+k == w.size); err != nil {
			w.wFailUnlessRefused(err)
			return err
		}
		off += k
		length -= k
	}
	return nil
}

// wZeroInCluster zeroes [in, in+k) of guest cluster gc: whole units (see
// unitSize) by metadata, partial ones by writing zero bytes. toEnd says the
// range reaches the end of the disk, which completes the last unit.
func (w *Writer) wZeroInCluster(gc, in, k int64, toEnd bool) error {
	base := gc << w.clusterBits
	end := in + k
	if toEnd {
		end = w.clusterSize
	}
	u := w.unitSize
	first, last := (in+u-1)/u*u, end/u*u // whole units: [first, last)
	if first >= last {
		return w.wWrite(w.zero[:k], base+in)
	}
	if in < first {
		if err := w.wWrite(w.zero[:first-in], base+in); err != nil {
			return err
		}
	}
	var err error
	if w.extL2 {
		err = w.wZeroSubclusters(gc, w.wSubMask(first, last-first))
	} else {
		err = w.wZeroCluster(gc)
	}
	if err != nil {
		return err
	}
	if tail := in + k - last; tail > 0 {
		return w.wWrite(w.zero[:tail], base+last)
	}
	return nil
}

// wZeroSubclusters makes the subclusters in mask of guest cluster gc read
// as zero (extended L2 entries). In compressed images mask is whole.
func (w *Writer) wZeroSubclusters(gc int64, mask uint64) error {
	if gc == w.cur {
		w.cur = -1 // drop the pending data
	}
	e := w.wEntry(gc)
	if e&entryCompressed != 0 {
		return fmt.Errorf("%s: zeroing guest offset %#x: %w", w.name, gc<<w.clusterBits, ErrWriterCompressedRewrite)
	}
	bm := w.wBitmap(gc)
	if host := int64(e & offsetMask); host != 0 {
		// Keep the host bytes of unallocated subclusters zero, so a later
		// partial write into one needs no fill (see the layout comment).
		sub := w.clusterSize / subclustersPerCluster
		for m := bm & mask; m != 0; {
			i := int64(bits.TrailingZeros64(m))
			n := int64(bits.TrailingZeros64(^(m >> i))) // run of allocated subclusters
			if _, err := w.f.WriteAt(w.zero[:n*sub], host+i*sub); err != nil {
				return w.fileErr("", err)
			}
			m &^= (uint64(1)<<n - 1) << i
		}
		w.wSetBitmap(gc, bm&^mask)
	}
	w.wMarkZero(gc, mask)
	return nil
}

// Close flushes the pending compressed cluster, writes the L2 tables, the L1
// table, the refcount structures and the header, fsyncs and closes the file.
// Calling it again returns nil.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	err := w.err
	if err == nil && w.started > 0 {
		err = fmt.Errorf("%s: closed with %d started writes not waited for", w.name, w.started)
	}
	if err == nil {
		err = w.wFinish()
	}
	if w.zenc != nil {
		w.zenc.Close()
	}
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = w.fileErr("", cerr)
	}
	return err
}

// Abort closes the file without finishing the image (the file has no valid
// header). The caller removes the file. Calling it after Close returns nil.
func (w *Writer) Abort() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if w.zenc != nil {
		w.zenc.Close()
	}
	return w.f.Close()
}

// fileErr is err of an operation on the output file, naming the file once:
// an *fs.PathError from os names it already ("write NAME: no space left
// on device"), so only what was being done is added.
func (w *Writer) fileErr(what string, err error) error {
	var pe *fs.PathError
	switch named := errors.As(err, &pe) && pe.Path == w.name; {
	case named && what == "":
		return err
	case named:
		return fmt.Errorf("%s: %w", what, err)
	case what == "":
		return fmt.Errorf("%s: %w", w.name, err)
	}
	return fmt.Errorf("%s: %s: %w", w.name, what, err)
}

func (w *Writer) wUsable() error {
	if w.closed {
		return fmt.Errorf("%s: %w", w.name, ErrWriterClosed)
	}
	return w.err
}

func (w *Writer) wFail(err error) {
	if w.err == nil {
		w.err = fmt.Errorf("%s: image left unfinished after an earlier error: %w", w.name, err)
	}
}

// wFailUnlessRefused makes err sticky unless it is a refusal that changed
// nothing for the cluster it names (earlier clusters of the same call stay
// written, which leaves a valid image).
func (w *Writer) wFailUnlessRefused(err error) {
	if !errors.Is(err, ErrWriterCompressedRewrite) {
		w.wFail(err)
	}
}

func (w *Writer) wCheckRange(what string, off, n int64) error {
	if off < 0 || n < 0 || off > w.size || n > w.size-off {
		return fmt.Errorf("%s: %s of %d bytes at offset %d is outside the virtual size %d: %w",
			w.name, what, n, off, w.size, ErrWriterOutOfRange)
	}
	return nil
}

// allSubclusters is the allocation half of a full subcluster bitmap.
const allSubclusters = uint64(1)<<subclustersPerCluster - 1

// wSlot returns the L2 table of guest cluster gc (nil if it has none and
// create is false) and the index of gc's descriptor word in it; with
// extended L2 entries the bitmap word follows.
func (w *Writer) wSlot(gc int64, create bool) ([]uint64, int64) {
	i, j := gc/w.l2Entries, gc%w.l2Entries
	if w.extL2 {
		j *= 2
	}
	t := w.l2[i]
	if t == nil && create {
		t = make([]uint64, w.clusterSize/8)
		w.l2[i] = t
	}
	return t, j
}

// wEntry is the descriptor word of guest cluster gc.
func (w *Writer) wEntry(gc int64) uint64 {
	if t, j := w.wSlot(gc, false); t != nil {
		return t[j]
	}
	return 0
}

func (w *Writer) wSetEntry(gc int64, e uint64) {
	t, j := w.wSlot(gc, e != 0)
	if t != nil {
		t[j] = e
	}
}

// wBitmap is the subcluster bitmap of guest cluster gc (0 without extended
// L2 entries).
func (w *Writer) wBitmap(gc int64) uint64 {
	if !w.extL2 {
		return 0
	}
	if t, j := w.wSlot(gc, false); t != nil {
		return t[j+1]
	}
	return 0
}

func (w *Writer) wSetBitmap(gc int64, bm uint64) {
	t, j := w.wSlot(gc, bm != 0)
	if t != nil {
		t[j+1] = bm
	}
}

// wMarkZero makes the subclusters in mask of guest cluster gc, none of
// them allocated, read as zero even over a backing file. Without extended
// L2 entries the mask is ignored: the whole cluster gets the zero flag.
// Without a backing file there is nothing to do: they already read zero.
func (w *Writer) wMarkZero(gc int64, mask uint64) {
	switch {
	case !w.backing:
	case w.extL2:
		w.wSetBitmap(gc, w.wBitmap(gc)|mask<<32)
	default:
		w.wSetEntry(gc, entryZero)
	}
}

// wSubMask is the mask of the subclusters that [in, in+n) overlaps.
func (w *Writer) wSubMask(in, n int64) uint64 {
	sb := w.clusterBits - 5
	first, last := in>>sb, (in+n-1)>>sb
	return (uint64(1)<<(last+1) - 1) &^ (uint64(1)<<first - 1)
}

// wDataMask is the mask of the subclusters in which piece, at in inside its
// cluster, has a non-zero byte.
func (w *Writer) wDataMask(in int64, piece []byte) uint64 {
	sub := w.clusterSize / subclustersPerCluster
	var m uint64
	for len(piece) > 0 {
		k := min(sub-in%sub, int64(len(piece)))
		if !w.wIsZero(piece[:k]) {
			m |= uint64(1) << (in / sub)
		}
		piece = piece[k:]
		in += k
	}
	return m
}

func (w *Writer) wIsZero(p []byte) bool { return bytes.Equal(p, w.zero[:len(p)]) }

// wWrite writes p at guest offset off (already range-checked), cluster by
// cluster, merging pieces that land contiguously on the host into one pwrite.
func (w *Writer) wWrite(p []byte, off int64) error {
	var run []byte // pending pwrite
	var runHost int64
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		err := w.wData(run, runHost)
		run = nil
		return err
	}
	start := 0
	for start < len(p) {
		// Plain extended-L2 pieces stay inside one subcluster, so zero
		// subclusters are never written.
		gc, in := off>>w.clusterBits, off&(w.clusterSize-1)
		k := int(min(w.unitSize-off&(w.unitSize-1), int64(len(p)-start)))
		piece := p[start : start+k]
		host, err := w.wPlace(gc, in, piece)
		if err != nil {
			return err
		}
		if host >= 0 {
			if len(run) > 0 && runHost+int64(len(run)) == host {
				run = p[start-len(run) : start+k] // pieces are consecutive in p
			} else {
				if err := flush(); err != nil {
					return err
				}
				run, runHost = piece, host
			}
		} else if err := flush(); err != nil {
			return err
		}
		start += k
		off += int64(k)
	}
	return flush()
}

// wData writes a run of data bytes at host offset off: past the page cache
// when it can (see WriterOptions.Direct).
func (w *Writer) wData(p []byte, off int64) error {
	if w.direct != nil && off%DirectAlign == 0 && len(p)%DirectAlign == 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(p)))%DirectAlign == 0 {
		if w.deferred != nil {
			*w.deferred = append(*w.deferred, directWrite{p, off})
			w.nDirect++
			return nil
		}
		_, err := w.direct.WriteAt(p, off)
		if err == nil {
			w.nDirect++
			return nil
		}
		if !errors.Is(err, syscall.EINVAL) {
			return w.fileErr("", err)
		}
		// The file system wants another alignment, or no O_DIRECT at
		// all: the page cache it is (rewriting what may have gone through).
		w.direct = nil
	}
	if _, err := w.f.WriteAt(p, off); err != nil {
		return w.fileErr("", err)
	}
	return nil
}

// wPlace handles one piece inside guest cluster gc. It returns the host
// offset the piece must be written to, or -1 when it was absorbed (zero
// piece, or copied into the pending compressed cluster).
func (w *Writer) wPlace(gc, in int64, piece []byte) (int64, error) {
	if gc == w.cur {
		copy(w.buf[in:], piece)
		return -1, nil
	}
	e := w.wEntry(gc)
	switch {
	case e&entryCompressed != 0:
		return -1, fmt.Errorf("%s: guest offset %#x: %w", w.name, gc<<w.clusterBits+in, ErrWriterCompressedRewrite)
	case w.extL2:
		return w.wPlaceExt(gc, in, piece, e)
	case e&offsetMask != 0:
		return int64(e&offsetMask) + in, nil
	}
	// Unallocated or zero-flagged: the rest of the cluster reads as zero.
	if w.wIsZero(piece) {
		w.wMarkZero(gc, allSubclusters)
		return -1, nil
	}
	if w.compress {
		return w.wStartCompressed(gc, in, piece)
	}
	host, err := w.wAllocCluster(gc)
	if err != nil {
		return -1, err
	}
	return host + in, nil
}

// wPlaceExt is wPlace for extended L2 entries; e is gc's descriptor, not
// compressed. The piece lies in one subcluster, except in compressed images,
// which own whole clusters (see the layout comment).
func (w *Writer) wPlaceExt(gc, in int64, piece []byte, e uint64) (int64, error) {
	host := int64(e & offsetMask)
	bm := w.wBitmap(gc)
	span := w.wSubMask(in, int64(len(piece)))
	if bm&span == span {
		return host + in, nil // all allocated: overwrite in place
	}
	data := w.wDataMask(in, piece)
	if host == 0 && data == 0 {
		if w.compress {
			span = allSubclusters // the whole cluster is the image's now
		}
		w.wMarkZero(gc, span)
		return -1, nil
	}
	if host == 0 {
		if w.compress {
			return w.wStartCompressed(gc, in, piece)
		}
		var err error
		if host, err = w.wAllocCluster(gc); err != nil {
			return -1, err
		}
	}
	// Host bytes of unallocated subclusters are zero, so writing the zero
	// parts of the piece there is harmless; those subclusters read zero from
	// now on (the rest of a newly allocated one reads zero too).
	w.wMarkZero(gc, span&^bm&^data)
	bm = w.wBitmap(gc)
	w.wSetBitmap(gc, (bm|data)&^(data<<32))
	if bm&span == 0 && data == 0 {
		return -1, nil
	}
	return host + in, nil
}

// wStartCompressed makes guest cluster gc the pending compressed cluster,
// flushing the previous one.
func (w *Writer) wStartCompressed(gc, in int64, piece []byte) (int64, error) {
	if err := w.wFlushCompressed(); err != nil {
		return -1, err
	}
	clear(w.buf)
	copy(w.buf[in:], piece)
	w.cur = gc
	return -1, nil
}

// wAllocCluster appends a host cluster for guest cluster gc.
func (w *Writer) wAllocCluster(gc int64) (int64, error) {
	host := (w.end + w.clusterSize - 1) &^ (w.clusterSize - 1)
	if host+w.clusterSize > writerMaxHostOffset {
		return -1, fmt.Errorf("%s: data reaches host offset %#x, past the 56-bit qcow2 limit: %w", w.name, host, ErrWriterTooLarge)
	}
	w.end = host + w.clusterSize
	w.wPrealloc()
	w.wSetEntry(gc, uint64(host)|entryCopied)
	w.allocated++
	if w.refcounts != nil {
		w.wGrowRefcounts(host >> w.clusterBits)
		w.refcounts[host>>w.clusterBits] = 1
	}
	return host, nil
}

// Preallocation of the data area, for writes through Direct: ext4 lets
// O_DIRECT writes into allocated blocks below the file's size run at once
// (StartWriteAt), but serializes writes that extend the file or fill a
// hole, each waiting for the last to be written. The space is fallocated
// ahead of w.end in steps that grow with the image (a step waits for the
// writes in flight), and Close trims what the image did not use.
const preallocMin = 64 << 20

func (w *Writer) wPrealloc() {
	if w.direct == nil || w.prealloc < 0 || w.end <= w.prealloc {
		return
	}
	end := w.end + max(preallocMin, w.end/2)
	if err := unix.Fallocate(int(w.f.Fd()), 0, w.prealloc, end-w.prealloc); err != nil {
		w.prealloc = -1 // not supported, or no space: plain writes then
		return
	}
	w.prealloc = end
}

func (w *Writer) wGrowRefcounts(c int64) {
	for int64(len(w.refcounts)) <= c {
		w.refcounts = append(w.refcounts, 0)
	}
}

// wZeroCluster makes the whole guest cluster gc read as zero.
func (w *Writer) wZeroCluster(gc int64) error {
	if gc == w.cur {
		w.cur = -1 // drop the pending data
	}
	e := w.wEntry(gc)
	switch {
	case e&entryCompressed != 0:
		return fmt.Errorf("%s: zeroing guest offset %#x: %w", w.name, gc<<w.clusterBits, ErrWriterCompressedRewrite)
	case e&offsetMask != 0:
		// Rare: the cluster was written earlier. Overwrite it rather than
		// keep a preallocated zero cluster whose stale bytes a later partial
		// write would expose.
		if _, err := w.f.WriteAt(w.zero, int64(e&offsetMask)); err != nil {
			return w.fileErr("", err)
		}
	case w.backing:
		w.wSetEntry(gc, entryZero)
	}
	return nil
}

// wFlushCompressed compresses and appends the pending guest cluster.
func (w *Writer) wFlushCompressed() error {
	gc := w.cur
	if gc < 0 {
		return nil
	}
	w.cur = -1
	data := w.buf
	if w.wIsZero(data) {
		w.wMarkZero(gc, allSubclusters)
		return nil
	}
	w.cbuf.Reset()
	var c []byte
	if w.zenc != nil {
		c = w.zenc.EncodeAll(data, w.cbuf.AvailableBuffer())
	} else {
		w.fenc.Reset(&w.cbuf)
		if _, err := w.fenc.Write(data); err != nil {
			return fmt.Errorf("%s: deflate: %w", w.name, err)
		}
		if err := w.fenc.Close(); err != nil {
			return fmt.Errorf("%s: deflate: %w", w.name, err)
		}
		c = w.cbuf.Bytes()
	}
	if int64(len(c)) >= w.clusterSize {
		// Does not shrink: store it plain, as QEMU does.
		host, err := w.wAllocCluster(gc)
		if err != nil {
			return err
		}
		if _, err := w.f.WriteAt(data, host); err != nil {
			return w.fileErr("", err)
		}
		if w.extL2 {
			// Only the non-zero subclusters are allocated; the rest read
			// zero (the cluster is the image's whole, see wPlaceExt).
			alloc := w.wDataMask(0, data)
			w.wSetBitmap(gc, 0)
			w.wMarkZero(gc, allSubclusters&^alloc)
			w.wSetBitmap(gc, w.wBitmap(gc)|alloc)
		}
		return nil
	}

	host := w.end
	if c := host >> w.clusterBits; c < int64(len(w.refcounts)) && w.refcounts[c] == writerMaxRefcount {
		host = (host + w.clusterSize - 1) &^ (w.clusterSize - 1)
	}
	n := int64(len(c))
	last := host + n - 1
	offBits := 62 - (w.clusterBits - 8)
	if last >= int64(1)<<offBits || last >= writerMaxHostOffset {
		return fmt.Errorf("%s: compressed data reaches host offset %#x, past the %d-bit limit for %d-byte clusters: %w",
			w.name, last, offBits, w.clusterSize, ErrWriterTooLarge)
	}
	if _, err := w.f.WriteAt(c, host); err != nil {
		return w.fileErr("", err)
	}
	// Additional sectors beyond the one holding the first byte.
	sectors := uint64(last/writerSectorSize - host/writerSectorSize)
	w.wSetEntry(gc, entryCompressed|sectors<<offBits|uint64(host))
	if w.extL2 {
		w.wSetBitmap(gc, 0) // compressed clusters have no subclusters
	}
	w.allocated++
	// Every host cluster the compressed bytes touch counts one reference.
	w.wGrowRefcounts(last >> w.clusterBits)
	for c := host >> w.clusterBits; c <= last>>w.clusterBits; c++ {
		w.refcounts[c]++
	}
	w.end = host + n
	return nil
}

// wRefcount is the refcount of host cluster c in the data region.
func (w *Writer) wRefcount(c int64) uint16 {
	if w.refcounts == nil {
		return 1 // plain images: every cluster up to the data end is used once
	}
	if c < int64(len(w.refcounts)) {
		return w.refcounts[c]
	}
	return 0
}

// wFinish lays out and writes all metadata, then the header, then fsyncs.
func (w *Writer) wFinish() error {
	if err := w.wFlushCompressed(); err != nil {
		return err
	}
	cs := w.clusterSize
	dataEnd := (w.end + cs - 1) &^ (cs - 1)
	dataClusters := dataEnd / cs

	l1Indexes := make([]int64, 0, len(w.l2))
	for i := range w.l2 {
		l1Indexes = append(l1Indexes, i)
	}
	slices.Sort(l1Indexes)
	nL2 := int64(len(l1Indexes))
	l1Clusters := (w.l1Size*8 + cs - 1) / cs

	// The refcount blocks must count themselves and the table: grow both
	// until they cover the whole file.
	perBlock := cs * 8 / (1 << writerRefcountOrder)
	var nRB, nRT int64
	for {
		total := dataClusters + nL2 + l1Clusters + nRT + nRB
		rb := (total + perBlock - 1) / perBlock
		rt := (rb*8 + cs - 1) / cs
		if rb == nRB && rt == nRT {
			break
		}
		nRB, nRT = rb, rt
	}
	if nRT*cs > maxRefcountTableBytes {
		return fmt.Errorf("%s: refcount table would take %d bytes, over QEMU's %d-byte limit; use a larger cluster size: %w",
			w.name, nRT*cs, maxRefcountTableBytes, ErrWriterTooLarge)
	}
	l2Off := dataEnd
	l1Off := l2Off + nL2*cs
	rtOff := l1Off + l1Clusters*cs
	rbOff := rtOff + nRT*cs
	fileEnd := rbOff + nRB*cs
	totalClusters := fileEnd / cs
	if fileEnd > writerMaxHostOffset {
		return fmt.Errorf("%s: image would end at %#x, past the 56-bit qcow2 limit: %w", w.name, fileEnd, ErrWriterTooLarge)
	}

	out := &writerSeqOut{w: w, off: l2Off, buf: make([]byte, 0, 1<<20)}
	// L2 tables.
	for _, i := range l1Indexes {
		for _, e := range w.l2[i] {
			out.u64(e)
		}
	}
	// L1 table: every L2 table is referenced once, hence COPIED.
	next := l2Off
	for i, j := int64(0), 0; i < l1Clusters*cs/8; i++ {
		var e uint64
		if j < len(l1Indexes) && l1Indexes[j] == i {
			e = uint64(next) | entryCopied
			next += cs
			j++
		}
		out.u64(e)
	}
	// Refcount table.
	for i := int64(0); i < nRT*cs/8; i++ {
		var e uint64
		if i < nRB {
			e = uint64(rbOff + i*cs)
		}
		out.u64(e)
	}
	// Refcount blocks.
	for c := int64(0); c < nRB*perBlock; c++ {
		var rc uint16
		switch {
		case c < dataClusters:
			rc = w.wRefcount(c)
		case c < totalClusters:
			rc = 1
		}
		out.u16(rc)
	}
	if err := out.flush(); err != nil {
		return err
	}
	if out.off != fileEnd {
		return fmt.Errorf("%s: internal error: metadata ends at %#x, expected %#x", w.name, out.off, fileEnd)
	}

	g := writerGeometry{size: w.size, clusterBits: w.clusterBits, l1Size: w.l1Size}
	if w.l1Size == 0 {
		l1Off = 0 // an empty disk has no L1 table, as with qemu-img
	}
	hdr := writerHeaderBytes(w.opts, g, l1Off, rtOff, nRT)
	if _, err := w.f.WriteAt(hdr, 0); err != nil {
		return w.fileErr("writing header", err)
	}
	if w.prealloc > fileEnd {
		if err := w.f.Truncate(fileEnd); err != nil {
			return w.fileErr("trimming preallocated space", err)
		}
	}
	if err := w.f.Sync(); err != nil {
		return w.fileErr("fsync", err)
	}
	return nil
}

// writerSeqOut buffers the sequential metadata writes at Close.
type writerSeqOut struct {
	w   *Writer
	off int64 // file offset of buf[0]
	buf []byte
	err error
}

func (o *writerSeqOut) u64(v uint64) {
	o.buf = binary.BigEndian.AppendUint64(o.buf, v)
	if len(o.buf) == cap(o.buf) {
		o.flush()
	}
}

func (o *writerSeqOut) u16(v uint16) {
	o.buf = binary.BigEndian.AppendUint16(o.buf, v)
	if len(o.buf) == cap(o.buf) {
		o.flush()
	}
}

func (o *writerSeqOut) flush() error {
	if o.err == nil && len(o.buf) > 0 {
		if _, err := o.w.f.WriteAt(o.buf, o.off); err != nil {
			o.err = o.w.fileErr(fmt.Sprintf("writing metadata at %#x", o.off), err)
		}
	}
	o.off += int64(len(o.buf))
	o.buf = o.buf[:0]
	return o.err
}

// writerHeaderBytes encodes the v3 header, its extensions and the backing
// file name (everything that lives in cluster 0).
func writerHeaderBytes(opts WriterOptions, g writerGeometry, l1Off, rtOff, rtClusters int64) []byte {
	h := make([]byte, writerHeaderLen)
	be := binary.BigEndian
	be.PutUint32(h[offMagic:], Magic)
	be.PutUint32(h[offVersion:], 3)
	be.PutUint32(h[offClusterBits:], uint32(g.clusterBits))
	be.PutUint64(h[offSize:], uint64(g.size))
	be.PutUint32(h[offCryptMethod:], cryptNone)
	var incompat uint64
	be.PutUint32(h[offL1Size:], uint32(g.l1Size))
	be.PutUint64(h[offL1TableOffset:], uint64(l1Off))
	be.PutUint64(h[offRefcountTableOffset:], uint64(rtOff))
	be.PutUint32(h[offRefcountTableClusters:], uint32(rtClusters))
	if opts.Compression == "zstd" {
		incompat |= IncompatCompression
		h[offCompressionType] = CompressionZstd
	}
	if opts.ExtendedL2 {
		incompat |= IncompatExtendedL2
	}
	be.PutUint64(h[offIncompatibleFeatures:], incompat)
	be.PutUint32(h[offRefcountOrder:], writerRefcountOrder)
	be.PutUint32(h[offHeaderLength:], writerHeaderLen)

	if opts.BackingFile != "" {
		f := opts.BackingFormat
		h = be.AppendUint32(h, extBackingFormat)
		h = be.AppendUint32(h, uint32(len(f)))
		h = append(h, f...)
		h = append(h, make([]byte, (8-len(f)%8)%8)...)
	}
	h = append(h, make([]byte, 8)...) // end of extensions
	if opts.BackingFile != "" {
		be.PutUint64(h[offBackingFileOffset:], uint64(len(h)))
		be.PutUint32(h[offBackingFileSize:], uint32(len(opts.BackingFile)))
		h = append(h, opts.BackingFile...)
	}
	return h
}

var _ io.WriterAt = (*Writer)(nil)
