package chunkstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// Put stores one chunk; see PutMany.
func (s *FileStore) Put(ctx context.Context, id ID, data []byte) (bool, error) {
	n, err := s.PutMany(ctx, []Chunk{{ID: id, Data: data}})
	return n > 0, err
}

// PutMany stores the chunks the store does not hold yet and returns how
// many it added. New chunks are hashed (an ID that does not match its
// data is refused), cut into blocks of about BlockSize raw bytes and
// compressed in the caller's goroutine; then, under the writer mutex, the
// frames are appended to the current pack, the pack is fsynced, and one
// bbolt transaction indexes them. A chunk another call is storing at the
// same moment is stored once: this call waits for that one.
func (s *FileStore) PutMany(ctx context.Context, chunks []Chunk) (int, error) {
	if err := s.check(true); err != nil {
		return 0, err
	}
	for _, c := range chunks {
		if len(c.Data) > MaxChunkSize {
			return 0, &TooLargeError{ID: c.ID, Len: len(c.Data)}
		}
	}
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	return s.putLocked(ctx, chunks)
}

func (s *FileStore) putLocked(ctx context.Context, chunks []Chunk) (int, error) {
	type waiter struct {
		c Chunk
		p *pendingPut
	}
	var own []Chunk
	var mine []*pendingPut
	var waits []waiter
	seen := make(map[ID]struct{}, len(chunks))
	// Claim the IDs before looking them up: a call that commits an ID
	// removes its claim only after the commit, so whoever claims next
	// finds it in the index.
	s.pendMu.Lock()
	for _, c := range chunks {
		if _, dup := seen[c.ID]; dup {
			continue
		}
		seen[c.ID] = struct{}{}
		if p := s.pending[c.ID]; p != nil {
			waits = append(waits, waiter{c, p})
			continue
		}
		p := &pendingPut{done: make(chan struct{})}
		s.pending[c.ID] = p
		own = append(own, c)
		mine = append(mine, p)
	}
	s.pendMu.Unlock()

	added, err := s.storeNew(ctx, own)
	s.pendMu.Lock()
	for i, c := range own {
		delete(s.pending, c.ID)
		mine[i].err = err
		close(mine[i].done)
	}
	s.pendMu.Unlock()
	if err != nil {
		return added, err
	}
	var retry []Chunk
	for _, w := range waits {
		select {
		case <-w.p.done:
		case <-ctx.Done():
			return added, ctx.Err()
		}
		if w.p.err != nil {
			retry = append(retry, w.c)
		}
	}
	if len(retry) > 0 {
		n, err := s.putLocked(ctx, retry)
		return added + n, err
	}
	return added, nil
}

// storeNew stores those of chunks (claimed by this call) the index lacks.
func (s *FileStore) storeNew(ctx context.Context, chunks []Chunk) (int, error) {
	if len(chunks) == 0 {
		return 0, nil
	}
	ids := make([]ID, len(chunks))
	for i, c := range chunks {
		ids[i] = c.ID
	}
	have, err := s.HasMany(ctx, ids)
	if err != nil {
		return 0, err
	}
	var fresh []Chunk
	for i, c := range chunks {
		if have[i] {
			continue
		}
		if s.trustIDs {
			fresh = append(fresh, c)
			continue
		}
		if got := Sum(c.Data); got != c.ID {
			return 0, fmt.Errorf("chunkstore: put chunk %s: its data hashes to %s", c.ID, got)
		}
		fresh = append(fresh, c)
	}
	if len(fresh) == 0 {
		return 0, nil
	}
	frames := encodeBlocks(fresh, s.cfg.BlockSize, s.codec)
	defer releaseFrames(frames)
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return s.writeFrames(ctx, frames, nil, nil)
}

// encFrame is an encoded frame and the chunks it holds.
type encFrame struct {
	data   []byte
	chunks []Chunk
	buf    *[]byte // data's buffer, from framePool
}

