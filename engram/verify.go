package engram

import (
	"context"
	"errors"
	"fmt"

	"github.com/engram-vm/engram/chunkstore"
)

// ErrIncomplete means an engram needs chunks the store does not hold or
// holds damaged.
var ErrIncomplete = errors.New("engram incomplete")

// Check verifies that engram id can be restored as far as the index tells:
// its root and every page decode and every chunk is present. bad, if not
// nil, names chunks known to be damaged (from a store verify). It returns
// nil or an error counting and naming the missing chunks.
func Check(ctx context.Context, r chunkstore.Reader, id ID, bad func(chunkstore.ID) bool) error {
	root, err := LoadRoot(ctx, r, id)
	if err != nil {
		return err
	}
	var missing, damaged int
	var first string
	note := func(what string, c ChunkRef) {
		if first == "" {
			first = fmt.Sprintf("%s chunk %s at guest %#x", what, c.ID.Short(), c.Offset)
		}
	}
	var batch []ChunkRef
	flush := func() error {
		ids := make([]chunkstore.ID, len(batch))
		for i, c := range batch {
			ids[i] = c.ID
		}
		have, err := r.HasMany(ctx, ids)
		if err != nil {
			return err
		}
		for i, c := range batch {
			switch {
			case !have[i]:
				missing++
				note("missing", c)
			case bad != nil && bad(c.ID):
				damaged++
				note("damaged", c)
			}
		}
		batch = batch[:0]
		return nil
	}
	for _, p := range root.Pages {
		if bad != nil && bad(p.ID) {
			return fmt.Errorf("engram %s: %w: manifest page %d (chunk %s) is damaged", id.Short(), ErrIncomplete, p.Index, p.ID.Short())
		}
		refs, err := LoadPage(ctx, r, root, p)
		if err != nil {
			return fmt.Errorf("engram %s: %w: %w", id.Short(), ErrIncomplete, err)
		}
		batch = append(batch, refs...)
		if err := flush(); err != nil {
			return err
		}
	}
	if missing+damaged > 0 {
		return fmt.Errorf("engram %s: %w: %s missing, %d damaged (first: %s)", id.Short(), ErrIncomplete, chunks(missing), damaged, first)
	}
	return nil
}

// chunks is "1 chunk" or "n chunks": one missing chunk is the common case
// after a single damaged pack, and "1 chunks" reads as a bug.
func chunks(n int) string {
	if n == 1 {
		return "1 chunk"
	}
	return fmt.Sprintf("%d chunks", n)
}
