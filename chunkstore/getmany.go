package chunkstore

import (
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// ManyGetter is a Reader that fetches many chunks into the caller's
// buffers: one index transaction for all of them and no copy besides the
// one out of the (cached) decompressed block. Restore reads runs of
// consecutive chunks this way. Use GetMany, which falls back to Get.
type ManyGetter interface {
	// GetMany fills bufs[i] with chunk ids[i], whose length must be
	// len(bufs[i]) (else a *LengthError), after checking its BLAKE3. A nil
	// bufs[i] is set to a new buffer of the chunk's length instead (copied
	// into without being zeroed first: a cache that keeps every chunk in
	// its own buffer saves a pass over the memory). Errors are those of
	// Get. Buffers that lie back to back in one array (bufs[i+1] starting
	// where bufs[i] ends, within its capacity) and ask for every chunk of
	// a block get the block decoded straight into them (blockrun.go);
	// nothing past a buffer's length is written.
	GetMany(ctx context.Context, ids []ID, bufs [][]byte) error
}

// LengthError says a chunk does not have the length the caller expected.
type LengthError struct {
	ID        ID
	Len, Want int
}

func (e *LengthError) Error() string {
	return fmt.Sprintf("chunk %s: %d bytes, expected %d", e.ID.Short(), e.Len, e.Want)
}

// GetMany reads chunks ids into bufs through r's GetMany when it has one,
// else one Get at a time.
func GetMany(ctx context.Context, r Reader, ids []ID, bufs [][]byte) error {
	if m, ok := r.(ManyGetter); ok {
		return m.GetMany(ctx, ids, bufs)
	}
	for i, id := range ids {
		data, err := r.Get(ctx, id)
		if err != nil {
			return err
		}
		if bufs[i] == nil {
			bufs[i] = data
			continue
		}
		if len(data) != len(bufs[i]) {
			return &LengthError{ID: id, Len: len(data), Want: len(bufs[i])}
		}
		copy(bufs[i], data)
	}
	return nil
}

var _ ManyGetter = (*FileStore)(nil)

// GetMany implements ManyGetter.
func (s *FileStore) GetMany(ctx context.Context, ids []ID, bufs [][]byte) error {
	if err := s.check(false); err != nil {
		return err
	}
	if len(ids) != len(bufs) {
		return fmt.Errorf("chunkstore: GetMany of %d IDs into %d buffers", len(ids), len(bufs))
	}
	ents := make([]entry, len(ids))
	found := make([]bool, len(ids))
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		chunks, _, err := buckets(tx)
		if err != nil {
			return err
		}
		for i, id := range ids {
			if v := chunks.Get(id[:]); v != nil {
				if ents[i], err = decodeEntry(id, v); err != nil {
					return err
				}
				found[i] = true
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i := 0; i < len(ids); i++ {
		id := ids[i]
		if !found[i] {
			return &NotFoundError{ID: id}
		}
		if k, dst := blockRun(ents, bufs, i); k > i && s.readRun(ids[i:k], ents[i:k], dst) {
			i = k - 1
			continue
		}
		data, err := s.readChunk(id, ents[i], bufs[i])
		if err == nil && bufs[i] == nil {
			bufs[i] = data
		}
		if err != nil {
			if _, ok := err.(*LengthError); ok {
				return err
			}
			// GC may have moved the chunk since the lookup: Get looks
			// again before calling it corrupt.
			data, err := s.Get(ctx, id)
			if err != nil {
				return err
			}
			if bufs[i] == nil {
				bufs[i] = data
				continue
			}
			if len(data) != len(bufs[i]) {
				return &LengthError{ID: id, Len: len(data), Want: len(bufs[i])}
			}
			copy(bufs[i], data)
		}
	}
	return nil
}

// readRun decodes the whole-block run ids (see blockRun) straight into dst.
// false means it did not: the block is in the cache already, the run is
// not the whole block, or the frame is damaged; the per-chunk path then
// serves the run (and reports damage after looking the chunk up again, as
// GC may have moved it).
func (s *FileStore) readRun(ids []ID, ents []entry, dst []byte) bool {
	e := ents[0]
	key := blockKey{e.Pack, e.FrameOff}
	if s.cache.get(key) != nil {
		return false
	}
	f, err := s.readFrame(e)
	if err != nil {
		return false
	}
	defer releaseFrame(f, f.buf)
	ok, _, err := f.decodeRunInto(dst, ids, ents)
	if ok {
		return err == nil
	}
	// Part of a block (the rest is wanted by the next call, usually):
	// cache it from the frame read already, for the per-chunk path and
	// for whoever wants the rest.
	_, _ = s.cache.load(key, func() (*cachedBlock, error) {
		block, err := f.block()
		if err != nil {
			return nil, &frameError{"decompressing block", err}
		}
		return &cachedBlock{key: key, block: block, chunks: f.Chunks}, nil
	})
	return false
}
