// Package qcow2 reads QEMU disk images — qcow2 (versions 2 and 3) and raw —
// through their whole backing chain, as the guest sees them, and maps which
// guest ranges hold data, read as zero, or are unallocated, in the terms of
// `qemu-img map`. It also holds the Writer (writer.go).
//
// What is read, following QEMU's docs/interop/qcow2.rst:
//   - versions 2 and 3, cluster_bits 9..21, refcount_order 0..6 (validated;
//     reads do not need refcounts);
//   - standard L2 entries with the COPIED and v3 ZERO flags (including zero
//     clusters that keep a preallocated host cluster), compressed clusters
//     (deflate or zstd, one or several frames, crossing host cluster
//     boundaries), extended L2 entries with 32 subclusters;
//   - external data files (relative names resolved against the image's
//     directory, unlike qemu-img 7.2 which uses its working directory) and
//     the raw-external bit;
//   - header extensions: backing format, feature names (used to name unknown
//     feature bits), bitmaps, data file; unknown ones are skipped;
//   - backing chains of qcow2 and raw files, the backing format taken from
//     the header extension or detected by magic, relative names resolved
//     against the overlay's directory; a backing file smaller than its
//     overlay reads as zeros past its end;
//   - internal snapshots and bitmaps are validated and read past: the active
//     L1 table is the guest view. The dirty bit is fine for reading; so is
//     the corrupt bit, as in QEMU (read-only, a warning through Options.Warn,
//     Info.CorruptMarked), unless Options.RefuseCorrupt; the dirty bit
//     gets a note through Options.Note;
//   - header names (backing file, backing format, data file) are C strings:
//     cut at the first NUL, as QEMU reads them.
//
// Format detection (probe.go) follows QEMU's probers: qcow2 is read; the
// legacy qcow (version 1), vmdk, vhdx, vdi, qed, luks, vpc, parallels,
// bochs, cloop and dmg are refused by name (ErrUnsupportedFormat); a file
// no prober claims is raw.
//
// Raw files are seen in whole 512-byte sectors, as QEMU does (a tail past
// the end of the file reads as zero), and mapped with SEEK_DATA/SEEK_HOLE:
// like qemu-img map, every byte of a raw file is "present"; holes read as
// zero. In a qcow2 file that looks metadata-preallocated (much larger than
// what it occupies on disk, QEMU's heuristic), host clusters that are holes
// are reported as data+zero, again like qemu-img map.
//
// Intentional differences from qemu-img: relative data file names (above);
// Extent.Offset is only set for plain data (qemu-img map also reports it for
// zero clusters with a host cluster, and for raw holes); a data file name
// extension without the external-data feature bit is ignored.
//
// Refused, with a sentinel error: encryption (ErrEncrypted), the corrupt bit
// when asked (ErrCorruptBit), unknown incompatible features (ErrUnknownFeature), other
// formats (ErrUnsupportedFormat), backing loops, chains deeper than
// Options.MaxChainDepth, missing backing or data files, and protocol
// backing names such as nbd: or json: (ErrProtocolBacking).
//
// Invariants:
//   - Every offset, size and count read from a file is checked before use —
//     header_length, L1 size against the virtual size and QEMU's 32 MiB
//     limit, table alignment and bounds, snapshot table entries, extension
//     lengths, the backing name, L1/L2 reserved bits, data cluster and L2
//     table offsets, compressed descriptors. Damage is reported as
//     ErrCorrupt naming the file, the field and the values; nothing
//     allocates in proportion to an unchecked number, nothing panics.
//   - Every error is an *Error carrying the path and unwrapping to its
//     cause, so messages read "PATH: what is wrong" and errors.Is works.
//   - An Image is safe for concurrent use: ReadAt uses pread only (Mapped
//     hands out slices of a read-only mapping of a data file, made on
//     first use, valid until Close; touching them faults if the file
//     shrinks, see Mapped); L2
//     tables and decompressed clusters live in small bounded LRU caches per
//     layer; flate readers are pooled and one zstd decoder (memory capped at
//     the largest cluster size) is shared.
//   - Memory per layer is bounded: at most 8 MiB of cached L2 tables (at
//     least 8 tables) and 4 MiB of decompressed clusters (at least 4).
//   - Names from a header are only opened if they are regular files, so a
//     hostile image cannot make Open block on a FIFO or read a device.
//
// Image.Fingerprint identifies a chain cheaply (file identity and change
// times, header cluster and L1 table of every layer), so a layer ingested
// before and unchanged need not be read again.
//
// The Writer (writer.go) produces valid sparse v3 images: any cluster size,
// plain, zstd- or deflate-compressed clusters, optional backing file and
// format, optional extended L2 entries (WriterOptions.ExtendedL2, clusters
// of 16 KiB or more), refcounts that `qemu-img check` finds clean.
package qcow2
