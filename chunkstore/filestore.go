package chunkstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// FileStore is a chunk store in a directory: pack files plus index.db.
// It implements Store and Maintainer and is safe for concurrent use.
type FileStore struct {
	dir      string
	cfg      config
	codec    *codec
	readOnly bool
	lock     *storeLock
	db       *dbPool
	packs    *packReaders
	cache    *blockCache
	closed   atomic.Bool
	trustIDs bool

	// gcMu is held shared by PutMany and exclusively by GC and Repair, so
	// they never see each other half done.
	gcMu sync.RWMutex

	pendMu  sync.Mutex
	pending map[ID]*pendingPut

	// wmu serializes appends to packs and the commits that index them.
	wmu      sync.Mutex
	cur      *packWriter
	nextPack uint32
}

// pendingPut is a chunk some PutMany call is storing right now.
type pendingPut struct {
	done chan struct{}
	err  error
}

var (
	_ Store      = (*FileStore)(nil)
	_ Maintainer = (*FileStore)(nil)
)

// openFileStore opens the store of format 1 in dir. Unless opts.ReadOnly, it takes the writer
// lock (waiting up to opts.LockTimeout), ignores and trims pack bytes no
// index entry references, and removes pack files no record knows (left by
// a crash or an interrupted GC).
func openFileStore(ctx context.Context, dir string, opts OpenOptions) (*FileStore, error) {
	cfg, err := readConfig(dir)
	if err != nil {
		return nil, err
	}
	idx := filepath.Join(dir, indexName)
	if _, err := os.Stat(idx); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: missing (run repair to rebuild it from the packs): %w", idx, ErrIndexDamaged)
	}
	c, err := getCodec(cfg.Params.Compression)
	if err != nil {
		return nil, err
	}
	timeout := opts.LockTimeout
	if timeout == 0 {
		timeout = DefaultLockTimeout
	} else if timeout < 0 {
		timeout = 0
	}
	s := &FileStore{
		dir: dir, cfg: cfg, codec: c, readOnly: opts.ReadOnly, trustIDs: opts.TrustIDs,
		packs:   newPackReaders(filepath.Join(dir, packsDir)),
		cache:   newBlockCache(opts.BlockCacheBytes),
		pending: map[ID]*pendingPut{},
	}
	if !opts.ReadOnly {
		if s.lock, err = acquireLock(ctx, dir, timeout, opts.Command, true); err != nil {
			return nil, err
		}
	}
	s.db = newDBPool(idx, opts.ReadOnly, max(timeout, time.Second))
	if err := s.checkIndex(ctx); err == nil && !opts.ReadOnly {
		err = s.recoverPacks(ctx)
		if err != nil {
			s.Close()
			return nil, err
		}
	} else if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// checkIndex validates index.db's version and buckets.
func (s *FileStore) checkIndex(ctx context.Context) error {
	return s.db.view(ctx, func(tx *bolt.Tx) error {
		if _, _, err := buckets(tx); err != nil {
			return err
		}
		v := tx.Bucket(bucketMeta).Get(keyVersion)
		if len(v) != 4 {
			return fmt.Errorf("%s: no version: %w", s.db.path, ErrIndexDamaged)
		}
		if n := binary.LittleEndian.Uint32(v); n > indexVersion {
			return fmt.Errorf("%s: index version %d, this program reads up to %d: %w", s.db.path, n, indexVersion, ErrFormatVersion)
		}
		return nil
	})
}

var keyNextPack = []byte("next_pack")

