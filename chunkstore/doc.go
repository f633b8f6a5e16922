// Package chunkstore keeps content-addressed chunks (key: BLAKE3-256 of
// the uncompressed bytes) in write-once pack objects, indexed by a bbolt
// cache.
//
// It imports nothing of the project but its own subpackages. BlobStore is
// the one store: its logic (packs, frames, index, gc, verify, repair)
// sits above a blob.Store, an S3 bucket (OpenBlob) or a directory of
// objects (Open, Init: blob/dir, the default), in the layout of
// docs/FORMAT.md section 3. MemStore has the same semantics in memory for
// other packages' tests; NewTestStore makes a directory store in
// t.TempDir that is verified in t.Cleanup.
//
// # Invariants
//
//   - Every object is written once (create-only Put, atomic) and never
//     changed; names are fixed by content. Writes go pack → index
//     segment → catalog journal entry, so whatever an object names exists
//     already, and a writer killed in between leaves only objects nothing
//     names (gc removes them). PutMany returns nil only after its pack and
//     segment are durable and the cache indexes them.
//   - Everything read is checked: Get verifies the BLAKE3 of what it
//     returns (*CorruptChunkError names chunk, pack and frame offset);
//     frames carry an xxh3 checksum; every length read from a pack,
//     segment or journal is bounded before it sizes an allocation.
//   - Every frame is self-describing and every pack ends with a copy of
//     its segment, so the index can be rebuilt from the packs alone; the
//     cache (index.db) is rebuilt from the segments and journal entries
//     whenever it is missing or damaged: it is never the only copy.
//   - A directory store: writers hold an flock on dir/lock shared (any
//     number of ingests at once), gc and repair exclusively (its content
//     names the holder for the ErrLocked message of whoever waits).
//     Read-only opens take no lock. Holding it exclusively, gc deletes
//     dead packs at once and repair replaces damaged packs by their intact
//     frames; a bucket has no lock, so gc there is two-phase with a margin
//     and repair records damage lists (blobgc.go, blobrepair.go).
//   - index.db is open only while transactions run (bbolt locks the file
//     exclusively for a writer, shared for readers): a process shares one
//     handle among its goroutines, closes it when idle, and gives it up
//     for 120 ms after holding it for 1 s (short idle gaps count as holding), so a restore or verify in another
//     process can read during an ingest, and an ingest can commit during a
//     restore. Waiters retry bbolt's open until OpenOptions.LockTimeout.
//   - A directory store of format 1 (numbered packs, authoritative
//     index.db) is upgraded in place by the first writable Open
//     (upgrade.go); killed at any point, the old store or the new one
//     opens and holds everything. A read-only Open of one fails with
//     ErrNeedsUpgrade.
//
// # Store directory (format version 2, layout blob-1)
//
//	config.json        what Init fixed (JSON, written last)
//	packs/HH/H         pack objects, H = BLAKE3 of the object
//	index/H            index segment of pack H
//	meta/T-C           catalog journal entries (the commit points)
//	gc/, damaged/      gc lists, damage lists (bucket gc and repair)
//	cache/index.db     the cache (unless a cache root is given)
//	lock               store lock: "pid N on host H since RFC3339 (command)\n"
//	.tmp/              objects being written (blob/dir)
//
// config.json:
//
//	{"format": "engram-chunkstore", "version": 2, "created": RFC 3339 time,
//	 "params": {"compression": "fastest-noentropy"|"fastest"|"default"|"better"|"best",
//	            "chunking": {"algorithm", "align", "min", "avg", "max"}},
//	 "block_size": raw bytes per block (1 = one chunk per block),
//	 "pack_size": bytes at which a pack is cut,
//	 "layout": "blob-1", "store_id": 32 hex digits}
//
// A version above 2 is refused with ErrFormatVersion; version 1 without a
// layout is format 1 (upgraded); without config.json a directory is not a
// store (ErrNotStore). docs/FORMAT.md has every object byte by byte.
//
// # Pack file
//
// All integers little-endian.
//
//	offset size  pack header
//	0      8     magic "EGRMPACK"
//	8      4     pack format version (1)
//	12     4     a random number (format 1: the pack number)
//	16     ...   frames, back to back
//	S      L     a copy of the pack's index segment
//	S+L    16    uint64 S, magic "EGRMPIDX"
//
// A frame is one block: 1..4096 consecutive new chunks of one PutMany
// call (their concatenation is the raw block), compressed together.
//
//	offset   size    frame
//	0        4       magic "EGFR"
//	4        1       frame version (1)
//	5        1       codec: 0 raw, 1 zstd (one zstd frame, no checksum)
//	6        2       reserved, 0
//	8        4       n, number of chunks (1..4096)
//	12       4       raw length of the block (<= 16 MiB)
//	16       4       stored length of the payload (codec 0: = raw length;
//	                 codec 1: < raw length, else the block is stored raw)
//	20       40*n    chunk list; entry i:
//	                   +0  32  chunk ID (BLAKE3-256 of its bytes)
//	                   +32  4  offset in the raw block (= sum of earlier lengths)
//	                   +36  4  length (<= 4 MiB)
//	20+40n   stored  payload
//	end-8    8       xxh3-64 of every frame byte before it
//
// Frame length = 28 + 40n + stored length. The checksum detects damage
// to the frame; BLAKE3 of each chunk checks content. After a damaged
// frame, a scan resynchronises on the next "EGFR" that starts an intact
// frame.
//
// # Cache (index.db)
//
// The buckets of format 1's index.db (meta, chunks, packs, user), local
// pack numbers standing for pack hashes, plus the blob.* buckets of
// docs/FORMAT.md section 3 ("Cache"). Stats sums the packs bucket.
//
// # Blocks: measured
//
// Compressing runs of consecutive new chunks together beats per-chunk
// zstd; a random (cold) Get then reads and decompresses a whole block,
// while a sequential restore decompresses each block once thanks to a
// block cache (16 MiB unless OpenOptions.BlockCacheBytes says otherwise;
// mount and serve size it from --cache-size). On
// 24 MiB of Go toolchain files in 64 KiB chunks (BenchmarkBlockSize,
// 2 cores), stored/raw and cold Get:
//
//	              fastest        default
//	per chunk     0.339 0.14ms   0.321 0.14ms
//	256 KiB       0.322 0.39ms   0.308 0.40ms
//	1 MiB         0.313 1.19ms   0.299 1.22ms
//	2 MiB         0.312 2.31ms   0.297 2.31ms
//
// The default block size is 1 MiB: 7% smaller stores than per-chunk
// blocks, with sequential Gets no slower (cache hits).
//
// # GC
//
// Dead chunks stay indexed (and deduplicated against) until their pack
// goes: a pack with no live chunk is deleted, segment first. In a
// directory held exclusively that happens in the same run (dirgc.go);
// in a bucket, a pack is first condemned and deleted by a later run
// after the margin (blobgc.go). Rewriting the live chunks of mostly dead
// packs (GCOptions.Threshold) is not done yet.
//
// # Caveats
//
//   - A damaged frame loses every chunk of its block (up to ~1 MiB of
//     chunks), not just one; Verify names each, Repair drops their
//     entries so the next ingest stores them again.
//   - GC must not run while another caller stores chunks its live
//     function does not know about yet (an ingest whose manifest is not
//     recorded); in a directory the store lock keeps other processes out,
//     the caller must order its own goroutines.
//   - The catalog lives in meta/ journal objects; if they are lost,
//     RepairDir reports MetadataLost and engram rebuilds the catalog from
//     its catalog chunks (engram repair).
package chunkstore
