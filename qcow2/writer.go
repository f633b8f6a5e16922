package qcow2

// # Writer layout
//
// A Writer produces a qcow2 v3 image (refcount_order 4, no snapshots, no
// extended L2 entries) laid out as:
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
	"math"
	"math/bits"
	"os"
	"slices"
	"strings"
	"sync"

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
}

// Writer writes a sparse qcow2 v3 image. See the layout comment at the top of
// writer.go. It is safe for concurrent use, but writes are serialized.
type Writer struct {
	mu   sync.Mutex
	f    *os.File
	name string
	opts WriterOptions

	size        int64
	clusterBits uint
	clusterSize int64
	l2Entries   int64 // entries per L2 table
	l1Size      int64
	backing     bool
	compress    bool

	l2        map[int64][]uint64 // L1 index -> L2 table, created on first use
	end       int64              // host offset where the next data byte goes
	refcounts []uint16           // per host cluster; only kept for compressed images
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

	// One L1 entry maps cs/8 clusters.
	perL1 := int64(cs) * int64(cs/8)
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
	w := &Writer{
		f:           f,
		name:        name,
		opts:        opts,
		size:        g.size,
		clusterBits: g.clusterBits,
		clusterSize: cs,
		l2Entries:   cs / 8,
		l1Size:      g.l1Size,
		backing:     opts.BackingFile != "",
		compress:    opts.Compression != "",
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
// cluster allocates nothing (with a backing file it marks the cluster as
// reading zero). See the layout comment for what the unwritten bytes of a
// touched cluster read as.
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

// WriteZeroes makes [off, off+length) read as zero. Whole clusters get the
// v3 zero flag without a host cluster when there is a backing file (and
// nothing at all without one, as unallocated clusters already read zero);
// a whole cluster that already has a host cluster is overwritten with zeros;
// partial clusters get zero bytes written (see WriteAt).
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
		var err error
		if in == 0 && (k == w.clusterSize || off+k == w.size) {
			err = w.wZeroCluster(gc)
		} else {
			err = w.wWrite(w.zero[:k], off)
		}
		if err != nil {
			w.wFailUnlessRefused(err)
			return err
		}
		off += k
		length -= k
	}
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
	if err == nil {
		err = w.wFinish()
	}
	if w.zenc != nil {
		w.zenc.Close()
	}
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("%s: %w", w.name, cerr)
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

func (w *Writer) wEntry(gc int64) uint64 {
	t := w.l2[gc/w.l2Entries]
	if t == nil {
		return 0
	}
	return t[gc%w.l2Entries]
}

func (w *Writer) wSetEntry(gc int64, e uint64) {
	i := gc / w.l2Entries
	t := w.l2[i]
	if t == nil {
		t = make([]uint64, w.l2Entries)
		w.l2[i] = t
	}
	t[gc%w.l2Entries] = e
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
		_, err := w.f.WriteAt(run, runHost)
		run = nil
		if err != nil {
			return fmt.Errorf("%s: %w", w.name, err)
		}
		return nil
	}
	start := 0
	for start < len(p) {
		gc, in := off>>w.clusterBits, off&(w.clusterSize-1)
		k := int(min(w.clusterSize-in, int64(len(p)-start)))
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
	case e&offsetMask != 0:
		return int64(e&offsetMask) + in, nil
	}
	// Unallocated or zero-flagged: the rest of the cluster reads as zero.
	if w.wIsZero(piece) {
		if w.backing {
			w.wSetEntry(gc, entryZero)
		}
		return -1, nil
	}
	if w.compress {
		if err := w.wFlushCompressed(); err != nil {
			return -1, err
		}
		clear(w.buf)
		copy(w.buf[in:], piece)
		w.cur = gc
		return -1, nil
	}
	host, err := w.wAllocCluster(gc)
	if err != nil {
		return -1, err
	}
	return host + in, nil
}

// wAllocCluster appends a host cluster for guest cluster gc.
func (w *Writer) wAllocCluster(gc int64) (int64, error) {
	host := (w.end + w.clusterSize - 1) &^ (w.clusterSize - 1)
	if host+w.clusterSize > writerMaxHostOffset {
		return -1, fmt.Errorf("%s: data reaches host offset %#x, past the 56-bit qcow2 limit: %w", w.name, host, ErrWriterTooLarge)
	}
	w.end = host + w.clusterSize
	w.wSetEntry(gc, uint64(host)|entryCopied)
	w.allocated++
	if w.refcounts != nil {
		w.wGrowRefcounts(host >> w.clusterBits)
		w.refcounts[host>>w.clusterBits] = 1
	}
	return host, nil
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
			return fmt.Errorf("%s: %w", w.name, err)
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
		if w.backing {
			w.wSetEntry(gc, entryZero)
		}
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
			return fmt.Errorf("%s: %w", w.name, err)
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
		return fmt.Errorf("%s: %w", w.name, err)
	}
	// Additional sectors beyond the one holding the first byte.
	sectors := uint64(last/writerSectorSize - host/writerSectorSize)
	w.wSetEntry(gc, entryCompressed|sectors<<offBits|uint64(host))
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
		return fmt.Errorf("%s: writing header: %w", w.name, err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("%s: fsync: %w", w.name, err)
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
			o.err = fmt.Errorf("%s: writing metadata at %#x: %w", o.w.name, o.off, err)
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
	be.PutUint32(h[offL1Size:], uint32(g.l1Size))
	be.PutUint64(h[offL1TableOffset:], uint64(l1Off))
	be.PutUint64(h[offRefcountTableOffset:], uint64(rtOff))
	be.PutUint32(h[offRefcountTableClusters:], uint32(rtClusters))
	if opts.Compression == "zstd" {
		be.PutUint64(h[offIncompatibleFeatures:], IncompatCompression)
		h[offCompressionType] = CompressionZstd
	}
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
