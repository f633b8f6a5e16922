package engram

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/sketch"
)

// Buckets the catalog keeps in the store's metadata.
var (
	bucketEngrams = []byte("engram.roots")   // engram ID -> root encoding
	bucketRecords = []byte("engram.records") // record key -> Record JSON
	bucketNames   = []byte("engram.names")   // name -> record key
	bucketLayers  = []byte("engram.layers")  // image chain fingerprint -> engram ID
)

// recordVersion is the version of the Record JSON encoding.
const recordVersion = 1

var (
	// ErrNotFound means no engram matches the ID, prefix or name given.
	ErrNotFound = errors.New("no such engram")
	// ErrAmbiguous means an ID prefix matches more than one engram.
	ErrAmbiguous = errors.New("ambiguous engram ID prefix")
)

// Layer describes one file of the source's backing chain as it was found.
type Layer struct {
	Path        string `json:"path"`
	Format      string `json:"format"`
	ClusterSize int    `json:"cluster_size,omitempty"`
	Size        int64  `json:"virtual_size"`
	FileSize    int64  `json:"file_size"`
	Compression string `json:"compression,omitempty"`
	ExtendedL2  bool   `json:"extended_l2,omitempty"`
	// CorruptMarked: the file had QEMU's corrupt bit set; it was read as
	// QEMU reads such images (read-only), every structural check passing.
	CorruptMarked bool `json:"corrupt_marked,omitempty"`
}

// IngestStats are what one ingest did.
type IngestStats struct {
	DataBytes   int64         `json:"data_bytes"`   // guest bytes read that were allocated
	StoredBytes int64         `json:"stored_bytes"` // bytes in chunks of the manifest (non-zero data)
	Chunks      int64         `json:"chunks"`
	NewChunks   int64         `json:"new_chunks"`
	NewBytes    int64         `json:"new_bytes"` // raw bytes of chunks this ingest added
	Duration    time.Duration `json:"duration_ns"`
}

