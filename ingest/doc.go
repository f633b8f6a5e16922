// Package ingest reads a disk image through its extent map and stores its
// guest content as chunks.
//
// The pipeline: a planner walks the extent map (so unallocated and zero
// ranges cost nothing) and issues 4 MiB aligned reads; readers run them in
// parallel (plain contiguous data is taken from a mapping of the file
// without a copy, compressed clusters are decompressed on all cores) and
// classify every block for the cut; one chunker puts them back in order and
// cuts them at aligned content-defined boundaries (see Chunker); hashers compute BLAKE3 in parallel; a collector puts chunk
// refs back in guest order into the manifest and groups chunks into batches;
// storers look the batches up and compress and store only the new chunks.
// Every channel is bounded and buffers are pooled (mapped reads are dropped
// from the resident set when done), so memory stays flat whatever the image
// size. Goroutines that touch mapped bytes run under
// debug.SetPanicOnFault, and the store is only given copies of them.
//
// Run never commits: the caller records the engram once Run returned, so an
// interrupted ingest leaves at most unreferenced chunks, which gc removes.
package ingest
