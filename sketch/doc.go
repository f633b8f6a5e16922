// Package sketch is the fixed-size signature of an engram: a one-permutation
// MinHash over 4 KiB units of its distinct chunks, small enough (4032 bytes)
// to keep beside every engram and compare thousands of them in milliseconds.
//
// An element of the set is (chunk ID, j) for each 4 KiB block j of a
// distinct chunk, so the signature is weighted by bytes: a chunk of 64 KiB
// counts sixteen times as much as one of 4 KiB. Every element is hashed
// to 64 bits; the top bits pick one of Bins bins and each bin keeps the
// smallest hash that fell into it. The encoding keeps an 8-bit fingerprint
// of each bin's minimum (0 = empty bin) and a header with the exact weight
// (Σ ceil(len/4096) over distinct chunks) and the number of distinct
// chunks.
//
// Invariants:
//   - The builder is integer-only: the same set gives the same bytes on
//     every platform, in whatever order and with whatever duplicates its
//     elements were added.
//   - Identical sets estimate a Jaccard similarity of exactly 1.
//   - Estimators leave out bins empty in both signatures and correct for
//     the 1/255 chance that two different minima share a fingerprint.
//   - Decode is a parser of outside bytes: it checks the length, magic,
//     version, every reserved field and the header's counts against each
//     other, and refuses what does not fit. It never allocates more than
//     one signature.
//
// A signature is a shortlist, not proof: shared content is not content at
// the same guest offset, so anything that writes files confirms with the
// exact manifest diff.
//
// The package imports nothing of the project; the encoding is documented in
// docs/FORMAT.md ("Signature").
package sketch
