package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/qcow2"
)

// Layer is an overlay whose own allocation is known: a *qcow2.Image.
type Layer interface {
	Source
	LayerExtents(off, length int64) ([]qcow2.Extent, error)
}

// RunIncremental ingests src, an overlay over a backing chain whose guest
// content is the engram parent, reading only the neighbourhood of what the
// overlay allocates. It produces exactly the manifest Run would.
//
// Why that holds: the chunker's state at a guest position depends only on
// the content before it, and is "fresh" (no chunk in progress) at every
// chunk start and inside zero runs. Before a dirty range, content equals
// the parent's, so re-chunking can start at the parent chunk boundary at or
// before the change (fresh in both). After the range, content equals the
// parent's again, so once the new chunker is fresh at a position that no
// parent chunk straddles, both cut identically from there on, and the
// parent's chunk list is reused until the next dirty range.
func RunIncremental(ctx context.Context, st chunkstore.Store, src Layer, parent engram.Root, opts Options) (*Result, error) {
	ch, err := storeChunker(st)
	if err != nil {
		return nil, err
	}
	regions, err := dirtyRegions(src, parent.Size, int64(ch.p.Align))
	if err != nil {
		return nil, err
	}
	var total int64
	for _, r := range regions {
		total += r.end - r.start
	}
	return pipeline(ctx, st, ch, src.Size(), total, opts, nil, func(ctx context.Context, emit func(chunkJob) error, _ func() error) (int64, error) {
		p := &incr{ctx: ctx, st: st, src: src, ch: ch, emit: emit, prog: opts.Progress, parent: engram.NewCursor(ctx, st, parent)}
		err := p.run(regions)
		return p.read, err
	})
}

type span struct{ start, end int64 }

