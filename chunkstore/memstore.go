package chunkstore

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
)

// MemStore is an in-memory Store and Maintainer for tests of other
// packages. It keeps the directory store's semantics: Put checks IDs, Get
// verifies BLAKE3, MetaTx buckets and keys behave the same, GC drops dead
// chunks, Verify rehashes everything.
type MemStore struct {
	params Params
	mu     sync.RWMutex
	chunks map[ID][]byte
	meta   map[string]map[string][]byte
	closed bool
}

var (
	_ Store      = (*MemStore)(nil)
	_ Maintainer = (*MemStore)(nil)
)

// NewMemory returns an empty MemStore with params p (zero fields get the
// defaults Init would record).
func NewMemory(p Params) *MemStore {
	if p.Compression == "" {
		p.Compression = "default"
	}
	if p.Chunking == (ChunkParams{}) {
		p.Chunking = DefaultChunkParams
	}
	return &MemStore{params: p, chunks: map[ID][]byte{}, meta: map[string]map[string][]byte{}}
}

// Corrupt flips a byte of a stored chunk, for tests of error paths.
func (m *MemStore) Corrupt(id ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.chunks[id]
	if !ok || len(d) == 0 {
		return false
	}
	d[len(d)/2] ^= 0xff
	return true
}

// Params returns the parameters given to NewMemory.
func (m *MemStore) Params() Params { return m.params }

// Close makes later calls fail with ErrClosed.
func (m *MemStore) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}

// Has implements Reader.
func (m *MemStore) Has(ctx context.Context, id ID) (bool, error) {
	r, err := m.HasMany(ctx, []ID{id})
	if err != nil {
		return false, err
	}
	return r[0], nil
}

// HasMany implements Reader.
func (m *MemStore) HasMany(ctx context.Context, ids []ID) ([]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return nil, ErrClosed
	}
	out := make([]bool, len(ids))
	for i, id := range ids {
		_, out[i] = m.chunks[id]
	}
	return out, nil
}

// Get implements Reader; it verifies BLAKE3 like BlobStore.
func (m *MemStore) Get(ctx context.Context, id ID) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	d, ok := m.chunks[id]
	closed := m.closed
	var out []byte
	if ok {
		out = append([]byte{}, d...)
	}
	m.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if !ok {
		return nil, &NotFoundError{ID: id}
	}
	if got := Sum(out); got != id {
		return nil, &CorruptChunkError{ID: id, Reason: "content hashes to " + got.Short()}
	}
	return out, nil
}

// Lookup implements Reader; StoredLen is the raw length.
func (m *MemStore) Lookup(ctx context.Context, ids []ID) ([]Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []Entry
	for _, id := range ids {
		if d, ok := m.chunks[id]; ok {
			out = append(out, Entry{ID: id, RawLen: len(d), StoredLen: int64(len(d))})
		}
	}
	return out, nil
}

// Put implements Writer.
func (m *MemStore) Put(ctx context.Context, id ID, data []byte) (bool, error) {
	n, err := m.PutMany(ctx, []Chunk{{ID: id, Data: data}})
	return n > 0, err
}

// PutMany implements Writer; it refuses an ID that does not match its data.
func (m *MemStore) PutMany(ctx context.Context, chunks []Chunk) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	for _, c := range chunks {
		if len(c.Data) > MaxChunkSize {
			return 0, &TooLargeError{ID: c.ID, Len: len(c.Data)}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrClosed
	}
	added := 0
	for _, c := range chunks {
		if _, ok := m.chunks[c.ID]; ok {
			continue
		}
		if got := Sum(c.Data); got != c.ID {
			return added, fmt.Errorf("chunkstore: put chunk %s: its data hashes to %s", c.ID, got)
		}
		m.chunks[c.ID] = append([]byte{}, c.Data...)
		added++
	}
	return added, nil
}

// memTx is a MetaTx over MemStore.meta; the caller holds the lock.
type memTx struct {
	m        *MemStore
	writable bool
}

func (t memTx) Get(bucket, key []byte) []byte {
	b := t.m.meta[string(bucket)]
	if b == nil {
		return nil
	}
	return b[string(key)]
}

func (t memTx) Put(bucket, key, value []byte) error {
	if !t.writable {
		return ErrReadOnly
	}
	if len(bucket) == 0 {
		return errEmptyBucket
	}
	if len(key) == 0 {
		return fmt.Errorf("chunkstore: empty key in bucket %q", bucket)
	}
	b := t.m.meta[string(bucket)]
	if b == nil {
		b = map[string][]byte{}
		t.m.meta[string(bucket)] = b
	}
	b[string(key)] = append([]byte{}, value...)
	return nil
}

func (t memTx) Delete(bucket, key []byte) error {
	if !t.writable {
		return ErrReadOnly
	}
	delete(t.m.meta[string(bucket)], string(key))
	return nil
}

func (t memTx) ForEach(bucket, prefix []byte, fn func(k, v []byte) error) error {
	b := t.m.meta[string(bucket)]
	keys := make([]string, 0, len(b))
	for k := range b {
		if bytes.HasPrefix([]byte(k), prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := fn([]byte(k), b[k]); err != nil {
			return err
		}
	}
	return nil
}

// View implements Reader.
func (m *MemStore) View(ctx context.Context, fn func(MetaTx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return fn(memTx{m: m})
}

// Update runs fn under the store lock; on error its writes are undone,
// as bbolt would.
func (m *MemStore) Update(ctx context.Context, fn func(MetaTx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	saved := make(map[string]map[string][]byte, len(m.meta))
	for b, kv := range m.meta {
		c := make(map[string][]byte, len(kv))
		for k, v := range kv {
			c[k] = v
		}
		saved[b] = c
	}
	if err := fn(memTx{m: m, writable: true}); err != nil {
		m.meta = saved
		return err
	}
	return nil
}

// Stats implements Reader; stored and pack bytes are the raw bytes.
func (m *MemStore) Stats(ctx context.Context) (Stats, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var st Stats
	for _, d := range m.chunks {
		st.Chunks++
		st.RawBytes += int64(len(d))
	}
	st.StoredBytes, st.PackBytes = st.RawBytes, st.RawBytes
	return st, nil
}

// Verify implements Maintainer: it rehashes every chunk.
func (m *MemStore) Verify(ctx context.Context, report func(Problem)) (VerifyStats, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var st VerifyStats
	for id, d := range m.chunks {
		st.Chunks++
		st.Bytes += int64(len(d))
		if got := Sum(d); got != id {
			st.Problems++
			if report != nil {
				report(Problem{ID: id, Err: &CorruptChunkError{ID: id, Reason: "content hashes to " + got.Short()}})
			}
		}
	}
	return st, nil
}

// GC implements Maintainer: it deletes the dead chunks.
func (m *MemStore) GC(ctx context.Context, live func(ID) bool, opts GCOptions) (GCStats, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var st GCStats
	for id, d := range m.chunks {
		st.Chunks++
		if live(id) {
			continue
		}
		st.DeadChunks++
		st.DeadBytes += int64(len(d))
		st.BytesFreed += int64(len(d))
		if !opts.DryRun {
			delete(m.chunks, id)
		}
	}
	return st, nil
}

// Repair drops chunks whose bytes no longer match their ID.
func (m *MemStore) Repair(ctx context.Context) (RepairReport, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var rep RepairReport
	for id, d := range m.chunks {
		if Sum(d) != id {
			delete(m.chunks, id)
			rep.Dropped++
		}
	}
	rep.Chunks = int64(len(m.chunks))
	return rep, nil
}
