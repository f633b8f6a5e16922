package chunkstore

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
)

// Block is a decompressed block: the chunks of one frame, back to back.
// GetBlocks hands blocks out shared (with the store's block cache and
// every other caller) instead of copying chunks out of them; nobody
// writes to one, and its memory is never recycled into a pool, so a slice
// of it stays valid for as long as anyone holds it (the garbage collector
// frees the block after the last).
//
// A block passed its frame checksum, which says the frame was read as it
// was written, not that a chunk is what its ID says: Chunk checks each
// chunk's BLAKE3 the first time it is taken out and remembers the result.
type Block struct {
	key    blockKey
	bs     fmt.Stringer // the blob store, for errors
	pack   ID           // pack object hash, for errors
	block  []byte
	chunks []frameChunk
	// checked[j] is 0 until chunk j is hashed, then 1 (matches its ID) or
	// -1 (does not).
	checked []atomic.Int32
}

func newBlock(bs fmt.Stringer, key blockKey, pack ID, block []byte, chunks []frameChunk) *Block {
	return &Block{key: key, bs: bs, pack: pack, block: block, chunks: chunks, checked: make([]atomic.Int32, len(chunks))}
}

// Size is the memory the block holds, for a cache's accounting: its
// buffer and its chunk list.
func (b *Block) Size() int64 {
	return int64(cap(b.block)) + int64(len(b.chunks))*int64(32+4+4+4) + 128
}

// Chunks returns the number of chunks in the block.
func (b *Block) Chunks() int { return len(b.chunks) }

// ID returns the ID of chunk j (0 <= j < Chunks()) as the frame lists it.
func (b *Block) ID(j int) ID { return b.chunks[j].ID }

// Chunk returns the bytes of chunk j, a slice of the block that must not
// be written, after checking them against the chunk's ID once: a mismatch
// is a *CorruptChunkError, every time it is asked for.
func (b *Block) Chunk(j int) ([]byte, error) {
	c := b.chunks[j]
	data := b.block[c.Off : c.Off+c.Len : c.Off+c.Len]
	switch b.checked[j].Load() {
	case 1:
		return data, nil
	case 0:
		// Two callers may hash the same chunk at once; both get the same
		// answer, so no lock is needed.
		if Sum(data) == c.ID {
			b.checked[j].Store(1)
			return data, nil
		}
		b.checked[j].Store(-1)
	}
	pack := ""
	if b.bs != nil {
		pack = b.bs.String() + "/" + packObject(b.pack)
	}
	return nil, &CorruptChunkError{ID: c.ID, Pack: pack, Offset: b.key.off, Reason: "content hashes to " + Sum(data).Short()}
}

// BlockGetter is a Reader that hands out the decoded blocks chunks live
// in instead of copies of the chunks. Use GetBlocks, which falls back to
// Get.
type BlockGetter interface {
	// GetBlocks sets blocks[i] and idx[i] to the block holding chunk
	// ids[i] and the chunk's index in it, reading each block once (one
	// index transaction for the batch, as GetMany). The chunk is checked
	// against its ID only when taken out with Block.Chunk. Errors are
	// those of GetMany, for damage found before the hash (a frame that
	// does not decode or does not list the chunk).
	GetBlocks(ctx context.Context, ids []ID, blocks []*Block, idx []int) error
}

// GetBlocks reads the blocks of chunks ids through r's GetBlocks when it
// has one; for another Reader each chunk read with Get becomes a block of
// its own, already checked.
func GetBlocks(ctx context.Context, r Reader, ids []ID, blocks []*Block, idx []int) error {
	if len(ids) != len(blocks) || len(ids) != len(idx) {
		return fmt.Errorf("chunkstore: GetBlocks of %d IDs into %d blocks and %d indices", len(ids), len(blocks), len(idx))
	}
	if g, ok := r.(BlockGetter); ok {
		return g.GetBlocks(ctx, ids, blocks, idx)
	}
	for i, id := range ids {
		data, err := r.Get(ctx, id)
		if err != nil {
			return err
		}
		blocks[i], idx[i] = checkedBlock(id, data), 0
	}
	return nil
}

// checkedBlock is a block of the one chunk data, which Get has checked.
func checkedBlock(id ID, data []byte) *Block {
	b := newBlock(nil, blockKey{}, ID{}, data, []frameChunk{{ID: id, Len: uint32(len(data))}})
	b.checked[0].Store(1)
	return b
}

// Copy returns chunk j (checked as by Chunk) in a block of its own with a
// copy of its bytes, for a cache that keeps one chunk without the rest
// of its block.
func (b *Block) Copy(j int) (*Block, error) {
	data, err := b.Chunk(j)
	if err != nil {
		return nil, err
	}
	if data = bytes.Clone(data); data == nil {
		data = []byte{}
	}
	return checkedBlock(b.chunks[j].ID, data), nil
}
