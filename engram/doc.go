// Package engram defines the manifest of one archived disk image (an
// "engram") and the catalog of engrams kept in a chunk store.
//
// A manifest is the image's chunk map: for every stored chunk, its guest
// offset, length and chunk ID; ranges that read as zero are simply absent.
// The map is split into pages, each covering a fixed guest span (PageSpan);
// a chunk belongs to the page where it starts. Each page is encoded and
// stored as a chunk itself, so clones that share a guest range share the
// page too and a fleet's metadata dedups like its data.
//
// The root lists the virtual size and the IDs of the non-empty pages. The
// engram ID is the BLAKE3 of the root's canonical encoding, so it depends on
// the guest content alone: the same content stored flat, as an overlay,
// compressed or raw has one ID, and ingesting an image twice adds nothing.
// What differs between ingests (source file, format, chain, time, name,
// labels) is a Record that points at the ID.
//
// Each engram also has a signature (package sketch) beside it in the
// catalog, never in the root: a new signature version means recomputing
// signatures (RebuildSketches), never a new engram ID.
//
// Invariants:
//   - chunk refs in a manifest are sorted by offset and do not overlap;
//   - every page and data chunk a root names is Put before the root is
//     committed to the catalog, so a committed engram is always complete;
//   - decoders check every count and length against the buffer before use.
//
// The encodings are versioned and little-endian; docs/FORMAT.md describes
// them byte by byte.
package engram