// Record is one ingest of an image: where it came from and what it was
// called. Many records may point at one engram.
type Record struct {
	V           int               `json:"v"`
	Key         string            `json:"key"`
	Engram      string            `json:"engram"`
	Name        string            `json:"name,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Source      string            `json:"source"`
	Format      string            `json:"format"`
	ClusterSize int               `json:"cluster_size,omitempty"`
	VirtualSize int64             `json:"virtual_size"`
	Chain       []Layer           `json:"chain,omitempty"`
	Created     time.Time         `json:"created"`
	Stats       IngestStats       `json:"stats"`
	// Parent is the engram of the backing chain below Source, when the
	// source is an overlay; its content is the guest view without Source.
	Parent string `json:"parent,omitempty"`
	// Fingerprint identifies the source chain as it was (qcow2.Fingerprint),
	// so ingesting it again unchanged costs nothing.
	Fingerprint string `json:"fingerprint,omitempty"`
	// Reused says the source was recognised by its fingerprint and not read.
	Reused bool `json:"reused,omitempty"`
	// CorruptMarked says a file of the source chain had QEMU's corrupt bit
	// set when it was ingested (which ones: Chain[i].CorruptMarked).
	// Absent in records written before it existed, which had none.
	CorruptMarked bool `json:"corrupt_marked,omitempty"`
	// Signature, when set, is the engram's signature (a sketch encoding)
	// that Commit stores beside the engram; it is not part of the record.
	// Nil keeps the signature the engram already has.
	Signature []byte `json:"-"`
}

// EngramID parses Record.Engram.
func (r *Record) EngramID() (ID, error) { return chunkstore.ParseID(r.Engram) }

// newRecordKey orders records by creation time and keeps keys unique.
func newRecordKey(t time.Time) string {
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	return fmt.Sprintf("%016x-%s", t.UnixNano(), hex.EncodeToString(rnd[:]))
}

// Commit records an engram and one ingest of it in a single transaction.
// Every chunk the root names must already be stored. rec.Key, rec.Engram
// and rec.V are filled in; a name moves to the new record.
func Commit(ctx context.Context, w chunkstore.Writer, id ID, root []byte, rec *Record) error {
	rec.V = recordVersion
	rec.Engram = id.String()
	if rec.Created.IsZero() {
		rec.Created = time.Now().UTC()
	}
	rec.Key = newRecordKey(rec.Created)
	if rec.Signature != nil {
		if _, err := sketch.Decode(rec.Signature); err != nil {
			return fmt.Errorf("engram %s: %w", id.Short(), err)
		}
	}
	enc, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	// A copy of root and record in the packs lets repair rebuild the
	// catalog if index.db is lost (see recover.go).
	if err := storeCatalogChunk(ctx, w, root, enc); err != nil {
		return fmt.Errorf("engram %s: %w", id.Short(), err)
	}
	return w.Update(ctx, func(tx chunkstore.MetaTx) error {
		if tx.Get(bucketEngrams, id[:]) == nil {
			if err := tx.Put(bucketEngrams, id[:], root); err != nil {
				return err
			}
		}
		if err := tx.Put(bucketRecords, []byte(rec.Key), enc); err != nil {
			return err
		}
		if fp, err := hex.DecodeString(rec.Fingerprint); err == nil && len(fp) == 32 {
			if err := tx.Put(bucketLayers, fp, id[:]); err != nil {
				return err
			}
		}
		if rec.Signature != nil {
			if err := tx.Put(bucketSketches, id[:], rec.Signature); err != nil {
				return err
			}
		}
		if rec.Name != "" {
			return tx.Put(bucketNames, []byte(rec.Name), []byte(rec.Key))
		}
		return nil
	})
}

// LookupFingerprint returns the engram last ingested from an image chain
// with fingerprint fp, if it is still in the catalog.
func LookupFingerprint(ctx context.Context, r chunkstore.Reader, fp [32]byte) (ID, bool, error) {
	var id ID
	var ok bool
	err := r.View(ctx, func(tx chunkstore.MetaTx) error {
		v := tx.Get(bucketLayers, fp[:])
		if len(v) != len(id) {
			return nil
		}
		copy(id[:], v)
		ok = tx.Get(bucketEngrams, v) != nil
		return nil
	})
	return id, ok, err
}

// Has reports whether engram id is in the catalog.
func Has(ctx context.Context, r chunkstore.Reader, id ID) (bool, error) {
	var ok bool
	err := r.View(ctx, func(tx chunkstore.MetaTx) error {
		ok = tx.Get(bucketEngrams, id[:]) != nil
		return nil
	})
	return ok, err
}

// LoadRoot returns the decoded root of engram id.
func LoadRoot(ctx context.Context, r chunkstore.Reader, id ID) (Root, error) {
	var root Root
	err := r.View(ctx, func(tx chunkstore.MetaTx) error {
		b := tx.Get(bucketEngrams, id[:])
		if b == nil {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		if chunkstore.Sum(b) != id {
			return fmt.Errorf("engram %s: %w: root does not hash to its ID", id.Short(), ErrBadManifest)
		}
		var err error
		root, err = DecodeRoot(b)
		if err != nil {
			return fmt.Errorf("engram %s: %w", id.Short(), err)
		}
		return nil
	})
	return root, err
}

// MinPrefix is the fewest hex digits an ID prefix may have (git's minimum
// abbreviation).
const MinPrefix = 4

// Resolve turns a name, a full ID or a unique hex prefix of an ID into an
// engram ID. A full ID of a stored engram wins, then names, then
// prefixes.
func Resolve(ctx context.Context, r chunkstore.Reader, s string) (ID, error) {
	var id ID
	if s == "" {
		return id, fmt.Errorf("%w: empty ID", ErrNotFound)
	}
	err := r.View(ctx, func(tx chunkstore.MetaTx) error {
		// A full ID is unambiguous: a name spelled as another engram's
		// ID (CheckName refuses them now) made `rm ID` remove that
		// other engram.
		if full, err := chunkstore.ParseID(s); err == nil && tx.Get(bucketEngrams, full[:]) != nil {
			id = full
			return nil
		}
		if key := tx.Get(bucketNames, []byte(s)); key != nil {
			rec, err := decodeRecord(tx.Get(bucketRecords, key))
			if err != nil {
				return fmt.Errorf("name %q: %w", s, err)
			}
			id, err = rec.EngramID()
			return err
		}
		hexPrefix := strings.ToLower(s)
		if _, err := hex.DecodeString(hexPrefix + strings.Repeat("0", len(hexPrefix)%2)); err != nil || len(hexPrefix) > 64 {
			return fmt.Errorf("%w: %q is neither a name nor an ID", ErrNotFound, s)
		}
		// As git: a prefix of at least MinPrefix digits. Short names are
		// often hex ("01", "db", "c1"): a missing one must not select
		// whichever engram's ID starts with it (rm, restore --force).
		if len(hexPrefix) < MinPrefix {
			return fmt.Errorf("%w: %q is not a name, and an ID prefix needs at least %d hex digits", ErrNotFound, s, MinPrefix)
		}
		// Byte prefix of the even part narrows the scan; the odd digit is
		// checked on the hex form.
		bytePrefix, _ := hex.DecodeString(hexPrefix[:len(hexPrefix)/2*2])
		var matches []ID
		err := tx.ForEach(bucketEngrams, bytePrefix, func(k, _ []byte) error {
			if len(k) == len(id) && strings.HasPrefix(hex.EncodeToString(k), hexPrefix) {
				var m ID
				copy(m[:], k)
				matches = append(matches, m)
			}
			return nil
		})
		if err != nil {
			return err
		}
		switch len(matches) {
		case 0:
			return fmt.Errorf("%w: %q", ErrNotFound, s)
		case 1:
			id = matches[0]
			return nil
		}
		var names []string
		for _, m := range matches {
			names = append(names, m.String())
		}
		return fmt.Errorf("%w %q: matches %s", ErrAmbiguous, s, strings.Join(names, ", "))
	})
	return id, err
}

// MaxNameLen is the longest name an engram can be given: engram mount
// shows it as by-name/NAME.raw, and a file name holds at most 255 bytes.
const MaxNameLen = 255 - len(".raw")

// CheckName says why name cannot be given to an engram, or nil: it must
// be a by-name/ file of engram mount (CheckFileName), valid UTF-8 and
// free of control characters (C0, DEL, C1), as git refuses such ref
// names: a name is typed, pasted and shown, and escaping it everywhere
// made it one that could not be typed back. Names given before this
// rule still select, list and rm (and are escaped wherever shown).
func CheckName(name string) error {
	if err := CheckFileName(name); err != nil {
		return err
	}
	if _, err := chunkstore.ParseID(name); err == nil {
		return errors.New("a name cannot be 64 hex digits, the form of a full engram ID")
	}
	for i := 0; i < len(name); {
		r, n := utf8.DecodeRuneInString(name[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			return fmt.Errorf("a name must be UTF-8 (byte 0x%02x at offset %d is not)", name[i], i)
		case r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0:
			return fmt.Errorf("a name cannot hold control characters (U+%04X at offset %d)", r, i)
		}
		i += n
	}
	return nil
}

// CheckFileName says why name cannot be a file name in engram mount's
// by-name/ directory, or nil: not "." or "..", no "/" or NUL, at most
// MaxNameLen bytes. The mount shows every name it allows, those given
// before CheckName refused control characters too.
func CheckFileName(name string) error {
	switch {
	case name == "":
		return errors.New("a name cannot be empty")
	case name == "." || name == "..":
		return fmt.Errorf("%q cannot be a name (engram mount shows names as files)", name)
	case strings.ContainsAny(name, "/\x00"):
		return errors.New("a name cannot hold \"/\" or a NUL byte (engram mount shows names as files)")
	case len(name) > MaxNameLen:
		return fmt.Errorf("a name is at most %d bytes, this one has %d", MaxNameLen, len(name))
	}
	return nil
}

// Names returns, for every engram that has one, the names that select it
// now, oldest first. A name moves to the newest ingest that gives it, and
// the records of older engrams keep it, so a record's Name is not proof
// that the name still selects its engram.
func Names(ctx context.Context, r chunkstore.Reader) (map[ID][]string, error) {
	type named struct{ name, key string }
	byID := map[ID][]named{}
	err := r.View(ctx, func(tx chunkstore.MetaTx) error {
		return tx.ForEach(bucketNames, nil, func(k, v []byte) error {
			// A name whose record is gone or unreadable selects nothing
			// (Resolve says why); listing must not fail on it.
			rec, err := decodeRecord(tx.Get(bucketRecords, v))
			if err != nil {
				return nil
			}
			id, err := rec.EngramID()
			if err != nil {
				return nil
			}
			byID[id] = append(byID[id], named{string(k), string(v)})
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	out := make(map[ID][]string, len(byID))
	for id, ns := range byID {
		// Record keys sort by creation time.
		sort.Slice(ns, func(i, j int) bool { return ns[i].key < ns[j].key || ns[i].key == ns[j].key && ns[i].name < ns[j].name })
		for _, n := range ns {
			out[id] = append(out[id], n.name)
		}
	}
	return out, nil
}

func decodeRecord(b []byte) (*Record, error) {
	if b == nil {
		return nil, fmt.Errorf("%w: dangling record", ErrNotFound)
	}
	var rec Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%w: record: %v", ErrBadManifest, err)
	}
	if rec.V != recordVersion {
		return nil, fmt.Errorf("%w: record version %d", ErrBadManifest, rec.V)
	}
	return &rec, nil
}

// Entry is an engram with its records, newest last.
type Entry struct {
	ID      ID
	Size    int64
	Pages   int
	Records []*Record
}

// List returns every engram with its records, sorted by the time of the
// newest record.
func List(ctx context.Context, r chunkstore.Reader) ([]*Entry, error) {
	byID := map[ID]*Entry{}
	var out []*Entry
	err := r.View(ctx, func(tx chunkstore.MetaTx) error {
		err := tx.ForEach(bucketEngrams, nil, func(k, v []byte) error {
			var id ID
			if len(k) != len(id) {
				return fmt.Errorf("%w: catalog key of %d bytes", ErrBadManifest, len(k))
			}
			copy(id[:], k)
			root, err := DecodeRoot(v)
			if err != nil {
				return fmt.Errorf("engram %s: %w", id.Short(), err)
			}
			e := &Entry{ID: id, Size: root.Size, Pages: len(root.Pages)}
			byID[id] = e
			out = append(out, e)
			return nil
		})
		if err != nil {
			return err
		}
		return tx.ForEach(bucketRecords, nil, func(k, v []byte) error {
			rec, err := decodeRecord(v)
			if err != nil {
				return fmt.Errorf("record %s: %w", k, err)
			}
			id, err := rec.EngramID()
			if err != nil {
				return fmt.Errorf("record %s: %w", k, err)
			}
			if e := byID[id]; e != nil {
				e.Records = append(e.Records, rec)
			}
			return nil
		})
	})
	sort.SliceStable(out, func(i, j int) bool { return latest(out[i]).Before(latest(out[j])) })
	return out, err
}

func latest(e *Entry) time.Time {
	if len(e.Records) == 0 {
		return time.Time{}
	}
	return e.Records[len(e.Records)-1].Created
}

// Get returns the entry of one engram.
func Get(ctx context.Context, r chunkstore.Reader, id ID) (*Entry, error) {
	all, err := List(ctx, r)
	if err != nil {
		return nil, err
	}
	for _, e := range all {
		if e.ID == id {
			return e, nil
		}
	}
	return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
}

// Remove deletes engram id, its records and the names pointing at them.
// Its chunks stay until a garbage collection finds them unreferenced.
func Remove(ctx context.Context, w chunkstore.Writer, id ID) error {
	return w.Update(ctx, func(tx chunkstore.MetaTx) error {
		if tx.Get(bucketEngrams, id[:]) == nil {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		var recKeys, names [][]byte
		idHex := id.String()
		err := tx.ForEach(bucketRecords, nil, func(k, v []byte) error {
			var rec Record
			if json.Unmarshal(v, &rec) == nil && rec.Engram == idHex {
				recKeys = append(recKeys, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.ForEach(bucketNames, nil, func(k, v []byte) error {
			for _, rk := range recKeys {
				if bytes.Equal(v, rk) {
					names = append(names, bytes.Clone(k))
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range recKeys {
			if err := tx.Delete(bucketRecords, k); err != nil {
				return err
			}
		}
		for _, k := range names {
			if err := tx.Delete(bucketNames, k); err != nil {
				return err
			}
		}
		if err := forgetFingerprints(tx, id); err != nil {
			return err
		}
		if err := tx.Delete(bucketSketches, id[:]); err != nil {
			return err
		}
		return tx.Delete(bucketEngrams, id[:])
	})
}

// LiveChunks calls fn for every chunk (pages and data) that some engram in
// the catalog needs. A chunk may be reported more than once.
func LiveChunks(ctx context.Context, r chunkstore.Reader, fn func(chunkstore.ID)) error {
	entries, err := List(ctx, r)
	if err != nil {
		return err
	}
	if err := CatalogChunkIDs(ctx, r, fn); err != nil {
		return err
	}
	for _, e := range entries {
		root, err := LoadRoot(ctx, r, e.ID)
		if err != nil {
			return err
		}
		for _, p := range root.Pages {
			fn(p.ID)
		}
		err = ForEachChunk(ctx, r, root, func(c ChunkRef) error { fn(c.ID); return nil })
		if err != nil {
			return fmt.Errorf("engram %s: %w", e.ID.Short(), err)
		}
	}
	return nil
}

// ForgetFingerprints drops the fingerprints that point at engram id, so the
// next ingest of its source reads it again. Repair calls it for engrams it
// finds incomplete: a fingerprint promises that the engram is whole.
func ForgetFingerprints(ctx context.Context, w chunkstore.Writer, id ID) error {
	return w.Update(ctx, func(tx chunkstore.MetaTx) error { return forgetFingerprints(tx, id) })
}

func forgetFingerprints(tx chunkstore.MetaTx, id ID) error {
	var fps [][]byte
	err := tx.ForEach(bucketLayers, nil, func(k, v []byte) error {
		if bytes.Equal(v, id[:]) {
			fps = append(fps, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range fps {
		if err := tx.Delete(bucketLayers, k); err != nil {
			return err
		}
	}
	return nil
}
