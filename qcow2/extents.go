package qcow2

// Extent is a run of guest bytes with one allocation status, in the terms
// of `qemu-img map --output=json`.
type Extent struct {
	Start, Length int64
	Depth         int   // chain depth that decides the range (0 = this image); for unallocated ranges, as qemu-img map reports
	Data          bool  // reads guest data from some layer (qemu-img "data")
	Zero          bool  // reads as zero (qemu-img "zero")
	Present       bool  // allocated somewhere in the chain (qemu-img "present")
	Offset        int64 // host offset when the cluster is a plain (uncompressed) one or a zero one that keeps its host cluster, else -1
	Compressed    bool
}

// clip validates a requested range and clips it to the virtual size.
func (im *Image) clip(off, length int64) (int64, int64, error) {
	if off < 0 || length < 0 {
		return 0, 0, newErr(im.path, nil, "invalid range: offset %d length %d", off, length)
	}
	end := im.size
	if off > end {
		off = end
	}
	if length < end-off {
		end = off + length
	}
	return off, end, nil
}

// Extents maps [off, off+length) (clipped to Size) through the whole chain:
// merged extents in order, covering the range exactly. The result has one
// entry per run, so a caller mapping a huge, finely fragmented image should
// map it in windows (say 1 GiB at a time).
func (im *Image) Extents(off, length int64) ([]Extent, error) {
	off, end, err := im.clip(off, length)
	if err != nil {
		return nil, err
	}
	return im.chainExtents(off, end, 0, nil)
}

// LayerExtents maps [off, off+length) (clipped to Size) in this layer only:
// Present means this layer decides the range (data or zero); ranges that
// are not Present fall through to the backing file. Depth is always 0.
func (im *Image) LayerExtents(off, length int64) ([]Extent, error) {
	off, end, err := im.clip(off, length)
	if err != nil {
		return nil, err
	}
	return im.layerExtents(off, end, nil)
}

func (im *Image) layerExtents(off, end int64, out []Extent) ([]Extent, error) {
	if im.q == nil {
		return im.rawExtents(off, end, out)
	}
	q := im.q
	for off < end {
		s, err := q.lookup(off, end-off)
		if err != nil {
			return nil, err
		}
		x := Extent{Start: off, Length: s.n, Offset: -1}
		switch s.kind {
		case segZero:
			x.Present, x.Zero = true, true
			if s.alloc {
				x.Offset = s.host
			}
		case segCompressed:
			x.Present, x.Data, x.Compressed = true, true, true
		case segData:
			x.Present, x.Data, x.Offset = true, true, s.host
			if q.metaPrealloc {
				// Host clusters that are holes in a preallocated file read
				// as zero; qemu-img map reports them as data+zero.
				start := off
				err := fileRuns(q.data, s.host, s.host+s.n, func(hs, he int64, data bool) {
					y := x
					y.Start, y.Length, y.Offset, y.Zero = start, he-hs, hs, !data
					start += he - hs
					out = appendExtent(out, y)
				})
				if err != nil {
					return nil, newErr(im.path, err, "mapping holes: %v", err)
				}
				off += s.n
				continue
			}
		}
		out = appendExtent(out, x)
		off += s.n
	}
	return out, nil
}

// chainExtents maps [off, end) of im at chain depth depth, resolving what
// im leaves unallocated through its backing files.
func (im *Image) chainExtents(off, end int64, depth int, out []Extent) ([]Extent, error) {
	layer, err := im.layerExtents(off, end, nil)
	if err != nil {
		return nil, err
	}
	for _, x := range layer {
		if x.Present {
			x.Depth = depth
			out = appendExtent(out, x)
			continue
		}
		s, e := x.Start, x.Start+x.Length
		if b := im.backing; b != nil && s < b.size {
			be := min(e, b.size)
			if out, err = b.chainExtents(s, be, depth+1, out); err != nil {
				return nil, err
			}
			s = be
		}
		if s < e {
			// No backing data here: reads as zero, decided by this layer.
			out = appendExtent(out, Extent{Start: s, Length: e - s, Depth: depth, Zero: true, Offset: -1})
		}
	}
	return out, nil
}

// appendExtent appends x, merging it into the last extent when both have
// the same status and (for data) contiguous host offsets.
func appendExtent(out []Extent, x Extent) []Extent {
	if x.Length <= 0 {
		return out
	}
	if n := len(out); n > 0 {
		p := &out[n-1]
		if p.Start+p.Length == x.Start && p.Depth == x.Depth && p.Data == x.Data && p.Zero == x.Zero &&
			p.Present == x.Present && p.Compressed == x.Compressed &&
			((p.Offset < 0 && x.Offset < 0) || (p.Offset >= 0 && p.Offset+p.Length == x.Offset)) {
			p.Length += x.Length
			return out
		}
	}
	return append(out, x)
}
