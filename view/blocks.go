package view

import (
	"container/list"
	"sync"

	"github.com/engram-vm/engram/chunkstore"
)

// blockLRU caches the chunk store's decoded blocks, byte-bounded by their
// whole size, and finds a chunk of a cached block by its ID: a read takes
// the chunk as a slice of its block (chunkstore.Block.Chunk, which checks
// its hash the first time), with no copy per chunk. Every chunk a cached
// block lists is found, not only the one asked for: a sequential read
// then decodes each block once for all its chunks. Loads are shared as in
// lru: a chunk being loaded is waited for, not loaded again. Errors are
// not cached.
//
// An evicted block is only forgotten: a reply may still be writing from
// it, and the garbage collector frees it after the last. So blocks are
// never recycled, and nothing needs reference counts.
type blockLRU struct {
	mu      sync.Mutex
	max     int64
	used    int64
	order   *list.List // of *blockEntry, most recent first
	blocks  map[*chunkstore.Block]*list.Element
	chunks  map[chunkstore.ID]chunkLoc
	loading map[chunkstore.ID]*chunkLoad

	hits, misses int64 // for tests and stats
}

type blockEntry struct {
	b    *chunkstore.Block
	cost int64
}

// chunkLoc is where a cached chunk is: its block's element in order and
// its index in the block.
type chunkLoc struct {
	e *list.Element
	j int
}

type chunkLoad struct {
	done chan struct{}
	b    *chunkstore.Block
	j    int
	err  error
}

// chunkIndexCost is what a cached block's chunks cost besides the block:
// an entry each in the chunks map.
const chunkIndexCost = 96

func newBlockLRU(maxBytes int64) *blockLRU {
	return &blockLRU{max: maxBytes, order: list.New(), blocks: map[*chunkstore.Block]*list.Element{},
		chunks: map[chunkstore.ID]chunkLoc{}, loading: map[chunkstore.ID]*chunkLoad{}}
}

// get returns the block of chunk id and its index there, loading it with
// load if it is neither cached nor being loaded.
func (c *blockLRU) get(id chunkstore.ID, load func() (*chunkstore.Block, int, error)) (*chunkstore.Block, int, error) {
	c.mu.Lock()
	if loc, ok := c.chunks[id]; ok {
		c.order.MoveToFront(loc.e)
		c.hits++
		c.mu.Unlock()
		return loc.e.Value.(*blockEntry).b, loc.j, nil
	}
	if l := c.loading[id]; l != nil {
		c.hits++
		c.mu.Unlock()
		<-l.done
		return l.b, l.j, l.err
	}
	c.misses++
	l := &chunkLoad{done: make(chan struct{})}
	c.loading[id] = l
	c.mu.Unlock()

	l.b, l.j, l.err = load()
	c.mu.Lock()
	delete(c.loading, id)
	if l.err == nil {
		c.addLocked(id, l.b, l.j)
	}
	c.mu.Unlock()
	close(l.done)
	return l.b, l.j, l.err
}

// reserve marks every ID of ids that is neither cached nor being loaded
// as being loaded by the caller, who must then call finish once for each
// one it got (mine[i] true). An ID listed twice is reserved once. Batch
// loads use it, so that a read wanting one of the chunks waits for the
// batch instead of loading the chunk a second time.
func (c *blockLRU) reserve(ids []chunkstore.ID, mine []bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, id := range ids {
		mine[i] = false
		if _, ok := c.chunks[id]; ok || c.loading[id] != nil {
			continue
		}
		c.misses++
		c.loading[id] = &chunkLoad{done: make(chan struct{})}
		mine[i] = true
	}
}

// finish ends the load of id that reserve gave the caller: the block is
// cached (unless err) and whoever waits in get gets it.
func (c *blockLRU) finish(id chunkstore.ID, b *chunkstore.Block, j int, err error) {
	c.mu.Lock()
	l := c.loading[id]
	delete(c.loading, id)
	if err == nil {
		c.addLocked(id, b, j)
	}
	c.mu.Unlock()
	if l != nil {
		l.b, l.j, l.err = b, j, err
		close(l.done)
	}
}

// peek returns the block of id and its index there if it is cached (a
// hit, like get), and whether it is being loaded.
func (c *blockLRU) peek(id chunkstore.ID) (b *chunkstore.Block, j int, cached, loading bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if loc, ok := c.chunks[id]; ok {
		c.order.MoveToFront(loc.e)
		c.hits++
		return loc.e.Value.(*blockEntry).b, loc.j, true, false
	}
	return nil, 0, false, c.loading[id] != nil
}

// has reports whether id is cached or being loaded.
func (c *blockLRU) has(id chunkstore.ID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.chunks[id]
	return ok || c.loading[id] != nil
}

// forget drops id's place in block b (its hash did not match), so the
// next read of it asks the store again.
func (c *blockLRU) forget(id chunkstore.ID, b *chunkstore.Block) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if loc, ok := c.chunks[id]; ok && loc.e.Value.(*blockEntry).b == b {
		delete(c.chunks, id)
	}
}

// addLocked caches b, which holds chunk id at index j, and indexes its
// chunks, then evicts least recently used blocks until the budget holds.
func (c *blockLRU) addLocked(id chunkstore.ID, b *chunkstore.Block, j int) {
	e := c.blocks[b]
	if e == nil {
		cost := b.Size() + int64(b.Chunks())*chunkIndexCost
		if cost > c.max || !c.newChunksLocked(b) {
			// Too big, or every chunk of b is cached in another block
			// already (loaded meanwhile): b would hold memory no read
			// finds.
			return
		}
		e = c.order.PushFront(&blockEntry{b: b, cost: cost})
		c.blocks[b] = e
		c.used += cost
		for k := range b.Chunks() {
			loc, ok := c.chunks[b.ID(k)]
			if ok && b.Chunks() > 1 && loc.e.Value.(*blockEntry).b.Chunks() == 1 {
				// A copy of one chunk (Set.copySparse) is superseded by
				// its whole block: drop the copy.
				c.removeLocked(loc.e)
				ok = false
			}
			if !ok {
				c.chunks[b.ID(k)] = chunkLoc{e, k}
			}
		}
	} else {
		c.order.MoveToFront(e)
	}
	if _, ok := c.chunks[id]; !ok {
		c.chunks[id] = chunkLoc{e, j}
	}
	for c.used > c.max {
		c.removeLocked(c.order.Back())
	}
}

// newChunksLocked reports whether b holds a chunk not cached yet.
func (c *blockLRU) newChunksLocked(b *chunkstore.Block) bool {
	for k := range b.Chunks() {
		if _, ok := c.chunks[b.ID(k)]; !ok {
			return true
		}
	}
	return false
}

func (c *blockLRU) removeLocked(e *list.Element) {
	ent := e.Value.(*blockEntry)
	c.order.Remove(e)
	delete(c.blocks, ent.b)
	c.used -= ent.cost
	for k := range ent.b.Chunks() {
		if loc, ok := c.chunks[ent.b.ID(k)]; ok && loc.e == e {
			delete(c.chunks, ent.b.ID(k))
		}
	}
}

// usage returns the bytes held and the hit and miss counts.
func (c *blockLRU) usage() (used, hits, misses int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used, c.hits, c.misses
}
