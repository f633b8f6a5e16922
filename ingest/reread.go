package ingest

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
)

// errChanged: a guided re-read (guide) found the image no longer matches
// the engram that guided it; the ingest starts over, chunking as usual.
var errChanged = errors.New("image differs from the engram it was last ingested as")

// errPriorUnreadable: a page of the engram guiding a re-read could not be
// read (say it is in a pack whose damaged segment this host skipped). The
// guide is only a shortcut, so Run chunks the image as usual instead of
// failing on the previous engram.
var errPriorUnreadable = errors.New("the engram it was last ingested as cannot be read")

// guide cuts the read buffers of a re-read (--reread of a layer whose
// fingerprint is in the catalog) where the chunks of that layer's last
// engram lie, instead of running the chunker: no per-block xxh3, no
// boundary search. Each chunk is hashed as usual and must hash to the ID
// the engram has for it (checked in pipeline), and every byte read
// outside those chunks must be zero.
//
// Why that gives the manifest the chunker would: a chunk's cuts depend
// only on its content from its start (zero blocks and gaps end it, a
// block's xxh3 or Max ends it). At the first chunk, and after any chunk
// whose bytes are unchanged followed by zero blocks or gaps that are
// unchanged, the chunker is fresh at the same position as before, so by
// induction it cuts every unchanged chunk where it did. The first chunk
// that differs, or a non-zero byte outside the chunks, stops the run with
// errChanged, and Run chunks the image from the start.
type guide struct {
	cur      *engram.Cursor
	ch       *Chunker
	emit     func(off int64, data []byte, borrowed bool, want chunkstore.ID) error
	carry    []byte // bytes of a chunk that crosses reads
	carryRef engram.ChunkRef
	carrying bool
	next     int64 // guest offset just past the last read

	// A chunk that crosses from one mapped read into the next is not
	// copied when the two reads lie one after the other in memory (one
	// mapping, consecutive host offsets: most of a re-read): it is one
	// slice of the mapping, borrowed from both reads. lend returns the
	// read being cut, held once more for that, or nil when it may not be
	// lent across reads (not mapped); emitSpan emits such a
	// chunk, releasing both holds when it is done. Either may be nil
	// (no spans).
	lend     func() *readBuf
	emitSpan func(off int64, data []byte, head, tail *readBuf, want chunkstore.ID) error
	head     []byte   // while carrying: the chunk's bytes in the previous read, when headBuf is set
	headBuf  *readBuf // that read, held; nil: the chunk's bytes are in carry
	spans    int      // chunks emitted as spans (tests)
}

// write takes one read, in guest order.
func (g *guide) write(off int64, data []byte) error {
	if g.carrying && off != g.next {
		return errChanged // the chunk now runs into a gap, which would end it
	}
	g.next = off + int64(len(data))
	end := g.next
	pos := off
	if g.carrying && g.headBuf != nil {
		var err error
		if pos, err = g.span(off, data); err != nil {
			return err
		}
	}
	for pos < end {
		if g.carrying {
			n := min(g.carryRef.End(), end) - pos
			g.carry = append(g.carry, data[pos-off:pos-off+n]...)
			if pos += n; pos < g.carryRef.End() {
				continue
			}
			b := g.ch.sizedCopy(g.carry)
			work := g.carry[:0]
			g.ch.work.Put(&work)
			g.carry, g.carrying = nil, false
			if err := g.emit(g.carryRef.Offset, b, false, g.carryRef.ID); err != nil {
				return err
			}
			continue
		}
		ref, ok, err := g.cur.Peek()
		if err != nil {
			return fmt.Errorf("%w: %w", errPriorUnreadable, err)
		}
		if !ok || ref.Offset >= end {
			return g.zero(data[pos-off:])
		}
		if ref.Offset < pos || ref.Length == 0 || int(ref.Length) > g.ch.p.Max || ref.Offset%int64(g.ch.p.Align) != 0 {
			return errChanged // starts where nothing is read now (a gap), or not a chunk this chunker cuts
		}
		if err := g.zero(data[pos-off : ref.Offset-off]); err != nil {
			return err
		}
		g.cur.Pop()
		pos = ref.Offset
		if ref.End() <= end {
			if err := g.emit(ref.Offset, data[pos-off:ref.End()-off], true, ref.ID); err != nil {
				return err
			}
			pos = ref.End()
			continue
		}
		g.carryRef, g.carrying = ref, true
		if g.lend != nil && g.emitSpan != nil {
			if b := g.lend(); b != nil {
				g.head, g.headBuf = data[pos-off:], b
				return nil
			}
		}
		g.carry = g.ch.getBuf()
	}
	return nil
}

// span ends the carried chunk whose head is in the previous (mapped)
// read: as one slice of the mapping when data, the next read, follows
// the head in memory and holds the rest of the chunk, else by copying
// the head into carry for write to complete as usual. It returns where
// write goes on.
func (g *guide) span(off int64, data []byte) (int64, error) {
	head, hb := g.head, g.headBuf
	g.head, g.headBuf = nil, nil
	rest := g.carryRef.End() - off
	if rest <= int64(len(data)) && len(head) > 0 && len(data) > 0 &&
		unsafe.Add(unsafe.Pointer(unsafe.SliceData(head)), len(head)) == unsafe.Pointer(unsafe.SliceData(data)) {
		if tb := g.lend(); tb != nil {
			g.carrying = false
			g.spans++
			chunk := unsafe.Slice(unsafe.SliceData(head), int64(len(head))+rest)
			return off + rest, g.emitSpan(g.carryRef.Offset, chunk, hb, tb, g.carryRef.ID)
		}
	}
	g.carry = append(g.ch.getBuf(), head...)
	hb.release()
	return off, nil
}

// zero fails with errChanged unless b, outside any chunk, is all zero.
func (g *guide) zero(b []byte) error {
	for p := 0; p < len(b); p += g.ch.p.Align {
		if !g.ch.IsZero(b[p:min(p+g.ch.p.Align, len(b))]) {
			return errChanged
		}
	}
	return nil
}

// finish fails with errChanged unless every chunk of the engram was read.
func (g *guide) finish() error {
	if g.carrying {
		return errChanged
	}
	_, ok, err := g.cur.Peek()
	if err != nil {
		return fmt.Errorf("%w: %w", errPriorUnreadable, err)
	}
	if ok {
		return errChanged
	}
	return nil
}
