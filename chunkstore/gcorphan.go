package chunkstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	bolt "go.etcd.io/bbolt"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// neededOrphans returns the orphans (pack objects without a segment, size
// bytes each) whose own copy of their segment names a chunk that live
// needs and the index holds nowhere else. A writer killed between its pack
// and its segment leaves an orphan nothing committed relies on; a segment
// lost or removed afterwards leaves one that holds committed chunks, and
// Repair re-indexes it from that copy — deleting it would lose them. An
// orphan whose copy cannot be read is not needed: Repair could not
// re-index it either.
func (s *BlobStore) neededOrphans(ctx context.Context, orphans []ID, size map[ID]int64, live func(ID) bool) (map[ID]bool, error) {
	keep := map[ID]bool{}
	for _, h := range orphans {
		ents, err := s.orphanEntries(ctx, h, size[h])
		if err != nil {
			if errors.Is(err, blob.ErrNotExist) || errors.Is(err, errNoSegmentCopy) {
				continue
			}
			return nil, err
		}
		err = s.db.view(ctx, func(tx *bolt.Tx) error {
			chunks := tx.Bucket(bucketChunks)
			for _, x := range ents {
				if live(x.id) && (chunks == nil || chunks.Get(x.id[:]) == nil) {
					keep[h] = true
					return nil
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return keep, nil
}

// packNames names the packs hs as messages do (store, then object), sorted.
func (s *BlobStore) packNames(hs map[ID]bool) []string {
	var out []string
	for h := range hs {
		out = append(out, s.bs.String()+"/"+packObject(h))
	}
	sort.Strings(out)
	return out
}

var errNoSegmentCopy = errors.New("no readable segment copy")

// orphanEntries reads the segment copy at the end of pack h (size bytes)
// without reading its frames: the footer, then the range it points at.
func (s *BlobStore) orphanEntries(ctx context.Context, h ID, size int64) ([]indexed, error) {
	if size < packHeaderSize+packFooterSize || size > maxPackObject {
		return nil, errNoSegmentCopy
	}
	ft, err := s.bs.Get(ctx, packObject(h), size-packFooterSize, packFooterSize)
	if err != nil {
		if errors.Is(err, blob.ErrRange) {
			return nil, errNoSegmentCopy
		}
		return nil, err
	}
	so := binary.LittleEndian.Uint64(ft)
	if string(ft[8:]) != packFooterMagic || so < packHeaderSize || so > uint64(size-packFooterSize) {
		return nil, errNoSegmentCopy
	}
	seg, err := s.bs.Get(ctx, packObject(h), int64(so), size-packFooterSize-int64(so))
	if err != nil {
		if errors.Is(err, blob.ErrRange) {
			return nil, errNoSegmentCopy
		}
		return nil, err
	}
	ents, err := decodeSegment(seg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoSegmentCopy, err)
	}
	return ents, nil
}
