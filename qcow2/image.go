package qcow2

import (
	"bytes"
	"container/list"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/klauspost/compress/flate"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/klauspost/compress/zstd"
)

// Options controls Open.
type Options struct {
	Format        string           // "" = detect by magic, "qcow2", "raw"
	MaxChainDepth int              // backing layers allowed below the top image; 0 = 64
	Warn          func(msg string) // one-line warnings (the corrupt bit); nil = discard
	// Note gets the one-line notes: things worth knowing that need no
	// action (probed raw, the dirty bit). A caller that is asked to be
	// quiet drops them and still shows Warn's; nil = Warn.
	Note func(msg string)
	// RefuseCorrupt refuses images whose corrupt bit is set (ErrCorruptBit).
	// By default they are read as QEMU reads them, read-only and with every
	// structural check, after a note through Warn; Info.CorruptMarked says so.
	RefuseCorrupt bool
}

// Info describes one layer of a chain.
type Info struct {
	Path, Format    string
	Version         int    // 2 or 3 (0 for raw)
	ClusterSize     int    // 0 for raw
	VirtualSize     int64  // guest size in bytes
	BackingFile     string // as written in the header
	BackingFormat   string // from the extension, may be ""
	BackingPath     string // resolved path that was opened
	DataFile        string // external data file name, resolved
	RawExternal     bool
	CompressionType string // "deflate" or "zstd"
	ExtendedL2      bool
	RefcountBits    int
	Dirty           bool
	CorruptMarked   bool // the corrupt bit is set: QEMU found the metadata inconsistent once
	LazyRefcounts   bool
	Snapshots       int
	Bitmaps         int
	FileSize        int64
}

// Image is an opened image and, through Backing, the rest of its chain. Its
// methods are safe for concurrent use.
type Image struct {
	path    string
	format  string
	f       *os.File
	size    int64
	info    Info
	backing *Image
	depth   int
	q       *qlayer  // nil for raw
	dmap    *fileMap // the file holding this layer's guest data, mapped on demand (Mapped)
}

const defaultMaxChainDepth = 64

// Open opens the image at path and its whole backing chain.
func Open(path string, opts Options) (*Image, error) {
	if opts.MaxChainDepth <= 0 {
		opts.MaxChainDepth = defaultMaxChainDepth
	}
	if opts.Note == nil {
		opts.Note = opts.Warn
	}
	switch opts.Format {
	case "", "qcow2", "raw":
	default:
		return nil, newErr(path, ErrUnsupportedFormat, "format %q is not supported (qcow2 or raw)", opts.Format)
	}
	im, err := openLayer(path, "", opts.Format, opts, 0, map[fileKey]string{})
	var e *Error
	if err != nil && errors.As(err, &e) && e.Path != path {
		// Name the image the caller asked for, then the layer at fault.
		err = &Error{Path: path, Msg: "in backing chain: " + e.Error(), Err: e.Err}
	}
	if err == nil {
		// Only once the whole chain opened: a refused image gets its error
		// alone.
		for l := im; l != nil; l = l.backing {
			if l.info.CorruptMarked && opts.Warn != nil {
				opts.Warn(l.path + ": warning: image is marked corrupt (incompatible feature bit 1); reading it read-only as QEMU does")
			}
			if l.info.Dirty && opts.Note != nil {
				// Left by a killed VM (lazy refcounts): qemu-img check
				// reports leaks, a read-write open repairs them; the guest
				// data is what QEMU reads, so a note, not a refusal.
				opts.Note(l.path + ": note: image was not closed cleanly (dirty bit; qemu-img check would repair its refcounts); guest data read as QEMU would read it")
			}
		}
	}
	return im, err
}

type fileKey struct{ dev, ino uint64 }

