package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
)

// scannedFrame is what Verify learned about one intact frame.
type scannedFrame struct {
	n      int64
	chunks []frameChunk
	bad    map[int]error // chunk index -> BLAKE3 mismatch or decompression error
}

type scannedPack struct {
	path   string
	end    int64 // bytes scanned
	frames map[int64]*scannedFrame
	bad    map[int64]error // damaged regions by start offset
	refd   map[int64]bool  // damaged regions some entry points at
	err    error           // the whole pack is unreadable
}

// Verify implements Maintainer. Packs and entries created after it
// started (by a writer in another process) are not checked.
func (s *FileStore) Verify(ctx context.Context, report func(Problem)) (VerifyStats, error) {
	var st VerifyStats
	if err := s.check(false); err != nil {
		return st, err
	}
	emit := func(p Problem) {
		st.Problems++
		if report != nil {
			report(p)
		}
	}
	recs, err := s.packRecs(ctx)
	if err != nil {
		return st, err
	}
	scanned := map[uint32]*scannedPack{}
	for _, num := range sortedNums(recs) {
		rec := recs[num]
		sp := &scannedPack{path: s.packs.path(num), frames: map[int64]*scannedFrame{}, bad: map[int64]error{}, refd: map[int64]bool{}}
		scanned[num] = sp
		st.Packs++
		f, size, err := openPack(sp.path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				err = fmt.Errorf("pack file missing (index says %d bytes)", rec.Size)
			}
			sp.err = err
			emit(Problem{Pack: sp.path, Err: err})
			continue
		}
		end := rec.Size
		if size < rec.Size {
			emit(Problem{Pack: sp.path, Offset: size, Err: fmt.Errorf("pack truncated: %d bytes, index says %d", size, rec.Size)})
			end = size
		}
		sp.end = end
		_, err = scanPack(ctx, f, num, end, func(off int64, fr *frame, raw []byte) error {
			st.Frames++
			st.Bytes += int64(len(raw))
			sf := &scannedFrame{n: int64(len(raw)), chunks: fr.Chunks}
			block, err := fr.block()
			for i, c := range fr.Chunks {
				if err == nil {
					err := chunkOK(block, c)
					if err != nil {
						if sf.bad == nil {
							sf.bad = map[int]error{}
						}
						sf.bad[i] = err
					}
				} else {
					if sf.bad == nil {
						sf.bad = map[int]error{}
					}
					sf.bad[i] = fmt.Errorf("decompressing block: %w", err)
				}
			}
			sp.frames[off] = sf
			return nil
		}, func(off int64, err error) { sp.bad[off] = err })
		f.Close()
		if err != nil {
			return st, fmt.Errorf("%s: %w", sp.path, err)
		}
	}
	// Check every index entry against what the scan found. A problem is
	// reported only if the entry still says the same after a fresh
	// lookup: GC in the writer process may have moved the chunk meanwhile.
	report0 := emit
	emit = func(p Problem) {
		if !p.ID.IsZero() {
			if e, ok, err := s.lookup(ctx, p.ID); err == nil && (!ok || s.packs.path(e.Pack) != p.Pack || e.FrameOff != p.Offset) {
				return
			}
		}
		report0(p)
	}
	err = s.forEachEntry(ctx, func(id ID, e entry) error {
		sp := scanned[e.Pack]
		if sp == nil {
			if _, known := recs[e.Pack]; !known {
				// A pack recorded after we started is new, not missing:
				// check the record exists now.
				if rs, err := s.packRecs(ctx); err == nil {
					if _, ok := rs[e.Pack]; ok {
						return nil
					}
				}
			}
			emit(Problem{ID: id, Pack: s.packs.path(e.Pack), Offset: e.FrameOff, Err: fmt.Errorf("index points at pack %d, which has no record", e.Pack)})
			return nil
		}
		st.Chunks++
		if sp.err != nil {
			emit(Problem{ID: id, Pack: sp.path, Offset: e.FrameOff, Err: sp.err})
			return nil
		}
		if e.FrameOff >= recs[e.Pack].Size {
			return nil // appended after the scan
		}
		p := Problem{ID: id, Pack: sp.path, Offset: e.FrameOff}
		sf := sp.frames[e.FrameOff]
		if sf == nil {
			if e.FrameOff >= sp.end {
				p.Err = fmt.Errorf("frame lies past the end of the pack (0x%x)", sp.end)
			} else if bad, ok := sp.bad[e.FrameOff]; ok {
				sp.refd[e.FrameOff] = true
				p.Err = fmt.Errorf("damaged frame: %w", bad)
			} else {
				p.Err = errors.New("no intact frame starts at this offset")
			}
			emit(p)
			return nil
		}
		if sf.n != int64(e.FrameLen) {
			p.Err = fmt.Errorf("frame is %d bytes, index says %d", sf.n, e.FrameLen)
			emit(p)
			return nil
		}
		for i, c := range sf.chunks {
			if c.ID == id && c.Off == e.BlockOff {
				if c.Len != e.RawLen {
					p.Err = fmt.Errorf("frame says %d bytes, index says %d", c.Len, e.RawLen)
				} else if bad := sf.bad[i]; bad != nil {
					p.Err = bad
				}
				if p.Err != nil {
					emit(p)
				}
				return nil
			}
		}
		p.Err = fmt.Errorf("frame does not list the chunk at block offset %d", e.BlockOff)
		emit(p)
		return nil
	})
	if err != nil {
		return st, err
	}
	// Damage no entry points at is reported too: it is bit rot all the same.
	for _, num := range sortedNums(scanned) {
		sp := scanned[num]
		for off, err := range sp.bad {
			if !sp.refd[off] {
				emit(Problem{Pack: sp.path, Offset: off, Err: fmt.Errorf("damaged frame: %w", err)})
			}
		}
	}
	return st, nil
}