// framePool recycles the buffers frames are encoded in: a fresh 1 MiB
// buffer per block costs the allocator's zeroing and page faults, and
// the garbage makes the heap limit collect more often.
var framePool sync.Pool

// releaseFrames hands the frames' buffers back once they are written.
func releaseFrames(frames []encFrame) {
	for _, fr := range frames {
		if fr.buf != nil {
			*fr.buf = fr.data[:0]
			framePool.Put(fr.buf)
		}
	}
}

// blockPool recycles the buffers runs of chunks are joined in.
var blockPool = sync.Pool{New: func() any { b := make([]byte, 0, DefaultBlockSize+maxChunkLenHint); return &b }}

// maxChunkLenHint is room for the chunk that takes a block past its size.
const maxChunkLenHint = 256 << 10

// encodeBlocks cuts chunks into runs of about blockSize raw bytes and
// encodes each run as one frame.
func encodeBlocks(chunks []Chunk, blockSize int, c *codec) []encFrame {
	var out []encFrame
	for start := 0; start < len(chunks); {
		end, raw := start, 0
		for end < len(chunks) && end-start < maxBlockChunks && (end == start || raw < blockSize) {
			raw += len(chunks[end].Data)
			end++
		}
		run := chunks[start:end]
		var block []byte
		var scratch *[]byte
		if len(run) == 1 {
			block = run[0].Data
		} else {
			scratch = blockPool.Get().(*[]byte)
			block = (*scratch)[:0]
			for _, ch := range run {
				block = append(block, ch.Data...)
			}
		}
		fb, _ := framePool.Get().(*[]byte)
		if fb == nil {
			fb = new([]byte)
		}
		out = append(out, encFrame{data: encodeFrame((*fb)[:0], run, block, c), chunks: run, buf: fb})
		if scratch != nil {
			*scratch = block[:0]
			blockPool.Put(scratch)
		}
		start = end
	}
	return out
}

// shares splits a frame's length among its chunks in proportion to their
// raw lengths; the shares add up to frameLen exactly.
func shares(frameLen int64, lens []int) []uint32 {
	out := make([]uint32, len(lens))
	var raw int64
	for _, l := range lens {
		raw += int64(l)
	}
	if raw == 0 {
		out[0] = uint32(frameLen)
		return out
	}
	var cum, prev int64
	for i, l := range lens {
		cum += int64(l)
		next := frameLen * cum / raw
		out[i] = uint32(next - prev)
		prev = next
	}
	return out
}

// indexed is an entry to commit.
type indexed struct {
	id ID
	e  entry
}