// openLayer opens path (referred to by referrer, "" for the top image) and,
// recursively, its backing files.
func openLayer(path, referrer, format string, opts Options, level int, seen map[fileKey]string) (_ *Image, err error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, &Error{Path: path, Msg: err.Error(), Err: err}
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		k := fileKey{uint64(sys.Dev), uint64(sys.Ino)}
		if prev, dup := seen[k]; dup {
			if prev != path {
				path += " (" + prev + ")"
			}
			return nil, newErr(referrer, ErrBackingLoop, "backing chain loops: backing file %s is already in the chain", path)
		}
		seen[k] = path
	}
	fileSize := st.Size()
	if format == "" {
		if format, err = detect(path, f, fileSize, opts.Note); err != nil {
			return nil, err
		}
	}
	im := &Image{path: path, format: format, f: f, depth: 0}
	im.info = Info{Path: path, Format: format, FileSize: fileSize}
	if format == "raw" {
		// QEMU sees raw files in whole 512-byte sectors; the tail reads as zero.
		im.size = (fileSize + 511) &^ 511
		im.info.VirtualSize = im.size
		im.dmap = newFileMap(f, fileSize)
		return im, nil
	}
	var magic [4]byte
	if n, _ := f.ReadAt(magic[:], 0); n < 4 || be.Uint32(magic[:]) != Magic {
		return nil, badMagic(path, magic[:n])
	}
	h, err := parseHeader(path, f, fileSize)
	if err != nil {
		return nil, err
	}
	if h.corruptMarked() && opts.RefuseCorrupt {
		return nil, newErr(path, ErrCorruptBit, "image is marked corrupt (incompatible feature bit 1); refused (qemu-img check says what is wrong)")
	}
	if err := im.initQcow2(h, fileSize); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && im.q.data != im.f {
			im.q.data.Close()
		}
	}()
	if h.backingName == "" {
		return im, nil
	}
	if level+1 > opts.MaxChainDepth {
		return nil, newErr(path, ErrChainTooDeep, "backing chain deeper than %d layers at backing file %q", opts.MaxChainDepth, h.backingName)
	}
	bpath, err := resolveBacking(path, h.backingName)
	if err != nil {
		return nil, err
	}
	bfmt := ""
	switch strings.ToLower(h.backingFormat) {
	case "":
	case "qcow2", "raw":
		bfmt = strings.ToLower(h.backingFormat)
	default:
		return nil, newErr(path, ErrUnsupportedFormat, "backing file %q has format %q (only qcow2 and raw are read)", h.backingName, h.backingFormat)
	}
	b, err := openLayer(bpath, path, bfmt, opts, level+1, seen)
	if err != nil {
		return nil, err
	}
	im.backing = b
	im.depth = b.depth + 1
	im.info.BackingPath = bpath
	return im, nil
}

// fileKind names what a file that is not regular is; Mode.Type()'s
// "d---------" says it only to those who read ls -l.
func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return "a special file " + m.Type().String()
}

// openRegular opens path for reading after checking that it is a regular
// file: a name from a hostile header must not make us block on a FIFO or
// read a device.
func openRegular(path string) (*os.File, error) {
	st, err := os.Stat(path)
	if err == nil && !st.Mode().IsRegular() {
		return nil, newErr(path, ErrUnsupportedFormat, "not a regular file (%s)", fileKind(st.Mode()))
	}
	if err != nil {
		return nil, &Error{Path: path, Msg: err.Error(), Err: err}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{Path: path, Msg: err.Error(), Err: err}
	}
	return f, nil
}

// resolveBacking turns a backing file name from overlay's header into a
// path: relative names are relative to the overlay's directory; protocol
// names (nbd:, json: ...) are refused unless they name an existing file.
func resolveBacking(overlay, name string) (string, error) {
	p := strings.TrimPrefix(name, "file:")
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(overlay), p)
	}
	if _, err := os.Stat(p); err == nil {
		return p, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", newErr(overlay, err, "backing file %q: %v", name, err)
	}
	if hasProtocol(name) {
		return "", newErr(overlay, ErrProtocolBacking, "backing file %q is a protocol name, not a local file", name)
	}
	return "", newErr(overlay, ErrBackingMissing, "backing file %q (%s) does not exist", name, p)
}

// hasProtocol reports whether name looks like QEMU's "proto:rest": a colon
// before any slash.
func hasProtocol(name string) bool {
	i := strings.IndexByte(name, ':')
	return i > 0 && !strings.Contains(name[:i], "/")
}