// dirtyRegions lists, aligned outward and merged, the guest ranges where
// src differs from its backing: what this layer allocates, plus the tail
// when the virtual size changed.
func dirtyRegions(src Layer, parentSize, align int64) ([]span, error) {
	size := src.Size()
	var out []span
	err := forSpans(size, align, src.LayerExtents, func(e qcow2.Extent) bool { return e.Present }, func(s, e int64) error {
		out = append(out, span{s, e})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if size != parentSize {
		// The parent's last block may be short, and its chunks may cross the
		// new end: re-cut from the last aligned block before the smaller end.
		if m := min(size, parentSize); m > 0 {
			s := (m - 1) / align * align // the block holding the last common byte
			out = mergeSpan(out, span{s, min(s+2*align, size)})
		}
	}
	return out, nil
}

// mergeSpan inserts x into the sorted, disjoint list l.
func mergeSpan(l []span, x span) []span {
	var out []span
	for _, s := range l {
		switch {
		case s.end < x.start:
			out = append(out, s)
		case x.end < s.start:
			out = append(out, x)
			x = s
		default:
			x = span{min(x.start, s.start), max(x.end, s.end)}
		}
	}
	return append(out, x)
}

type incr struct {
	ctx    context.Context
	st     chunkstore.Store
	src    Layer
	ch     *Chunker
	emit   func(chunkJob) error
	prog   Progress
	parent *engram.Cursor
	read   int64
	buf    []byte
}

// reuseWhile emits parent refs while keep says so.
func (p *incr) reuseWhile(keep func(engram.ChunkRef) bool) error {
	for {
		ref, ok, err := p.parent.Peek()
		if err != nil || !ok || !keep(ref) {
			return err
		}
		p.parent.Pop()
		if err := p.emit(chunkJob{off: ref.Offset, id: ref.ID, n: ref.Length, reuse: true}); err != nil {
			return err
		}
	}
}

// straddles drops parent refs that end at or before pos (re-chunking has
// replaced them) and reports whether one starts before pos and ends after.
func (p *incr) straddles(pos int64) (bool, error) {
	ref, ok, err := p.parent.SkipTo(pos)
	return ok && ref.Offset < pos, err
}

func (p *incr) run(regions []span) error {
	size := p.src.Size()
	align := int64(p.ch.p.Align)
	sp := p.ch.NewSplitter(func(off int64, data []byte) error {
		return p.emit(chunkJob{off: off, data: data, n: uint32(len(data))})
	})
	for i := 0; i < len(regions); {
		ds := regions[i].start
		// Parent chunks that end before the change stay. One that ends at
		// its start may have been cut there only because the block at ds
		// was zero, so it is re-chunked like one that straddles ds.
		if err := p.reuseWhile(func(r engram.ChunkRef) bool { return r.End() < ds }); err != nil {
			return err
		}
		pos := ds
		if ref, ok, err := p.parent.Peek(); err != nil {
			return err
		} else if ok && ref.Offset < ds {
			pos = ref.Offset
		}
		de := regions[i].end
		i++
		for {
			for i < len(regions) && regions[i].start <= pos {
				de = max(de, regions[i].end)
				i++
			}
			if sp.Fresh() && pos >= de {
				in, err := p.straddles(pos)
				if err != nil {
					return err
				}
				if !in {
					break
				}
			}
			if pos >= size {
				if err := sp.Flush(); err != nil {
					return err
				}
				break
			}
			next, err := p.step(sp, pos, de, align)
			if err != nil {
				return err
			}
			pos = next
		}
		// Re-chunking is in step with the parent again at pos.
		if _, err := p.straddles(pos); err != nil {
			return err
		}
	}
	return p.reuseWhile(func(r engram.ChunkRef) bool { return r.End() <= size })
}

// step advances the chunker from pos: over whole blocks that the extent
// map says read as zero without reading them, else through up to 1 MiB of
// data, stopping early once the chunker is fresh past de.
func (p *incr) step(sp *Splitter, pos, de, align int64) (int64, error) {
	size := p.src.Size()
	exts, err := p.src.Extents(pos, min(4<<20, size-pos))
	if err != nil {
		return 0, err
	}
	if len(exts) == 0 {
		return 0, fmt.Errorf("extent map: nothing at guest %#x", pos)
	}
	e := exts[0]
	if !(e.Data && !e.Zero) {
		if end := (e.Start + e.Length) / align * align; end > pos {
			if err := sp.Flush(); err != nil {
				return 0, err
			}
			if pos < de {
				end = min(end, de)
			} else {
				end = pos + align // fresh and past de: the caller checks each block
			}
			return end, nil
		}
	}
	end := min(pos+(1<<20), size)
	if e.Data && !e.Zero {
		end = min(end, max((e.Start+e.Length+align-1)/align*align, pos+align))
	}
	n := int(end - pos)
	var b []byte
	if ms, ok := p.src.(mappedSource); ok {
		// The splitter copies every chunk it cuts from here, so the
		// mapped pages are done with once this step returns.
		m, ok, err := ms.Mapped(pos, int64(n))
		if err != nil {
			return 0, fmt.Errorf("read guest %#x+%#x: %w", pos, n, err)
		}
		if ok {
			b = m
			defer qcow2.Release(m)
		}
	}
	if b == nil {
		if cap(p.buf) < n {
			p.buf = make([]byte, 1<<20)
		}
		b = p.buf[:n]
		if _, err := p.src.ReadAt(b, pos); err != nil && !(errors.Is(err, io.EOF) && end >= size) {
			return 0, fmt.Errorf("read guest %#x+%#x: %w", pos, n, err)
		}
	}
	p.read += int64(n)
	if p.prog != nil {
		p.prog.Add(int64(n))
	}
	// Before de no resync is possible: write that part at once, so the
	// chunks inside it are copied once (not grown block by block in the
	// splitter's work buffer and copied again). Where writes split the
	// data does not change the cut.
	start := 0
	if de > pos {
		start = int(min(de, end) - pos)
		if err := sp.Write(pos, b[:start]); err != nil {
			return 0, err
		}
		if at := pos + int64(start); sp.Fresh() && at >= de && at < end {
			return at, nil
		}
	}
	for off := start; off < n; off += int(align) {
		blk := b[off:min(off+int(align), n)]
		if err := sp.Write(pos+int64(off), blk); err != nil {
			return 0, err
		}
		if at := pos + int64(off+len(blk)); sp.Fresh() && at >= de && at < end {
			return at, nil // let the caller check for resync here
		}
	}
	return end, nil
}
