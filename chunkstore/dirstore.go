package chunkstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
	dirblob "github.com/engram-vm/engram/chunkstore/blob/dir"
)

// A directory store is a BlobStore over blob/dir: the objects of
// docs/FORMAT.md section 3 as files, so a directory store copies to a
// bucket object for object. What a directory adds to a bucket:
//
//   - the cache lives inside the store (dirCacheName) unless the caller
//     names a cache root, so a directory stays self-contained;
//   - processes coordinate with an flock on dir/lock: writers hold it
//     shared, gc exclusively, and with nothing writing gc deletes at once
//     (gcNow) instead of waiting out a margin;
//   - a store of format 1 (numbered packs, authoritative index.db) is
//     upgraded in place by the first writable Open (upgrade.go).

// dirCacheName is the directory inside a directory store that holds its
// cache (index.db), when OpenOptions.CacheRoot is empty.
const dirCacheName = "cache"

// ErrNeedsUpgrade means a directory store is in format 1 and was opened
// read-only: it is converted by the first writable open.
var ErrNeedsUpgrade = errors.New("chunk store needs a format upgrade")

// OpenOptions control how Open opens a directory store.
type OpenOptions struct {
	// ReadOnly opens without the store lock (but see HoldShared); writing
	// methods fail with ErrReadOnly. Any number of read-only opens may run
	// beside writers.
	ReadOnly bool
	// HoldShared, with ReadOnly, still takes the store lock shared
	// (waiting up to LockTimeout), so gc and repair, which take it alone,
	// wait until this reader is done: a verify reads every pack and would
	// take the packs a concurrent gc deletes for damaged ones. Where the
	// lock file cannot be opened (read-only media) the store is read
	// without it.
	HoldShared bool
	// Exclusive takes the store lock exclusively instead of shared: no
	// other process writes while the store is open, so GC deletes what is
	// dead at once (the CLI's gc). Ignored with ReadOnly.
	Exclusive bool
	// LockTimeout is how long to wait for the store lock, and for the
	// cache's index.db when another process is in a transaction: 0 means
	// DefaultLockTimeout, a negative value means do not wait.
	LockTimeout time.Duration
	// Command is recorded in the lock file for the message a waiting
	// process gets (default: os.Args).
	Command string
	// TrustIDs skips re-hashing new chunks in PutMany, for a caller that
	// has just computed their IDs itself (ingest). Get still verifies
	// every chunk it returns, so a wrong ID cannot go unnoticed.
	TrustIDs bool
	// BlockCacheBytes bounds the decompressed blocks kept so that
	// consecutive Gets of one block decompress it once: 0 means
	// DefaultBlockCacheBytes, a negative value keeps none. A long-running
	// reader (mount, serve) sizes it from its memory budget.
	BlockCacheBytes int64
	// CacheRoot, when set, holds the cache as for a bucket store
	// (CacheRoot/STORE-ID); "" keeps it in the store (dir/cache).
	CacheRoot string
	// DeferSync makes PutMany's packs durable, and visible to other
	// processes, at the next durable point (Update, a read of the index,
	// Close) instead of before it returns: one round of fsyncs for many
	// packs (blobdefer.go). This process sees them at once. For a writer
	// that commits what it stored with Update (ingest); a chunk PutMany
	// returned is lost by a crash before that.
	DeferSync bool
}

// dirLocal is what a BlobStore over a directory holds besides the bucket
// logic: the directory and the lock.
type dirLocal struct {
	dir  string
	lock *storeLock
}

func (l *dirLocal) close() error {
	if l == nil {
		return nil
	}
	return l.lock.release()
}

// exclusive reports whether this process holds the store lock
// exclusively (gc may then delete at once).
func (l *dirLocal) exclusive() bool { return l != nil && l.lock != nil && l.lock.exclusive }

// Dir returns the store's directory ("" for a bucket store).
func (s *BlobStore) Dir() string {
	if s.local == nil {
		return ""
	}
	return s.local.dir
}

