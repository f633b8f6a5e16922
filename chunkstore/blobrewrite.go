package chunkstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"

	bolt "go.etcd.io/bbolt"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// gcBatchRaw bounds the raw bytes gc holds in memory while moving chunks.
const gcBatchRaw = 32 << 20

// Rewriting mostly-dead packs of a bucket store (GC with a threshold).
//
// A pack whose live bytes fall under the threshold has its live chunks
// written into new packs (frames whose chunks are all live copied as they
// are, the live chunks of other frames recompressed into new blocks), each
// new pack with its segment, before the old pack goes into the run's
// pending list. From then on every cache prefers the new copies (the old
// pack is condemned), writers deduplicate against them, and a later run
// past the margin sweeps the old pack like any dead one. Killed between
// the new packs and the list, the bucket holds duplicates, which the index
// merge resolves and a later gc removes.

// gcPack is what GC knows about a pack of its view.
type gcPack struct {
	num        uint32
	size       int64 // the object's size
	data       int64 // its frame bytes
	live       bool  // holds a live indexed chunk
	liveBytes  int64 // the shares of its live indexed chunks
	liveChunks int64
}

// gcPacks reads, from the cache (this view), which packs hold a live
// indexed chunk and how many bytes of them, counting chunks and dead ones
// into st. (A gc of any kind starts here: BlobStore.GC, and the direct
// gc of a directory held exclusively.)
func (s *BlobStore) gcPacks(ctx context.Context, live func(ID) bool, st *GCStats) (map[ID]*gcPack, error) {
	packs := map[ID]*gcPack{}
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		chunks, precs, err := buckets(tx)
		if err != nil {
			return err
		}
		segs := tx.Bucket(bucketBlobSegs)
		byNum := map[uint32]*gcPack{}
		err = tx.Bucket(bucketBlobPacks).ForEach(func(k, v []byte) error {
			if len(k) == 4 && len(v) == 32 {
				num := binary.BigEndian.Uint32(k)
				rec, _, _ := getPackRec(precs, num)
				pi := &gcPack{num: num, size: rec.Size}
				pi.data = rec.Size - packHeaderSize - int64(len(segs.Get(v))) - packFooterSize
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
					pi.liveBytes += int64(e.Share)
					pi.liveChunks++
				}
			} else {
				st.DeadChunks++
				st.DeadBytes += int64(e.Share)
			}
			return nil
		})
	})
	return packs, err
}

// rewriteSparse rewrites the live packs (not in pending) whose live bytes
// fall under opts.Threshold (0: 0.5; below 0: none) and returns those now safe to
// condemn or, for a gc with no other writer, to delete once the cache
// indexes the new copies; with opts.DryRun it only counts. damaged joins
// the packs left in place; err stops the run.
func (s *BlobStore) rewriteSparse(ctx context.Context, packs map[ID]*gcPack, pending map[ID]bool, live func(ID) bool, opts GCOptions, st *GCStats) (rewritten []ID, damaged, err error) {
	threshold := opts.Threshold
	if threshold == 0 {
		threshold = 0.5
	}
	var sparse []ID
	for h, pi := range packs {
		if pi.live && !pending[h] && (pi.data <= 0 || float64(pi.liveBytes)/float64(pi.data) < threshold) {
			sparse = append(sparse, h)
		}
	}
	sort.Slice(sparse, func(i, j int) bool { return bytes.Compare(sparse[i][:], sparse[j][:]) < 0 })
	if opts.DryRun {
		for _, h := range sparse {
			st.PacksRewritten++
			st.ChunksMoved += packs[h].liveChunks
			st.BytesWritten += packs[h].liveBytes
		}
		return nil, nil, nil
	}
	if len(sparse) == 0 {
		return nil, nil, nil
	}
	return s.rewritePacks(ctx, sparse, packs, pending, live, st)
}

// rewriteRead bounds the gap between two frames read with one ranged GET:
// reading a little dead data costs less than another request.
const rewriteRead = 256 << 10

// packRewriter collects the live chunks of old packs and writes them out
// as new packs of about target bytes.
type packRewriter struct {
	s      *BlobStore
	st     *GCStats
	target int64
	frames []encFrame // ready for the next pack
	loose  []Chunk    // live chunks of partly live frames, not yet in a block
	rawLo  int        // their raw bytes
	held   int64      // raw bytes of frames and loose
	wait   []ID       // old packs whose live chunks are all in frames or loose
	done   []ID       // old packs whose live chunks are all in new packs
}

