package qcow2

// On-disk constants from QEMU's docs/interop/qcow2.rst. Shared by the reader
// and the Writer; add new ones at the end, never rename.

const (
	// Magic is "QFI\xfb", the first four bytes of every qcow2 file.
	Magic = 0x514649fb

	headerV2Len                = 72  // fixed v2 header (bytes 0..71)
	headerV3Len                = 104 // minimum v3 header_length (bytes 0..103)
	headerV3CompressionTypeLen = 112 // v3 header with compression_type (+ padding)

	minClusterBits = 9
	maxClusterBits = 21

	// QEMU refuses L1 tables larger than 32 MiB (QCOW_MAX_L1_SIZE).
	maxL1Bytes = 32 << 20
	// QEMU refuses refcount tables larger than 8 MiB (QCOW_MAX_REFTABLE_SIZE).
	maxRefcountTableBytes = 8 << 20
	// QEMU limits the backing file name to 1023 bytes.
	maxBackingNameLen = 1023
	// QEMU refuses snapshot tables with more than 65536 entries.
	maxSnapshots = 65536
)

// Header field offsets (bytes from the start of the file).
const (
	offMagic                 = 0
	offVersion               = 4
	offBackingFileOffset     = 8
	offBackingFileSize       = 16
	offClusterBits           = 20
	offSize                  = 24
	offCryptMethod           = 32
	offL1Size                = 36
	offL1TableOffset         = 40
	offRefcountTableOffset   = 48
	offRefcountTableClusters = 56
	offNbSnapshots           = 60
	offSnapshotsOffset       = 64
	offIncompatibleFeatures  = 72
	offCompatibleFeatures    = 80
	offAutoclearFeatures     = 88
	offRefcountOrder         = 96
	offHeaderLength          = 100
	offCompressionType       = 104
)

// Incompatible feature bits.
const (
	IncompatDirty        = 1 << 0
	IncompatCorrupt      = 1 << 1
	IncompatExternalData = 1 << 2
	IncompatCompression  = 1 << 3
	IncompatExtendedL2   = 1 << 4
	incompatKnown        = IncompatDirty | IncompatCorrupt | IncompatExternalData | IncompatCompression | IncompatExtendedL2
)

// Compatible and autoclear feature bits.
const (
	CompatLazyRefcounts = 1 << 0

	AutoclearBitmaps     = 1 << 0
	AutoclearRawExternal = 1 << 1
)

// crypt_method values.
const (
	cryptNone = 0
	cryptAES  = 1
	cryptLUKS = 2
)

// compression_type values.
const (
	CompressionDeflate = 0
	CompressionZstd    = 1
)

// Header extension types.
const (
	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureNames  = 0x6803f857
	extBitmaps       = 0x23852875
	extEncryption    = 0x0537be77
	extExternalData  = 0x44415441
)

// L1/L2 entry bits.
const (
	entryCopied     = uint64(1) << 63
	entryCompressed = uint64(1) << 62
	entryZero       = uint64(1) << 0 // v3 "reads as zero" flag of a standard L2 entry

	// Bits 9..55: host offset of an L2 table or of a standard data cluster.
	offsetMask = uint64(0x00fffffffffffe00)

	// Reserved bits that must be zero; QEMU reports them as corruption.
	l1ReservedMask = uint64(0x7f000000000001ff)
	l2ReservedMask = uint64(0x3f000000000001fe)

	// Extended L2: each entry is 128 bits, the second word is the bitmap:
	// bits 0..31 allocation, 32..63 reads-as-zero, one bit per subcluster.
	subclustersPerCluster = 32
)

// Refcount table entries: bits 9..63 are the refcount block offset.
const refcountTableOffsetMask = ^uint64(0x1ff)

// Constants used by the reader (appended).
const (
	// Extended L2 entries need at least 16 KiB clusters (512-byte subclusters).
	minClusterBitsExtL2 = 14
	// QEMU caps snapshot extra data at 1 KiB (QCOW_MAX_SNAPSHOT_EXTRA_DATA).
	maxSnapshotExtra = 1024
	// Fixed part of a snapshot table entry.
	snapshotHeaderLen = 40
	// Fixed part of the bitmaps header extension.
	bitmapsExtLen = 24
	// QEMU supports at most 65535 bitmaps per image.
	maxBitmaps = 65535
	// One feature name table entry.
	featureNameEntryLen = 48
	// Compressed clusters are measured in 512-byte sectors.
	compressedSectorSize = 512
	// QEMU's maximum virtual size (BDRV_MAX_LENGTH is about 2^63 minus
	// alignment); the L1 size limit is the tighter bound in practice.
	maxVirtualSize = int64(1<<63 - 1<<30)
)