// initQcow2 sets up the mapping state of a qcow2 layer from its header.
func (im *Image) initQcow2(h *header, fileSize int64) error {
	cs := h.clusterSize()
	q := &qlayer{
		path:        im.path,
		clusterBits: h.clusterBits,
		clusterSize: cs,
		l2Entries:   h.l2Entries(),
		extL2:       h.extendedL2(),
		version:     h.version,
		zstd:        h.compressionType == CompressionZstd,
		meta:        im.f,
		data:        im.f,
		dataSize:    fileSize,
		fileSize:    fileSize,
	}
	q.cache = newLRU[[]uint64](max(minCachedL2Tables, min(maxCachedL2Tables, int(l2CacheBytes/cs))))
	q.clusters = newLRU[[]byte](max(minCachedClusters, min(maxCachedClusters, int(clusterCacheBytes/cs))))
	// The L1 table is bounded by the header checks (<= 32 MiB, inside the file).
	raw := make([]byte, int64(h.l1Size)*8)
	if _, err := im.f.ReadAt(raw, int64(h.l1Off)); err != nil {
		return ioErr(im.path, err, "L1 table")
	}
	q.l1 = make([]uint64, h.l1Size)
	for i := range q.l1 {
		q.l1[i] = be.Uint64(raw[i*8:])
	}
	info := &im.info
	info.Version = h.version
	info.ClusterSize = int(cs)
	// QEMU counts a qcow2 guest in whole 512-byte sectors and drops a
	// partial last one (qcow2_do_open); qemu-img info and convert agree.
	info.VirtualSize = int64(h.size) &^ 511
	info.BackingFile = h.backingName
	info.BackingFormat = h.backingFormat
	info.RawExternal = h.autoclear&AutoclearRawExternal != 0
	info.CompressionType = "deflate"
	if q.zstd {
		info.CompressionType = "zstd"
	}
	info.ExtendedL2 = q.extL2
	info.RefcountBits = 1 << h.refcountOrder
	info.Dirty = h.incompat&IncompatDirty != 0
	info.CorruptMarked = h.corruptMarked()
	info.LazyRefcounts = h.compat&CompatLazyRefcounts != 0
	info.Snapshots = int(h.nbSnapshots)
	info.Bitmaps = h.bitmaps
	im.size = info.VirtualSize
	if h.dataFile != "" {
		dp := h.dataFile
		if !filepath.IsAbs(dp) {
			// Relative to the image's directory (qemu-img 7.2 uses its working
			// directory; we do not copy that quirk).
			dp = filepath.Join(filepath.Dir(im.path), dp)
		}
		info.DataFile = dp
		df, err := openRegular(dp)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return newErr(im.path, ErrBackingMissing, "external data file %q (%s) does not exist", h.dataFile, dp)
			}
			return newErr(im.path, errors.Unwrap(err), "external data file %q: %v", h.dataFile, err)
		}
		st, err := df.Stat()
		if err != nil {
			df.Close()
			return newErr(im.path, err, "external data file %q: %v", h.dataFile, err)
		}
		q.data, q.dataSize, q.external = df, st.Size(), true
	} else {
		q.metaPrealloc = looksPreallocated(im.f, fileSize, cs)
	}
	im.q = q
	im.dmap = newFileMap(q.data, q.dataSize)
	return nil
}

