package engram

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/engram-vm/engram/chunkstore"
)

// A catalog chunk is an ordinary chunk holding one ingest's root and
// record, so the catalog (which lives in index.db) can be rebuilt from the
// packs after index.db is lost. Layout (docs/FORMAT.md):
//
//	0  4  magic "ENGC"
//	4  2  version (1)
//	6  2  reserved, 0
//	8  4  root length r
//	12 r  root encoding
//	.. .. Record JSON, then 0..2 bytes of '\n' padding
//
// The padding keeps a catalog chunk's length off two shapes no catalog
// chunk can then have — a multiple of 4096 (data chunks are 4 KiB-aligned)
// and 24+40n (a manifest page) — so RecoverCatalog reads only the few
// chunks that can be catalog chunks.
const (
	catalogMagic     = "ENGC"
	catalogVersion   = 1
	catalogHeaderLen = 12
	// minCatalogLen is a header, an empty root and "{}".
	minCatalogLen = catalogHeaderLen + rootHeaderLen + 2
)

// ErrNotCatalogChunk is returned by DecodeCatalogChunk for bytes that do
// not start with the catalog chunk magic (any other chunk).
var ErrNotCatalogChunk = errors.New("not a catalog chunk")

// maybeCatalogLen reports whether a chunk of n bytes can be a catalog chunk.
func maybeCatalogLen(n int) bool {
	return n >= minCatalogLen && n <= chunkstore.MaxChunkSize && n%4096 != 0 && (n-pageHeaderLen)%pageEntryLen != 0
}

// EncodeCatalogChunk encodes root (a root encoding) and rec as a catalog
// chunk. rec must be the record as committed (Key, Engram and V set).
func EncodeCatalogChunk(root []byte, rec *Record) []byte {
	// Marshal cannot fail on a Record: it has no channels, funcs or
	// cyclic values.
	js, _ := json.Marshal(rec)
	return encodeCatalogChunk(root, js)
}

// encodeCatalogChunk uses the record's JSON as given, so the chunk carries
// exactly the bytes Commit writes to the records bucket and its ID can be
// recomputed from them (CatalogChunkIDs).
func encodeCatalogChunk(root, recJSON []byte) []byte {
	n := catalogHeaderLen + len(root) + len(recJSON)
	b := make([]byte, catalogHeaderLen, n+2)
	copy(b, catalogMagic)
	binary.LittleEndian.PutUint16(b[4:], catalogVersion)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(root)))
	b = append(b, root...)
	b = append(b, recJSON...)
	for !maybeCatalogLen(len(b)) && len(b) < n+2 {
		b = append(b, '\n') // JSON allows trailing white space
	}
	return b
}

// DecodeCatalogChunk decodes a catalog chunk and checks it: the root
// decodes, the record decodes, and the root hashes to the record's engram
// ID. Bytes of another kind of chunk give ErrNotCatalogChunk; damaged or
// inconsistent ones ErrBadManifest.
func DecodeCatalogChunk(b []byte) (root []byte, rec *Record, err error) {
	root, _, rec, err = decodeCatalogChunk(b)
	return root, rec, err
}

