package engram

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/sketch"
)

// bucketSketches holds each engram's signature (sketch encoding), beside
// the engram and never inside its root: the engram ID stays a function of
// guest content only, and a new signature version means recomputing the
// signatures, never changing an ID.
var bucketSketches = []byte("engram.sketches") // engram ID -> sketch encoding

// ErrNoSignature means an engram has no signature (a store made before
// signatures, or one of an older version): `engram sketch --rebuild`
// computes it from the manifest.
var ErrNoSignature = errors.New("no signature")

// SketchBuilder feeds chunk refs to a sketch builder; ingest hands it every
// ref of the manifest, new and reused.
type SketchBuilder struct{ b *sketch.Builder }

// NewSketchBuilder starts an empty signature.
func NewSketchBuilder() *SketchBuilder { return &SketchBuilder{sketch.NewBuilder()} }

// Add adds one chunk ref (zero-length refs are ignored).
func (s *SketchBuilder) Add(r ChunkRef) { s.b.Add(r.ID, r.Length) }

// Encode returns the signature of the refs added so far.
func (s *SketchBuilder) Encode() []byte { return s.b.Sketch().Encode() }

// BuildSketch computes the signature of root from its manifest.
func BuildSketch(ctx context.Context, r chunkstore.Reader, root Root) (*sketch.Sketch, error) {
	b := sketch.NewBuilder()
	err := ForEachChunk(ctx, r, root, func(c ChunkRef) error {
		b.Add(c.ID, c.Length)
		return ctx.Err()
	})
	if err != nil {
		return nil, err
	}
	return b.Sketch(), nil
}