// looksPreallocated mirrors QEMU's metadata-preallocation heuristic: when the
// file is much larger than what it occupies on disk, host clusters that are
// holes read as zero, and extents report them as such.
func looksPreallocated(f *os.File, fileSize, cs int64) bool {
	st, err := f.Stat()
	if err != nil {
		return false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	real := sys.Blocks * 512 / cs
	threshold := max(real*10/9, real+2)
	return fileSize/cs > threshold
}

// Size is the virtual (guest) size in bytes.
func (im *Image) Size() int64 { return im.size }

// Path is the path the image was opened with.
func (im *Image) Path() string { return im.path }

// Format is "qcow2" or "raw".
func (im *Image) Format() string { return im.format }

// Info describes this layer only.
func (im *Image) Info() Info { return im.info }

// Backing is the next layer down, nil at the base.
func (im *Image) Backing() *Image { return im.backing }

// Depth is the number of layers below this one.
func (im *Image) Depth() int { return im.depth }

// Close closes every file of the chain.
func (im *Image) Close() error {
	var first error
	for l := im; l != nil; l = l.backing {
		if l.dmap != nil {
			if err := l.dmap.close(); err != nil && first == nil {
				first = err
			}
		}
		if l.q != nil && l.q.data != l.f {
			if err := l.q.data.Close(); err != nil && first == nil {
				first = err
			}
		}
		if err := l.f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// ReadAt reads guest bytes through the whole chain. Reads past Size return
// io.EOF, like a file.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, newErr(im.path, nil, "read at negative offset %d", off)
	}
	if off >= im.size {
		return 0, io.EOF
	}
	n := len(p)
	var eof error
	if int64(n) > im.size-off {
		n = int(im.size - off)
		eof = io.EOF
	}
	if err := im.read(p[:n], off); err != nil {
		return 0, err
	}
	return n, eof
}

// read fills p from guest offset off of this layer; the part of p past the
// layer's size reads as zero (a backing file smaller than its overlay).
func (im *Image) read(p []byte, off int64) error {
	if off >= im.size {
		clear(p)
		return nil
	}
	if int64(len(p)) > im.size-off {
		clear(p[im.size-off:])
		p = p[:im.size-off]
	}
	if im.q == nil {
		return readFull(im.path, im.f, p, off, im.size)
	}
	q := im.q
	for len(p) > 0 {
		s, err := q.lookup(off, int64(len(p)))
		if err != nil {
			return err
		}
		chunk := p[:s.n]
		switch s.kind {
		case segUnalloc:
			if im.backing == nil {
				clear(chunk)
			} else if err := im.backing.read(chunk, off); err != nil {
				return err
			}
		case segZero:
			clear(chunk)
		case segData:
			size := q.dataSize
			if !q.external {
				size = q.fileSize
			}
			if err := readFull(q.dataPath(), q.data, chunk, s.host, size); err != nil {
				return err
			}
		case segCompressed:
			if err := q.readCompressed(chunk, off, s.l2e); err != nil {
				return err
			}
		}
		p = p[s.n:]
		off += s.n
	}
	return nil
}

// readFull preads p at off; bytes past size (the end of the file) read as
// zero, as QEMU does for short host files.
func readFull(path string, f *os.File, p []byte, off, size int64) error {
	if off >= size {
		clear(p)
		return nil
	}
	n := len(p)
	if int64(n) > size-off {
		n = int(size - off)
		clear(p[n:])
	}
	m, err := f.ReadAt(p[:n], off)
	if err == io.EOF {
		clear(p[m:n]) // the file shrank under us
		err = nil
	}
	if err != nil {
		return newErr(path, err, "reading %d bytes at %#x: %v", n, off, err)
	}
	return nil
}

// qlayer is the cluster mapping of one qcow2 file.
type qlayer struct {
	path         string
	clusterBits  uint32
	clusterSize  int64
	l2Entries    int64
	extL2        bool
	version      int
	zstd         bool
	l1           []uint64
	cache        *lru[[]uint64] // L2 tables by host offset
	clusters     *lru[[]byte]   // decompressed clusters by L2 entry
	meta         *os.File       // the qcow2 file: header and tables
	data         *os.File       // where guest clusters live: the image or its data file
	dataSize     int64
	external     bool
	metaPrealloc bool
	fileSize     int64
}

func (q *qlayer) dataPath() string {
	if q.external {
		return q.data.Name()
	}
	return q.path
}

type segKind uint8

const (
	segUnalloc    segKind = iota // falls through to the backing file
	segZero                      // reads as zero, decided by this layer
	segData                      // plain cluster data at host
	segCompressed                // one compressed cluster (l2e is its entry)
)

// seg is a run of guest bytes with one status in one layer.
type seg struct {
	kind segKind
	n    int64
	host int64  // segData, and segZero when alloc: host offset of the first byte
	l2e  uint64 // segCompressed: the L2 entry
	// alloc: a segZero whose cluster keeps its host cluster (QEMU's
	// ZERO_ALLOC, what zero writes leave in a data_file_raw image);
	// qemu-img map gives its offset.
	alloc bool
}

// lookup returns the run starting at guest offset off (at most n bytes) of
// uniform status. Runs do not cross L2 tables, compressed runs are one
// cluster at most.
func (q *qlayer) lookup(off, n int64) (seg, error) {
	cs := q.clusterSize
	cluster := off >> q.clusterBits
	l1i := cluster / q.l2Entries
	tableEnd := (l1i + 1) * q.l2Entries << q.clusterBits // guest end of this L2 table
	if tableEnd-off < n {
		n = tableEnd - off
	}
	if l1i >= int64(len(q.l1)) {
		return seg{kind: segUnalloc, n: n}, nil
	}
	l1e := q.l1[l1i]
	if l1e&l1ReservedMask != 0 {
		return seg{}, newErr(q.path, ErrCorrupt, "L1 entry %d (%#x) has reserved bits set", l1i, l1e)
	}
	l2off := int64(l1e & offsetMask)
	if l2off == 0 {
		return seg{kind: segUnalloc, n: n}, nil
	}
	table, err := q.l2Table(l2off, l1i)
	if err != nil {
		return seg{}, err
	}
	var out seg
	var got int64
	for got < n {
		pos := off + got
		i := (pos >> q.clusterBits) % q.l2Entries
		s, err := q.piece(table, i, pos, pos&(cs-1))
		if err != nil {
			return seg{}, err
		}
		if s.n > n-got {
			s.n = n - got
		}
		if got == 0 {
			out = s
		} else if s.kind != out.kind || s.kind == segCompressed ||
			(s.kind == segData && s.host != out.host+out.n) ||
			(s.kind == segZero && (s.alloc != out.alloc || s.alloc && s.host != out.host+out.n)) {
			break
		} else {
			out.n += s.n
		}
		got += s.n
		if out.kind == segCompressed {
			break
		}
	}
	return out, nil
}

// piece decodes L2 entry i of table for the guest byte pos (inco bytes into
// its cluster) and returns the status from pos to the end of the cluster
// (or of the run of equal subclusters).
func (q *qlayer) piece(table []uint64, i, pos, inco int64) (seg, error) {
	cs := q.clusterSize
	stride := int64(1)
	if q.extL2 {
		stride = 2
	}
	e := table[i*stride]
	rest := cs - inco
	corrupt := func(format string, args ...any) (seg, error) {
		return seg{}, newErr(q.path, ErrCorrupt, "L2 entry for guest offset %#x (%#x): "+format, append([]any{pos &^ (cs - 1), e}, args...)...)
	}
	if e&entryCompressed != 0 {
		if q.external {
			return corrupt("compressed cluster in an image with an external data file")
		}
		return seg{kind: segCompressed, n: rest, l2e: e}, nil
	}
	if e&l2ReservedMask != 0 {
		return corrupt("reserved bits set")
	}
	host := int64(e & offsetMask)
	if host&(cs-1) != 0 {
		return corrupt("host offset %#x not aligned to the cluster size %#x", host, cs)
	}
	allocated := host != 0 || (q.external && e&entryCopied != 0)
	pastEOF := allocated && !q.external && host >= q.fileSize
	if !q.extL2 {
		if e&entryZero != 0 {
			if q.version < 3 {
				return corrupt("zero flag in a version 2 image")
			}
			if allocated {
				return seg{kind: segZero, n: rest, host: host + inco, alloc: true}, nil
			}
			return seg{kind: segZero, n: rest}, nil
		}
		if !allocated {
			return seg{kind: segUnalloc, n: rest}, nil
		}
		if pastEOF {
			return corrupt("host cluster %#x past end of file (size %#x)", host, q.fileSize)
		}
		return seg{kind: segData, n: rest, host: host + inco}, nil
	}
	bm := table[i*2+1]
	allocBits, zeroBits := uint32(bm), uint32(bm>>32)
	if allocBits&zeroBits != 0 {
		return corrupt("subcluster bitmap %#x marks subclusters both allocated and zero", bm)
	}
	if !allocated && allocBits != 0 {
		return corrupt("subcluster bitmap %#x allocates subclusters of an unallocated cluster", bm)
	}
	sub := cs / subclustersPerCluster
	first := inco / sub
	status := func(k int64) segKind {
		switch {
		case allocBits&(1<<k) != 0:
			return segData
		case zeroBits&(1<<k) != 0:
			return segZero
		}
		return segUnalloc
	}
	kind := status(first)
	last := first + 1
	for last < subclustersPerCluster && status(last) == kind {
		last++
	}
	s := seg{kind: kind, n: last*sub - inco}
	if kind == segZero && allocated {
		s.host, s.alloc = host+inco, true
	}
	if kind == segData {
		if pastEOF {
			return corrupt("host cluster %#x past end of file (size %#x)", host, q.fileSize)
		}
		s.host = host + inco
	}
	return s, nil
}

// l2Table returns the decoded L2 table at host offset off, from the cache
// or the file. Cached tables are never modified.
func (q *qlayer) l2Table(off, l1i int64) ([]uint64, error) {
	if t, ok := q.cache.get(off); ok {
		return t, nil
	}
	cs := q.clusterSize
	if off&(cs-1) != 0 {
		return nil, newErr(q.path, ErrCorrupt, "L2 table %d at %#x not aligned to the cluster size %#x", l1i, off, cs)
	}
	if off > q.fileSize-cs {
		return nil, newErr(q.path, ErrCorrupt, "L2 table %d at %#x points past end of file (size %#x)", l1i, off, q.fileSize)
	}
	buf := make([]byte, cs)
	if _, err := q.meta.ReadAt(buf, off); err != nil {
		return nil, ioErr(q.path, err, fmt.Sprintf("L2 table at %#x", off))
	}
	t := make([]uint64, cs/8)
	for i := range t {
		t[i] = be.Uint64(buf[i*8:])
	}
	q.cache.put(off, t)
	return t, nil
}

// lru is a small mutex-guarded LRU cache; cached values are never
// modified, so readers share them.
type lru[V any] struct {
	mu    sync.Mutex
	max   int
	ll    *list.List
	items map[int64]*list.Element
}

type lruItem[V any] struct {
	key int64
	val V
}

func newLRU[V any](n int) *lru[V] {
	return &lru[V]{max: n, ll: list.New(), items: map[int64]*list.Element{}}
}

func (c *lru[V]) get(key int64) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[key]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*lruItem[V]).val, true
	}
	var zero V
	return zero, false
}

