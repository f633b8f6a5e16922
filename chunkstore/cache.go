package chunkstore

import (
	"container/list"
	"sync"
)

// blockCache keeps the last few decompressed multi-chunk blocks, so a
// restore that asks for consecutive chunks decompresses each block once.
// Blocks in it passed the frame checksum; Get still hashes what it returns.
type blockCache struct {
	mu    sync.Mutex
	max   int
	lru   *list.List // of *cachedBlock, most recent first
	items map[blockKey]*list.Element
}

type blockKey struct {
	pack uint32
	off  int64
}

type cachedBlock struct {
	key    blockKey
	block  []byte
	chunks []frameChunk
}

const blockCacheSize = 16

func newBlockCache(n int) *blockCache {
	return &blockCache{max: n, lru: list.New(), items: map[blockKey]*list.Element{}}
}

func (c *blockCache) get(k blockKey) *cachedBlock {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.items[k]; e != nil {
		c.lru.MoveToFront(e)
		return e.Value.(*cachedBlock)
	}
	return nil
}

func (c *blockCache) add(b *cachedBlock) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.items[b.key]; e != nil {
		c.lru.MoveToFront(e)
		return
	}
	c.items[b.key] = c.lru.PushFront(b)
	for c.lru.Len() > c.max {
		e := c.lru.Back()
		c.lru.Remove(e)
		delete(c.items, e.Value.(*cachedBlock).key)
	}
}

// dropPack forgets the blocks of a pack GC removed.
func (c *blockCache) dropPack(num uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.items {
		if k.pack == num {
			c.lru.Remove(e)
			delete(c.items, k)
		}
	}
}

func (c *blockCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Init()
	clear(c.items)
}
