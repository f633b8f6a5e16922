package chunkstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// repairFileStoreDir repairs the store in dir when Open cannot open it (index.db
// damaged or missing). It takes the writer lock like Open.
func repairFileStoreDir(ctx context.Context, dir string, opts OpenOptions) (RepairReport, error) {
	cfg, err := readConfig(dir)
	if err != nil {
		return RepairReport{}, err
	}
	c, err := getCodec(cfg.Params.Compression)
	if err != nil {
		return RepairReport{}, err
	}
	timeout := opts.LockTimeout
	if timeout == 0 {
		timeout = DefaultLockTimeout
	} else if timeout < 0 {
		timeout = 0
	}
	s := &FileStore{dir: dir, cfg: cfg, codec: c,
		packs:   newPackReaders(filepath.Join(dir, packsDir)),
		cache:   newBlockCache(0),
		pending: map[ID]*pendingPut{},
	}
	if s.lock, err = acquireLock(ctx, dir, timeout, opts.Command, true); err != nil {
		return RepairReport{}, err
	}
	s.db = newDBPool(filepath.Join(dir, indexName), false, max(timeout, time.Second))
	defer s.Close()
	return s.Repair(ctx)
}

// Repair implements Maintainer: it scans every pack, builds a new index
// beside the old one and renames it into place, then rewrites the packs
// that hold damaged frames without them (their damage is in the report),
// so the repaired store verifies clean.
func (s *FileStore) Repair(ctx context.Context) (RepairReport, error) {
	rep, err := s.repairIndex(ctx)
	if err != nil {
		return rep, err
	}
	err = s.salvage(ctx, &rep)
	return rep, err
}

// salvage rewrites the packs in which Repair found damaged frames, keeping
// the chunks the new index points at. Without it the damaged bytes would
// stay in the pack (GC leaves damaged packs alone) and Verify would report
// them forever.
func (s *FileStore) salvage(ctx context.Context, rep *RepairReport) error {
	damaged := map[uint32]bool{}
	for _, p := range rep.Problems {
		if num, ok := parsePackName(filepath.Base(p.Pack)); ok && p.Pack != "" {
			damaged[num] = true
		}
	}
	if len(damaged) == 0 {
		return nil
	}
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	// New frames go to a fresh pack, never to one being rewritten.
	s.wmu.Lock()
	if s.cur != nil {
		s.cur.f.Close()
		s.cur = nil
	}
	s.wmu.Unlock()
	recs, err := s.packRecs(ctx)
	if err != nil {
		return fmt.Errorf("chunkstore repair: %w", err)
	}
	var st GCStats
	for _, num := range sortedNums(damaged) {
		rec, ok := recs[num]
		if !ok {
			continue
		}
		if err := s.rewritePack(ctx, num, rec, &st, true); err != nil {
			return fmt.Errorf("chunkstore repair: rewriting damaged pack: %w", err)
		}
		rep.Salvaged++
	}
	return nil
}