func (c *lru[V]) put(key int64, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[key]; ok {
		return
	}
	c.items[key] = c.ll.PushFront(&lruItem[V]{key, v})
	for c.ll.Len() > c.max {
		e := c.ll.Back()
		c.ll.Remove(e)
		delete(c.items, e.Value.(*lruItem[V]).key)
	}
}

// Cache budgets per layer: decoded L2 tables, and decompressed clusters
// (so reads smaller than a compressed cluster do not decompress it again).
const (
	l2CacheBytes      = 8 << 20
	clusterCacheBytes = 4 << 20
	minCachedL2Tables = 8
	maxCachedL2Tables = 4096
	minCachedClusters = 4
	maxCachedClusters = 256
)

// Compressed clusters.

var flatePool sync.Pool // io.ReadCloser implementing flate.Resetter

// inPool holds buffers for compressed input (at most two clusters).
var inPool = sync.Pool{New: func() any { b := []byte(nil); return &b }}

var (
	zstdOnce sync.Once
	zstdDec  *zstd.Decoder
	zstdErr  error
)

// zstdDecoder is shared by all images: DecodeAll is safe for concurrent use.
// Its memory is capped at the largest cluster size, which bounds what a
// hostile frame can make it allocate.
func zstdDecoder() (*zstd.Decoder, error) {
	zstdOnce.Do(func() {
		zstdDec, zstdErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0),
			zstd.WithDecoderMaxMemory(1<<maxClusterBits),
			zstd.WithDecoderMaxWindow(1<<maxClusterBits))
	})
	return zstdDec, zstdErr
}

