package chunkstore

import (
	"container/list"
	"sync"
)

// blockCache keeps the last few decompressed multi-chunk blocks, so a
// restore that asks for consecutive chunks decompresses each block once.
// Blocks in it passed the frame checksum; Get still hashes what it returns.
// It is bounded in bytes (OpenOptions.BlockCacheBytes), so a long-running
// reader's memory does not depend on the store's block size.
type blockCache struct {
	mu      sync.Mutex
	max     int64 // bytes of decompressed blocks kept
	used    int64
	lru     *list.List // of *Block, most recent first
	items   map[blockKey]*list.Element
	loading map[blockKey]*blockLoad
}

// blockLoad is a block one goroutine is reading and decompressing; others
// that want it wait instead of decompressing it again (restore fetches
// consecutive chunks of one block on several goroutines).
type blockLoad struct {
	done chan struct{}
	cb   *Block
	err  error
}

type blockKey struct {
	pack uint32
	off  int64
}

// DefaultBlockCacheBytes is the block cache of a store opened without
// OpenOptions.BlockCacheBytes: 16 blocks of the default size.
const DefaultBlockCacheBytes = 16 * DefaultBlockSize

func newBlockCache(maxBytes int64) *blockCache {
	if maxBytes == 0 {
		maxBytes = DefaultBlockCacheBytes
	}
	return &blockCache{max: maxBytes, lru: list.New(), items: map[blockKey]*list.Element{}, loading: map[blockKey]*blockLoad{}}
}

func (c *blockCache) get(k blockKey) *Block {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.items[k]; e != nil {
		c.lru.MoveToFront(e)
		return e.Value.(*Block)
	}
	return nil
}

// load returns block k from the cache, or from fn, calling fn once however
// many goroutines ask at the same time. Blocks of one chunk are not kept.
func (c *blockCache) load(k blockKey, fn func() (*Block, error)) (*Block, error) {
	c.mu.Lock()
	if e := c.items[k]; e != nil {
		c.lru.MoveToFront(e)
		c.mu.Unlock()
		return e.Value.(*Block), nil
	}
	if l := c.loading[k]; l != nil {
		c.mu.Unlock()
		<-l.done
		return l.cb, l.err
	}
	l := &blockLoad{done: make(chan struct{})}
	c.loading[k] = l
	c.mu.Unlock()

	l.cb, l.err = fn()
	c.mu.Lock()
	delete(c.loading, k)
	if l.err == nil && len(l.cb.chunks) > 1 {
		c.addLocked(l.cb)
	}
	c.mu.Unlock()
	close(l.done)
	return l.cb, l.err
}

func (c *blockCache) addLocked(b *Block) {
	if e := c.items[b.key]; e != nil {
		c.lru.MoveToFront(e)
		return
	}
	if int64(len(b.block)) > c.max {
		return
	}
	c.items[b.key] = c.lru.PushFront(b)
	c.used += int64(len(b.block))
	for c.used > c.max {
		c.removeLocked(c.lru.Back())
	}
}

func (c *blockCache) removeLocked(e *list.Element) {
	c.lru.Remove(e)
	cb := e.Value.(*Block)
	delete(c.items, cb.key)
	c.used -= int64(len(cb.block))
}

// dropPack forgets the blocks of a pack GC removed.
func (c *blockCache) dropPack(num uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.items {
		if k.pack == num {
			c.removeLocked(e)
		}
	}
}

func (c *blockCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Init()
	clear(c.items)
	c.used = 0
}
