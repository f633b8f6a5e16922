package engram

import (
	"context"
	"fmt"

	"github.com/engram-vm/engram/chunkstore"
)

// Builder assembles a manifest from chunk refs added in guest order. It
// holds one page at a time, so memory stays flat whatever the image size.
type Builder struct {
	size    int64
	emit    func(chunkstore.Chunk) error
	cur     []ChunkRef
	curPage uint64
	prevEnd int64
	pages   []PageRef
	chunks  int64
	bytes   int64
}

// NewBuilder starts a manifest for an image of size bytes. emit receives
// every finished page as a chunk to store; the caller must have stored all
// of them (and all data chunks) before committing the root.
func NewBuilder(size int64, emit func(chunkstore.Chunk) error) *Builder {
	return &Builder{size: size, emit: emit}
}

// Add appends a chunk ref; refs must come sorted and non-overlapping.
func (b *Builder) Add(r ChunkRef) error {
	if r.Offset < b.prevEnd || r.End() > b.size || r.Length == 0 {
		return fmt.Errorf("manifest: chunk at %#x+%#x out of order or past the image end %#x", r.Offset, r.Length, b.size)
	}
	b.prevEnd = r.End()
	page := uint64(r.Offset / PageSpan)
	if len(b.cur) > 0 && page != b.curPage {
		if err := b.flush(); err != nil {
			return err
		}
	}
	b.curPage = page
	b.cur = append(b.cur, r)
	b.chunks++
	b.bytes += int64(r.Length)
	return nil
}

func (b *Builder) flush() error {
	if len(b.cur) == 0 {
		return nil
	}
	enc, err := EncodePage(b.curPage, b.cur)
	if err != nil {
		return err
	}
	id := chunkstore.Sum(enc)
	b.pages = append(b.pages, PageRef{Index: b.curPage, ID: id})
	b.cur = b.cur[:0]
	return b.emit(chunkstore.Chunk{ID: id, Data: enc})
}

// Finish emits the last page and returns the root, its encoding and the
// engram ID.
func (b *Builder) Finish() (Root, []byte, ID, error) {
	if err := b.flush(); err != nil {
		return Root{}, nil, ID{}, err
	}
	root := Root{Size: b.size, Pages: b.pages}
	enc := EncodeRoot(root)
	return root, enc, chunkstore.Sum(enc), nil
}

// DataBytes is the sum of the lengths of the chunks added so far.
func (b *Builder) DataBytes() int64 { return b.bytes }

// Chunks is the number of chunk refs added so far.
func (b *Builder) Chunks() int64 { return b.chunks }

// ForEachChunk calls fn for every chunk ref of root, in guest order,
// loading one page at a time from r.
func ForEachChunk(ctx context.Context, r chunkstore.Reader, root Root, fn func(ChunkRef) error) error {
	for _, p := range root.Pages {
		refs, err := LoadPage(ctx, r, root, p)
		if err != nil {
			return err
		}
		for _, ref := range refs {
			if err := fn(ref); err != nil {
				return err
			}
		}
	}
	return nil
}

// LoadPage fetches and decodes one page of root.
func LoadPage(ctx context.Context, r chunkstore.Reader, root Root, p PageRef) ([]ChunkRef, error) {
	b, err := r.Get(ctx, p.ID)
	if err != nil {
		return nil, fmt.Errorf("manifest page %d (chunk %s): %w", p.Index, p.ID.Short(), err)
	}
	return DecodePage(b, p.Index, root.Size)
}
