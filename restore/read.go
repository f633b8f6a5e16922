package restore

import (
	"context"
	"fmt"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
)

// ReadRange fills p with the guest content of root at off: chunk data
// where the manifest has it, zeros elsewhere. Meant for small ranges
// (diff); restores stream instead.
func ReadRange(ctx context.Context, r chunkstore.Reader, root engram.Root, p []byte, off int64) error {
	clear(p)
	end := off + int64(len(p))
	cur := engram.NewCursor(ctx, r, root)
	for {
		ref, ok, err := cur.SkipTo(off)
		if err != nil {
			return err
		}
		if !ok || ref.Offset >= end {
			return nil
		}
		data, err := r.Get(ctx, ref.ID)
		if err != nil {
			return fmt.Errorf("chunk at guest %#x: %w", ref.Offset, err)
		}
		if len(data) != int(ref.Length) {
			return fmt.Errorf("chunk %s at guest %#x: %d bytes, manifest says %d", ref.ID.Short(), ref.Offset, len(data), ref.Length)
		}
		lo, hi := max(ref.Offset, off), min(ref.End(), end)
		copy(p[lo-off:hi-off], data[lo-ref.Offset:hi-ref.Offset])
		cur.Pop()
	}
}