// rewritePacks rewrites the packs todo (hashes in packs) and returns those
// whose live chunks are now all in new packs, for the caller to condemn.
// A pack with a damaged frame holding a live chunk is left in place (its
// error joined into the second result; gc must not hide damage, verify and
// repair report it); any other error stops the rewrite and is the third.
func (s *BlobStore) rewritePacks(ctx context.Context, todo []ID, packs map[ID]*gcPack, pending map[ID]bool, live func(ID) bool, st *GCStats) ([]ID, error, error) {
	sparse := map[ID]bool{}
	for _, h := range todo {
		sparse[h] = true
	}
	kept, err := s.keptCopies(ctx, packs, sparse, pending, live)
	if err != nil {
		return nil, nil, err
	}
	move := func(id ID) bool { return live(id) && !kept[id] }
	rw := &packRewriter{s: s, st: st, target: min(s.cfg.PackSize, gcBatchRaw)}
	var damaged []error
	for _, h := range todo {
		moved, err := s.collectLive(ctx, h, packs[h], move, rw)
		var de *rewriteDamage
		if errors.As(err, &de) {
			damaged = append(damaged, err)
			continue
		}
		if err != nil {
			return rw.done, errors.Join(damaged...), err
		}
		st.PacksRewritten++
		st.ChunksMoved += int64(moved)
		rw.wait = append(rw.wait, h)
		if rw.held >= rw.target {
			if err := rw.flush(ctx); err != nil {
				return rw.done, errors.Join(damaged...), err
			}
		}
	}
	if err := rw.flush(ctx); err != nil {
		return rw.done, errors.Join(damaged...), err
	}
	return rw.done, errors.Join(damaged...), nil
}

// rewriteDamage is a pack rewritePacks leaves in place.
type rewriteDamage struct{ err error }

func (e *rewriteDamage) Error() string { return e.err.Error() }
func (e *rewriteDamage) Unwrap() error { return e.err }

// addLoose adds a live chunk of a partly live frame, encoding a block
// once there are enough of them.
func (rw *packRewriter) addLoose(c Chunk) {
	rw.loose = append(rw.loose, c)
	rw.rawLo += len(c.Data)
	rw.held += int64(len(c.Data))
	if rw.rawLo >= rw.s.cfg.BlockSize || len(rw.loose) >= maxBlockChunks {
		rw.encodeLoose()
	}
}

func (rw *packRewriter) encodeLoose() {
	if len(rw.loose) > 0 {
		rw.frames = append(rw.frames, encodeBlocks(rw.loose, rw.s.cfg.BlockSize, rw.s.codec)...)
	}
	rw.loose, rw.rawLo = nil, 0
}

// flush writes what is collected as one new pack; the packs waiting are
// then done.
func (rw *packRewriter) flush(ctx context.Context) error {
	rw.encodeLoose()
	if len(rw.frames) > 0 {
		if _, err := rw.s.writeFrames(ctx, rw.frames); err != nil {
			return fmt.Errorf("chunkstore gc: writing a rewritten pack: %w", err)
		}
		for _, fr := range rw.frames {
			rw.st.BytesWritten += int64(len(fr.data))
		}
	}
	rw.frames, rw.held = nil, 0
	rw.done = append(rw.done, rw.wait...)
	rw.wait = nil
	return nil
}

