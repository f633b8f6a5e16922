package qcow2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"sort"
	"strings"
)

// header is a parsed and validated qcow2 header with its extensions.
type header struct {
	version         int
	backingOff      uint64
	backingLen      uint32
	clusterBits     uint32
	size            uint64
	cryptMethod     uint32
	l1Size          uint32
	l1Off           uint64
	rtOff           uint64
	rtClusters      uint32
	nbSnapshots     uint32
	snapshotsOff    uint64
	incompat        uint64
	compat          uint64
	autoclear       uint64
	refcountOrder   uint32
	headerLen       uint32
	compressionType uint8

	backingName   string
	backingFormat string
	dataFile      string
	featureNames  map[[2]byte]string // (type, bit) -> name
	bitmaps       int
}

func (h *header) clusterSize() int64 { return 1 << h.clusterBits }

func (h *header) extendedL2() bool { return h.incompat&IncompatExtendedL2 != 0 }

func (h *header) corruptMarked() bool { return h.incompat&IncompatCorrupt != 0 }

// l2Entries is the number of entries in one L2 table.
func (h *header) l2Entries() int64 {
	if h.extendedL2() {
		return h.clusterSize() / 16
	}
	return h.clusterSize() / 8
}

var be = binary.BigEndian

// parseHeader reads and validates the header of the qcow2 file f (whose
// magic was already checked). Every size and offset is checked against the
// file size before anything is allocated from it.
func parseHeader(path string, f *os.File, fileSize int64) (*header, error) {
	corrupt := func(format string, args ...any) error {
		return newErr(path, ErrCorrupt, format, args...)
	}
	if fileSize < headerV2Len {
		return nil, corrupt("file is %d bytes, shorter than a qcow2 header (%d bytes)", fileSize, headerV2Len)
	}
	var fixed [headerV3CompressionTypeLen]byte
	n := int64(len(fixed))
	if fileSize < n {
		n = fileSize
	}
	if _, err := f.ReadAt(fixed[:n], 0); err != nil {
		return nil, ioErr(path, err, "header")
	}
	h := &header{
		version:      int(be.Uint32(fixed[offVersion:])),
		backingOff:   be.Uint64(fixed[offBackingFileOffset:]),
		backingLen:   be.Uint32(fixed[offBackingFileSize:]),
		clusterBits:  be.Uint32(fixed[offClusterBits:]),
		size:         be.Uint64(fixed[offSize:]),
		cryptMethod:  be.Uint32(fixed[offCryptMethod:]),
		l1Size:       be.Uint32(fixed[offL1Size:]),
		l1Off:        be.Uint64(fixed[offL1TableOffset:]),
		rtOff:        be.Uint64(fixed[offRefcountTableOffset:]),
		rtClusters:   be.Uint32(fixed[offRefcountTableClusters:]),
		nbSnapshots:  be.Uint32(fixed[offNbSnapshots:]),
		snapshotsOff: be.Uint64(fixed[offSnapshotsOffset:]),
	}
	switch h.version {
	case 2:
		h.refcountOrder = 4
		h.headerLen = headerV2Len
	case 3:
		if fileSize < headerV3Len {
			return nil, corrupt("file is %d bytes, shorter than a version 3 header (%d bytes)", fileSize, headerV3Len)
		}
		h.incompat = be.Uint64(fixed[offIncompatibleFeatures:])
		h.compat = be.Uint64(fixed[offCompatibleFeatures:])
		h.autoclear = be.Uint64(fixed[offAutoclearFeatures:])
		h.refcountOrder = be.Uint32(fixed[offRefcountOrder:])
		h.headerLen = be.Uint32(fixed[offHeaderLength:])
	case qcowVersion1:
		// Same magic, another format: name it as QEMU does.
		return nil, newErr(path, ErrUnsupportedFormat, "qcow (the legacy version 1 format, not qcow2) image; only qcow2 and raw are read (convert it with qemu-img convert -O qcow2)")
	default:
		return nil, newErr(path, ErrUnsupportedFormat, "qcow2 version %d is not supported (only 2 and 3)", h.version)
	}
	if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
		return nil, corrupt("cluster_bits %d out of range %d..%d", h.clusterBits, minClusterBits, maxClusterBits)
	}
	cs := h.clusterSize()
	if h.version == 3 {
		if h.headerLen < headerV3Len || h.headerLen%8 != 0 {
			return nil, corrupt("header_length %d invalid (at least %d, multiple of 8)", h.headerLen, headerV3Len)
		}
		if int64(h.headerLen) > cs {
			return nil, corrupt("header_length %d larger than the cluster size %d", h.headerLen, cs)
		}
		if int64(h.headerLen) > fileSize {
			return nil, corrupt("header_length %d past end of file (size %d)", h.headerLen, fileSize)
		}
		if h.headerLen > offCompressionType {
			h.compressionType = fixed[offCompressionType]
		}
	}
	if h.refcountOrder > 6 {
		return nil, corrupt("refcount_order %d larger than 6", h.refcountOrder)
	}

	// The extension area and the backing name live in the first cluster.
	first := cs
	if fileSize < first {
		first = fileSize
	}
	buf := make([]byte, first)
	if _, err := f.ReadAt(buf, 0); err != nil {
		return nil, ioErr(path, err, "first cluster")
	}
	if err := h.parseExtensions(path, buf, cs); err != nil {
		return nil, err
	}

	// Feature bits: unknown incompatible bits first (they may change the
	// meaning of everything else). The corrupt bit is the caller's choice
	// (Options.RefuseCorrupt): QEMU still opens such images read-only, and
	// every check below applies to them as to any image.
	if unknown := h.incompat &^ incompatKnown; unknown != 0 {
		return nil, newErr(path, ErrUnknownFeature, "unknown incompatible feature bits: %s", h.featureList(0, unknown))
	}
	if h.cryptMethod != cryptNone {
		name := map[uint32]string{cryptAES: "AES", cryptLUKS: "LUKS"}[h.cryptMethod]
		if name == "" {
			name = fmt.Sprintf("unknown method %d", h.cryptMethod)
		}
		return nil, newErr(path, ErrEncrypted, "image is encrypted (%s); decrypt it with qemu-img convert first", name)
	}
	if h.incompat&IncompatCompression != 0 {
		if h.headerLen <= offCompressionType {
			return nil, corrupt("compression type bit set but header_length %d has no compression_type field", h.headerLen)
		}
		if h.compressionType == CompressionDeflate {
			return nil, corrupt("compression type bit set but compression_type is 0 (deflate)")
		}
	} else if h.compressionType != CompressionDeflate {
		return nil, corrupt("compression_type %d without the compression type feature bit", h.compressionType)
	}
	if h.compressionType > CompressionZstd {
		return nil, newErr(path, ErrUnknownFeature, "unknown compression_type %d", h.compressionType)
	}
	if h.extendedL2() && h.clusterBits < minClusterBitsExtL2 {
		return nil, corrupt("extended L2 entries need cluster_bits >= %d, have %d", minClusterBitsExtL2, h.clusterBits)
	}
	if h.incompat&IncompatExternalData == 0 {
		// A data file name without the feature bit is not used: guest data
		// lives in the image itself.
		h.dataFile = ""
		if h.autoclear&AutoclearRawExternal != 0 {
			// QEMU clears this autoclear bit in this case; reading is unaffected.
			h.autoclear &^= AutoclearRawExternal
		}
	} else if h.dataFile == "" {
		return nil, corrupt("external data file feature bit set but the image names no data file")
	}

	// Virtual size and the active L1 table.
	if h.size > uint64(maxVirtualSize) {
		return nil, corrupt("virtual size %d too large", h.size)
	}
	if uint64(h.l1Size)*8 > maxL1Bytes {
		return nil, corrupt("L1 table has %d entries, more than QEMU's limit of %d", h.l1Size, maxL1Bytes/8)
	}
	perL1 := uint64(cs) * uint64(h.l2Entries()) // bytes covered by one L1 entry (<= 2^39)
	need := (h.size + perL1 - 1) / perL1
	if need > uint64(h.l1Size) {
		return nil, corrupt("L1 table has %d entries, virtual size %d needs %d", h.l1Size, h.size, need)
	}
	if err := checkTable(path, "L1 table", h.l1Off, uint64(h.l1Size)*8, cs, fileSize); err != nil {
		return nil, err
	}
	if uint64(h.rtClusters)*uint64(cs) > maxRefcountTableBytes {
		return nil, corrupt("refcount table of %d clusters larger than QEMU's limit of %d bytes", h.rtClusters, maxRefcountTableBytes)
	}
	if err := checkTable(path, "refcount table", h.rtOff, uint64(h.rtClusters)*uint64(cs), cs, fileSize); err != nil {
		return nil, err
	}
	if h.nbSnapshots > maxSnapshots {
		return nil, corrupt("%d snapshots, more than QEMU's limit of %d", h.nbSnapshots, maxSnapshots)
	}
	if err := checkTable(path, "snapshot table", h.snapshotsOff, uint64(h.nbSnapshots)*snapshotHeaderLen, cs, fileSize); err != nil {
		return nil, err
	}
	if err := h.checkSnapshots(path, f, fileSize); err != nil {
		return nil, err
	}

	// Backing file name: inside the first cluster, at most 1023 bytes.
	if h.backingOff != 0 {
		if h.backingLen > maxBackingNameLen {
			return nil, corrupt("backing file name is %d bytes, longer than %d", h.backingLen, maxBackingNameLen)
		}
		if h.backingOff >= uint64(cs) || uint64(h.backingLen) > uint64(cs)-h.backingOff {
			return nil, corrupt("backing file name at offset %d (%d bytes) is outside the first cluster", h.backingOff, h.backingLen)
		}
		end := h.backingOff + uint64(h.backingLen)
		if end > uint64(len(buf)) {
			return nil, corrupt("backing file name at offset %d (%d bytes) past end of file (size %d)", h.backingOff, h.backingLen, fileSize)
		}
		h.backingName = cName(buf[h.backingOff:end])
		if h.backingName == "" {
			h.backingOff = 0
		}
	}
	if h.backingName != "" && h.autoclear&AutoclearRawExternal != 0 {
		return nil, corrupt("raw external data file cannot be combined with a backing file")
	}
	return h, nil
}

