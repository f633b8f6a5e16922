package chunkstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// salvage is what Repair adds on a directory store held exclusively: each
// pack object that is damaged at all (its hash, header or footer, a frame,
// or gone) is replaced by a new pack holding its intact frames, copied
// verbatim, and then deleted with its segment and its damage lists. The
// chunks of damaged frames are gone from the store either way (the next
// ingest of their source stores them again); what is left verifies clean,
// as a directory store did after repair before it was a bucket layout.
// A bucket keeps its damage lists instead: its objects are never changed
// while other hosts may read them.
func (s *BlobStore) salvage(ctx context.Context, rep *RepairReport) error {
	type packInfo struct {
		num uint32
		seg []byte
	}
	packs := map[ID]packInfo{}
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		segs := tx.Bucket(bucketBlobSegs)
		return tx.Bucket(bucketBlobPacks).ForEach(func(k, v []byte) error {
			if len(k) == 4 && len(v) == 32 {
				packs[ID(v)] = packInfo{binary.BigEndian.Uint32(k), bytes.Clone(segs.Get(v))}
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	dmgNames := map[ID][]string{}
	err = s.bs.List(ctx, blobDamagePrefix, func(in blob.Info) error {
		rest := strings.TrimPrefix(in.Name, blobDamagePrefix)
		if i := strings.IndexByte(rest, '-'); i > 0 {
			if h, err := ParseID(rest[:i]); err == nil {
				dmgNames[h] = append(dmgNames[h], in.Name)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	hs := make([]ID, 0, len(packs))
	for h := range packs {
		hs = append(hs, h)
	}
	sort.Slice(hs, func(i, j int) bool { return bytes.Compare(hs[i][:], hs[j][:]) < 0 })
	changed := false
	for _, h := range hs {
		b, err := blob.ReadAll(ctx, s.bs, packObject(h), maxPackObject)
		if err != nil && !errors.Is(err, blob.ErrNotExist) && !errors.Is(err, blob.ErrRange) {
			return err
		}
		if err == nil && Sum(b) == h && len(dmgNames[h]) == 0 {
			if _, serr := packSegment(b); serr == nil {
				continue // intact
			}
		}
		ents, derr := decodeSegment(packs[h].seg)
		if derr != nil {
			return fmt.Errorf("%s: cached segment of %s: %w", s.bs, packObject(h), derr)
		}
		// The intact frames the segment names, in order.
		sort.Slice(ents, func(i, j int) bool {
			if ents[i].e.FrameOff != ents[j].e.FrameOff {
				return ents[i].e.FrameOff < ents[j].e.FrameOff
			}
			return ents[i].e.BlockOff < ents[j].e.BlockOff
		})
		var nonce [4]byte
		_, _ = rand.Read(nonce[:])
		pack := packHeader(binary.LittleEndian.Uint32(nonce[:]))
		var kept []indexed
		okFrame := map[int64]int64{} // old frame offset -> new, for intact frames
		for _, x := range ents {
			if _, seen := okFrame[x.e.FrameOff]; !seen {
				okFrame[x.e.FrameOff] = -1
				end := x.e.FrameOff + int64(x.e.FrameLen)
				if end <= int64(len(b)) && frameIntact(b[x.e.FrameOff:end]) {
					okFrame[x.e.FrameOff] = int64(len(pack))
					pack = append(pack, b[x.e.FrameOff:end]...)
				}
			}
			if off := okFrame[x.e.FrameOff]; off >= 0 {
				x.e.FrameOff = off
				kept = append(kept, x)
			}
		}
		if len(kept) > 0 {
			if err := putPackObject(ctx, s.bs, pack, kept); err != nil {
				return err
			}
		}
		// Segment first, as gc does; then the pack and its damage lists.
		for _, n := range append([]string{indexObject(h), packObject(h)}, dmgNames[h]...) {
			if err := s.bs.Delete(ctx, n); err != nil {
				return err
			}
		}
		if len(dmgNames[h]) == 0 {
			rep.Salvaged++ // (Repair counted those it listed)
		}
		changed = true
	}
	if !changed {
		return nil
	}
	return s.Refresh(ctx)
}

// frameIntact reports whether b is one whole frame whose chunks all hash
// to their IDs.
func frameIntact(b []byte) bool {
	f, n, err := decodeFrame(b)
	if err != nil || n != int64(len(b)) {
		return false
	}
	block, err := f.block()
	if err != nil {
		return false
	}
	for _, c := range f.Chunks {
		if chunkOK(block, c) != nil {
			return false
		}
	}
	return true
}