// recoverPacks brings the pack directory in line with the index after a
// crash: bytes past a pack's committed size are trimmed, pack files with
// no record (a new pack whose commit never happened, or a pack GC had
// already replaced) are removed.
func (s *FileStore) recoverPacks(ctx context.Context) error {
	var recs map[uint32]packRec
	var next uint32 = 1
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		var err error
		recs, err = allPackRecs(tx)
		if v := tx.Bucket(bucketMeta).Get(keyNextPack); len(v) == 4 {
			next = max(next, binary.LittleEndian.Uint32(v))
		}
		return err
	})
	if err != nil {
		return err
	}
	pdir := filepath.Join(s.dir, packsDir)
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return err
	}
	des, err := os.ReadDir(pdir)
	if err != nil {
		return err
	}
	for _, de := range des {
		num, ok := parsePackName(de.Name())
		p := filepath.Join(pdir, de.Name())
		if !ok {
			if filepath.Ext(de.Name()) == ".tmp" {
				_ = os.Remove(p)
			}
			continue
		}
		next = max(next, num+1)
		rec, known := recs[num]
		if !known {
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("chunkstore: removing unreferenced pack: %w", err)
			}
			continue
		}
		fi, err := de.Info()
		if err != nil {
			return err
		}
		if fi.Size() > rec.Size {
			if err := truncateSync(p, rec.Size); err != nil {
				return fmt.Errorf("chunkstore: trimming uncommitted tail: %w", err)
			}
		}
	}
	for num := range recs {
		next = max(next, num+1)
	}
	s.nextPack = next
	// Keep appending to the newest pack while it is small.
	var last uint32
	for num := range recs {
		last = max(last, num)
	}
	if rec, ok := recs[last]; ok && rec.Size < s.cfg.PackSize*9/10 {
		p := filepath.Join(pdir, packName(last))
		if fi, err := os.Stat(p); err == nil && fi.Size() == rec.Size {
			if f, err := os.OpenFile(p, os.O_RDWR, 0); err == nil {
				s.cur = &packWriter{num: last, path: p, f: f, size: rec.Size, committed: rec.Size}
			}
		}
	}
	return nil
}

func truncateSync(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Dir returns the store's directory.
func (s *FileStore) Dir() string { return s.dir }

// Params returns the parameters fixed at Init.
func (s *FileStore) Params() Params { return s.cfg.Params }

// BlockSize returns the raw block target fixed at Init (1: one chunk per block).
func (s *FileStore) BlockSize() int { return s.cfg.BlockSize }

// Close releases the writer lock and every file handle.
func (s *FileStore) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.wmu.Lock()
	var err error
	if s.cur != nil {
		err = s.cur.f.Close()
		s.cur = nil
	}
	s.wmu.Unlock()
	s.db.close()
	s.packs.closeAll()
	if lerr := s.lock.release(); err == nil {
		err = lerr
	}
	return err
}

func (s *FileStore) check(write bool) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if write && s.readOnly {
		return fmt.Errorf("%s: %w", s.dir, ErrReadOnly)
	}
	return nil
}

// Has reports whether the store holds id.
func (s *FileStore) Has(ctx context.Context, id ID) (bool, error) {
	r, err := s.HasMany(ctx, []ID{id})
	if err != nil {
		return false, err
	}
	return r[0], nil
}

// HasMany answers Has for ids in one read transaction.
func (s *FileStore) HasMany(ctx context.Context, ids []ID) ([]bool, error) {
	if err := s.check(false); err != nil {
		return nil, err
	}
	out := make([]bool, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		chunks, _, err := buckets(tx)
		if err != nil {
			return err
		}
		for i, id := range ids {
			out[i] = chunks.Get(id[:]) != nil
		}
		return nil
	})
	return out, err
}

// Lookup returns the entries of the ids the store holds.
func (s *FileStore) Lookup(ctx context.Context, ids []ID) ([]Entry, error) {
	if err := s.check(false); err != nil {
		return nil, err
	}
	return lookupEntries(ctx, s.db, ids)
}

func (s *FileStore) lookup(ctx context.Context, id ID) (entry, bool, error) {
	var e entry
	var ok bool
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		chunks, _, err := buckets(tx)
		if err != nil {
			return err
		}
		v := chunks.Get(id[:])
		if v == nil {
			return nil
		}
		ok = true
		e, err = decodeEntry(id, v)
		return err
	})
	return e, ok, err
}

