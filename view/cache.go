package view

import (
	"container/list"
	"sync"
)

// lru is a byte-bounded LRU cache whose loads are shared: however many
// goroutines ask for a missing key at once, load runs once and they all get
// its result. Errors are not cached. It holds decoded manifest pages;
// chunks live in blockLRU.
type lru[K comparable, V any] struct {
	mu      sync.Mutex
	max     int64
	used    int64
	order   *list.List // of *lruEntry[K, V], most recent first
	items   map[K]*list.Element
	loading map[K]*lruLoad[V]

	hits, misses int64 // for tests and stats
}

type lruEntry[K comparable, V any] struct {
	key  K
	val  V
	cost int64
}

type lruLoad[V any] struct {
	done chan struct{}
	val  V
	err  error
}

func newLRU[K comparable, V any](maxBytes int64) *lru[K, V] {
	return &lru[K, V]{max: maxBytes, order: list.New(), items: map[K]*list.Element{}, loading: map[K]*lruLoad[V]{}}
}

// get returns the value of k, loading it with load if it is neither cached
// nor being loaded. load returns the value and what it costs in bytes.
func (c *lru[K, V]) get(k K, load func() (V, int64, error)) (V, error) {
	c.mu.Lock()
	if e := c.items[k]; e != nil {
		c.order.MoveToFront(e)
		c.hits++
		c.mu.Unlock()
		return e.Value.(*lruEntry[K, V]).val, nil
	}
	if l := c.loading[k]; l != nil {
		c.hits++
		c.mu.Unlock()
		<-l.done
		return l.val, l.err
	}
	c.misses++
	l := &lruLoad[V]{done: make(chan struct{})}
	c.loading[k] = l
	c.mu.Unlock()

	var cost int64
	l.val, cost, l.err = load()
	c.mu.Lock()
	delete(c.loading, k)
	if l.err == nil {
		c.addLocked(k, l.val, cost)
	}
	c.mu.Unlock()
	close(l.done)
	return l.val, l.err
}

func (c *lru[K, V]) addLocked(k K, v V, cost int64) {
	if cost > c.max || c.items[k] != nil {
		return
	}
	c.items[k] = c.order.PushFront(&lruEntry[K, V]{key: k, val: v, cost: cost})
	c.used += cost
	for c.used > c.max {
		e := c.order.Back()
		c.order.Remove(e)
		ent := e.Value.(*lruEntry[K, V])
		delete(c.items, ent.key)
		c.used -= ent.cost
	}
}

// usage returns the bytes held and the hit and miss counts.
func (c *lru[K, V]) usage() (used, hits, misses int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used, c.hits, c.misses
}
