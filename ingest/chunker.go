package ingest

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/zeebo/xxh3"

	"github.com/engram-vm/engram/chunkstore"
)

// Chunker cuts guest data at aligned, content-defined boundaries: the guest
// is a sequence of Align-sized blocks, an all-zero block is never stored and
// ends a chunk, and a chunk also ends after a block whose xxh3 falls under a
// threshold (once it is Min long) or when it reaches Max. Boundaries depend
// on the guest content only, never on how the image stores it.
type Chunker struct {
	p         chunkstore.ChunkParams
	threshold uint64
	zero      []byte
	work      sync.Pool   // Max-sized buffers chunks grow in
	sized     []sync.Pool // chunk buffers by length in Align units, so memory in flight is what the chunks hold
}

// ErrStoreChunking is returned when the store's chunking parameters (its
// config.json) are ones this version cannot cut with: the store is at
// fault, not the image. Restore does not need them.
var ErrStoreChunking = errors.New("the store's chunking parameters cannot be used for ingest")

// storeChunker is NewChunker for st's parameters.
func storeChunker(st chunkstore.Reader) (*Chunker, error) {
	ch, err := NewChunker(st.Params().Chunking)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStoreChunking, err)
	}
	return ch, nil
}

// NewChunker checks p and returns a Chunker for it.
func NewChunker(p chunkstore.ChunkParams) (*Chunker, error) {
	if err := p.Invalid(); err != nil {
		return nil, err
	}
	if p.Algorithm != chunkstore.DefaultChunkParams.Algorithm {
		return nil, fmt.Errorf("chunking algorithm %q is not supported (want %q)", p.Algorithm, chunkstore.DefaultChunkParams.Algorithm)
	}
	if p.Align < 512 || p.Align&(p.Align-1) != 0 || p.Min < p.Align || p.Min%p.Align != 0 ||
		p.Max%p.Align != 0 || p.Avg <= p.Min || p.Max < p.Avg || p.Max > 4<<20 {
		return nil, fmt.Errorf("invalid chunking parameters %+v: need align a power of two >= 512, align <= min < avg <= max <= 4 MiB, min and max multiples of align", p)
	}
	// After Min, each block ends the chunk with probability Align/(Avg-Min),
	// so the expected length is Avg.
	blocks := uint64((p.Avg - p.Min) / p.Align)
	if blocks == 0 {
		blocks = 1
	}
	c := &Chunker{p: p, threshold: math.MaxUint64 / blocks, zero: make([]byte, p.Align)}
	c.work.New = func() any { b := make([]byte, 0, p.Max); return &b }
	c.sized = make([]sync.Pool, p.Max/p.Align+1)
	return c, nil
}

// Params returns the parameters the chunker cuts with.
func (c *Chunker) Params() chunkstore.ChunkParams { return c.p }

// IsZero reports whether b (at most Align bytes) is all zero.
func (c *Chunker) IsZero(b []byte) bool { return bytes.Equal(b, c.zero[:len(b)]) }

// getBuf returns an empty buffer of capacity Max to grow a chunk in.
func (c *Chunker) getBuf() []byte { return (*(c.work.Get().(*[]byte)))[:0] }

// sizedCopy copies a finished chunk into a pooled buffer of its size class.
func (c *Chunker) sizedCopy(data []byte) []byte {
	units := (len(data) + c.p.Align - 1) / c.p.Align
	var b []byte
	if v := c.sized[units].Get(); v != nil {
		b = (*(v.(*[]byte)))[:len(data)]
	} else {
		b = make([]byte, len(data), units*c.p.Align)
	}
	copy(b, data)
	return b
}

// PutBuf hands a chunk's buffer back once nothing refers to it. Buffers
// that did not come from the chunker are left to the garbage collector.
func (c *Chunker) PutBuf(b []byte) {
	if cap(b)%c.p.Align != 0 || cap(b) == 0 || cap(b) > c.p.Max {
		return
	}
	b = b[:0]
	c.sized[cap(b)/c.p.Align].Put(&b)
}

// Splitter feeds guest data through a Chunker. Write receives data in
// increasing guest order; a gap between writes ends the current chunk, as
// an all-zero block does. Emitted buffers come from the chunker's pool and
// belong to the receiver (hand them back with PutBuf).
type Splitter struct {
	c      *Chunker
	emit   func(off int64, data []byte) error
	borrow func(off int64, data []byte, borrowed bool) error
	buf    []byte
	start  int64
	next   int64
}

// NewSplitter returns a Splitter that calls emit for every chunk.
func (c *Chunker) NewSplitter(emit func(off int64, data []byte) error) *Splitter {
	return &Splitter{c: c, emit: emit, next: -1}
}