// cName is a name field as QEMU reads it: a C string, ending at the first
// NUL even when the header's length covers padding after it.
func cName(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// checkTable validates a table of n bytes at off: cluster aligned and inside
// the file. An empty table may have any offset.
func checkTable(path, what string, off, n uint64, cs, fileSize int64) error {
	if n == 0 {
		return nil
	}
	if off%uint64(cs) != 0 {
		return newErr(path, ErrCorrupt, "%s offset %#x not aligned to the cluster size %#x", what, off, cs)
	}
	if off > uint64(fileSize) || n > uint64(fileSize)-off {
		return newErr(path, ErrCorrupt, "%s at %#x (%d bytes) past end of file (size %#x)", what, off, n, fileSize)
	}
	return nil
}

// parseExtensions walks the header extensions in the first cluster buf
// (which may be shorter than a cluster when the file is). Lengths are
// bounds-checked; unknown extensions are skipped.
func (h *header) parseExtensions(path string, buf []byte, cs int64) error {
	corrupt := func(format string, args ...any) error {
		return newErr(path, ErrCorrupt, format, args...)
	}
	end := uint64(cs)
	if h.backingOff != 0 && h.backingOff < end {
		end = h.backingOff
	}
	off := uint64(h.headerLen)
	if h.version == 2 {
		off = headerV2Len
	}
	seen := map[uint32]bool{}
	for off+8 <= end {
		if off+8 > uint64(len(buf)) {
			return corrupt("header extension at offset %d past end of file (size %d)", off, len(buf))
		}
		typ := be.Uint32(buf[off:])
		n := uint64(be.Uint32(buf[off+4:]))
		if typ == extEnd {
			break
		}
		data := off + 8
		if n > end-data {
			return corrupt("header extension %#x at offset %d has length %d, past the end of the extension area (%d)", typ, off, n, end)
		}
		if data+n > uint64(len(buf)) {
			return corrupt("header extension %#x at offset %d (%d bytes) past end of file (size %d)", typ, off, n, len(buf))
		}
		if seen[typ] && typ != 0 {
			switch typ {
			case extBackingFormat, extFeatureNames, extBitmaps, extEncryption, extExternalData:
				return corrupt("header extension %#x appears twice", typ)
			}
		}
		seen[typ] = true
		d := buf[data : data+n]
		switch typ {
		case extBackingFormat:
			h.backingFormat = cName(d)
		case extExternalData:
			h.dataFile = cName(d)
		case extFeatureNames:
			if h.featureNames == nil {
				h.featureNames = map[[2]byte]string{}
			}
			for i := 0; i+featureNameEntryLen <= len(d); i += featureNameEntryLen {
				e := d[i : i+featureNameEntryLen]
				name := e[2:]
				if j := bytes.IndexByte(name, 0); j >= 0 {
					name = name[:j]
				}
				h.featureNames[[2]byte{e[0], e[1]}] = string(name)
			}
		case extBitmaps:
			if n < bitmapsExtLen {
				return corrupt("bitmaps extension is %d bytes, want %d", n, bitmapsExtLen)
			}
			if h.autoclear&AutoclearBitmaps == 0 {
				break // inconsistent bitmaps are ignored, as QEMU does
			}
			nb := be.Uint32(d[0:])
			dirSize := be.Uint64(d[8:])
			dirOff := be.Uint64(d[16:])
			if nb == 0 || nb > maxBitmaps {
				return corrupt("bitmaps extension lists %d bitmaps (want 1..%d)", nb, maxBitmaps)
			}
			if err := checkTable(path, "bitmap directory", dirOff, dirSize, cs, int64(^uint64(0)>>1)); err != nil {
				return err
			}
			h.bitmaps = int(nb)
		}
		off = data + (n+7)&^7
	}
	return nil
}

// featureList names the bits of mask in feature table typ ("bit 5 (name)").
func (h *header) featureList(typ byte, mask uint64) string {
	var parts []string
	for bit := 0; bit < 64; bit++ {
		if mask&(1<<bit) == 0 {
			continue
		}
		if name := h.featureNames[[2]byte{typ, byte(bit)}]; name != "" {
			parts = append(parts, fmt.Sprintf("bit %d (%s)", bit, name))
		} else {
			parts = append(parts, fmt.Sprintf("bit %d", bit))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// checkSnapshots walks the snapshot table and validates each entry's L1
// table. Entries are read one at a time, so a hostile count costs I/O
// bounded by the file, never a large allocation.
func (h *header) checkSnapshots(path string, f *os.File, fileSize int64) error {
	cs := h.clusterSize()
	off := h.snapshotsOff
	var hdr [snapshotHeaderLen]byte
	for i := uint32(0); i < h.nbSnapshots; i++ {
		if off+snapshotHeaderLen > uint64(fileSize) {
			return newErr(path, ErrCorrupt, "snapshot %d at %#x past end of file (size %#x)", i, off, fileSize)
		}
		if _, err := f.ReadAt(hdr[:], int64(off)); err != nil {
			return ioErr(path, err, "snapshot table")
		}
		l1Off := be.Uint64(hdr[0:])
		l1Size := be.Uint32(hdr[8:])
		idLen := uint64(be.Uint16(hdr[12:]))
		nameLen := uint64(be.Uint16(hdr[14:]))
		extra := uint64(be.Uint32(hdr[36:]))
		if extra > maxSnapshotExtra {
			return newErr(path, ErrCorrupt, "snapshot %d has %d bytes of extra data, more than %d", i, extra, maxSnapshotExtra)
		}
		if uint64(l1Size)*8 > maxL1Bytes {
			return newErr(path, ErrCorrupt, "snapshot %d L1 table has %d entries, more than %d", i, l1Size, maxL1Bytes/8)
		}
		if err := checkTable(path, fmt.Sprintf("snapshot %d L1 table", i), l1Off, uint64(l1Size)*8, cs, fileSize); err != nil {
			return err
		}
		off += (snapshotHeaderLen + extra + idLen + nameLen + 7) &^ 7
		if off > uint64(fileSize) {
			return newErr(path, ErrCorrupt, "snapshot %d entry ends at %#x, past end of file (size %#x)", i, off, fileSize)
		}
	}
	return nil
}
