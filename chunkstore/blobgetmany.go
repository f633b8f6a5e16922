package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// Ranged reads of GetMany, measured with bench/s3 -only restore (see
// docs/DESIGN.md, "Many hosts").
const (
	// getManyGap: frames of one pack at most this far apart are fetched
	// by one ranged Get, the gap read and dropped: on S3 a request costs
	// far more than the transfer of this many bytes.
	getManyGap = 256 << 10
	// getManyRange caps a merged range (one frame alone may be larger, up
	// to maxFrameBytes): large enough that a restore job's frames are one
	// or two requests, small enough to spread a batch over several.
	getManyRange = 4 << 20
	// getManyParallel bounds the ranges of one GetMany in flight.
	getManyParallel = 8
	// getManyBudget bounds the bytes of ranges in flight across all the
	// GetMany calls of a store (restore runs several at once), so memory
	// does not grow with the number of callers.
	getManyBudget = 64 << 20
)

// remoteReaders is ReadParallelism of a store in a bucket: with a round
// trip added to each request, 8 restore jobs in flight beat restore's 4
// (2 cores) at the same CPU; 16 added CPU and memory, not speed
// (docs/DESIGN.md, "Many hosts").
const remoteReaders = 8

var (
	_ ManyGetter      = (*BlobStore)(nil)
	_ ReadParallelism = (*BlobStore)(nil)
	_ BlockStarter    = (*BlobStore)(nil)
	_ BlockGetter     = (*BlobStore)(nil)
)

// BlockStarts implements BlockStarter, from the index in one transaction.
func (s *BlobStore) BlockStarts(ctx context.Context, ids []ID, starts []bool) error {
	if err := s.check(false); err != nil {
		return err
	}
	if len(ids) != len(starts) {
		return fmt.Errorf("chunkstore: BlockStarts of %d IDs into %d results", len(ids), len(starts))
	}
	return s.db.view(ctx, func(tx *bolt.Tx) error {
		chunks, _, err := buckets(tx)
		if err != nil {
			return err
		}
		for i, id := range ids {
			e, ok, err := getEntry(chunks, id)
			if err != nil {
				return err
			}
			if !ok {
				return &NotFoundError{ID: id}
			}
			starts[i] = e.BlockOff == 0
		}
		return nil
	})
}

// ReadParallelism is implemented by stores whose reads gain from more
// batches in flight than a reader would start for a local disk: each read
// of a bucket waits a round trip. ReadParallelism returns how many
// GetMany calls to keep going at once (0: no advice).
type ReadParallelism interface {
	ReadParallelism() int
}

// ReadParallelism implements ReadParallelism: remoteReaders when the
// blob store says it is remote (S3), else 0.
func (s *BlobStore) ReadParallelism() int {
	if r, ok := s.bs.(interface{ Remote() bool }); ok && r.Remote() {
		return remoteReaders
	}
	return 0
}

// manyState is what GetMany shares across calls on one BlobStore; its
// zero value is ready.
type manyState struct {
	once sync.Once
	sem  *semaphore.Weighted
}

func (m *manyState) budget() *semaphore.Weighted {
	m.once.Do(func() { m.sem = semaphore.NewWeighted(getManyBudget) })
	return m.sem
}

// wantFrame is one frame a GetMany needs and the chunks it wants of it.
type wantFrame struct {
	key  blockKey
	pack ID    // pack object hash
	off  int64 // frame offset in the pack
	len  int64 // frame length, from the first entry that names it
	idx  []int // indices into the call's ids

	cb   *Block     // in the block cache already
	wait *blockLoad // another caller is loading it
	mine *blockLoad // this call loads it
}

// fetchRange is one ranged Get covering frames of one pack.
type fetchRange struct {
	pack     ID
	off, end int64
	frames   []*wantFrame
}

// GetMany implements ManyGetter: one cache transaction for the batch, the
// frames wanted grouped by pack and fetched with one ranged Get per run
// of nearby frames, the runs in parallel, each frame decoded once (and
// kept in the block cache, so the next batch does not fetch a frame it
// shares with this one). Errors are those of Get.
func (s *BlobStore) GetMany(ctx context.Context, ids []ID, bufs [][]byte) error {
	if err := s.check(false); err != nil {
		return err
	}
	if len(ids) != len(bufs) {
		return fmt.Errorf("chunkstore: GetMany of %d IDs into %d buffers", len(ids), len(bufs))
	}
	return s.getManyAgain(ctx, ids, bufs, nil, nil)
}