// NewBorrowingSplitter is NewSplitter without the copy of a chunk that
// lies entirely inside one Write: emit gets it as a sub-slice of that
// Write's data (borrowed true), which the receiver must keep alive for as
// long as it uses the chunk; a chunk carried across Writes is copied into
// a pooled buffer as usual (borrowed false). Ingest hashes most chunks
// straight from its read buffers this way.
func (c *Chunker) NewBorrowingSplitter(emit func(off int64, data []byte, borrowed bool) error) *Splitter {
	return &Splitter{c: c, borrow: emit, next: -1}
}

// Block classes, from Classify.
const (
	blockData  = 0 // ordinary data
	blockZero  = 1 // all zero: never stored, ends a chunk
	blockBound = 2 // data whose hash may end a chunk (once it is Min long)
)

// Classify appends the class of each Align-sized block of data to cls and
// returns it: the per-block work of the cut (a zero test and an xxh3),
// which depends on the block alone, so readers run it in parallel and the
// one goroutine that cuts (WriteClassified) only scans the classes.
func (c *Chunker) Classify(data, cls []byte) []byte {
	align := c.p.Align
	for p := 0; p < len(data); p += align {
		blk := data[p:min(p+align, len(data))]
		switch {
		case c.IsZero(blk):
			cls = append(cls, blockZero)
		case xxh3.Hash(blk) < c.threshold:
			cls = append(cls, blockBound)
		default:
			cls = append(cls, blockData)
		}
	}
	return cls
}

// Write adds guest bytes at off; off must be a multiple of Align and at or
// after the end of the previous write. Only the last write of an image may
// end off the Align grid.
func (s *Splitter) Write(off int64, data []byte) error { return s.WriteClassified(off, data, nil) }

// WriteClassified is Write with the blocks of data already classified
// (Classify); cls nil classifies them here.
func (s *Splitter) WriteClassified(off int64, data, cls []byte) error {
	align := s.c.p.Align
	if off%int64(align) != 0 || off < s.next {
		return fmt.Errorf("chunker: write at %#x is unaligned or goes backwards (next %#x)", off, s.next)
	}
	if off != s.next {
		if err := s.cut(nil); err != nil {
			return err
		}
	}
	// The chunk in progress is s.buf (carried over from earlier writes)
	// followed by data[from:p]; it is copied once, when it is cut.
	if cls != nil && len(cls) != (len(data)+align-1)/align {
		return fmt.Errorf("chunker: %d block classes for %d bytes", len(cls), len(data))
	}
	from := -1
	for i, p := 0, 0; p < len(data); i, p = i+1, p+align {
		blk := data[p:min(p+align, len(data))]
		var class byte
		if cls != nil {
			class = cls[i]
		} else if s.c.IsZero(blk) {
			class = blockZero
		} else if xxh3.Hash(blk) < s.c.threshold {
			class = blockBound
		}
		if class == blockZero {
			if err := s.cutAt(data, &from, p); err != nil {
				return err
			}
			continue
		}
		if from < 0 {
			from = p
			if s.buf == nil {
				s.start = off + int64(p)
			}
		}
		n := len(s.buf) + p + len(blk) - from
		if n >= s.c.p.Max || (n >= s.c.p.Min && class == blockBound) {
			if err := s.cutAt(data, &from, p+len(blk)); err != nil {
				return err
			}
		}
	}
	if from >= 0 {
		if s.buf == nil {
			s.buf = s.c.getBuf()
		}
		s.buf = append(s.buf, data[from:]...)
	}
	s.next = off + int64(len(data))
	return nil
}

// cutAt ends the chunk in progress at data[:end] (if any of it is in data).
func (s *Splitter) cutAt(data []byte, from *int, end int) error {
	var tail []byte
	if *from >= 0 {
		tail = data[*from:end]
		*from = -1
	}
	return s.cut(tail)
}

// Flush emits the chunk in progress; the next chunk starts fresh.
func (s *Splitter) Flush() error { return s.cut(nil) }

// Fresh reports whether no chunk is in progress: the next non-zero block
// starts a new chunk whatever came before. (Between writes, a chunk in
// progress is always carried in s.buf.)
func (s *Splitter) Fresh() bool { return s.buf == nil }

// cut emits the chunk made of the carried prefix and tail, if any.
func (s *Splitter) cut(tail []byte) error {
	if s.buf == nil && len(tail) == 0 {
		return nil
	}
	var b []byte
	if s.buf == nil {
		if s.borrow != nil {
			return s.borrow(s.start, tail, true)
		}
		b = s.c.sizedCopy(tail)
	} else {
		b = s.c.sizedCopy(append(s.buf, tail...))
		work := s.buf[:0]
		s.c.work.Put(&work)
		s.buf = nil
	}
	if s.borrow != nil {
		return s.borrow(s.start, b, false)
	}
	return s.emit(s.start, b)
}
