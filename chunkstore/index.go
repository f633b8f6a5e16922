package chunkstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Top-level buckets of index.db; see doc.go for the value encodings.
var (
	bucketMeta   = []byte("meta")
	bucketChunks = []byte("chunks")
	bucketPacks  = []byte("packs")
	bucketUser   = []byte("user") // MetaTx buckets are nested in here
	keyVersion   = []byte("version")
	// keyNextPack (meta bucket): the number the next pack gets; numbers
	// are never reused, so a block cache never mixes two packs.
	keyNextPack = []byte("next_pack")
)

const (
	entrySize = 28
	packRecSz = 32
)

// entry is a chunks-bucket value: where a chunk lives.
type entry struct {
	Pack     uint32
	FrameOff int64
	FrameLen uint32
	BlockOff uint32 // offset of the chunk in the uncompressed block
	RawLen   uint32
	Share    uint32 // the chunk's share of the frame's bytes, for accounting
}

func (e entry) encode() []byte {
	b := make([]byte, entrySize)
	binary.LittleEndian.PutUint32(b[0:], e.Pack)
	binary.LittleEndian.PutUint64(b[4:], uint64(e.FrameOff))
	binary.LittleEndian.PutUint32(b[12:], e.FrameLen)
	binary.LittleEndian.PutUint32(b[16:], e.BlockOff)
	binary.LittleEndian.PutUint32(b[20:], e.RawLen)
	binary.LittleEndian.PutUint32(b[24:], e.Share)
	return b
}

// getEntry reads id's entry from the chunks bucket; ok is false when the
// index does not hold id.
func getEntry(chunks *bolt.Bucket, id ID) (e entry, ok bool, err error) {
	v := chunks.Get(id[:])
	if v == nil {
		return e, false, nil
	}
	e, err = decodeEntry(id, v)
	return e, err == nil, err
}

func decodeEntry(id ID, b []byte) (entry, error) {
	var e entry
	if len(b) != entrySize {
		return e, fmt.Errorf("%s: index entry of chunk %s is %d bytes, want %d: %w", indexName, id.Short(), len(b), entrySize, ErrIndexDamaged)
	}
	e.Pack = binary.LittleEndian.Uint32(b[0:])
	e.FrameOff = int64(binary.LittleEndian.Uint64(b[4:]))
	e.FrameLen = binary.LittleEndian.Uint32(b[12:])
	e.BlockOff = binary.LittleEndian.Uint32(b[16:])
	e.RawLen = binary.LittleEndian.Uint32(b[20:])
	e.Share = binary.LittleEndian.Uint32(b[24:])
	if e.FrameOff < packHeaderSize || e.FrameOff > 1<<50 || e.FrameLen > maxFrameBytes || e.RawLen > MaxChunkSize {
		return e, fmt.Errorf("%s: index entry of chunk %s is out of range (pack %d, frame 0x%x+%d, raw %d): %w",
			indexName, id.Short(), e.Pack, e.FrameOff, e.FrameLen, e.RawLen, ErrIndexDamaged)
	}
	return e, nil
}

// packRec is a packs-bucket value: bookkeeping of one pack file.
type packRec struct {
	Size   int64 // committed length of the file; bytes beyond are garbage
	Live   int64 // sum of Share of the chunks indexed in this pack
	Chunks int64
	Raw    int64 // sum of RawLen of those chunks
}

func (p packRec) encode() []byte {
	b := make([]byte, packRecSz)
	binary.LittleEndian.PutUint64(b[0:], uint64(p.Size))
	binary.LittleEndian.PutUint64(b[8:], uint64(p.Live))
	binary.LittleEndian.PutUint64(b[16:], uint64(p.Chunks))
	binary.LittleEndian.PutUint64(b[24:], uint64(p.Raw))
	return b
}

func decodePackRec(num uint32, b []byte) (packRec, error) {
	var p packRec
	if len(b) != packRecSz {
		return p, fmt.Errorf("%s: record of pack %d is %d bytes, want %d: %w", indexName, num, len(b), packRecSz, ErrIndexDamaged)
	}
	p.Size = int64(binary.LittleEndian.Uint64(b[0:]))
	p.Live = int64(binary.LittleEndian.Uint64(b[8:]))
	p.Chunks = int64(binary.LittleEndian.Uint64(b[16:]))
	p.Raw = int64(binary.LittleEndian.Uint64(b[24:]))
	return p, nil
}

func packKey(num uint32) []byte { return binary.BigEndian.AppendUint32(nil, num) }

