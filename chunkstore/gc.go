package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// GC implements Maintainer. It runs in two phases, each safe to kill:
//
//  1. Mark: index entries of dead chunks are deleted (a page per
//     transaction) and their packs' live counts lowered. Their bytes stay
//     in the packs until phase 2; Repair would bring them back as valid,
//     unreferenced chunks.
//  2. Sweep: each pack under the threshold has its live chunks copied into
//     new packs (fsynced before the transaction that re-points their
//     entries and deletes the old pack's record); only after that commit
//     is the old file removed. A kill between the commit and the removal
//     leaves a file with no record, which the next writer Open removes.
func (s *FileStore) GC(ctx context.Context, live func(ID) bool, opts GCOptions) (GCStats, error) {
	var st GCStats
	if err := s.check(true); err != nil {
		return st, err
	}
	if opts.Threshold == 0 {
		opts.Threshold = 0.5
	}
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	// New frames (GC's own included) go to a fresh pack, so every pack GC
	// may rewrite is closed.
	s.wmu.Lock()
	if s.cur != nil {
		s.cur.f.Close()
		s.cur = nil
	}
	s.wmu.Unlock()

	// Mark.
	dryDelta := map[uint32]*packRec{}
	var dead []indexed
	flush := func() error {
		if len(dead) == 0 || opts.DryRun {
			dead = dead[:0]
			return nil
		}
		err := s.db.update(ctx, func(tx *bolt.Tx) error {
			chunks, packs, err := buckets(tx)
			if err != nil {
				return err
			}
			deltas := map[uint32]*packRec{}
			for _, d := range dead {
				v := chunks.Get(d.id[:])
				if v == nil {
					continue
				}
				if cur, err := decodeEntry(d.id, v); err != nil || cur != d.e {
					continue
				}
				if err := chunks.Delete(d.id[:]); err != nil {
					return err
				}
				addDelta(deltas, d.e, -1)
			}
			return applyDeltas(packs, deltas)
		})
		dead = dead[:0]
		return err
	}
	err := s.forEachEntry(ctx, func(id ID, e entry) error {
		st.Chunks++
		if live(id) {
			return nil
		}
		st.DeadChunks++
		st.DeadBytes += int64(e.Share)
		if opts.DryRun {
			addDelta(dryDelta, e, -1)
			return nil
		}
		dead = append(dead, indexed{id, e})
		if len(dead) >= 4096 {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return st, err
	}

	// Sweep.
	recs, err := s.packRecs(ctx)
	if err != nil {
		return st, err
	}
	var todo []uint32
	for _, num := range sortedNums(recs) {
		r := recs[num]
		if d := dryDelta[num]; d != nil {
			r.Live += d.Live
			r.Chunks += d.Chunks
		}
		recs[num] = r
		data := r.Size - packHeaderSize
		if r.Chunks <= 0 || data <= 0 || float64(r.Live)/float64(data) < opts.Threshold {
			todo = append(todo, num)
		}
	}
	total := int64(len(todo))
	if opts.Progress != nil {
		opts.Progress(0, total)
	}
	var errs []error
	for i, num := range todo {
		r := recs[num]
		if opts.DryRun {
			if r.Chunks <= 0 {
				st.PacksDeleted++
			} else {
				st.PacksRewritten++
				st.ChunksMoved += r.Chunks
				st.BytesWritten += r.Live
			}
			st.BytesFreed += r.Size
		} else if err := s.rewritePack(ctx, num, r, &st, false); err != nil {
			if ctx.Err() != nil {
				return st, err
			}
			errs = append(errs, err) // a damaged pack must not stop the others
		}
		if opts.Progress != nil {
			opts.Progress(int64(i+1), total)
		}
	}
	return st, errors.Join(errs...)
}

func addDelta(m map[uint32]*packRec, e entry, sign int64) {
	d := m[e.Pack]
	if d == nil {
		d = &packRec{}
		m[e.Pack] = d
	}
	d.Live += sign * int64(e.Share)
	d.Chunks += sign
	d.Raw += sign * int64(e.RawLen)
}

func applyDeltas(packs *bolt.Bucket, deltas map[uint32]*packRec) error {
	for num, d := range deltas {
		rec, ok, err := getPackRec(packs, num)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		rec.Live += d.Live
		rec.Chunks += d.Chunks
		rec.Raw += d.Raw
		if err := packs.Put(packKey(num), rec.encode()); err != nil {
			return err
		}
	}
	return nil
}

// gcBatchRaw bounds the raw bytes GC holds in memory while moving chunks.
const gcBatchRaw = 32 << 20

// rewritePack moves the live chunks of pack num into new packs and
// deletes it. Frames whose chunks are all live are copied as they are;
// the live chunks of the other frames are compressed into new blocks.
// rewritePack moves the live chunks of pack num to new packs and deletes
// it. A damaged region stops it (GC must not hide damage) unless salvage:
// Repair has reported the damage and dropped every entry pointing there.
func (s *FileStore) rewritePack(ctx context.Context, num uint32, rec packRec, st *GCStats, salvage bool) error {
	path := s.packs.path(num)
	if rec.Chunks > 0 {
		f, size, err := openPack(path)
		if err != nil {
			return fmt.Errorf("chunkstore gc: %w", err)
		}
		defer f.Close()
		var frames []encFrame
		var loose []Chunk
		move := map[ID]entry{}
		var held int
		commit := func() error {
			if len(loose) > 0 {
				frames = append(frames, encodeBlocks(loose, s.cfg.BlockSize, s.codec)...)
			}
			if len(frames) == 0 {
				return nil
			}
			n, err := s.writeFrames(ctx, frames, move, nil)
			if err != nil {
				return err
			}
			for _, fr := range frames {
				st.BytesWritten += int64(len(fr.data))
			}
			st.ChunksMoved += int64(n)
			frames, loose, held = nil, nil, 0
			move = map[ID]entry{}
			return nil
		}
		var damaged error
		_, err = scanPack(ctx, f, num, min(size, rec.Size), func(off int64, fr *frame, raw []byte) error {
			// Which chunks of this frame does the index still point at?
			liveIdx := make([]bool, len(fr.Chunks))
			nLive := 0
			err := s.db.view(ctx, func(tx *bolt.Tx) error {
				chunks, _, err := buckets(tx)
				if err != nil {
					return err
				}
				for i, c := range fr.Chunks {
					v := chunks.Get(c.ID[:])
					if v == nil {
						continue
					}
					e, err := decodeEntry(c.ID, v)
					if err != nil {
						return err
					}
					if e.Pack == num && e.FrameOff == off && e.BlockOff == c.Off {
						liveIdx[i] = true
						move[c.ID] = e
						nLive++
					}
				}
				return nil
			})
			if err != nil || nLive == 0 {
				return err
			}
			block, err := fr.block()
			if err != nil {
				damaged = fmt.Errorf("frame at 0x%x: %w", off, err)
				return nil
			}
			block = bytes.Clone(block) // raw (and a raw payload) is reused by the scan
			var cs []Chunk
			for i, c := range fr.Chunks {
				if err := chunkOK(block, c); err != nil && liveIdx[i] {
					damaged = fmt.Errorf("chunk %s in frame at 0x%x: %w", c.ID, off, err)
					return nil
				}
				cs = append(cs, Chunk{ID: c.ID, Data: block[c.Off : c.Off+c.Len]})
			}
			if nLive == len(fr.Chunks) {
				frames = append(frames, encFrame{data: bytes.Clone(raw), chunks: cs})
			} else {
				for i, c := range cs {
					if liveIdx[i] {
						loose = append(loose, c)
					}
				}
			}
			held += int(fr.RawLen)
			if held >= gcBatchRaw {
				return commit()
			}
			return nil
		}, func(off int64, err error) {
			if !salvage {
				damaged = fmt.Errorf("frame at 0x%x: %w", off, err)
			}
		})
		if err == nil {
			err = commit()
		}
		if err != nil {
			return fmt.Errorf("chunkstore gc: pack %s: %w", path, err)
		}
		if damaged != nil {
			// Moving what is readable and deleting the rest would hide the
			// damage; leave the pack for Verify and Repair to report.
			return fmt.Errorf("chunkstore gc: pack %s left in place: %w", path, damaged)
		}
	}
	// Drop the record if nothing points into the pack any more.
	gone := false
	err := s.db.update(ctx, func(tx *bolt.Tx) error {
		_, packs, err := buckets(tx)
		if err != nil {
			return err
		}
		r, ok, err := getPackRec(packs, num)
		if err != nil || !ok {
			return err
		}
		if r.Chunks > 0 {
			return nil
		}
		gone = true
		return packs.Delete(packKey(num))
	})
	if err != nil {
		return fmt.Errorf("chunkstore gc: %w", err)
	}
	if !gone {
		return nil
	}
	s.packs.drop(num)
	s.cache.dropPack(num)
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("chunkstore gc: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return err
	}
	st.BytesFreed += rec.Size
	if rec.Chunks > 0 {
		st.PacksRewritten++
	} else {
		st.PacksDeleted++
	}
	return nil
}
