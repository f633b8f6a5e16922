package chunkstore

import "testing"

// TestBlockCacheBytes: the block cache holds at most its byte budget,
// evicting the least recently used block; a negative budget keeps none.
func TestBlockCacheBytes(t *testing.T) {
	blk := func(pack uint32, n int) *Block {
		return &Block{key: blockKey{pack, 0}, block: make([]byte, n), chunks: make([]frameChunk, 2)}
	}
	c := newBlockCache(3 << 20)
	for i := range uint32(5) {
		if _, err := c.load(blockKey{i, 0}, func() (*Block, error) { return blk(i, 1<<20), nil }); err != nil {
			t.Fatal(err)
		}
		if c.used > c.max {
			t.Fatalf("cache holds %d bytes, budget %d", c.used, c.max)
		}
	}
	if c.get(blockKey{0, 0}) != nil || c.get(blockKey{4, 0}) == nil || c.lru.Len() != 3 {
		t.Fatalf("after 5 blocks of 1 MiB in 3 MiB: %d kept, oldest kept %v", c.lru.Len(), c.get(blockKey{0, 0}) != nil)
	}
	c.dropPack(4)
	if c.used != 2<<20 || c.get(blockKey{4, 0}) != nil {
		t.Fatalf("dropPack left %d bytes", c.used)
	}
	none := newBlockCache(-1)
	if _, err := none.load(blockKey{1, 0}, func() (*Block, error) { return blk(1, 10), nil }); err != nil || none.lru.Len() != 0 {
		t.Fatalf("a cache of -1 bytes kept %d blocks", none.lru.Len())
	}
	if d := newBlockCache(0); d.max != DefaultBlockCacheBytes {
		t.Fatalf("default budget %d", d.max)
	}
}
