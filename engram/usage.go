package engram

import (
	"context"

	"github.com/engram-vm/engram/chunkstore"
)

// Usage is what one engram costs in the store.
type Usage struct {
	ID          ID     `json:"id"`
	Name        string `json:"name,omitempty"`
	VirtualSize int64  `json:"virtual_size"`
	DataBytes   int64  `json:"data_bytes"`   // raw bytes of its data chunks
	UniqueBytes int64  `json:"unique_bytes"` // stored bytes of chunks only it needs: what rm + gc frees
	SharedBytes int64  `json:"shared_bytes"` // stored bytes of chunks it shares with other engrams
}

// Usages computes, for every engram, its unique and shared stored bytes.
// Pages count like data: a page only one engram uses is its own.
func Usages(ctx context.Context, r chunkstore.Reader) ([]Usage, error) {
	entries, err := List(ctx, r)
	if err != nil {
		return nil, err
	}
	names, err := Names(ctx, r)
	if err != nil {
		return nil, err
	}
	catalog, err := catalogChunksByEngram(ctx, r)
	if err != nil {
		return nil, err
	}
	users := map[chunkstore.ID]int32{} // how many engrams need each chunk
	sets := make([]map[chunkstore.ID]struct{}, len(entries))
	out := make([]Usage, len(entries))
	for i, e := range entries {
		root, err := LoadRoot(ctx, r, e.ID)
		if err != nil {
			return nil, err
		}
		set := map[chunkstore.ID]struct{}{}
		for _, c := range catalog[e.ID] {
			set[c] = struct{}{}
		}
		for _, p := range root.Pages {
			set[p.ID] = struct{}{}
		}
		out[i] = Usage{ID: e.ID, VirtualSize: root.Size}
		// The newest name that still selects it (a name moves on).
		if ns := names[e.ID]; len(ns) > 0 {
			out[i].Name = ns[len(ns)-1]
		}
		err = ForEachChunk(ctx, r, root, func(c ChunkRef) error {
			set[c.ID] = struct{}{}
			out[i].DataBytes += int64(c.Length)
			return nil
		})
		if err != nil {
			return nil, err
		}
		for id := range set {
			users[id]++
		}
		sets[i] = set
	}
	stored, err := storedSizes(ctx, r, users)
	if err != nil {
		return nil, err
	}
	for i, set := range sets {
		for id := range set {
			if users[id] == 1 {
				out[i].UniqueBytes += stored[id]
			} else {
				out[i].SharedBytes += stored[id]
			}
		}
	}
	return out, nil
}

func storedSizes(ctx context.Context, r chunkstore.Reader, ids map[chunkstore.ID]int32) (map[chunkstore.ID]int64, error) {
	out := make(map[chunkstore.ID]int64, len(ids))
	batch := make([]chunkstore.ID, 0, 4096)
	flush := func() error {
		ents, err := r.Lookup(ctx, batch)
		if err != nil {
			return err
		}
		for _, e := range ents {
			out[e.ID] = e.StoredLen
		}
		batch = batch[:0]
		return nil
	}
	for id := range ids {
		batch = append(batch, id)
		if len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	if len(batch) > 0 {
		if err := flush(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// catalogChunksByEngram lists the catalog chunk of every record, by the
// engram the record belongs to: they are freed with it.
func catalogChunksByEngram(ctx context.Context, r chunkstore.Reader) (map[ID][]chunkstore.ID, error) {
	out := map[ID][]chunkstore.ID{}
	err := r.View(ctx, func(tx chunkstore.MetaTx) error {
		return tx.ForEach(bucketRecords, nil, func(k, v []byte) error {
			rec, err := decodeRecord(v)
			if err != nil {
				return nil // List reports bad records
			}
			id, err := rec.EngramID()
			if err != nil {
				return nil
			}
			if root := tx.Get(bucketEngrams, id[:]); root != nil {
				out[id] = append(out[id], chunkstore.Sum(encodeCatalogChunk(root, v)))
			}
			return nil
		})
	})
	return out, err
}