// Get returns chunk id's bytes after checking their BLAKE3.
func (s *FileStore) Get(ctx context.Context, id ID) ([]byte, error) {
	if err := s.check(false); err != nil {
		return nil, err
	}
	e, ok, err := s.lookup(ctx, id)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, &NotFoundError{ID: id}
	}
	data, err := s.readChunk(id, e, nil)
	if err != nil {
		// GC in this or another process may have moved the chunk between
		// the lookup and the read: look again before calling it corrupt.
		e2, ok, lerr := s.lookup(ctx, id)
		if lerr == nil && ok && e2 != e {
			return s.readChunk(id, e2, nil)
		}
		if lerr == nil && !ok {
			return nil, &NotFoundError{ID: id}
		}
	}
	return data, err
}

// frameError says why a frame could not be read; each chunk that wanted the
// frame turns it into its own CorruptChunkError.
type frameError struct {
	reason string
	err    error
}

func (e *frameError) Error() string { return e.reason + ": " + e.err.Error() }

// readChunk reads, checks and returns the chunk e locates: in dst when it
// is not nil (it must have the chunk's length), else in a new buffer.
func (s *FileStore) readChunk(id ID, e entry, dst []byte) ([]byte, error) {
	corrupt := func(reason string, err error) error {
		return &CorruptChunkError{ID: id, Pack: s.packs.path(e.Pack), Offset: e.FrameOff, Reason: reason, Err: err}
	}
	if dst != nil && len(dst) != int(e.RawLen) {
		return nil, &LengthError{ID: id, Len: int(e.RawLen), Want: len(dst)}
	}
	key := blockKey{e.Pack, e.FrameOff}
	var block []byte
	var list []frameChunk
	if cb := s.cache.get(key); cb != nil {
		block, list = cb.block, cb.chunks
	} else if data, ok, err := s.readRawChunk(id, e, dst); ok || err != nil {
		if err != nil {
			return nil, corrupt("reading frame", err)
		}
		if got := Sum(data); got != id {
			return nil, corrupt("content hashes to "+got.Short(), nil)
		}
		return data, nil
	} else {
		cb, err := s.cache.load(key, func() (*cachedBlock, error) {
			f, err := s.readFrame(e)
			if err != nil {
				return nil, &frameError{"reading frame", err}
			}
			block, err := f.block()
			if err != nil {
				return nil, &frameError{"decompressing block", err}
			}
			releaseFrame(f, f.buf)
			return &cachedBlock{key: key, block: block, chunks: f.Chunks}, nil
		})
		if err != nil {
			var fe *frameError
			if errors.As(err, &fe) {
				return nil, corrupt(fe.reason, fe.err)
			}
			return nil, corrupt("reading frame", err)
		}
		block, list = cb.block, cb.chunks
	}
	i := -1
	for j, c := range list {
		if c.ID == id && c.Off == e.BlockOff {
			i = j
			break
		}
	}
	if i < 0 {
		return nil, corrupt(fmt.Sprintf("frame does not list the chunk at block offset %d", e.BlockOff), nil)
	}
	c := list[i]
	if c.Len != e.RawLen {
		return nil, corrupt(fmt.Sprintf("frame says %d bytes, index says %d", c.Len, e.RawLen), nil)
	}
	// The block is shared through the cache: the caller gets a copy.
	var data []byte
	if dst != nil {
		data = dst[:copy(dst, block[c.Off:c.Off+c.Len])]
	} else if data = bytes.Clone(block[c.Off : c.Off+c.Len]); data == nil {
		data = []byte{}
	}
	if got := Sum(data); got != id {
		return nil, corrupt("content hashes to "+got.Short(), nil)
	}
	return data, nil
}

