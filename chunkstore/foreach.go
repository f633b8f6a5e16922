package chunkstore

import (
	"context"
	"sort"
)

// Lister enumerates a store's index. BlobStore and MemStore implement it;
// engram.RecoverCatalog uses it to find catalog chunks after a repair.
type Lister interface {
	// ForEach calls fn for every indexed chunk, in ID order, until fn
	// returns an error, which ForEach returns. StoredLen is the chunk's
	// share of its frame. fn runs outside any index transaction, so it
	// may Get chunks and take its time.
	ForEach(ctx context.Context, fn func(Entry) error) error
}

var _ Lister = (*MemStore)(nil)

// ForEach implements Lister; StoredLen is the raw length. It visits a
// snapshot taken when it starts.
func (m *MemStore) ForEach(ctx context.Context, fn func(Entry) error) error {
	m.mu.RLock()
	if m.closed {
		m.mu.RUnlock()
		return ErrClosed
	}
	ents := make([]Entry, 0, len(m.chunks))
	for id, d := range m.chunks {
		ents = append(ents, Entry{ID: id, RawLen: len(d), StoredLen: int64(len(d))})
	}
	m.mu.RUnlock()
	sort.Slice(ents, func(i, j int) bool { return string(ents[i].ID[:]) < string(ents[j].ID[:]) })
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}
