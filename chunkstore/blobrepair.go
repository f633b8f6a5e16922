package chunkstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// Repair of a bucket store. Objects are never changed, so damage is
// recorded instead: damaged/H-T-C lists the frames of pack H that repair
// found damaged (or that are missing), and every cache leaves their
// entries out of its index — the chunks count as not stored, so engram
// repair names the engrams that lack them and the next ingest of their
// sources stores them again. A pack without its index segment (writer
// killed between the two) gets the segment back from the copy at its end.
const (
	blobDamagePrefix = "damaged/"
	damageVersion    = 1
)

type damageList struct {
	V      int     `json:"v"`
	Pack   string  `json:"pack"`
	Frames []int64 `json:"frames"`
}

// damageLists lists damaged/ and returns the damaged frames by pack, and
// whether the set of lists differs from the one the cache last saw.
func (s *BlobStore) damageLists(ctx context.Context, dm *refreshDamage) (map[ID]map[int64]bool, bool, error) {
	var names []string
	err := s.bs.List(ctx, blobDamagePrefix, func(in blob.Info) error { names = append(names, in.Name); return nil })
	if err != nil {
		return nil, false, err
	}
	cached := map[string][]byte{}
	err = s.db.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobDmg).ForEach(func(k, v []byte) error { cached[string(k)] = bytes.Clone(v); return nil })
	})
	if err != nil {
		return nil, false, err
	}
	changed := false
	bodies := map[string][]byte{}
	for _, n := range names {
		b, ok := cached[n]
		if !ok {
			if b, err = blob.ReadAll(ctx, s.bs, n, maxGCList); errors.Is(err, blob.ErrNotExist) {
				continue
			} else if errors.Is(err, blob.ErrRange) && s.degraded() {
				s.skipList(dm, n, err)
				continue
			} else if err != nil {
				return nil, false, err
			}
		}
		bodies[n] = b
	}
	out := map[ID]map[int64]bool{}
	for n, b := range bodies {
		var d damageList
		if err := json.Unmarshal(b, &d); err != nil || d.V != damageVersion {
			if err == nil && d.V > damageVersion {
				return nil, false, fmt.Errorf("%s: %s: damage list version %d: %w", s.bs, n, d.V, ErrFormatVersion)
			}
			if s.degraded() {
				s.skipList(dm, n, fmt.Errorf("not a damage list (version %d, %v)", d.V, err))
				delete(bodies, n)
				continue
			}
			return nil, false, fmt.Errorf("%s: %s: %w: not a damage list (version %d, %v; engram repair removes it)", s.bs, n, ErrListDamaged, d.V, err)
		}
		h, err := ParseID(d.Pack)
		if err != nil {
			if s.degraded() {
				s.skipList(dm, n, err)
				delete(bodies, n)
				continue
			}
			return nil, false, fmt.Errorf("%s: %s: %w", s.bs, n, err)
		}
		if out[h] == nil {
			out[h] = map[int64]bool{}
		}
		for _, off := range d.Frames {
			out[h][off] = true
		}
	}
	// Changed: a list read now (and readable), or one cached gone.
	changed = len(bodies) != len(cached)
	for n := range bodies {
		if _, ok := cached[n]; !ok {
			changed = true
		}
	}
	if changed {
		err = s.db.update(ctx, func(tx *bolt.Tx) error {
			if err := tx.DeleteBucket(bucketBlobDmg); err != nil {
				return err
			}
			bk, err := tx.CreateBucket(bucketBlobDmg)
			if err != nil {
				return err
			}
			for n, b := range bodies {
				if err := bk.Put([]byte(n), b); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return out, changed, err
}

// packSegment returns the copy of the index segment at the end of a pack.
func packSegment(b []byte) ([]byte, error) {
	if len(b) < packHeaderSize+packFooterSize || string(b[len(b)-8:]) != packFooterMagic {
		return nil, errors.New("no pack footer")
	}
	so := binary.LittleEndian.Uint64(b[len(b)-packFooterSize:])
	if so < packHeaderSize || so > uint64(len(b)-packFooterSize) {
		return nil, fmt.Errorf("pack footer points at 0x%x in a %d-byte pack", so, len(b))
	}
	return b[so : len(b)-packFooterSize], nil
}

// Repair restores missing index segments from the packs, then verifies
// every pack and records the damaged (or missing) frames that entries
// point at in damaged/ objects, so every cache drops those entries. It
// holds the gc lease. Nothing is deleted.
func (s *BlobStore) Repair(ctx context.Context) (RepairReport, error) {
	var rep RepairReport
	if err := s.check(true); err != nil {
		return rep, err
	}
	if err := s.flushStaged(ctx); err != nil {
		return rep, err
	}
	if err := s.Refresh(ctx); err != nil {
		return rep, err
	}
	if err := s.takeLease(ctx, DefaultGCLeaseTimeout); err != nil {
		return rep, err
	}
	defer s.beatLease(ctx, DefaultGCLeaseTimeout/4)()
	dropping := map[string]bool{}
	if s.local == nil {
		// A bucket: what a degraded refresh skips (degraded.go). (A
		// directory's RepairDir did it under the exclusive lock.)
		if err := s.fixBucket(ctx, &rep); err != nil {
			return rep, err
		}
		if p := s.dropJournal.Load(); p != nil {
			for _, n := range *p {
				dropping[s.bs.String()+"/"+n] = true
			}
		}
	}
	known := map[ID]bool{}
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobHash).ForEach(func(k, _ []byte) error { known[ID(k)] = true; return nil })
	})
	if err != nil {
		return rep, err
	}
	var orphans []ID
	err = s.bs.List(ctx, blobPacksPrefix, func(in blob.Info) error {
		h, err := ParseID(in.Name[strings.LastIndexByte(in.Name, '/')+1:])
		if err == nil && !known[h] {
			orphans = append(orphans, h)
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	for _, h := range orphans {
		name := s.bs.String() + "/" + packObject(h)
		b, err := blob.ReadAll(ctx, s.bs, packObject(h), maxPackObject)
		if err != nil {
			return rep, err
		}
		if got := Sum(b); got != h {
			rep.Problems = append(rep.Problems, Problem{Pack: name, Err: fmt.Errorf("pack without a segment hashes to %s, not its name; left alone", got.Short())})
			continue
		}
		seg, err := packSegment(b)
		var ents []indexed
		if err == nil {
			ents, err = decodeSegment(seg)
		}
		if err != nil {
			rep.Problems = append(rep.Problems, Problem{Pack: name, Err: fmt.Errorf("pack without a segment: its index copy: %w; left alone", err)})
			continue
		}
		if err := s.bs.Put(ctx, indexObject(h), seg); err != nil && !errors.Is(err, blob.ErrExist) {
			return rep, err
		}
		rep.Added += int64(len(ents))
	}
	if len(orphans) > 0 {
		if err := s.Refresh(ctx); err != nil {
			return rep, err
		}
	}
	// Verify, and list the damaged frames entries point at, by pack.
	bad := map[ID]map[int64]bool{}
	vst, err := s.Verify(ctx, func(p Problem) {
		if dropping[p.Pack] {
			return // reported by fixBucket
		}
		rep.Problems = append(rep.Problems, p)
		if p.ID.IsZero() {
			return
		}
		h, err := ParseID(p.Pack[strings.LastIndexByte(p.Pack, '/')+1:])
		if err != nil {
			return
		}
		if bad[h] == nil {
			bad[h] = map[int64]bool{}
		}
		if !bad[h][p.Offset] {
			rep.BadFrames++
		}
		bad[h][p.Offset] = true
		rep.Dropped++
	})
	if err != nil {
		return rep, err
	}
	rep.Packs, rep.Frames = vst.Packs, vst.Frames
	hs := make([]ID, 0, len(bad))
	for h := range bad {
		hs = append(hs, h)
	}
	sort.Slice(hs, func(i, j int) bool { return bytes.Compare(hs[i][:], hs[j][:]) < 0 })
	for _, h := range hs {
		d := damageList{V: damageVersion, Pack: h.String()}
		for off := range bad[h] {
			d.Frames = append(d.Frames, off)
		}
		sort.Slice(d.Frames, func(i, j int) bool { return d.Frames[i] < d.Frames[j] })
		body, _ := json.Marshal(d)
		name := fmt.Sprintf("%s%s-%016x-%s", blobDamagePrefix, h, s.now(), Sum(body).String()[:16])
		if err := s.bs.Put(ctx, name, body); err != nil && !errors.Is(err, blob.ErrExist) {
			return rep, err
		}
		rep.Salvaged++
	}
	if err := s.Refresh(ctx); err != nil {
		return rep, err
	}
	if s.local.exclusive() { // a directory no one else writes: dirrepair.go
		if err := s.salvage(ctx, &rep); err != nil {
			return rep, err
		}
	}
	st, err := s.Stats(ctx)
	rep.Chunks = st.Chunks
	return rep, err
}
