package engram

import (
	"context"
	"fmt"

	"github.com/engram-vm/engram/chunkstore"
)

// Cursor walks the chunk refs of a manifest in guest order, loading one
// page at a time.
type Cursor struct {
	ctx  context.Context
	r    chunkstore.Reader
	root Root
	page int // next page to load
	refs []ChunkRef
	i    int
}

// NewCursor starts at the first ref of root, whose pages r holds.
func NewCursor(ctx context.Context, r chunkstore.Reader, root Root) *Cursor {
	return &Cursor{ctx: ctx, r: r, root: root}
}

// Peek returns the next ref without consuming it; ok is false at the end.
func (c *Cursor) Peek() (ref ChunkRef, ok bool, err error) {
	return c.SkipTo(-1)
}

// SkipTo skips the refs that end at or before pos and returns the next one,
// without loading pages that lie wholly before pos (a page's refs start in
// its span and end at most MaxChunkLen later).
func (c *Cursor) SkipTo(pos int64) (ChunkRef, bool, error) {
	for {
		for c.i < len(c.refs) && c.refs[c.i].End() <= pos {
			c.i++
		}
		if c.i < len(c.refs) {
			return c.refs[c.i], true, nil
		}
		if c.page >= len(c.root.Pages) {
			return ChunkRef{}, false, nil
		}
		p := c.root.Pages[c.page]
		c.page++
		if (int64(p.Index)+1)*PageSpan+MaxChunkLen <= pos {
			continue
		}
		refs, err := LoadPage(c.ctx, c.r, c.root, p)
		if err != nil {
			return ChunkRef{}, false, fmt.Errorf("manifest: %w", err)
		}
		c.refs, c.i = refs, 0
	}
}

// Pop consumes the ref Peek or SkipTo returned.
func (c *Cursor) Pop() { c.i++ }