// compressedExtent decodes a compressed cluster descriptor into host offset
// and the number of bytes to read.
func (q *qlayer) compressedExtent(e uint64) (host, size int64) {
	x := 62 - (q.clusterBits - 8)
	host = int64(e & (1<<x - 1))
	sectors := int64((e>>x)&(1<<(q.clusterBits-8)-1)) + 1
	size = sectors*compressedSectorSize - host&(compressedSectorSize-1)
	return host, size
}

// readCompressed fills p (guest offset off, inside one cluster) from the
// compressed cluster described by L2 entry e.
func (q *qlayer) readCompressed(p []byte, off int64, e uint64) error {
	cs := q.clusterSize
	guest := off &^ (cs - 1)
	if c, ok := q.clusters.get(int64(e)); ok {
		copy(p, c[off-guest:])
		return nil
	}
	host, size := q.compressedExtent(e)
	if host >= 1<<56 {
		return newErr(q.path, ErrCorrupt, "compressed cluster for guest offset %#x: host offset %#x beyond 2^56", guest, host)
	}
	if host >= q.fileSize {
		return newErr(q.path, ErrCorrupt, "compressed cluster for guest offset %#x at %#x past end of file (size %#x)", guest, host, q.fileSize)
	}
	// QEMU tolerates the last compressed cluster's sectors running past EOF.
	if size > q.fileSize-host {
		size = q.fileSize - host
	}
	bp := inPool.Get().(*[]byte)
	defer inPool.Put(bp)
	if int64(cap(*bp)) < size {
		*bp = make([]byte, 2*cs) // the largest compressed size for this cluster size
	}
	in := (*bp)[:size]
	if _, err := q.data.ReadAt(in, host); err != nil && err != io.EOF {
		return ioErr(q.path, err, fmt.Sprintf("compressed cluster at %#x", host))
	}
	out := make([]byte, cs)
	if err := q.decompress(out, in); err != nil {
		return newErr(q.path, ErrCorrupt, "compressed cluster for guest offset %#x at %#x (%d bytes): %v", guest, host, size, err)
	}
	q.clusters.put(int64(e), out)
	copy(p, out[off-guest:])
	return nil
}