// GetBlocks implements BlockGetter the way GetMany reads, without copying
// or hashing chunks.
func (s *BlobStore) GetBlocks(ctx context.Context, ids []ID, blocks []*Block, idx []int) error {
	if err := s.check(false); err != nil {
		return err
	}
	if len(ids) != len(blocks) || len(ids) != len(idx) {
		return fmt.Errorf("chunkstore: GetBlocks of %d IDs into %d blocks and %d indices", len(ids), len(blocks), len(idx))
	}
	return s.getManyAgain(ctx, ids, nil, blocks, idx)
}

// getManyAgain is getMany, and getMany again of the chunks whose pack is
// gone after a Refresh. Either bufs (GetMany) or blocks and idx
// (GetBlocks) are set.
func (s *BlobStore) getManyAgain(ctx context.Context, ids []ID, bufs [][]byte, blocks []*Block, idx []int) error {
	if err := s.flushFor(ctx, ids); err != nil {
		return err
	}
	errs, err := s.getMany(ctx, ids, bufs, blocks, idx)
	if err != nil {
		return err
	}
	// A pack gone from the bucket: gc on another host swept it and the
	// chunk lives in another copy (as in Get). Refresh and read those
	// chunks again.
	var again []int
	for i, e := range errs {
		if e != nil && errors.Is(e, blob.ErrNotExist) {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		if err := s.Refresh(ctx); err != nil {
			return err
		}
		sub := make([]ID, len(again))
		var subBufs [][]byte
		var subBlocks []*Block
		var subIdx []int
		if bufs != nil {
			subBufs = make([][]byte, len(again))
		} else {
			subBlocks, subIdx = make([]*Block, len(again)), make([]int, len(again))
		}
		for k, i := range again {
			sub[k] = ids[i]
			if bufs != nil {
				subBufs[k] = bufs[i]
			}
		}
		errs2, err := s.getMany(ctx, sub, subBufs, subBlocks, subIdx)
		if err != nil {
			return err
		}
		for k, i := range again {
			errs[i] = errs2[k]
			if bufs != nil {
				bufs[i] = subBufs[k]
			} else {
				blocks[i], idx[i] = subBlocks[k], subIdx[k]
			}
		}
	}
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// getMany reads what it can of ids into bufs, or sets blocks and idx
// when bufs is nil. It returns the error of each
// chunk it could not read (a *CorruptChunkError), or an error that stops
// the whole batch: a chunk not found or a buffer of the wrong length
// (before any read), the bucket unreachable, ctx cancelled.
func (s *BlobStore) getMany(ctx context.Context, ids []ID, bufs [][]byte, blocks []*Block, idx []int) ([]error, error) {
	// fill takes chunk i out of block cb, as the caller asked.
	fill := func(i int, cb *Block, ents []entry, corrupt func(int, string, error)) {
		if bufs != nil {
			s.fillChunk(i, cb, ids, bufs, ents, corrupt)
		} else if j := findChunk(i, cb, ids, ents, corrupt); j >= 0 {
			blocks[i], idx[i] = cb, j
		}
	}
	ents := make([]entry, len(ids))
	hashes := make([]ID, len(ids))
	frames := map[blockKey]*wantFrame{}
	var order []*wantFrame // first-seen order, for deterministic ranges
	var lenMismatch []int  // entries of one frame that disagree on its length
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		chunks, _, err := buckets(tx)
		if err != nil {
			return err
		}
		byNum := tx.Bucket(bucketBlobPacks)
		for i, id := range ids {
			e, ok, err := getEntry(chunks, id)
			if err != nil {
				return err
			}
			if !ok {
				return &NotFoundError{ID: id}
			}
			if bufs != nil && bufs[i] != nil && len(bufs[i]) != int(e.RawLen) {
				return &LengthError{ID: id, Len: int(e.RawLen), Want: len(bufs[i])}
			}
			ents[i] = e
			key := blockKey{e.Pack, e.FrameOff}
			f := frames[key]
			if f == nil {
				hb := byNum.Get(packKey(e.Pack))
				if len(hb) != 32 {
					return fmt.Errorf("%s: chunk %s points at pack %d, which has no hash: %w", s.db.path, id.Short(), e.Pack, ErrIndexDamaged)
				}
				f = &wantFrame{key: key, pack: ID(hb), off: e.FrameOff, len: int64(e.FrameLen)}
				frames[key] = f
				order = append(order, f)
			}
			hashes[i] = f.pack
			if int64(e.FrameLen) != f.len {
				lenMismatch = append(lenMismatch, i)
				continue
			}
			f.idx = append(f.idx, i)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	errs := make([]error, len(ids))
	corrupt := func(i int, reason string, err error) {
		errs[i] = &CorruptChunkError{ID: ids[i], Pack: s.bs.String() + "/" + packObject(hashes[i]), Offset: ents[i].FrameOff, Reason: reason, Err: err}
	}
	for _, i := range lenMismatch {
		f := frames[blockKey{ents[i].Pack, ents[i].FrameOff}]
		corrupt(i, "reading frame", fmt.Errorf("index says the frame is %d bytes and %d", ents[i].FrameLen, f.len))
	}

	// Claim the frames no one has or is loading; the others wait or are
	// served from the cache. Every claim is finished before return, so
	// no waiter hangs, whatever fails.
	var todo []*wantFrame
	c := s.cache
	c.mu.Lock()
	for _, f := range order {
		if f.len < frameFixed+frameEntry+frameTrailer || f.len > maxFrameBytes {
			for _, i := range f.idx {
				corrupt(i, "reading frame", fmt.Errorf("index says the frame is %d bytes", f.len))
			}
			continue
		}
		if e := c.items[f.key]; e != nil {
			c.lru.MoveToFront(e)
			f.cb = e.Value.(*Block)
		} else if l := c.loading[f.key]; l != nil {
			f.wait = l
		} else {
			f.mine = &blockLoad{done: make(chan struct{})}
			c.loading[f.key] = f.mine
			todo = append(todo, f)
		}
	}
	c.mu.Unlock()
	defer func() {
		for _, f := range todo {
			if f.mine != nil {
				s.finishLoad(f, nil, errors.New("abandoned"))
			}
		}
	}()

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(getManyParallel)
	// Ranges first: they wait on nothing but the bucket, so callers
	// waiting on each other's frames cannot deadlock.
	for _, r := range mergeRanges(todo) {
		g.Go(func() error { return s.fetchRange(gctx, r, ents, bufs, ids, fill, corrupt) })
	}
	for _, f := range order {
		if f.cb != nil {
			g.Go(func() error {
				for _, i := range f.idx {
					fill(i, f.cb, ents, corrupt)
				}
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	// Frames another caller was loading: use its block, or read the
	// chunks through Get's path when its load failed (its context may have
	// been cancelled; a damaged frame is then reported by our own read).
	for _, f := range order {
		if f.wait == nil {
			continue
		}
		select {
		case <-f.wait.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		for _, i := range f.idx {
			if f.wait.err == nil {
				fill(i, f.wait.cb, ents, corrupt)
				continue
			}
			if bufs == nil {
				b, j, err := s.getBlock(ctx, ids[i])
				switch {
				case err == nil:
					blocks[i], idx[i] = b, j
				case errors.As(err, new(*CorruptChunkError)):
					errs[i] = err
				default:
					return nil, err
				}
				continue
			}
			data, err := s.get(ctx, ids[i])
			switch {
			case err == nil && bufs[i] == nil:
				bufs[i] = data
			case err == nil && len(data) != len(bufs[i]):
				return nil, &LengthError{ID: ids[i], Len: len(data), Want: len(bufs[i])}
			case err == nil:
				copy(bufs[i], data)
			case errors.As(err, new(*CorruptChunkError)):
				errs[i] = err
			default:
				return nil, err
			}
		}
	}
	return errs, nil
}

// mergeRanges sorts frames by pack and offset and joins frames of one pack
// that are at most getManyGap apart into ranges of at most getManyRange.
func mergeRanges(frames []*wantFrame) []*fetchRange {
	sort.Slice(frames, func(a, b int) bool {
		if c := bytes.Compare(frames[a].pack[:], frames[b].pack[:]); c != 0 {
			return c < 0
		}
		return frames[a].off < frames[b].off
	})
	var out []*fetchRange
	var cur *fetchRange
	for _, f := range frames {
		end := f.off + f.len
		if cur != nil && cur.pack == f.pack && f.off <= cur.end+getManyGap && max(cur.end, end)-cur.off <= getManyRange {
			cur.end = max(cur.end, end)
			cur.frames = append(cur.frames, f)
			continue
		}
		cur = &fetchRange{pack: f.pack, off: f.off, end: end, frames: []*wantFrame{f}}
		out = append(out, cur)
	}
	return out
}

// rangeBufs holds the buffers fetchRange reads ranges into from a store
// that can read into the caller's buffer (blob.IntoGetter).
var rangeBufs = sync.Pool{New: func() any { return new([]byte) }}

// fetchRange reads r with one Get, decodes each of its frames, finishes
// their loads and fills the chunks wanted. Damage (a missing pack or
// range, a frame that does not decode) is recorded per chunk; any other
// error of the bucket is returned.
func (s *BlobStore) fetchRange(ctx context.Context, r *fetchRange, ents []entry, bufs [][]byte, ids []ID,
	fill func(int, *Block, []entry, func(int, string, error)), corrupt func(int, string, error)) error {
	n := r.end - r.off
	sem := s.many.budget()
	w := min(n, getManyBudget)
	if err := sem.Acquire(ctx, w); err != nil {
		for _, f := range r.frames {
			s.finishLoad(f, nil, err)
		}
		return err
	}
	defer sem.Release(w)
	var buf []byte
	var err error
	pooled := false
	if ig, ok := s.bs.(blob.IntoGetter); ok {
		// A local store reads into a reused buffer: a fresh one per range
		// is an allocation the runtime zeroes and the GC then scans for.
		pb := rangeBufs.Get().(*[]byte)
		if int64(cap(*pb)) < n {
			*pb = make([]byte, max(n, getManyRange+getManyGap))
		}
		buf, pooled = (*pb)[:n], true
		defer func() { rangeBufs.Put(pb) }()
		err = ig.GetInto(ctx, packObject(r.pack), r.off, buf)
	} else {
		buf, err = s.bs.Get(ctx, packObject(r.pack), r.off, n)
	}
	if err == nil && int64(len(buf)) != n {
		// A store breaking its contract must not make us slice past buf.
		err = fmt.Errorf("%s: get %s: %d bytes at %d, asked for %d: %w", s.bs, packObject(r.pack), len(buf), r.off, n, blob.ErrRange)
	}
	if err != nil {
		for _, f := range r.frames {
			s.finishLoad(f, nil, err)
		}
		if errors.Is(err, blob.ErrNotExist) || errors.Is(err, blob.ErrRange) {
			for _, f := range r.frames {
				for _, i := range f.idx {
					corrupt(i, "reading frame", err)
				}
			}
			return nil
		}
		return err // the bucket cannot be reached: not damage
	}
	dsts := make([][]byte, len(r.frames))
	if bufs != nil {
		for k, f := range r.frames {
			dsts[k] = wholeRun(ents, bufs, f.idx)
		}
	}
	for k, f := range r.frames {
		fb := buf[f.off-r.off : f.off-r.off+f.len]
		if dst := dsts[k]; dst != nil {
			// The decoder may scribble past dst's end (decodeSlack) when
			// that is the next frame's memory, which this loop fills
			// next: a restore's frames lie in its buffer in pack order.
			slack := 0
			if k+1 < len(dsts) && dsts[k+1] != nil && adjacent(dst, dsts[k+1]) {
				slack = min(decodeSlack, len(dsts[k+1]))
			}
			if s.decodeDirect(f, fb, dst, slack, ids, ents) {
				continue
			}
		}
		// A cached raw block must not alias a buffer that is reused.
		cb, fe := decodeBlobFrame(s.bs, f, fb, pooled || len(r.frames) > 1)
		if fe != nil {
			s.finishLoad(f, nil, fe)
			for _, i := range f.idx {
				corrupt(i, fe.reason, fe.err)
			}
			continue
		}
		s.finishLoad(f, cb, nil)
		for _, i := range f.idx {
			fill(i, cb, ents, corrupt)
		}
	}
	return nil
}

// errDecodedDirect tells a caller that waited for a frame that this call
// decoded it into its own buffers, not into the cache: it reads the chunks
// again through Get.
var errDecodedDirect = errors.New("block decoded into another caller's buffers")

// decodeDirect decodes frame f (its bytes fb) straight into dst when the
// call asks for every chunk of its block, back to back (wholeRun), and
// checks each chunk; false leaves the frame to the cached path, which also
// reports any damage.
func (s *BlobStore) decodeDirect(f *wantFrame, fb, dst []byte, slack int, ids []ID, ents []entry) bool {
	fr, n, err := decodeFrame(fb)
	if err != nil || n != f.len {
		return false
	}
	i, k := f.idx[0], f.idx[0]+len(f.idx)
	if ok, _, err := fr.decodeRunInto(dst, slack, ids[i:k], ents[i:k]); !ok || err != nil {
		return false
	}
	s.finishLoad(f, nil, errDecodedDirect)
	return true
}

// decodeBlobFrame checks and decodes frame f from fb (exactly its bytes).
// A raw block aliases fb; shared says fb is part of a larger range, and
// the block is then copied so the cache does not keep the whole range.
func decodeBlobFrame(bs fmt.Stringer, f *wantFrame, fb []byte, shared bool) (*Block, *frameError) {
	fr, n, err := decodeFrame(fb)
	if err != nil {
		return nil, &frameError{"reading frame", err}
	}
	if n != f.len {
		return nil, &frameError{"reading frame", fmt.Errorf("frame is %d bytes, index says %d", n, f.len)}
	}
	block, err := fr.block()
	if err != nil {
		return nil, &frameError{"decompressing block", err}
	}
	if fr.Codec == codecRaw && shared {
		block = bytes.Clone(block)
	}
	return newBlock(bs, f.key, f.pack, block, fr.Chunks), nil
}

// finishLoad ends this call's load of f: waiters get cb or err, and a
// block of several chunks goes into the cache.
func (s *BlobStore) finishLoad(f *wantFrame, cb *Block, err error) {
	l := f.mine
	if l == nil {
		return
	}
	f.mine = nil
	l.cb, l.err = cb, err
	c := s.cache
	c.mu.Lock()
	if c.loading[f.key] == l {
		delete(c.loading, f.key)
	}
	if err == nil && len(cb.chunks) > 1 {
		c.addLocked(cb)
	}
	c.mu.Unlock()
	close(l.done)
}

// fillChunk copies chunk i out of block cb into bufs[i] and checks it.
func (s *BlobStore) fillChunk(i int, cb *Block, ids []ID, bufs [][]byte, ents []entry, corrupt func(int, string, error)) {
	j := findChunk(i, cb, ids, ents, corrupt)
	if j < 0 {
		return
	}
	id := ids[i]
	ch := cb.chunks[j]
	src := cb.block[ch.Off : ch.Off+ch.Len]
	var data []byte
	if bufs[i] != nil {
		data = bufs[i][:copy(bufs[i], src)]
	} else if data = bytes.Clone(src); data == nil {
		data = []byte{}
	}
	if got := Sum(data); got != id {
		corrupt(i, "content hashes to "+got.Short(), nil)
		return
	}
	bufs[i] = data
}

// findChunk returns the index in cb of chunk i (ids[i], where ents[i]
// says), or -1 after reporting why the block does not hold it as the
// index says.
func findChunk(i int, cb *Block, ids []ID, ents []entry, corrupt func(int, string, error)) int {
	id, e := ids[i], ents[i]
	// The chunk list is in block order (decodeFrame checks it): find the
	// entry by its offset.
	j := sort.Search(len(cb.chunks), func(j int) bool { return cb.chunks[j].Off >= e.BlockOff })
	if j == len(cb.chunks) || cb.chunks[j].Off != e.BlockOff || cb.chunks[j].ID != id {
		// A chunk of length 0 shares its offset with the next one.
		j = -1
		for k, ch := range cb.chunks {
			if ch.ID == id && ch.Off == e.BlockOff {
				j = k
				break
			}
		}
	}
	if j < 0 {
		corrupt(i, fmt.Sprintf("frame does not list the chunk at block offset %d", e.BlockOff), nil)
		return -1
	}
	if ch := cb.chunks[j]; ch.Len != e.RawLen {
		corrupt(i, fmt.Sprintf("frame says %d bytes, index says %d", ch.Len, e.RawLen), nil)
		return -1
	}
	return j
}

// readSegments reads the index segments of packs hs, several at once (a
// cache built from scratch reads one per pack, and each waits a round
// trip). A segment gone since the listing (swept) is left out.
func (s *BlobStore) readSegments(ctx context.Context, hs []ID) (map[ID][]byte, error) {
	segs := make([][]byte, len(hs))
	found := make([]bool, len(hs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(getManyParallel, 2*s.ReadParallelism()))
	for i, h := range hs {
		g.Go(func() error {
			b, err := blob.ReadAll(gctx, s.bs, indexObject(h), maxSegment)
			if errors.Is(err, blob.ErrNotExist) {
				return nil
			}
			segs[i], found[i] = b, err == nil
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out := make(map[ID][]byte, len(hs))
	for i, h := range hs {
		if found[i] {
			out[h] = segs[i]
		}
	}
	return out, nil
}