// decodeCatalogChunk also returns the record JSON as stored (padding cut),
// which recovery puts back byte for byte so CatalogChunkIDs still finds
// the chunk.
func decodeCatalogChunk(b []byte) (root, recJSON []byte, rec *Record, err error) {
	if len(b) < 4 || string(b[:4]) != catalogMagic {
		return nil, nil, nil, ErrNotCatalogChunk
	}
	if len(b) < catalogHeaderLen {
		return nil, nil, nil, badf("catalog chunk: short (%d bytes)", len(b))
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != catalogVersion {
		return nil, nil, nil, badf("catalog chunk: unknown version %d", v)
	}
	if r := binary.LittleEndian.Uint16(b[6:]); r != 0 {
		return nil, nil, nil, badf("catalog chunk: reserved field is %#x", r)
	}
	rl := binary.LittleEndian.Uint32(b[8:])
	if uint64(rl) > uint64(len(b)-catalogHeaderLen) {
		return nil, nil, nil, badf("catalog chunk: root of %d bytes does not fit %d bytes", rl, len(b))
	}
	root = b[catalogHeaderLen : catalogHeaderLen+int(rl)]
	if _, err := DecodeRoot(root); err != nil {
		return nil, nil, nil, fmt.Errorf("catalog chunk: %w", err)
	}
	recJSON = bytes.TrimRight(b[catalogHeaderLen+int(rl):], "\n")
	rec, err = decodeRecord(recJSON)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("catalog chunk: %w", err)
	}
	id, err := rec.EngramID()
	if err != nil {
		return nil, nil, nil, badf("catalog chunk: record engram %q: %v", rec.Engram, err)
	}
	if chunkstore.Sum(root) != id {
		return nil, nil, nil, badf("catalog chunk: root does not hash to engram %s", id.Short())
	}
	if rec.Key == "" {
		return nil, nil, nil, badf("catalog chunk: record of engram %s has no key", id.Short())
	}
	return root, recJSON, rec, nil
}

// storeCatalogChunk stores the catalog chunk of one ingest: root and the
// record JSON exactly as Commit writes it. Commit calls it before the
// transaction that records the engram, so every committed record has its
// catalog chunk in the packs.
func storeCatalogChunk(ctx context.Context, w chunkstore.Writer, root, recJSON []byte) error {
	b := encodeCatalogChunk(root, recJSON)
	if _, err := w.Put(ctx, chunkstore.Sum(b), b); err != nil {
		return fmt.Errorf("storing catalog chunk: %w", err)
	}
	return nil
}

// CatalogChunkIDs calls fn with the ID of the catalog chunk of every
// record in the catalog, computed from the stored root and record bytes.
// GC must count them live (LiveChunks reports them), or a later repair
// would have nothing to rebuild the catalog from. Records committed
// before catalog chunks existed yield an ID the store simply lacks.
func CatalogChunkIDs(ctx context.Context, r chunkstore.Reader, fn func(chunkstore.ID)) error {
	return r.View(ctx, func(tx chunkstore.MetaTx) error {
		return tx.ForEach(bucketRecords, nil, func(k, v []byte) error {
			var head struct {
				Engram string `json:"engram"`
			}
			if json.Unmarshal(v, &head) != nil {
				return nil // List reports bad records; nothing to keep for one
			}
			id, err := chunkstore.ParseID(head.Engram)
			if err != nil {
				return nil
			}
			root := tx.Get(bucketEngrams, id[:])
			if root == nil {
				return nil
			}
			fn(chunkstore.Sum(encodeCatalogChunk(root, v)))
			return nil
		})
	})
}

// RecoverStore is what RecoverCatalog needs: a writable store whose index
// can be enumerated (chunkstore.BlobStore and MemStore).
type RecoverStore interface {
	chunkstore.Reader
	chunkstore.Writer
	chunkstore.Lister
}

// RecoveredEngram is one engram RecoverCatalog found in the packs.
type RecoveredEngram struct {
	ID    ID       `json:"id"`
	Names []string `json:"names,omitempty"`
	// Records is how many of its records were missing and re-inserted.
	Records int `json:"records"`
	// Root is true when its root was missing from the catalog.
	Root bool `json:"root"`
	// Incomplete says what it lacks (chunks lost with damaged or deleted
	// packs); empty when it restores.
	Incomplete string `json:"incomplete,omitempty"`
}

// RecoverReport says what RecoverCatalog found and did.
type RecoverReport struct {
	Candidates    int               `json:"candidates"`     // chunks read because their length fits
	CatalogChunks int               `json:"catalog_chunks"` // valid catalog chunks found
	Unreadable    []string          `json:"unreadable,omitempty"`
	Engrams       []RecoveredEngram `json:"engrams,omitempty"` // engrams with something re-inserted
	Incomplete    int               `json:"incomplete"`        // of those, how many lack chunks
}

