package chunkstore

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// gcNow is GC of a directory store whose lock this process holds
// exclusively: no other process writes, so nothing can come to depend on
// a dead pack between the live set and the delete, and the packs that
// hold no live chunk are deleted in this run (segment first, then pack),
// as are pack objects without a segment (a writer killed between the
// two; not those whose segment copy holds needed chunks) and every gc list (their margins protect writers, and there are
// none). `engram rm X && engram gc` frees the space at once, as it did
// before directory stores were bucket stores.
func (s *BlobStore) gcNow(ctx context.Context, live func(ID) bool, opts GCOptions) (GCStats, error) {
	var st GCStats
	packs, err := s.gcPacks(ctx, live, &st)
	if err != nil {
		return st, err
	}
	var orphans []ID
	var orphanBytes int64
	orphanSize := map[ID]int64{}
	err = s.bs.List(ctx, blobPacksPrefix, func(in blob.Info) error {
		i := strings.LastIndexByte(in.Name, '/')
		h, err := ParseID(in.Name[i+1:])
		if err == nil && packs[h] == nil {
			orphans = append(orphans, h)
			orphanSize[h] = in.Size
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	keep, err := s.neededOrphans(ctx, orphans, orphanSize, live)
	if err != nil {
		return st, err
	}
	orphans = slices.DeleteFunc(orphans, func(h ID) bool { return keep[h] })
	for _, h := range orphans {
		orphanBytes += orphanSize[h]
	}
	st.Unindexed = s.packNames(keep)
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
	// After the orphans are listed, so the new packs are not taken for
	// orphans: packs under the threshold get their live chunks written into new
	// packs and segments (the bucket gc's code); then nothing live is left
	// in them and they are deleted below with the dead ones. Deleting
	// them before the final Refresh is safe: it finds them gone and
	// rebuilds the index from the segments, new copies included; a reader
	// elsewhere that still points at an old pack refreshes on ErrNotExist.
	rewritten, damaged, err := s.rewriteSparse(ctx, packs, nil, live, opts, &st)
	if err != nil {
		return st, errors.Join(err, damaged)
	}
	for _, h := range rewritten {
		packs[h].live = false
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
	return st, errors.Join(s.Refresh(ctx), damaged)
}
