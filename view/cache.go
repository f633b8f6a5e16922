package view

import (
	"container/list"
	"sync"
)

// lru is a byte-bounded LRU cache whose loads are shared: however many
// goroutines ask for a missing key at once, load runs once and they all get
// its result. Errors are not cached.
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

// reserve marks every key of ks that is neither cached nor being loaded
// as being loaded by the caller, who must then call finish once for each
// key it got (mine[i] true); the others are left alone. A key listed twice
// is reserved once. Batch loads (read-ahead through GetMany) use it, so
// that a read wanting one of the keys waits for the batch instead of
// loading the chunk a second time.
func (c *lru[K, V]) reserve(ks []K, mine []bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, k := range ks {
		mine[i] = false
		if c.items[k] != nil || c.loading[k] != nil {
			continue
		}
		c.misses++
		c.loading[k] = &lruLoad[V]{done: make(chan struct{})}
		mine[i] = true
	}
}

// finish ends the load of k that reserve gave the caller: the value is
// cached (unless err) and whoever waits in get gets it.
func (c *lru[K, V]) finish(k K, v V, cost int64, err error) {
	c.mu.Lock()
	l := c.loading[k]
	delete(c.loading, k)
	if err == nil {
		c.addLocked(k, v, cost)
	}
	c.mu.Unlock()
	if l != nil {
		l.val, l.err = v, err
		close(l.done)
	}
}

// peek returns k's value if it is cached (a hit, like get), and whether
// it is being loaded.
func (c *lru[K, V]) peek(k K) (v V, cached, loading bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.items[k]; e != nil {
		c.order.MoveToFront(e)
		c.hits++
		return e.Value.(*lruEntry[K, V]).val, true, false
	}
	return v, false, c.loading[k] != nil
}

// has reports whether k is cached or being loaded.
func (c *lru[K, V]) has(k K) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.items[k] != nil || c.loading[k] != nil
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