// RecoverCatalog rebuilds the catalog from the catalog chunks in the store:
// every root and record it finds that the catalog lacks is re-inserted,
// and a name is pointed at its newest record when the name is missing.
// It never removes or changes what the catalog holds. Run it after
// chunkstore.RepairDir reported the metadata lost; on an intact catalog it
// would bring back engrams removed since the last gc (their catalog chunks
// stay until gc drops them).
func RecoverCatalog(ctx context.Context, st RecoverStore) (RecoverReport, error) {
	var rep RecoverReport
	type found struct {
		root []byte
		recs []*Record
		js   map[string][]byte // record key -> JSON as stored
	}
	byID := map[ID]*found{}
	err := st.ForEach(ctx, func(e chunkstore.Entry) error {
		if !maybeCatalogLen(e.RawLen) {
			return nil
		}
		rep.Candidates++
		b, err := st.Get(ctx, e.ID)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			rep.Unreadable = append(rep.Unreadable, err.Error())
			return nil
		}
		root, js, rec, err := decodeCatalogChunk(b)
		if err != nil {
			if !errors.Is(err, ErrNotCatalogChunk) {
				rep.Unreadable = append(rep.Unreadable, fmt.Sprintf("chunk %s: %v", e.ID.Short(), err))
			}
			return nil
		}
		rep.CatalogChunks++
		id, _ := rec.EngramID() // checked by DecodeCatalogChunk
		f := byID[id]
		if f == nil {
			// Clone: Get may return part of a cached block.
			f = &found{root: bytes.Clone(root), js: map[string][]byte{}}
			byID[id] = f
		}
		if _, dup := f.js[rec.Key]; !dup {
			f.recs = append(f.recs, rec)
			f.js[rec.Key] = bytes.Clone(js)
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("recover catalog: %w", err)
	}
	ids := make([]ID, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
	for _, id := range ids {
		f := byID[id]
		sort.Slice(f.recs, func(i, j int) bool { return f.recs[i].Key < f.recs[j].Key })
		re := RecoveredEngram{ID: id}
		err := st.Update(ctx, func(tx chunkstore.MetaTx) error {
			re.Root, re.Records, re.Names = false, 0, nil
			if tx.Get(bucketEngrams, id[:]) == nil {
				if err := tx.Put(bucketEngrams, id[:], f.root); err != nil {
					return err
				}
				re.Root = true
			}
			for _, rec := range f.recs {
				if tx.Get(bucketRecords, []byte(rec.Key)) != nil {
					continue
				}
				if err := tx.Put(bucketRecords, []byte(rec.Key), f.js[rec.Key]); err != nil {
					return err
				}
				re.Records++
				// Records are visited oldest first, so a name ends on
				// its newest record, as Commit leaves it.
				if rec.Name != "" && nameMissingOrOlder(tx, rec) {
					if err := tx.Put(bucketNames, []byte(rec.Name), []byte(rec.Key)); err != nil {
						return err
					}
					re.Names = append(re.Names, rec.Name)
				}
			}
			return nil
		})
		if err != nil {
			return rep, fmt.Errorf("recover catalog: engram %s: %w", id.Short(), err)
		}
		if !re.Root && re.Records == 0 {
			continue
		}
		if err := Check(ctx, st, id, nil); err != nil {
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
			re.Incomplete = err.Error()
			rep.Incomplete++
		}
		rep.Engrams = append(rep.Engrams, re)
	}
	return rep, nil
}

// nameMissingOrOlder reports whether rec.Name should point at rec: the
// name is unset, dangling, or on an older record.
func nameMissingOrOlder(tx chunkstore.MetaTx, rec *Record) bool {
	cur := tx.Get(bucketNames, []byte(rec.Name))
	if cur == nil || tx.Get(bucketRecords, cur) == nil {
		return true
	}
	return string(cur) < rec.Key
}
