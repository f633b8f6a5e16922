// Package restore writes an engram back out as a sparse qcow2 or raw image.
//
// Chunks are fetched and decompressed in parallel and written in guest
// order, so the qcow2 Writer lays data clusters out in guest order. Ranges
// no chunk covers stay unallocated (holes in raw files). Output goes to a
// temporary file beside the target, fsynced and renamed at the end: a failed
// or interrupted restore leaves no half image behind. Where the file system
// allows, data goes to disk through a second, O_DIRECT descriptor
// (page-aligned job buffers; qcow2.WriterOptions.Direct for qcow2,
// directSink for raw files), not through the page cache.
package restore