// BlockSize returns the raw block target fixed at Init (1: one chunk per block).
func (s *BlobStore) BlockSize() int { return s.cfg.BlockSize }

// Init creates a chunk store in dir (created if missing): config.json of
// layout blob-1 in an otherwise empty directory. It fails with
// ErrStoreExists when dir already holds a store (of any format).
func Init(dir string, opts InitOptions) error {
	if _, err := os.Stat(filepath.Join(dir, configName)); err == nil {
		return fmt.Errorf("chunkstore init %s: %s exists: %w", dir, configName, ErrStoreExists)
	}
	bs, err := dirblob.Open(dir, true)
	if err != nil {
		return fmt.Errorf("chunkstore init: %w", err)
	}
	return InitBlob(context.Background(), bs, opts)
}

// dirLayout reads config.json of dir and says whether the store is of
// format 1 (legacy: numbered packs, index.db).
func dirLayout(dir string) (legacy bool, err error) {
	if _, err := readConfig(dir); err != nil {
		return false, err
	}
	b, err := os.ReadFile(filepath.Join(dir, configName))
	if err != nil {
		return false, err
	}
	var c blobConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return false, fmt.Errorf("%s: %w: %w", filepath.Join(dir, configName), ErrNotStore, err)
	}
	if c.Layout == "" {
		if c.Version != 1 {
			return false, fmt.Errorf("%s: version %d without a layout: %w", filepath.Join(dir, configName), c.Version, ErrNotStore)
		}
		return true, nil
	}
	return false, nil
}

// Open opens the store in dir. Unless opts.ReadOnly, it takes the store
// lock (shared, or exclusive with opts.Exclusive; waiting up to
// opts.LockTimeout) and upgrades a store of format 1 in place first. A
// read-only open of a format-1 store fails with ErrNeedsUpgrade.
func Open(ctx context.Context, dir string, opts OpenOptions) (*BlobStore, error) {
	timeout := lockWait(opts.LockTimeout)
	legacy, err := dirLayout(dir)
	if err != nil {
		return nil, err
	}
	if legacy && opts.ReadOnly {
		return nil, fmt.Errorf("%s: a store of format 1 (numbered packs); run `engram upgrade` (or any command that writes to it) once to convert it in place: %w", dir, ErrNeedsUpgrade)
	}
	var lock *storeLock
	if !opts.ReadOnly {
		lock, err = acquireLock(ctx, dir, timeout, opts.Command, legacy || opts.Exclusive)
		if err != nil {
			return nil, err
		}
		if legacy {
			_, err = upgradeV1(ctx, dir, UpgradeOptions{})
			if err == nil && !opts.Exclusive {
				err = lock.take(ctx, dir, timeout, opts.Command, false)
			}
		}
		if err == nil {
			err = removeLegacy(dir)
		}
		if err != nil {
			lock.release()
			return nil, err
		}
	} else if opts.HoldShared {
		lock, err = acquireLock(ctx, dir, timeout, opts.Command, false)
		if le := (*LockedError)(nil); errors.As(err, &le) || ctx.Err() != nil {
			return nil, err
		}
		if err != nil {
			lock = nil // no lock file to open: nothing can write here either
		}
	}
	bs, err := dirblob.Open(dir, false)
	if err != nil {
		lock.release()
		return nil, err
	}
	bo := BlobOpenOptions{ReadOnly: opts.ReadOnly, CacheRoot: opts.CacheRoot, TrustIDs: opts.TrustIDs,
		LockTimeout: max(timeout, time.Second), BlockCacheBytes: opts.BlockCacheBytes,
		// No news/ announcements or claims in a directory: they cost a
		// file and an fsync per pack, and the writers of one directory
		// are few and local; a chunk two of them store at once is kept
		// once by the index merge and the other copy goes at the next gc.
		SoleWriter: true}
	if opts.CacheRoot == "" {
		bo.CacheDir = filepath.Join(dir, dirCacheName)
	}
	s, err := OpenBlob(ctx, bs, bo)
	if errors.Is(err, ErrIndexDamaged) && bo.CacheDir != "" {
		// The cache is only a cache: rebuild it from the objects.
		if rerr := os.Remove(filepath.Join(bo.CacheDir, indexName)); rerr == nil {
			if bs, err = dirblob.Open(dir, false); err == nil {
				s, err = OpenBlob(ctx, bs, bo)
			}
		}
	}
	if err != nil {
		lock.release()
		if errors.Is(err, fs.ErrPermission) && opts.ReadOnly {
			return nil, fmt.Errorf("%s: the cache must be writable (or name one with --cache-dir): %w", dir, err)
		}
		return nil, err
	}
	s.local = &dirLocal{dir: dir, lock: lock}
	if opts.DeferSync && !opts.ReadOnly {
		s.staged = &staging{st: bs, ids: map[ID]int{}}
	}
	return s, nil
}

