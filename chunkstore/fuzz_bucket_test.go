package chunkstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/mem"
)

// The objects of a bucket store are bytes any host (or anyone with write
// access to the bucket) may have put there: every parser of them must
// return an error, never panic, and never allocate from a count it has
// not checked against the object's size.

// FuzzSegment feeds arbitrary bytes to the index segment decoder; what
// it accepts must encode back to the same bytes, entry by entry.
func FuzzSegment(f *testing.F) {
	var ents []indexed
	for i, c := range mkChunks(2, 3, 1000) {
		ents = append(ents, indexed{id: c.ID, e: entry{FrameOff: packHeaderSize + int64(i)*100, FrameLen: 100, BlockOff: uint32(i) * 1000, RawLen: 1000, Share: 1}})
	}
	f.Add(encodeSegment(ents))
	f.Add(encodeSegment(nil))
	f.Add([]byte(segMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := decodeSegment(b)
		if err != nil {
			return
		}
		if want := segFixed + len(out)*segEntry + 8; len(b) != want {
			t.Fatalf("accepted %d bytes holding %d entries (%d bytes)", len(b), len(out), want)
		}
		for i, x := range out {
			raw := b[segFixed+i*segEntry:][:segEntry]
			if !bytes.Equal(raw[:32], x.id[:]) || !bytes.Equal(raw[32:], x.e.encode()) {
				t.Fatalf("entry %d does not encode back to its bytes", i)
			}
		}
	})
}

// FuzzIndexValues feeds arbitrary bytes to the decoders of index.db's
// values (a damaged cache): what they accept encodes back to the same
// bytes.
func FuzzIndexValues(f *testing.F) {
	f.Add(entry{Pack: 3, FrameOff: packHeaderSize, FrameLen: 77, BlockOff: 5, RawLen: 4096, Share: 1}.encode())
	f.Add(packRec{Size: 1 << 20, Live: 3, Chunks: 3, Raw: 12288}.encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		if e, err := decodeEntry(ID{}, b); err == nil && !bytes.Equal(e.encode(), b) {
			t.Fatalf("entry %+v does not encode back to its bytes", e)
		}
		if p, err := decodePackRec(1, b); err == nil && !bytes.Equal(p.encode(), b) {
			t.Fatalf("pack record %+v does not encode back to its bytes", p)
		}
	})
}

// FuzzObjectNames feeds arbitrary names, as a bucket listing returns
// them, to the parsers of journal, gc, lease beat and news names: what
// they accept is well formed, and the names this program writes parse
// back to what they were made from.
func FuzzObjectNames(f *testing.F) {
	f.Add(journalName(12345, []byte("body")), int64(12345))
	f.Add(beatName(99), int64(99))
	f.Add(newsTimeName(7)+"-"+Sum([]byte("p")).String()+".pack", int64(7))
	f.Add(newsTimeName(8)+"-0123456789abcdef.claim", int64(8))
	f.Add(gcPendingPrefix+"00000000000000ff-0123456789abcdef", int64(255))
	f.Add(gcDonePrefix+"00000000000000ff-0123456789abcdef", int64(255))
	f.Add("00000001.pack", int64(1))
	f.Fuzz(func(t *testing.T, name string, tm int64) {
		if v, ok := parseJournalName(name); ok && v < 0 {
			t.Fatalf("journal name %q: negative time %d", name, v)
		}
		if _, v, ok := parseGCName(name); ok && v < 0 {
			t.Fatalf("gc name %q: negative time %d", name, v)
		}
		if v, ok := parseBeatName(name); ok && v < 0 {
			t.Fatalf("beat name %q: negative time %d", name, v)
		}
		if v, _, _, ok := parseNewsName(name); ok && v < 0 {
			t.Fatalf("news name %q: negative time %d", name, v)
		}
		_, _ = parsePackName(name)
		if tm < 0 {
			return
		}
		if v, ok := parseJournalName(journalName(tm, []byte(name))); !ok || v != tm {
			t.Fatalf("journalName(%d) parses as %d, %v", tm, v, ok)
		}
		if v, ok := parseBeatName(beatName(tm)); !ok || v != tm {
			t.Fatalf("beatName(%d) parses as %d, %v", tm, v, ok)
		}
	})
}

// FuzzGCList feeds arbitrary bytes to the gc list decoder.
func FuzzGCList(f *testing.F) {
	good, _ := json.Marshal(gcList{V: gcListVersion, Time: 5, Margin: 10, Packs: []string{Sum(nil).String()}})
	f.Add(good)
	f.Add([]byte(`{"v":1,"time_ns":-1}`))
	f.Add([]byte(`{"v":99}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := decodeGCList(b)
		if err == nil && (l.Margin < 0 || l.Time <= 0 || l.V != gcListVersion) {
			t.Fatalf("accepted a list with time %d, margin %d, version %d", l.Time, l.Margin, l.V)
		}
	})
}

// FuzzJournal applies arbitrary journal bodies to a cache: a bad entry
// is an error, and nothing it names reaches a bucket outside the
// catalog's (the chunk index, the pack records).
func FuzzJournal(f *testing.F) {
	good, _ := json.Marshal(journal{V: journalVersion, Ops: []journalOp{
		{Op: "put", Bucket: []byte("records"), Key: []byte("k"), Value: []byte("v")},
		{Op: "del", Bucket: []byte("records"), Key: []byte("k")},
	}})
	f.Add(good)
	f.Add([]byte(`{"v":1,"ops":[{"op":"put","b":"Y2h1bmtz","k":"","v":"eA=="}]}`))
	f.Add([]byte(`{"v":1,"ops":[{"op":"frob"}]}`))
	db, err := bolt.Open(filepath.Join(f.TempDir(), "index.db"), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketChunks, bucketPacks, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		f.Fatal(err)
	}
	rollback := errors.New("rollback")
	f.Fuzz(func(t *testing.T, b []byte) {
		err := db.Update(func(tx *bolt.Tx) error {
			_ = applyJournal(tx, b)
			for _, name := range [][]byte{bucketChunks, bucketPacks, bucketMeta} {
				if k, _ := tx.Bucket(name).Cursor().First(); k != nil {
					t.Fatalf("a journal entry wrote into internal bucket %q", name)
				}
			}
			return rollback
		})
		if !errors.Is(err, rollback) {
			t.Fatal(err)
		}
	})
}

// FuzzBlobConfig feeds arbitrary bytes as a bucket's config.json: a store
// is opened only with a known layout and a well-formed store ID.
func FuzzBlobConfig(f *testing.F) {
	ctx := context.Background()
	seed := mem.New()
	if err := InitBlob(ctx, seed, InitOptions{}); err != nil {
		f.Fatal(err)
	}
	good, err := blob.ReadAll(ctx, seed, blobConfigName, maxConfigObject)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := readBlobConfig(ctx, seed); err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(bytes.Replace(good, []byte(blobLayout), []byte("blob-2"), 1))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		bs := mem.New()
		if err := bs.Put(ctx, blobConfigName, b); err != nil {
			t.Fatal(err)
		}
		c, err := readBlobConfig(ctx, bs)
		if err != nil {
			return
		}
		if c.Layout != blobLayout || len(c.StoreID) != 32 {
			t.Fatalf("accepted layout %q, store id %q", c.Layout, c.StoreID)
		}
	})
}