// writeFrames appends frames to packs, fsyncs them, and commits their
// index entries in one transaction. It returns the number of entries
// written. Without move, a chunk already indexed is skipped; with move
// (GC), a chunk is re-pointed only if its entry is still move[id]. extra,
// if set, runs in the same transaction (GC drops the replaced packs).
func (s *FileStore) writeFrames(ctx context.Context, frames []encFrame, move map[ID]entry, extra func(tx *bolt.Tx) error) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return 0, ErrClosed
	}
	var touched []*packWriter
	touch := func(pw *packWriter) {
		for _, t := range touched {
			if t == pw {
				return
			}
		}
		touched = append(touched, pw)
	}
	var ents []indexed
	fail := func(err error) (int, error) {
		// Nothing points at what we wrote: cut it off (best effort; the
		// next writer Open trims or removes what is left).
		for _, pw := range touched {
			pw.f.Close()
			if pw.isNew {
				_ = os.Remove(pw.path)
			} else {
				_ = truncateSync(pw.path, pw.committed)
			}
		}
		s.cur = nil
		return 0, err
	}
	for _, fr := range frames {
		if s.cur == nil || (s.cur.size > packHeaderSize && s.cur.size+int64(len(fr.data)) > s.cfg.PackSize) {
			pw, err := s.newPack()
			if err != nil {
				return fail(err)
			}
			s.cur = pw
		}
		pw := s.cur
		touch(pw)
		if _, err := pw.f.WriteAt(fr.data, pw.size); err != nil {
			return fail(fmt.Errorf("chunkstore: writing pack: %w", err)) // err names the file
		}
		lens := make([]int, len(fr.chunks))
		for i, c := range fr.chunks {
			lens[i] = len(c.Data)
		}
		sh := shares(int64(len(fr.data)), lens)
		var off uint32
		for i, c := range fr.chunks {
			ents = append(ents, indexed{c.ID, entry{Pack: pw.num, FrameOff: pw.size, FrameLen: uint32(len(fr.data)),
				BlockOff: off, RawLen: uint32(len(c.Data)), Share: sh[i]}})
			off += uint32(len(c.Data))
		}
		pw.size += int64(len(fr.data))
	}
	newPack := false
	for _, pw := range touched {
		if err := pw.f.Sync(); err != nil {
			return fail(fmt.Errorf("chunkstore: fsync pack: %w", err))
		}
		newPack = newPack || pw.isNew
	}
	if newPack {
		if err := syncDir(filepath.Join(s.dir, packsDir)); err != nil {
			return fail(err)
		}
	}
	added := 0
	err := s.db.update(context.WithoutCancel(ctx), func(tx *bolt.Tx) error {
		added = 0
		chunks, packs, err := buckets(tx)
		if err != nil {
			return err
		}
		deltas := map[uint32]*packRec{}
		for _, x := range ents {
			v := chunks.Get(x.id[:])
			if move != nil {
				want, ok := move[x.id]
				if !ok || v == nil {
					continue
				}
				if cur, err := decodeEntry(x.id, v); err != nil || cur != want {
					continue
				}
				addDelta(deltas, want, -1) // its old pack loses it
			} else if v != nil {
				continue // stored meanwhile (cannot happen in one writer; be safe)
			}
			if err := chunks.Put(x.id[:], x.e.encode()); err != nil {
				return err
			}
			addDelta(deltas, x.e, 1)
			added++
		}
		for _, pw := range touched {
			rec, _, err := getPackRec(packs, pw.num)
			if err != nil {
				return err
			}
			rec.Size = pw.size
			if d := deltas[pw.num]; d != nil {
				rec.Live += d.Live
				rec.Chunks += d.Chunks
				rec.Raw += d.Raw
			}
			if err := packs.Put(packKey(pw.num), rec.encode()); err != nil {
				return err
			}
			delete(deltas, pw.num)
		}
		if err := applyDeltas(packs, deltas); err != nil {
			return err
		}
		if err := tx.Bucket(bucketMeta).Put(keyNextPack, u32le(s.nextPack)); err != nil {
			return err
		}
		if extra != nil {
			return extra(tx)
		}
		return nil
	})
	if err != nil {
		// The commit may or may not have reached the disk; leave the bytes
		// for the next Open to judge against the index, and stop appending
		// to these packs.
		for _, pw := range touched {
			pw.f.Close()
		}
		s.cur = nil
		return 0, err
	}
	for _, pw := range touched {
		pw.committed, pw.isNew = pw.size, false
		if pw != s.cur {
			pw.f.Close()
		}
	}
	return added, nil
}

// newPack creates the next pack file with its header. The caller holds wmu.
func (s *FileStore) newPack() (*packWriter, error) {
	num := s.nextPack
	if num == 0 {
		num = 1
	}
	s.nextPack = num + 1
	p := filepath.Join(s.dir, packsDir, packName(num))
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: creating pack: %w", err)
	}
	if _, err := f.Write(packHeader(num)); err != nil {
		f.Close()
		_ = os.Remove(p)
		return nil, fmt.Errorf("chunkstore: writing pack %s: %w", p, err)
	}
	return &packWriter{num: num, path: p, f: f, size: packHeaderSize, isNew: true}, nil
}