// RepairDir opens the directory store in dir exclusively (its cache is
// rebuilt when damaged) and runs Repair: damaged frames are recorded in
// damage lists, so every cache leaves their chunks out and the next
// ingest stores them again. Nothing of the catalog is lost with the
// cache: it lives in the store's journal objects.
func RepairDir(ctx context.Context, dir string, opts OpenOptions) (RepairReport, error) {
	opts.ReadOnly, opts.Exclusive = false, true
	s, err := Open(ctx, dir, opts)
	var segs, journal []Problem
	checked := false
	if errors.Is(err, ErrIndexDamaged) || errors.Is(err, ErrJournalDamaged) || errors.Is(err, ErrListDamaged) {
		// A damaged segment, journal entry or list fails every open
		// (fixSegmentsDir).
		var ferr error
		if segs, journal, ferr = fixSegmentsDir(ctx, dir, opts); ferr != nil {
			return RepairReport{}, fmt.Errorf("%w; replacing damaged objects: %w", err, ferr)
		}
		checked = true
		if len(segs)+len(journal) > 0 {
			s, err = Open(ctx, dir, opts)
		}
	}
	if err != nil {
		return RepairReport{Problems: append(segs, journal...)}, err
	}
	if !checked {
		// Damage the cache hides: it keeps a copy of each segment it
		// merged and the effect of each entry it applied, so only a
		// rebuild (or another host) would fail on them.
		if segs, journal, err = fixObjects(ctx, s.bs); err != nil {
			s.Close()
			return RepairReport{Problems: append(segs, journal...)}, err
		}
		if len(journal) > 0 {
			// What the removed entries did must go from the cache too,
			// or the catalog rebuilt on top of it would not be journaled.
			cache := s.db.path
			s.Close()
			if err := os.Remove(cache); err != nil {
				return RepairReport{Problems: append(segs, journal...)}, err
			}
			if s, err = Open(ctx, dir, opts); err != nil {
				return RepairReport{Problems: append(segs, journal...)}, err
			}
		}
	}
	defer s.Close()
	rep, err := s.Repair(ctx)
	rep.Problems = append(append(segs, journal...), rep.Problems...)
	if err != nil {
		return rep, err
	}
	// Every commit writes a journal entry, so chunks without any entry
	// mean the catalog's journal was lost: the caller rebuilds it from
	// catalog chunks (engram repair).
	journals := 0
	err = s.bs.List(ctx, blobMetaPrefix, func(blob.Info) error { journals++; return errStopList })
	if err != nil && !errors.Is(err, errStopList) {
		return rep, err
	}
	st, err := s.Stats(ctx)
	if err != nil {
		return rep, err
	}
	rep.MetadataLost = (journals == 0 || len(journal) > 0) && st.Chunks > 0
	return rep, nil
}

// NeedsUpgrade reports whether the directory store in dir is of format 1,
// which the first writable Open converts.
func NeedsUpgrade(dir string) (bool, error) { return dirLayout(dir) }
