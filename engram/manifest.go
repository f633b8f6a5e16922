package engram

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/engram-vm/engram/chunkstore"
)

// ID names an engram: the BLAKE3 of its root encoding. It is the same type
// as a chunk ID.
type ID = chunkstore.ID

// PageSpan is the guest range one manifest page covers. 16 MiB keeps a page
// of a fully written range near 10 KiB (256 chunks of 64 KiB) and gives a
// clone with scattered changes many pages it shares with its template.
const PageSpan = 16 << 20

// MaxChunkLen bounds the length of one chunk ref a decoder accepts.
const MaxChunkLen = 4 << 20

// Encoding versions; see docs/FORMAT.md.
const (
	pageMagic   = "ENGP"
	rootMagic   = "ENGR"
	pageVersion = 1
	rootVersion = 1

	pageHeaderLen = 24
	pageEntryLen  = 40
	rootHeaderLen = 32
	rootEntryLen  = 40
)

// ErrBadManifest is returned when a page or root does not decode: wrong
// magic, unknown version, or counts, offsets and lengths that do not fit.
var ErrBadManifest = errors.New("bad manifest")

// ChunkRef places one chunk in the guest.
type ChunkRef struct {
	Offset int64 // guest offset
	Length uint32
	ID     chunkstore.ID
}

// End is the guest offset just past the chunk.
func (c ChunkRef) End() int64 { return c.Offset + int64(c.Length) }

// PageRef names a stored page.
type PageRef struct {
	Index uint64 // page covers [Index*PageSpan, (Index+1)*PageSpan)
	ID    chunkstore.ID
}

// Root is a decoded engram root.
type Root struct {
	Size  int64 // virtual size
	Pages []PageRef
}

func badf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadManifest, fmt.Sprintf(format, args...))
}

// EncodePage encodes the chunk refs of page index. refs must be sorted,
// non-overlapping and start inside the page.
func EncodePage(index uint64, refs []ChunkRef) ([]byte, error) {
	base := int64(index) * PageSpan
	b := make([]byte, pageHeaderLen+pageEntryLen*len(refs))
	copy(b, pageMagic)
	binary.LittleEndian.PutUint16(b[4:], pageVersion)
	binary.LittleEndian.PutUint64(b[8:], index)
	binary.LittleEndian.PutUint32(b[16:], uint32(len(refs)))
	prevEnd := base
	for i, r := range refs {
		if r.Offset < prevEnd || r.Offset >= base+PageSpan || r.Length == 0 || r.Length > MaxChunkLen {
			return nil, badf("page %d: chunk %d at %#x+%#x out of order or outside the page", index, i, r.Offset, r.Length)
		}
		prevEnd = r.End()
		e := b[pageHeaderLen+pageEntryLen*i:]
		binary.LittleEndian.PutUint32(e[0:], uint32(r.Offset-base))
		binary.LittleEndian.PutUint32(e[4:], r.Length)
		copy(e[8:40], r.ID[:])
	}
	return b, nil
}

// DecodePage decodes a page and checks it against the page index and the
// image size it is expected to belong to.
func DecodePage(b []byte, index uint64, size int64) ([]ChunkRef, error) {
	if len(b) < pageHeaderLen || string(b[:4]) != pageMagic {
		return nil, badf("page %d: bad magic or short (%d bytes)", index, len(b))
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != pageVersion {
		return nil, badf("page %d: unknown version %d", index, v)
	}
	if binary.LittleEndian.Uint16(b[6:]) != 0 || binary.LittleEndian.Uint32(b[20:]) != 0 {
		return nil, badf("page %d: reserved fields are not zero", index)
	}
	if got := binary.LittleEndian.Uint64(b[8:]); got != index {
		return nil, badf("page %d: encodes index %d", index, got)
	}
	n := binary.LittleEndian.Uint32(b[16:])
	if uint64(len(b)-pageHeaderLen) != uint64(n)*pageEntryLen {
		return nil, badf("page %d: %d entries do not fit %d bytes", index, n, len(b))
	}
	refs := make([]ChunkRef, n)
	base := int64(index) * PageSpan
	prevEnd := base
	for i := range refs {
		e := b[pageHeaderLen+pageEntryLen*i:]
		off := int64(binary.LittleEndian.Uint32(e[0:]))
		ln := binary.LittleEndian.Uint32(e[4:])
		r := ChunkRef{Offset: base + off, Length: ln}
		copy(r.ID[:], e[8:40])
		if off >= PageSpan || r.Offset < prevEnd || ln == 0 || ln > MaxChunkLen || r.End() > size {
			return nil, badf("page %d: chunk %d at %#x+%#x out of order or outside the image (size %#x)", index, i, r.Offset, ln, size)
		}
		prevEnd = r.End()
		refs[i] = r
	}
	return refs, nil
}

// EncodeRoot encodes a root; its BLAKE3 is the engram ID.
func EncodeRoot(r Root) []byte {
	b := make([]byte, rootHeaderLen+rootEntryLen*len(r.Pages))
	copy(b, rootMagic)
	binary.LittleEndian.PutUint16(b[4:], rootVersion)
	binary.LittleEndian.PutUint64(b[8:], uint64(r.Size))
	binary.LittleEndian.PutUint64(b[16:], PageSpan)
	binary.LittleEndian.PutUint32(b[24:], uint32(len(r.Pages)))
	for i, p := range r.Pages {
		e := b[rootHeaderLen+rootEntryLen*i:]
		binary.LittleEndian.PutUint64(e[0:], p.Index)
		copy(e[8:40], p.ID[:])
	}
	return b
}

// DecodeRoot decodes and checks a root.
func DecodeRoot(b []byte) (Root, error) {
	var r Root
	if len(b) < rootHeaderLen || string(b[:4]) != rootMagic {
		return r, badf("root: bad magic or short (%d bytes)", len(b))
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != rootVersion {
		return r, badf("root: unknown version %d", v)
	}
	if binary.LittleEndian.Uint16(b[6:]) != 0 || binary.LittleEndian.Uint32(b[28:]) != 0 {
		return r, badf("root: reserved fields are not zero")
	}
	size := binary.LittleEndian.Uint64(b[8:])
	if size > 1<<62 {
		return r, badf("root: virtual size %#x too large", size)
	}
	r.Size = int64(size)
	if span := binary.LittleEndian.Uint64(b[16:]); span != PageSpan {
		return r, badf("root: page span %d, this version uses %d", span, PageSpan)
	}
	n := binary.LittleEndian.Uint32(b[24:])
	if uint64(len(b)-rootHeaderLen) != uint64(n)*rootEntryLen {
		return r, badf("root: %d pages do not fit %d bytes", n, len(b))
	}
	r.Pages = make([]PageRef, n)
	for i := range r.Pages {
		e := b[rootHeaderLen+rootEntryLen*i:]
		p := PageRef{Index: binary.LittleEndian.Uint64(e[0:])}
		copy(p.ID[:], e[8:40])
		if p.Index >= uint64(r.Size+PageSpan-1)/PageSpan || (i > 0 && p.Index <= r.Pages[i-1].Index) {
			return r, badf("root: page %d index %d out of order or past the image end", i, p.Index)
		}
		r.Pages[i] = p
	}
	return r, nil
}