// PutSketch stores enc as the signature of engram id, which must be in
// the catalog.
func PutSketch(ctx context.Context, w chunkstore.Writer, id ID, enc []byte) error {
	if _, err := sketch.Decode(enc); err != nil {
		return fmt.Errorf("engram %s: %w", id.Short(), err)
	}
	return w.Update(ctx, func(tx chunkstore.MetaTx) error {
		if tx.Get(bucketEngrams, id[:]) == nil {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return tx.Put(bucketSketches, id[:], enc)
	})
}

// LoadSketch returns the signature of engram id: ErrNoSignature when it
// has none or one of a version this build does not read.
func LoadSketch(ctx context.Context, r chunkstore.Reader, id ID) (*sketch.Sketch, error) {
	var s *sketch.Sketch
	err := r.View(ctx, func(tx chunkstore.MetaTx) error {
		var err error
		s, err = decodeSketch(id, tx.Get(bucketSketches, id[:]))
		return err
	})
	return s, err
}

func decodeSketch(id ID, b []byte) (*sketch.Sketch, error) {
	s := new(sketch.Sketch)
	return s, decodeSketchInto(s, id, b)
}

func decodeSketchInto(s *sketch.Sketch, id ID, b []byte) error {
	if b == nil {
		return fmt.Errorf("engram %s: %w (run engram sketch --rebuild)", id.Short(), ErrNoSignature)
	}
	err := sketch.DecodeInto(s, b)
	if errors.Is(err, sketch.ErrVersion) {
		return fmt.Errorf("engram %s: %w: %v (run engram sketch --rebuild)", id.Short(), ErrNoSignature, err)
	}
	if err != nil {
		return fmt.Errorf("engram %s: signature: %w (run engram sketch --rebuild)", id.Short(), err)
	}
	return nil
}

// LoadSketches returns the signature of every engram in the catalog that
// has a readable one, and the IDs of those that have none (or an unknown
// version). A damaged signature is an error naming the engram.
func LoadSketches(ctx context.Context, r chunkstore.Reader) (map[ID]*sketch.Sketch, []ID, error) {
	out := map[ID]*sketch.Sketch{}
	var missing []ID
	err := r.View(ctx, func(tx chunkstore.MetaTx) error {
		sigs := map[ID][]byte{}
		var pool []sketch.Sketch // signatures are decoded into slabs
		err := tx.ForEach(bucketSketches, nil, func(k, v []byte) error {
			var id ID
			if len(k) == len(id) {
				copy(id[:], k)
				sigs[id] = v
			}
			return nil
		})
		if err != nil {
			return err
		}
		return tx.ForEach(bucketEngrams, nil, func(k, _ []byte) error {
			var id ID
			if len(k) != len(id) {
				return fmt.Errorf("%w: catalog key of %d bytes", ErrBadManifest, len(k))
			}
			copy(id[:], k)
			if len(pool) == 0 {
				pool = make([]sketch.Sketch, min(max(len(sigs), 1), 1024))
			}
			s := &pool[0]
			err := decodeSketchInto(s, id, sigs[id])
			switch {
			case errors.Is(err, ErrNoSignature):
				missing = append(missing, id)
			case err != nil:
				return err
			default:
				out[id] = s
				pool = pool[1:]
			}
			return nil
		})
	})
	return out, missing, err
}

// ReadWriter is a store that is read and written: what RebuildSketches needs.
type ReadWriter interface {
	chunkstore.Reader
	chunkstore.Writer
}

// RebuildReport says what RebuildSketches did.
type RebuildReport struct {
	Engrams int      `json:"engrams"`
	Built   []string `json:"built,omitempty"`  // engram IDs whose signature was (re)computed
	Failed  []string `json:"failed,omitempty"` // engrams whose manifest could not be read, and why
}

// RebuildSketches computes the signature of every engram that lacks a
// readable one — none, an old version or a damaged one — (all of them
// with force) from its manifest and stores it. An engram whose pages are
// missing is reported, not fatal.
func RebuildSketches(ctx context.Context, w ReadWriter, force bool) (RebuildReport, error) {
	var rep RebuildReport
	have, missing, err := LoadSketches(ctx, w)
	todo := missing
	rep.Engrams = len(have) + len(missing)
	if force || err != nil {
		// A damaged signature fails LoadSketches: walk the catalog and
		// take each engram whose signature does not decode, so the
		// rebuild the error message asks for repairs it.
		todo, rep.Engrams = nil, 0
		err = w.View(ctx, func(tx chunkstore.MetaTx) error {
			return tx.ForEach(bucketEngrams, nil, func(k, _ []byte) error {
				var id ID
				copy(id[:], k)
				rep.Engrams++
				if force {
					todo = append(todo, id)
				} else if _, err := decodeSketch(id, tx.Get(bucketSketches, k)); err != nil {
					todo = append(todo, id)
				}
				return nil
			})
		})
		if err != nil {
			return rep, err
		}
	}
	for _, id := range todo {
		root, err := LoadRoot(ctx, w, id)
		if err == nil {
			var s *sketch.Sketch
			if s, err = BuildSketch(ctx, w, root); err == nil {
				err = PutSketch(ctx, w, id, s.Encode())
			}
		}
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		if err != nil {
			rep.Failed = append(rep.Failed, fmt.Sprintf("%s: %v", id, err))
			continue
		}
		rep.Built = append(rep.Built, id.String())
	}
	return rep, nil
}

// NamesOf returns the newest name that selects each of ids now, for those
// that have one (a name moves on to the newest ingest that gives it, so an
// older engram's records may carry a name it no longer has). It reads one
// record per name: cheaper than List for a few engrams of a big catalog.
func NamesOf(ctx context.Context, r chunkstore.Reader, ids []ID) (map[ID]string, error) {
	want := make(map[string]ID, len(ids))
	for _, id := range ids {
		want[id.String()] = id
	}
	out := map[ID]string{}
	newest := map[ID]string{} // record key of out's name
	marker := []byte(`"engram":"`)
	err := r.View(ctx, func(tx chunkstore.MetaTx) error {
		return tx.ForEach(bucketNames, nil, func(k, key []byte) error {
			v := tx.Get(bucketRecords, key)
			if i := bytes.Index(v, marker); i >= 0 && len(v) >= i+len(marker)+64 {
				if _, ok := want[string(v[i+len(marker):i+len(marker)+64])]; !ok {
					return nil
				}
			}
			rec, err := decodeRecord(v)
			if err != nil {
				return nil // selects nothing (see Names)
			}
			if id, ok := want[rec.Engram]; ok && string(key) >= newest[id] {
				out[id], newest[id] = string(k), string(key)
			}
			return nil
		})
	})
	return out, err
}

// ScanSketches calls fn with the encoded signature of every engram that has
// one, in ID order, inside one read transaction: enc is valid only during
// the call and is not checked (decode what you keep). It also returns how
// many engrams of the catalog have no signature entry.
func ScanSketches(ctx context.Context, r chunkstore.Reader, fn func(id ID, enc []byte) error) (unsigned int, err error) {
	err = r.View(ctx, func(tx chunkstore.MetaTx) error {
		n := 0
		err := tx.ForEach(bucketSketches, nil, func(k, v []byte) error {
			var id ID
			if len(k) != len(id) {
				return fmt.Errorf("%w: signature key of %d bytes", ErrBadManifest, len(k))
			}
			copy(id[:], k)
			n++
			return fn(id, v)
		})
		if err != nil {
			return err
		}
		engrams := 0
		if err := tx.ForEach(bucketEngrams, nil, func(_, _ []byte) error { engrams++; return nil }); err != nil {
			return err
		}
		unsigned = max(engrams-n, 0)
		return nil
	})
	return unsigned, err
}