// decompress fills out exactly from in, with QEMU's rules: deflate may
// stop once out is full; zstd frames must end exactly when out is full.
func (q *qlayer) decompress(out, in []byte) error {
	if !q.zstd {
		var r io.ReadCloser
		if v := flatePool.Get(); v != nil {
			r = v.(io.ReadCloser)
			if err := r.(flate.Resetter).Reset(bytes.NewReader(in), nil); err != nil {
				return err
			}
		} else {
			r = flate.NewReader(bytes.NewReader(in))
		}
		defer flatePool.Put(r)
		if _, err := io.ReadFull(r, out); err != nil {
			if err == io.ErrUnexpectedEOF || err == io.EOF {
				return fmt.Errorf("deflate data ends before a full cluster")
			}
			return fmt.Errorf("deflate: %v", err)
		}
		return nil
	}
	dec, err := zstdDecoder()
	if err != nil {
		return err
	}
	got := 0
	for got < len(out) {
		frame, rest, err := nextZstdFrame(in)
		if err != nil {
			return fmt.Errorf("zstd: %v after %d of %d bytes", err, got, len(out))
		}
		in = rest
		if frame == nil {
			continue // skippable frame
		}
		dst, err := dec.DecodeAll(frame, out[got:got:len(out)])
		if err != nil {
			return fmt.Errorf("zstd: %v", err)
		}
		if len(dst) > len(out)-got || (len(dst) > 0 && &dst[0] != &out[got]) {
			return fmt.Errorf("zstd data decompresses to more than a cluster (%d bytes)", len(out))
		}
		got += len(dst)
	}
	return nil
}

// nextZstdFrame splits the first zstd frame off in by walking its block
// headers (QEMU stops at the frame that fills the cluster, so the bytes
// after it — padding or the next cluster — must not be decoded). A
// skippable frame returns a nil frame.
func nextZstdFrame(in []byte) (frame, rest []byte, err error) {
	if len(in) < 4 {
		return nil, nil, fmt.Errorf("data ends before a full cluster")
	}
	magic := binary.LittleEndian.Uint32(in)
	if magic&0xfffffff0 == 0x184d2a50 {
		if len(in) < 8 {
			return nil, nil, fmt.Errorf("truncated skippable frame")
		}
		n := uint64(binary.LittleEndian.Uint32(in[4:]))
		if n > uint64(len(in)-8) {
			return nil, nil, fmt.Errorf("truncated skippable frame")
		}
		return nil, in[8+n:], nil
	}
	if magic != 0xfd2fb528 {
		return nil, nil, fmt.Errorf("bad frame magic %#x", magic)
	}
	if len(in) < 5 {
		return nil, nil, fmt.Errorf("truncated frame header")
	}
	fhd := in[4]
	pos := 5
	single := fhd&0x20 != 0
	if !single {
		pos++ // window descriptor
	}
	pos += [4]int{0, 1, 2, 4}[fhd&3] // dictionary ID
	fcs := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcs == 0 && single {
		fcs = 1
	}
	pos += fcs
	for {
		if pos+3 > len(in) {
			return nil, nil, fmt.Errorf("truncated frame")
		}
		bh := uint32(in[pos]) | uint32(in[pos+1])<<8 | uint32(in[pos+2])<<16
		pos += 3
		size := int(bh >> 3)
		switch (bh >> 1) & 3 {
		case 1: // RLE block: one byte
			size = 1
		case 3:
			return nil, nil, fmt.Errorf("reserved block type")
		}
		if size > len(in)-pos {
			return nil, nil, fmt.Errorf("truncated frame")
		}
		pos += size
		if bh&1 != 0 {
			break
		}
	}
	if fhd&0x04 != 0 {
		pos += 4 // content checksum
	}
	if pos > len(in) {
		return nil, nil, fmt.Errorf("truncated frame")
	}
	return in[:pos], in[pos:], nil
}