func (s *FileStore) repairIndex(ctx context.Context) (RepairReport, error) {
	var rep RepairReport
	if err := s.check(true); err != nil {
		return rep, err
	}
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.cur != nil {
		s.cur.f.Close()
		s.cur = nil
	}
	pdir := filepath.Join(s.dir, packsDir)
	des, err := os.ReadDir(pdir)
	if err != nil {
		return rep, fmt.Errorf("chunkstore repair: %w", err)
	}
	found := map[ID]entry{}
	recs := map[uint32]*packRec{}
	var next uint32 = 1
	for _, de := range des {
		num, ok := parsePackName(de.Name())
		if !ok {
			continue
		}
		next = max(next, num+1)
		path := filepath.Join(pdir, de.Name())
		f, size, err := openPack(path)
		if err != nil {
			return rep, fmt.Errorf("chunkstore repair: %w", err)
		}
		rep.Packs++
		rec := &packRec{}
		end, err := scanPack(ctx, f, num, size, func(off int64, fr *frame, raw []byte) error {
			block, err := fr.block()
			if err != nil {
				rep.BadFrames++
				rep.Problems = append(rep.Problems, Problem{Pack: path, Offset: off, Err: fmt.Errorf("decompressing block: %w", err)})
				return nil
			}
			rep.Frames++
			lens := make([]int, len(fr.Chunks))
			for i, c := range fr.Chunks {
				lens[i] = int(c.Len)
			}
			sh := shares(int64(len(raw)), lens)
			for i, c := range fr.Chunks {
				if err := chunkOK(block, c); err != nil {
					rep.Problems = append(rep.Problems, Problem{ID: c.ID, Pack: path, Offset: off, Err: err})
					continue
				}
				if _, dup := found[c.ID]; dup {
					continue
				}
				e := entry{Pack: num, FrameOff: off, FrameLen: uint32(len(raw)), BlockOff: c.Off, RawLen: c.Len, Share: sh[i]}
				found[c.ID] = e
				rec.Live += int64(e.Share)
				rec.Chunks++
				rec.Raw += int64(e.RawLen)
			}
			return nil
		}, func(off int64, err error) {
			rep.BadFrames++
			rep.Problems = append(rep.Problems, Problem{Pack: path, Offset: off, Err: err})
		})
		f.Close()
		if err != nil {
			return rep, fmt.Errorf("chunkstore repair: %s: %w", path, err)
		}
		// The next writer Open trims whatever follows the last intact frame.
		rec.Size = max(end, packHeaderSize)
		recs[num] = rec
	}
	rep.Chunks = int64(len(found))

	// Carry over what the old index knows that the packs do not: the
	// metadata buckets and the pack counter.
	s.db.flush()
	idx := filepath.Join(s.dir, indexName)
	type kv struct{ b, k, v []byte }
	var meta []kv
	oldChunks := map[ID]bool{}
	readOld := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("%v", r)
			}
		}()
		if _, err := os.Stat(idx); err != nil {
			return err
		}
		db, err := bolt.Open(idx, 0o644, &bolt.Options{Timeout: time.Second, ReadOnly: true})
		if err != nil {
			return err
		}
		defer db.Close()
		return db.View(func(tx *bolt.Tx) error {
			if m := tx.Bucket(bucketMeta); m != nil {
				if v := m.Get(keyNextPack); len(v) == 4 {
					next = max(next, binary.LittleEndian.Uint32(v))
				}
			}
			if c := tx.Bucket(bucketChunks); c != nil {
				_ = c.ForEach(func(k, _ []byte) error {
					if len(k) == len(ID{}) {
						oldChunks[ID(k)] = true
					}
					return nil
				})
			}
			u := tx.Bucket(bucketUser)
			if u == nil {
				return nil
			}
			return u.ForEach(func(name, v []byte) error {
				b := u.Bucket(name)
				if b == nil {
					return nil
				}
				return b.ForEach(func(k, v []byte) error {
					if v != nil {
						meta = append(meta, kv{append([]byte(nil), name...), append([]byte(nil), k...), append([]byte(nil), v...)})
					}
					return nil
				})
			})
		})
	}
	if err := readOld(); err != nil {
		rep.MetadataLost = true
		rep.Problems = append(rep.Problems, Problem{Err: fmt.Errorf("%s unreadable, metadata buckets lost: %w", idx, err)})
	}
	for id := range found {
		if !oldChunks[id] {
			rep.Added++
		}
	}
	for id := range oldChunks {
		if _, ok := found[id]; !ok {
			rep.Dropped++
		}
	}
	tmp := idx + ".repair"
	_ = os.Remove(tmp)
	err = createIndex(tmp, func(tx *bolt.Tx) error {
		chunks, packs := tx.Bucket(bucketChunks), tx.Bucket(bucketPacks)
		for id, e := range found {
			if err := chunks.Put(id[:], e.encode()); err != nil {
				return err
			}
		}
		for num, r := range recs {
			if err := packs.Put(packKey(num), r.encode()); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketMeta).Put(keyNextPack, u32le(next)); err != nil {
			return err
		}
		mt := metaTx{tx}
		for _, x := range meta {
			if err := mt.Put(x.b, x.k, x.v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		_ = os.Remove(tmp)
		return rep, fmt.Errorf("chunkstore repair: %w", err)
	}
	if err := os.Rename(tmp, idx); err != nil {
		return rep, fmt.Errorf("chunkstore repair: %w", err)
	}
	if err := syncDir(s.dir); err != nil {
		return rep, err
	}
	s.packs.closeAll()
	s.cache.reset()
	if err := s.recoverPacks(ctx); err != nil {
		return rep, fmt.Errorf("chunkstore repair: %w", err)
	}
	return rep, nil
}