func u32le(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// buckets fetches the internal buckets, failing with ErrIndexDamaged when
// one is missing.
func buckets(tx *bolt.Tx) (chunks, packs *bolt.Bucket, err error) {
	chunks, packs = tx.Bucket(bucketChunks), tx.Bucket(bucketPacks)
	if chunks == nil || packs == nil || tx.Bucket(bucketMeta) == nil {
		return nil, nil, fmt.Errorf("%s: internal buckets missing (run repair): %w", tx.DB().Path(), ErrIndexDamaged)
	}
	return chunks, packs, nil
}

func getPackRec(packs *bolt.Bucket, num uint32) (packRec, bool, error) {
	v := packs.Get(packKey(num))
	if v == nil {
		return packRec{}, false, nil
	}
	p, err := decodePackRec(num, v)
	return p, err == nil, err
}

func allPackRecs(tx *bolt.Tx) (map[uint32]packRec, error) {
	_, packs, err := buckets(tx)
	if err != nil {
		return nil, err
	}
	m := map[uint32]packRec{}
	err = packs.ForEach(func(k, v []byte) error {
		if len(k) != 4 {
			return fmt.Errorf("%s: pack key %x is not 4 bytes: %w", indexName, k, ErrIndexDamaged)
		}
		num := binary.BigEndian.Uint32(k)
		p, err := decodePackRec(num, v)
		m[num] = p
		return err
	})
	return m, err
}

// metaTx implements MetaTx over the nested buckets of bucketUser.
type metaTx struct {
	tx *bolt.Tx
}

var errEmptyBucket = errors.New("chunkstore: empty bucket name")

func (m metaTx) bucket(name []byte) *bolt.Bucket {
	u := m.tx.Bucket(bucketUser)
	if u == nil || len(name) == 0 {
		return nil
	}
	return u.Bucket(name)
}

func (m metaTx) Get(bucket, key []byte) []byte {
	b := m.bucket(bucket)
	if b == nil {
		return nil
	}
	return b.Get(key)
}

func (m metaTx) Put(bucket, key, value []byte) error {
	if !m.tx.Writable() {
		return ErrReadOnly
	}
	if len(bucket) == 0 {
		return errEmptyBucket
	}
	u, err := m.tx.CreateBucketIfNotExists(bucketUser)
	if err != nil {
		return err
	}
	b, err := u.CreateBucketIfNotExists(bucket)
	if err != nil {
		return fmt.Errorf("chunkstore: bucket %q: %w", bucket, err)
	}
	return b.Put(key, value)
}

func (m metaTx) Delete(bucket, key []byte) error {
	if !m.tx.Writable() {
		return ErrReadOnly
	}
	b := m.bucket(bucket)
	if b == nil {
		return nil
	}
	return b.Delete(key)
}

func (m metaTx) ForEach(bucket, prefix []byte, fn func(k, v []byte) error) error {
	b := m.bucket(bucket)
	if b == nil {
		return nil
	}
	c := b.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if v == nil && b.Bucket(k) != nil {
			continue // a nested bucket is not a key
		}
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

// lookupEntries returns the entries of the ids the index at db holds,
// leaving out the missing ones (Reader.Lookup of both stores).
func lookupEntries(ctx context.Context, db *dbPool, ids []ID) ([]Entry, error) {
	var out []Entry
	err := db.view(ctx, func(tx *bolt.Tx) error {
		chunks, _, err := buckets(tx)
		if err != nil {
			return err
		}
		for _, id := range ids {
			e, ok, err := getEntry(chunks, id)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			out = append(out, Entry{ID: id, RawLen: int(e.RawLen), StoredLen: int64(e.Share)})
		}
		return nil
	})
	return out, err
}

// packStats sums the pack records of the index at db (Reader.Stats of both
// stores).
func packStats(ctx context.Context, db *dbPool) (Stats, error) {
	var st Stats
	err := db.view(ctx, func(tx *bolt.Tx) error {
		recs, err := allPackRecs(tx)
		for _, r := range recs {
			st.Chunks += r.Chunks
			st.RawBytes += r.Raw
			st.StoredBytes += r.Live
			st.Packs++
			st.PackBytes += r.Size
		}
		return err
	})
	return st, err
}

// addDelta adds (sign 1) or removes (-1) e's share of its pack's record.
func addDelta(m map[uint32]*packRec, e entry, sign int64) {
	d := m[e.Pack]
	if d == nil {
		d = &packRec{}
		m[e.Pack] = d
	}
	d.Live += sign * int64(e.Share)
	d.Chunks += sign
	d.Raw += sign * int64(e.RawLen)
}

func applyDeltas(packs *bolt.Bucket, deltas map[uint32]*packRec) error {
	for num, d := range deltas {
		rec, ok, err := getPackRec(packs, num)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		rec.Live += d.Live
		rec.Chunks += d.Chunks
		rec.Raw += d.Raw
		if err := packs.Put(packKey(num), rec.encode()); err != nil {
			return err
		}
	}
	return nil
}
