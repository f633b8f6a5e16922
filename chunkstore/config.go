package chunkstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Store format identity, recorded in config.json.
const (
	configFormat = "engram-chunkstore"
	// configVersion 2: the blob-1 layout in a directory (docs/FORMAT.md
	// section 2), so a program that knows only format 1 refuses the
	// directory instead of taking it for an empty format-1 store. Buckets
	// of version 1 (blob-1 from before) read the same.
	configVersion = 2
	// indexVersion is the layout of index.db (meta bucket key "version").
	indexVersion = 1
)

// Defaults for InitOptions.
const (
	// DefaultBlockSize is the raw size at which a run of new chunks of one
	// PutMany call is closed into a compressed block (frame).
	DefaultBlockSize = 1 << 20
	// DefaultPackSize is the size at which a pack file is closed.
	DefaultPackSize = 64 << 20
	// DefaultCompression is the zstd setting of a store made without one:
	// chosen by measurement on the bench fleet (docs/DESIGN.md,
	// "Compression"). Stores record their setting, so changing it never
	// touches existing stores.
	DefaultCompression = "fastest-noentropy"
)

// File and directory names inside a store.
const (
	configName = "config.json"
	indexName  = "index.db"
	packsDir   = "packs"
	lockName   = "lock"
)

// InitOptions are the parameters fixed when a store is created.
type InitOptions struct {
	// Compression is one of Compressions ("" = DefaultCompression).
	Compression string
	// Chunking is recorded for ingest; the zero value means DefaultChunkParams.
	Chunking ChunkParams
	// BlockSize is the raw size of a compressed block of consecutive new
	// chunks: 0 means DefaultBlockSize, 1 or less than 0 one chunk per
	// block; at most MaxBlockSize.
	BlockSize int
	// PackSize is the size at which a pack is closed; 0 means
	// DefaultPackSize. Small values are for tests.
	PackSize int64
}

// config is config.json: what Init fixed.
type config struct {
	Format    string    `json:"format"`
	Version   int       `json:"version"`
	Created   time.Time `json:"created"`
	Params    Params    `json:"params"`
	BlockSize int       `json:"block_size"`
	PackSize  int64     `json:"pack_size"`
}

func (o InitOptions) config() (config, error) {
	c := config{Format: configFormat, Version: configVersion, Created: time.Now().UTC().Truncate(time.Second),
		Params: Params{Compression: o.Compression, Chunking: o.Chunking}, BlockSize: o.BlockSize, PackSize: o.PackSize}
	if c.Params.Compression == "" {
		c.Params.Compression = DefaultCompression
	}
	if c.Params.Chunking == (ChunkParams{}) {
		c.Params.Chunking = DefaultChunkParams
	}
	switch {
	case c.BlockSize == 0:
		c.BlockSize = DefaultBlockSize
	case c.BlockSize < 1:
		c.BlockSize = 1
	case c.BlockSize > MaxBlockSize:
		return c, fmt.Errorf("block size %d exceeds the maximum %d", c.BlockSize, MaxBlockSize)
	}
	if c.PackSize == 0 {
		c.PackSize = DefaultPackSize
	}
	if c.PackSize < 4096 {
		return c, fmt.Errorf("pack size %d is below 4096", c.PackSize)
	}
	return c, c.check()
}

func (c config) check() error {
	if c.Format != configFormat {
		return fmt.Errorf("format is %q, want %q", c.Format, configFormat)
	}
	if c.Version > configVersion {
		return fmt.Errorf("format version %d, this program reads up to %d: %w", c.Version, configVersion, ErrFormatVersion)
	}
	if c.Version < 1 {
		return fmt.Errorf("format version %d is invalid", c.Version)
	}
	if _, err := encoderOptions(c.Params.Compression); err != nil {
		return err
	}
	if c.BlockSize < 1 || c.BlockSize > MaxBlockSize {
		return fmt.Errorf("block size %d out of range 1..%d", c.BlockSize, MaxBlockSize)
	}
	if c.PackSize < 4096 {
		return fmt.Errorf("pack size %d is below 4096", c.PackSize)
	}
	return nil
}

// createIndex creates a fresh index.db at path holding the internal buckets;
// fill, if not nil, runs in the same transaction.
func createIndex(path string, fill func(tx *bolt.Tx) error) error {
	db, err := bolt.Open(path, 0o644, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketChunks, bucketPacks, bucketUser} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketMeta).Put(keyVersion, u32le(indexVersion)); err != nil {
			return err
		}
		if fill != nil {
			return fill(tx)
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func readConfig(dir string) (config, error) {
	var c config
	if fi, err := os.Stat(dir); err != nil {
		return c, fmt.Errorf("%s: %w", dir, errors.Join(ErrNotStore, err))
	} else if !fi.IsDir() {
		return c, fmt.Errorf("%s is not a directory: %w", dir, ErrNotStore)
	}
	p := filepath.Join(dir, configName)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return c, fmt.Errorf("%s: no %s: %w", dir, configName, ErrNotStore)
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w: %w", p, ErrNotStore, err)
	}
	if err := c.check(); err != nil {
		if errors.Is(err, ErrFormatVersion) {
			return c, fmt.Errorf("%s: %w", p, err)
		}
		return c, fmt.Errorf("%s: %w: %w", p, ErrNotStore, err)
	}
	return c, nil
}

// writeFileAtomic writes path via a synced temporary file and a rename,
// then syncs the directory so the rename is durable.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