// collectLive reads the frames of pack h that hold its indexed chunks
// that move says to move and hands them to rw, and says how many chunks it handed over.
// Every frame read is checksummed and every chunk moved is hashed.
func (s *BlobStore) collectLive(ctx context.Context, h ID, pi *gcPack, move func(ID) bool, rw *packRewriter) (int, error) {
	name := s.bs.String() + "/" + packObject(h)
	// Which chunks stay here: indexed in this pack (not a duplicate that
	// lost the merge) and live. Keyed by frame, then block offset.
	type frameRef struct {
		off int64
		n   uint32
	}
	moving := map[int64]map[uint32]ID{}
	var refs []frameRef
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		chunks, _, err := buckets(tx)
		if err != nil {
			return err
		}
		seg := tx.Bucket(bucketBlobSegs).Get(h[:])
		if seg == nil {
			return fmt.Errorf("%s: %s: no cached segment: %w", s.db.path, indexObject(h), ErrIndexDamaged)
		}
		ents, err := decodeSegment(seg)
		if err != nil {
			return fmt.Errorf("%s: %s: %w: %w", s.db.path, indexObject(h), ErrIndexDamaged, err)
		}
		for _, x := range ents {
			v := chunks.Get(x.id[:])
			if v == nil || !move(x.id) {
				continue
			}
			cur, err := decodeEntry(x.id, v)
			if err != nil {
				return err
			}
			if cur.Pack != pi.num || cur.FrameOff != x.e.FrameOff || cur.BlockOff != x.e.BlockOff {
				continue
			}
			m := moving[cur.FrameOff]
			if m == nil {
				m = map[uint32]ID{}
				moving[cur.FrameOff] = m
				refs = append(refs, frameRef{cur.FrameOff, cur.FrameLen})
			}
			m[cur.BlockOff] = x.id
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	sort.Slice(refs, func(i, j int) bool { return refs[i].off < refs[j].off })
	moved := 0
	for i := 0; i < len(refs); {
		// One ranged GET for a run of frames with small gaps.
		start, end := refs[i].off, refs[i].off+int64(refs[i].n)
		j := i + 1
		for j < len(refs) && refs[j].off-end <= rewriteRead && refs[j].off+int64(refs[j].n)-start <= maxFrameBytes+rewriteRead {
			end = max(end, refs[j].off+int64(refs[j].n))
			j++
		}
		for _, r := range refs[i:j] {
			if r.n < frameFixed+frameEntry+frameTrailer || r.n > maxFrameBytes {
				return 0, &rewriteDamage{fmt.Errorf("chunkstore gc: %s left in place: index says the frame at 0x%x is %d bytes", name, r.off, r.n)}
			}
		}
		buf, err := s.bs.Get(ctx, packObject(h), start, end-start)
		if errors.Is(err, blob.ErrNotExist) || errors.Is(err, blob.ErrRange) {
			return 0, &rewriteDamage{fmt.Errorf("chunkstore gc: %s left in place: %w", name, err)}
		}
		if err != nil {
			return 0, fmt.Errorf("chunkstore gc: reading %s: %w", name, err)
		}
		for _, r := range refs[i:j] {
			n, err := rw.addFrame(buf[r.off-start:r.off-start+int64(r.n)], moving[r.off])
			if err != nil {
				return 0, &rewriteDamage{fmt.Errorf("chunkstore gc: %s left in place: frame at 0x%x: %w", name, r.off, err)}
			}
			moved += n
		}
		i = j
	}
	return moved, nil
}

// addFrame hands the chunks of frame b listed in want (block offset ->
// ID) to rw: the frame itself when it holds nothing else.
func (rw *packRewriter) addFrame(b []byte, want map[uint32]ID) (int, error) {
	fr, n, err := decodeFrame(b)
	if err != nil {
		return 0, err
	}
	if n != int64(len(b)) {
		return 0, fmt.Errorf("frame is %d bytes, index says %d", n, len(b))
	}
	block, err := fr.block()
	if err != nil {
		return 0, fmt.Errorf("decompressing block: %w", err)
	}
	block = bytes.Clone(block) // a raw payload aliases the read buffer
	var cs []Chunk
	found := 0
	for _, c := range fr.Chunks {
		id, ok := want[c.Off]
		if !ok {
			continue
		}
		if id != c.ID {
			return 0, fmt.Errorf("frame lists %s at block offset %d, index says %s", c.ID.Short(), c.Off, id.Short())
		}
		if err := chunkOK(block, c); err != nil {
			return 0, fmt.Errorf("chunk %s: %w", c.ID, err)
		}
		cs = append(cs, Chunk{ID: c.ID, Data: block[c.Off : c.Off+c.Len]})
		found++
	}
	if found != len(want) {
		return 0, fmt.Errorf("frame lists %d of the %d chunks the index places in it", found, len(want))
	}
	if found == len(fr.Chunks) {
		rw.frames = append(rw.frames, encFrame{data: slices.Clone(b), chunks: cs})
		rw.held += int64(len(block))
		return found, nil
	}
	for _, c := range cs {
		rw.addLoose(c)
	}
	return found, nil
}

// keptCopies returns the live chunks indexed in the packs of sparse that
// also have a copy in a pack this run keeps (live, not rewritten, not in a
// pending list, not named by a damage list). Those need no new copy: once
// the sparse pack is condemned, every cache indexes the kept one. Without
// this, the duplicates a rewrite killed before its mark leaves behind
// would be copied again by every later run instead of being dropped.
func (s *BlobStore) keptCopies(ctx context.Context, packs map[ID]*gcPack, sparse map[ID]bool, pending map[ID]bool, live func(ID) bool) (map[ID]bool, error) {
	out := map[ID]bool{}
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		chunks, _, err := buckets(tx)
		if err != nil {
			return err
		}
		segs := tx.Bucket(bucketBlobSegs)
		damaged := map[ID]bool{}
		err = tx.Bucket(bucketBlobDmg).ForEach(func(_, v []byte) error {
			var d damageList
			if json.Unmarshal(v, &d) == nil {
				if h, err := ParseID(d.Pack); err == nil {
					damaged[h] = true
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		want := map[ID]bool{}
		for h := range sparse {
			ents, err := decodeSegment(segs.Get(h[:]))
			if err != nil {
				return fmt.Errorf("%s: %s: %w: %w", s.db.path, indexObject(h), ErrIndexDamaged, err)
			}
			for _, x := range ents {
				if v := chunks.Get(x.id[:]); len(v) >= 4 && binary.LittleEndian.Uint32(v) == packs[h].num && live(x.id) {
					want[x.id] = true
				}
			}
		}
		if len(want) == 0 {
			return nil
		}
		for h, pi := range packs {
			if !pi.live || sparse[h] || pending[h] || damaged[h] {
				continue
			}
			ents, err := decodeSegment(segs.Get(h[:]))
			if err != nil {
				return fmt.Errorf("%s: %s: %w: %w", s.db.path, indexObject(h), ErrIndexDamaged, err)
			}
			for _, x := range ents {
				if want[x.id] {
					out[x.id] = true
				}
			}
		}
		return nil
	})
	return out, err
}