// readRawChunk reads one chunk of an uncompressed multi-chunk frame
// without reading the rest of the block: a random Get of incompressible
// data then costs one chunk's I/O, not a block's. The frame checksum is
// skipped; the chunk list is checked against the index and the caller
// checks BLAKE3. ok is false when the frame is not such a frame.
func (s *FileStore) readRawChunk(id ID, e entry, dst []byte) (data []byte, ok bool, err error) {
	var fh [frameFixed]byte
	if e.FrameLen < frameFixed {
		return nil, false, nil
	}
	if err := s.packs.readAt(e.Pack, fh[:], e.FrameOff); err != nil {
		return nil, false, nil // readFrame reports it
	}
	h, err := parseFrameHeader(fh[:])
	if err != nil || h.Codec != codecRaw || h.N < 2 || h.Len() != int64(e.FrameLen) {
		return nil, false, nil
	}
	list := make([]byte, int(h.N)*frameEntry)
	if err := s.packs.readAt(e.Pack, list, e.FrameOff+frameFixed); err != nil {
		return nil, true, err
	}
	for i := range int(h.N) {
		x := list[i*frameEntry:]
		if ID(x[:32]) == id && binary.LittleEndian.Uint32(x[32:]) == e.BlockOff {
			if l := binary.LittleEndian.Uint32(x[36:]); l != e.RawLen || uint64(e.BlockOff)+uint64(l) > uint64(h.RawLen) {
				return nil, true, fmt.Errorf("frame says %d bytes at block offset %d, index says %d", l, e.BlockOff, e.RawLen)
			}
			if data = dst; data == nil {
				data = make([]byte, e.RawLen)
			}
			payload := e.FrameOff + frameFixed + int64(len(list))
			return data, true, s.packs.readAt(e.Pack, data, payload+int64(e.BlockOff))
		}
	}
	return nil, true, fmt.Errorf("frame does not list the chunk at block offset %d", e.BlockOff)
}

// readFrame reads and decodes (checksum included) the frame e points at.
// readFramePool holds the buffers compressed frames are read into: once the
// block is decompressed the frame is garbage, and a reader with a full
// cache (view/) would otherwise collect one per block read.
var readFramePool = sync.Pool{New: func() any { return new([]byte) }}

// releaseFrame returns f's buffer to readFramePool; f and its payload must not
// be used after. A raw frame's payload is the block itself, so it is kept.
func releaseFrame(f *frame, buf []byte) {
	if f.Codec != codecRaw && buf != nil {
		readFramePool.Put(&buf)
	}
}

func (s *FileStore) readFrame(e entry) (*frame, error) {
	if e.FrameLen < frameFixed+frameEntry+frameTrailer || e.FrameLen > maxFrameBytes {
		return nil, fmt.Errorf("index says the frame is %d bytes", e.FrameLen)
	}
	bp := readFramePool.Get().(*[]byte)
	if cap(*bp) < int(e.FrameLen) {
		*bp = make([]byte, e.FrameLen)
	}
	buf := (*bp)[:e.FrameLen]
	if err := s.packs.readAt(e.Pack, buf, e.FrameOff); err != nil {
		return nil, err
	}
	f, n, err := decodeFrame(buf)
	if err != nil {
		return nil, err
	}
	if n != int64(e.FrameLen) {
		return nil, fmt.Errorf("frame is %d bytes, index says %d", n, e.FrameLen)
	}
	f.buf = (*bp)[:cap(*bp)]
	return f, nil
}

// View runs fn in a read-only metadata transaction.
func (s *FileStore) View(ctx context.Context, fn func(MetaTx) error) error {
	if err := s.check(false); err != nil {
		return err
	}
	return s.db.view(ctx, func(tx *bolt.Tx) error { return fn(metaTx{tx}) })
}

// Update runs fn in a read-write metadata transaction.
func (s *FileStore) Update(ctx context.Context, fn func(MetaTx) error) error {
	if err := s.check(true); err != nil {
		return err
	}
	return s.db.update(ctx, func(tx *bolt.Tx) error { return fn(metaTx{tx}) })
}

// Stats sums the pack records.
func (s *FileStore) Stats(ctx context.Context) (Stats, error) {
	if err := s.check(false); err != nil {
		return Stats{}, err
	}
	return packStats(ctx, s.db)
}
