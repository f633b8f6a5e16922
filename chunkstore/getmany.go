package chunkstore

import (
	"context"
	"fmt"
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
