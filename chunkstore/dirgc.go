package chunkstore

import (
	"context"
	"encoding/binary"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// gcNow is GC of a directory store whose lock this process holds
// exclusively: no other process writes, so nothing can come to depend on
// a dead pack between the live set and the delete, and the packs that
// hold no live chunk are deleted in this run (segment first, then pack),
// as are pack objects without a segment (a writer killed between the
// two) and every gc list (their margins protect writers, and there are
// none). `engram rm X && engram gc` frees the space at once, as it did
// before directory stores were bucket stores.
func (s *BlobStore) gcNow(ctx context.Context, live func(ID) bool, opts GCOptions) (GCStats, error) {
	var st GCStats
	type packInfo struct {
		num  uint32
		size int64
		live bool
	}
	packs := map[ID]*packInfo{}
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		chunks, precs, err := buckets(tx)
		if err != nil {
			return err
		}
		byNum := map[uint32]*packInfo{}
		err = tx.Bucket(bucketBlobPacks).ForEach(func(k, v []byte) error {
			if len(k) == 4 && len(v) == 32 {
				num := binary.BigEndian.Uint32(k)
				rec, _, _ := getPackRec(precs, num)
				pi := &packInfo{num: num, size: rec.Size}
				packs[ID(v)] = pi
				byNum[num] = pi
			}
			return nil
		})
		if err != nil {
			return err
		}
		return chunks.ForEach(func(k, v []byte) error {
			st.Chunks++
			e, err := decodeEntry(ID(k), v)
			if err != nil {
				return err
			}
			if live(ID(k)) {
				if pi := byNum[e.Pack]; pi != nil {
					pi.live = true
				}
			} else {
				st.DeadChunks++
				st.DeadBytes += int64(e.Share)
			}
			return nil
		})
	})
	if err != nil {
		return st, err
	}
	// JOIN(blobgc): opts.Threshold is not applied yet. With branch
	// blobgc's blobrewrite.go merged, the loop above becomes
	//	packs, err := s.gcPacks(ctx, live, &st)
	// and here the packs under the threshold get their live chunks
	// written into new packs and segments, after which they are dead:
	//	rewritten, damaged, err := s.rewriteSparse(ctx, packs, nil, live, opts, &st)
	//	if err != nil { return st, errors.Join(err, damaged) }
	//	for _, h := range rewritten { packs[h].live = false }
	// (and the final Refresh joined with damaged). Deleting the old packs
	// before that Refresh is safe: it finds them gone and rebuilds the
	// index from the segments, new copies included; a reader elsewhere
	// that still points at an old pack refreshes on ErrNotExist.
	var orphans []ID
	var orphanBytes int64
	err = s.bs.List(ctx, blobPacksPrefix, func(in blob.Info) error {
		i := strings.LastIndexByte(in.Name, '/')
		h, err := ParseID(in.Name[i+1:])
		if err == nil && packs[h] == nil {
			orphans = append(orphans, h)
			orphanBytes += in.Size
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	var lists []string
	err = s.bs.List(ctx, blobGCPrefix, func(in blob.Info) error {
		if _, _, ok := parseGCName(in.Name); ok {
			lists = append(lists, in.Name)
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	var dead []ID
	for h, pi := range packs {
		if !pi.live {
			dead = append(dead, h)
			st.PacksDeleted++
			st.BytesFreed += pi.size
		}
	}
	st.PacksDeleted += int64(len(orphans))
	st.BytesFreed += orphanBytes
	if opts.DryRun {
		return st, nil
	}
	total := int64(len(dead) + len(orphans))
	var done int64
	for _, h := range dead {
		// Segment first: a pack nothing indexes is an orphan, a segment
		// without its pack would be damage.
		if err := s.bs.Delete(ctx, indexObject(h)); err != nil {
			return st, err
		}
		if err := s.bs.Delete(ctx, packObject(h)); err != nil {
			return st, err
		}
		done++
		if opts.Progress != nil {
			opts.Progress(done, total)
		}
	}
	for _, h := range orphans {
		if err := s.bs.Delete(ctx, packObject(h)); err != nil {
			return st, err
		}
		done++
		if opts.Progress != nil {
			opts.Progress(done, total)
		}
	}
	for _, n := range lists {
		if err := s.bs.Delete(ctx, n); err != nil {
			return st, err
		}
	}
	return st, s.Refresh(ctx)
}
