package storeurl

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/chunkstore/blob/s3"
)

// Store is what any store opened by location offers.
type Store interface {
	chunkstore.Store
	chunkstore.Maintainer
	chunkstore.Lister
}

var _ Store = (*chunkstore.BlobStore)(nil)

// Options control Open.
type Options struct {
	ReadOnly bool
	// Exclusive: directory store only, hold its lock exclusively (gc: dead
	// packs are then deleted at once; see chunkstore.OpenOptions).
	Exclusive bool
	// HoldShared: directory store only, a read-only open that holds the
	// lock shared (verify; see chunkstore.OpenOptions).
	HoldShared  bool
	LockTimeout time.Duration // directory store: the store lock and the cache; bucket: the cache
	Command     string        // directory store: recorded in the lock file
	TrustIDs    bool
	// CacheRoot holds the per-store caches of bucket stores ("": the
	// default, chunkstore.DefaultCacheRoot), and of directory stores when
	// set ("": inside the store).
	CacheRoot string
	// BlockCacheBytes bounds the decompressed blocks kept
	// (chunkstore.OpenOptions.BlockCacheBytes).
	BlockCacheBytes int64
	// DeferSync: directory store only, see chunkstore.OpenOptions.
	DeferSync bool
	// Warn: bucket only, see chunkstore.BlobOpenOptions (a damaged object
	// is skipped with a warning instead of failing every command).
	Warn func(string)
}

// IsBucket reports whether loc names a bucket store.
func IsBucket(loc string) bool { return strings.HasPrefix(loc, "s3://") }

func openBucket(ctx context.Context, loc string, createBucket bool) (*s3.Store, error) {
	bucket, prefix, err := s3.ParseURL(loc)
	if err != nil {
		return nil, err
	}
	cfg, err := s3.ConfigFromEnv(bucket, prefix)
	if err != nil {
		return nil, err
	}
	return s3.Open(ctx, cfg, createBucket)
}

// Open opens the store at loc.
func Open(ctx context.Context, loc string, opts Options) (Store, error) {
	if !IsBucket(loc) {
		st, err := chunkstore.Open(ctx, loc, chunkstore.OpenOptions{ReadOnly: opts.ReadOnly, HoldShared: opts.HoldShared, Exclusive: opts.Exclusive, LockTimeout: opts.LockTimeout, Command: opts.Command,
			TrustIDs: opts.TrustIDs, BlockCacheBytes: opts.BlockCacheBytes, CacheRoot: opts.CacheRoot, DeferSync: opts.DeferSync})
		if err != nil {
			return nil, err
		}
		return st, nil
	}
	bs, err := openBucket(ctx, loc, false)
	if err != nil {
		return nil, err
	}
	st, err := chunkstore.OpenBlob(ctx, bs, chunkstore.BlobOpenOptions{ReadOnly: opts.ReadOnly, CacheRoot: opts.CacheRoot, TrustIDs: opts.TrustIDs, LockTimeout: opts.LockTimeout, BlockCacheBytes: opts.BlockCacheBytes, Warn: opts.Warn})
	if err != nil {
		bs.Close()
		return nil, err
	}
	return st, nil
}

// Init creates a store at loc. A bucket is created when it does not exist
// (as restic init does); a bucket prefix that holds anything is refused.
func Init(ctx context.Context, loc string, opts chunkstore.InitOptions) error {
	if !IsBucket(loc) {
		return chunkstore.Init(loc, opts)
	}
	bs, err := openBucket(ctx, loc, true)
	if err != nil {
		return err
	}
	defer bs.Close()
	return chunkstore.InitBlob(ctx, bs, opts)
}

// InitIfEmpty creates a store with default parameters in an existing,
// empty bucket prefix; it reports whether it did. A missing bucket is an
// error (only Init creates buckets), as is a prefix holding other objects.
func InitIfEmpty(ctx context.Context, loc string) (bool, error) {
	bs, err := openBucket(ctx, loc, false)
	if err != nil {
		return false, err
	}
	defer bs.Close()
	err = chunkstore.InitBlob(ctx, bs, chunkstore.InitOptions{})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, chunkstore.ErrStoreExists):
		return false, nil
	}
	return false, err
}

// Describe names a store for messages.
func Describe(st Store) string {
	switch s := st.(type) {
	case *chunkstore.BlobStore:
		if d := s.Dir(); d != "" {
			return d
		}
		return s.String()
	case fmt.Stringer:
		return s.String()
	}
	return "store"
}
