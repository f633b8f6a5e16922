package ingest

import (
	"errors"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
)

// errChanged: a guided re-read (guide) found the image no longer matches
// the engram that guided it; the ingest starts over, chunking as usual.
var errChanged = errors.New("image differs from the engram it was last ingested as")

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
}

// write takes one read, in guest order.
func (g *guide) write(off int64, data []byte) error {
	if g.carrying && off != g.next {
		return errChanged // the chunk now runs into a gap, which would end it
	}
	g.next = off + int64(len(data))
	end := g.next
	for pos := off; pos < end; {
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
			return err
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
		g.carry, g.carryRef, g.carrying = g.ch.getBuf(), ref, true
	}
	return nil
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
		return err
	}
	if ok {
		return errChanged
	}
	return nil
}
