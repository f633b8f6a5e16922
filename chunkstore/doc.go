// Package chunkstore keeps content-addressed chunks (key: BLAKE3-256 of
// the uncompressed bytes) in append-only pack files indexed by bbolt.
//
// It imports nothing of the project but its own subpackages. FileStore
// is the on-disk store; BlobStore keeps a store in a bucket (package
// blob: S3, or a directory of write-once objects) with a bbolt cache per
// host, described in docs/FORMAT.md section 3;
// MemStore has the same semantics in memory for other packages' tests;
// NewTestStore makes a FileStore in t.TempDir that is verified in
// t.Cleanup.
//
// # Invariants
//
//   - Durability order: pack bytes are written and fsynced (and the packs
//     directory fsynced when a pack is new) before the bbolt transaction
//     that indexes them commits. PutMany returns nil only after that
//     commit. A crash leaves at most bytes no entry points at; the next
//     writer Open trims them (pack tail past the recorded size) or removes
//     them (a pack file with no record).
//   - Everything read is checked: Get verifies the BLAKE3 of what it
//     returns (*CorruptChunkError names chunk, pack and frame offset);
//     frames carry an xxh3 checksum; every length read from disk is
//     bounded before it sizes an allocation.
//   - Every frame is self-describing, so Repair rebuilds index.db from the
//     packs alone.
//   - One writing process per store: an flock on dir/lock, held for the
//     life of a writable FileStore; its content names the holder for the
//     ErrLocked message of whoever waits. Read-only opens take no lock.
//   - index.db is open only while transactions run (bbolt locks the file
//     exclusively for a writer, shared for readers): a process shares one
//     handle among its goroutines, closes it when idle, and gives it up
//     for 120 ms after holding it for 1 s (short idle gaps count as holding), so a restore or verify in another
//     process can read during an ingest, and an ingest can commit during a
//     restore. Waiters retry bbolt's open until OpenOptions.LockTimeout.
//   - Within a process, PutMany calls run concurrently (hashing and zstd
//     in the callers' goroutines); appends and commits are serialized by
//     a mutex; a chunk being stored by one call is waited for, not stored
//     again, by another. GC and Repair exclude PutMany.
//
// # Store directory (format version 1)
//
//	config.json        what Init fixed (JSON, written atomically, last)
//	index.db           bbolt index
//	packs/%08x.pack    pack files, numbered from 1, lowercase hex
//	lock               writer lock file: "pid N on host H since RFC3339 (command)\n"
//
// config.json:
//
//	{"format": "engram-chunkstore", "version": 1, "created": RFC 3339 time,
//	 "params": {"compression": "fastest-noentropy"|"fastest"|"default"|"better"|"best",
//	            "chunking": {"algorithm", "align", "min", "avg", "max"}},
//	 "block_size": raw bytes per block (1 = one chunk per block),
//	 "pack_size": bytes at which a pack is closed}
//
// A version above 1 is refused with ErrFormatVersion. Without config.json
// a directory is not a store (ErrNotStore).
//
// # Pack file
//
// All integers little-endian.
//
//	offset size  pack header
//	0      8     magic "EGRMPACK"
//	8      4     pack format version (1)
//	12     4     pack number (matches the file name)
//	16     ...   frames, back to back
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
// # index.db (index format version 1)
//
// Top-level buckets:
//
//	meta    "version"   -> uint32 LE index format version (1)
//	        "next_pack" -> uint32 LE number the next new pack gets (pack
//	                       numbers are never reused, so a block cache in a
//	                       long-running reader never mixes two packs)
//	chunks  ID (32 bytes) -> 28 bytes:
//	          0  uint32 pack number
//	          4  uint64 frame offset in the pack
//	         12  uint32 frame length
//	         16  uint32 chunk offset in the raw block
//	         20  uint32 chunk raw length
//	         24  uint32 share: the chunk's part of the frame length,
//	                    frameLen*cum(i+1)/raw - frameLen*cum(i)/raw, so the
//	                    shares of a frame add up to its length
//	packs   pack number (uint32 big-endian, so keys sort) -> 32 bytes:
//	          0  uint64 committed size (bytes past it are garbage)
//	          8  uint64 live bytes (sum of shares of indexed chunks)
//	         16  uint64 indexed chunks
//	         24  uint64 their raw bytes
//	user    one nested bucket per MetaTx bucket name (engram's records)
//
// Stats sums the packs bucket.
//
// # Blocks: measured
//
// Compressing runs of consecutive new chunks together beats per-chunk
// zstd; a random (cold) Get then reads and decompresses a whole block,
// while a sequential restore decompresses each block once thanks to a
// block cache (16 MiB unless OpenOptions.BlockCacheBytes says otherwise;
// mount and serve size it from --cache-size). Uncompressed blocks are read one chunk at a time. On
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
// GC(live) first deletes the index entries of dead chunks (their bytes stay
// in the packs; Repair would bring them back as valid unreferenced
// chunks), then rewrites each pack whose live bytes fall under the
// threshold: frames whose chunks are all live are copied verbatim, the
// live chunks of others are recompressed into new blocks, the new packs are
// fsynced, one transaction re-points the entries and drops the old pack's
// record, and only then is the old file removed. Killed at any point, the
// store verifies and holds every live chunk.
//
// # Caveats
//
//   - A damaged frame loses every chunk of its block (up to ~1 MiB of
//     chunks), not just one; Verify names each, Repair drops their
//     entries so the next ingest stores them again.
//   - GC must not run while another caller stores chunks its live
//     function does not know about yet (an ingest whose manifest is not
//     recorded); the writer lock keeps other processes out, the caller
//     must order its own goroutines.
//   - If index.db is lost, Repair rebuilds the chunk index but the MetaTx
//     buckets are gone (RepairReport.MetadataLost); engram keeps a copy of
//     its catalog in catalog chunks and rebuilds it (engram repair).
package chunkstore
