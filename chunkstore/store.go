package chunkstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
)

// Chunk is a chunk's ID with its uncompressed bytes.
type Chunk struct {
	ID   ID
	Data []byte
}

// ChunkParams are the chunking parameters an image is cut with. The store
// records them at Init so every image in one store is cut the same way; it
// does not interpret them (ingest does).
type ChunkParams struct {
	Algorithm string `json:"algorithm"` // "aligned-cdc-xxh3" (see docs/FORMAT.md)
	Align     int    `json:"align"`     // block size boundaries fall on (4096)
	Min       int    `json:"min"`       // minimum chunk length (16 KiB)
	Avg       int    `json:"avg"`       // target average length (64 KiB)
	Max       int    `json:"max"`       // maximum chunk length (256 KiB)

	// raw and bad are set when config.json's chunking object has a value
	// of the wrong JSON type: the store still opens (restore does not
	// need chunking), ingest refuses with bad, and raw is written back
	// unchanged (upgrade) rather than as zeros.
	raw, bad string
}

// Invalid is nil, or why config.json's chunking object could not be read
// (a value of the wrong JSON type); the other fields are then unreliable.
func (p ChunkParams) Invalid() error {
	if p.bad == "" {
		return nil
	}
	return errors.New(p.bad)
}

// UnmarshalJSON reads what it can and records a type error in Invalid
// instead of failing: one bad field must not stop every command.
func (p *ChunkParams) UnmarshalJSON(b []byte) error {
	type plain ChunkParams
	var q plain
	err := json.Unmarshal(b, &q)
	if te := (*json.UnmarshalTypeError)(nil); errors.As(err, &te) {
		*p = ChunkParams(q)
		p.raw = string(b)
		what := "chunking"
		if te.Field != "" {
			what += "." + te.Field
		}
		p.bad = fmt.Sprintf("%s is a JSON %s, want %s", what, te.Value, jsonKind(te.Type.Kind()))
		return nil
	}
	if err != nil {
		return err
	}
	*p = ChunkParams(q)
	return nil
}

// MarshalJSON writes an unreadable object back as it was read.
func (p ChunkParams) MarshalJSON() ([]byte, error) {
	if p.raw != "" {
		return []byte(p.raw), nil
	}
	type plain ChunkParams
	return json.Marshal(plain(p))
}

// jsonKind names what JSON a Go kind is read from.
func jsonKind(k reflect.Kind) string {
	switch k {
	case reflect.String:
		return "a string"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Bool:
		return "a boolean"
	}
	return "a number"
}

// DefaultChunkParams are the parameters of a store made without options.
var DefaultChunkParams = ChunkParams{Algorithm: "aligned-cdc-xxh3", Align: 4096, Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}

// Params are fixed when a store is created.
type Params struct {
	Compression string      `json:"compression"` // one of Compressions
	Chunking    ChunkParams `json:"chunking"`
}

// Entry says where a chunk lives and how big it is.
type Entry struct {
	ID        ID
	RawLen    int   // uncompressed length
	StoredLen int64 // bytes it occupies in packs (its share, if compressed together with others)
}

// Stats summarises a store.
type Stats struct {
	Chunks      int64 `json:"chunks"`
	RawBytes    int64 `json:"raw_bytes"`    // sum of uncompressed chunk lengths
	StoredBytes int64 `json:"stored_bytes"` // sum of live frame bytes in packs
	Packs       int64 `json:"packs"`
	PackBytes   int64 `json:"pack_bytes"` // size of all pack files on disk (live + dead)
}

// MetaTx is a transaction over the store's small key-value metadata, which
// other packages (engram/) keep in their own buckets. Slices passed to or
// returned by it are valid only until the transaction ends.
type MetaTx interface {
	// Get returns nil when the bucket or key does not exist.
	Get(bucket, key []byte) []byte
	// Put creates the bucket if needed. Only in Update.
	Put(bucket, key, value []byte) error
	// Delete is a no-op for a missing key. Only in Update.
	Delete(bucket, key []byte) error
	// ForEach visits, in key order, the keys of bucket that start with
	// prefix (nil: all). A missing bucket visits nothing.
	ForEach(bucket, prefix []byte, fn func(k, v []byte) error) error
}

// Reader is what restore, ls and verify need. Safe for concurrent use.
type Reader interface {
	// Has reports whether the store holds chunk id.
	Has(ctx context.Context, id ID) (bool, error)
	// HasMany answers Has for many IDs at once, in order.
	HasMany(ctx context.Context, ids []ID) ([]bool, error)
	// Get returns the chunk's uncompressed bytes after checking their
	// BLAKE3 against id; a missing chunk is ErrNotFound, a mismatch a
	// *CorruptChunkError.
	Get(ctx context.Context, id ID) ([]byte, error)
	// Lookup returns the entries of the IDs the store holds; missing
	// ones are left out.
	Lookup(ctx context.Context, ids []ID) ([]Entry, error)
	// View runs fn in a read-only metadata transaction.
	View(ctx context.Context, fn func(MetaTx) error) error
	Stats(ctx context.Context) (Stats, error)
	Params() Params
}

// Writer adds chunks and metadata. Safe for concurrent use.
type Writer interface {
	// Put stores one chunk; see PutMany.
	Put(ctx context.Context, id ID, data []byte) (added bool, err error)
	// PutMany stores the chunks it does not already hold and returns how
	// many it added. When it returns nil, every chunk is durable: its pack
	// bytes were fsynced before the index that points at them committed.
	// Chunks of one call that are new are compressed together in blocks.
	PutMany(ctx context.Context, chunks []Chunk) (added int, err error)
	// Update runs fn in a read-write metadata transaction.
	Update(ctx context.Context, fn func(MetaTx) error) error
}

// Store is a chunk store opened for reading and writing.
type Store interface {
	Reader
	Writer
	Close() error
}
