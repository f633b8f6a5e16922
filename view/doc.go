// Package view presents engrams as read-only disks for the in-place
// readers (nbd/, fuse/): ReadAt, the extent map (data vs hole, from the
// manifest) and SEEK_DATA/SEEK_HOLE answers. It imports engram/ and
// chunkstore/ only and knows nothing of FUSE or NBD.
//
// A Set holds one memory budget (Options.CacheSize, default 256 MiB) for a
// store: the chunk store's decoded blocks and decoded manifest pages live
// in two byte-bounded LRU caches shared by every Disk of the Set, and a
// sixteenth of the budget is meant for the chunk store's own block cache
// (BlockCacheBytes). A block is counted whole; a read takes its chunks as
// slices of the block, each checked against its ID the first time
// (chunkstore.Block.Chunk), never copied. A chunk or page is loaded once
// however many requests want it at the same time; the chunks of one
// request are fetched in parallel, and the loads from the store are
// bounded in number, so the bytes in flight stay small beside the caches.
//
// Each client (open file, NBD connection) gets a Reader: reads that follow
// each other (within 1 MiB, since clients keep several in flight) turn on
// read-ahead, a window that starts at 1 MiB and doubles up to an eighth of
// the chunk cache while the client keeps up. Read-ahead only fills the
// cache; a read never waits for read-ahead it does not need.
//
// Pins keep gc away from engrams in use: a pin file per process under the
// store's pins/ directory lists the roots it reads, locked with flock for
// the life of the process; gc (PinnedChunks) keeps their chunks and
// removes pin files nobody holds any more.
//
// # Caveats
//
//   - Content is addressed by hash, so nothing cached ever goes stale; a
//     Disk stays readable after rm as long as its pin is held, even across
//     a gc.
//   - A chunk the store cannot return is an error of the read that needs
//     it (naming engram, chunk and guest offset), never zeros.
package view
