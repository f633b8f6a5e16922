package ingest

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/qcow2"
)

// ImageOptions say how to ingest and record one image.
type ImageOptions struct {
	Options
	Name   string            // name for the top layer's engram
	Labels map[string]string // labels for the top layer's engram
	Reread bool              // do not trust fingerprints: read every layer again
}

// LayerResult is the engram of one layer of an image's chain: the guest
// view of that layer with everything below it.
type LayerResult struct {
	Path        string
	ID          engram.ID
	Reused      bool // recognised by fingerprint: nothing was read
	Incremental bool // only the layer's own clusters and their neighbourhood were read
	Record      *engram.Record
}

// LayerError is a failure while ingesting one file of an image's chain.
// Its message names the file once: not again when the cause is a qcow2
// error about that same file, which already starts with its path.
type LayerError struct {
	Path string // the layer's path, as opened
	Op   string // what failed, "" for reading and chunking the layer
	Err  error
}

func (e *LayerError) Error() string {
	msg := e.Err.Error()
	if e.Op != "" {
		msg = e.Op + ": " + msg
	}
	var qe *qcow2.Error
	if errors.As(e.Err, &qe) && qe.Path == e.Path {
		return msg
	}
	return e.Path + ": " + msg
}

func (e *LayerError) Unwrap() error { return e.Err }

// Image ingests img layer by layer, from the base up, and commits one
// engram per layer, each linked to the engram below it. A layer whose chain
// fingerprint is already in the catalog is not read; an overlay over a
// known parent is re-chunked only around its own clusters. Results come
// base first; the last is img itself. Errors are *LayerError naming the
// layer at fault.
func Image(ctx context.Context, st chunkstore.Store, img *qcow2.Image, opts ImageOptions) ([]LayerResult, error) {
	// Before any layer: a bad store config is not the image's fault
	// (and would otherwise be reported as a LayerError naming it).
	if _, err := storeChunker(st); err != nil {
		return nil, err
	}
	var layers []*qcow2.Image
	for l := img; l != nil; l = l.Backing() {
		layers = append(layers, l)
	}
	var out []LayerResult
	var parent *engram.Root
	var parentID engram.ID
	for i := len(layers) - 1; i >= 0; i-- {
		l := layers[i]
		top := i == 0
		fail := func(op string, err error) ([]LayerResult, error) {
			return out, &LayerError{Path: l.Path(), Op: op, Err: err}
		}
		fp, err := l.Fingerprint()
		if err != nil {
			return fail("", err)
		}
		lr := LayerResult{Path: l.Path()}
		var res *Result
		lopts := opts.Options
		if id, ok, err := engram.LookupFingerprint(ctx, st, fp); err != nil {
			return fail("catalog", err)
		} else if ok && opts.Reread {
			lopts.known = true
			if root, err := engram.LoadRoot(ctx, st, id); err == nil {
				lopts.prior = &root
			}
		} else if ok {
			root, err := engram.LoadRoot(ctx, st, id)
			if err != nil {
				return fail("catalog", err)
			}
			// Cheap check that the engram is still there to build on: its
			// pages. (Repair forgets fingerprints of engrams it finds
			// incomplete; --reread reads everything regardless.)
			if whole, err := pagesPresent(ctx, st, root); err != nil {
				return fail("catalog", err)
			} else if whole {
				res = &Result{ID: id, Root: root, Enc: engram.EncodeRoot(root)}
				lr.Reused = true
			}
		}
		if res == nil {
			if parent != nil && parent.Size > 0 {
				res, err = RunIncremental(ctx, st, l, *parent, lopts)
				lr.Incremental = true
			} else {
				res, err = Run(ctx, st, l, lopts)
			}
			if err != nil {
				return fail("", err)
			}
		}
		lr.ID = res.ID
		// A reused lower layer needs no new record; the top always gets one,
		// so a name or label given now is kept.
		if !lr.Reused || top {
			rec := newRecord(l, res.Stats)
			rec.Fingerprint = hex.EncodeToString(fp[:])
			rec.Reused = lr.Reused
			rec.Signature = res.Sketch // nil when reused: the engram keeps its own
			if lr.Reused {
				// A store made before signatures: build the missing one from
				// the manifest (pages only, no data is read).
				if _, err := engram.LoadSketch(ctx, st, res.ID); errors.Is(err, engram.ErrNoSignature) {
					if sk, err := engram.BuildSketch(ctx, st, res.Root); err == nil {
						rec.Signature = sk.Encode()
					}
				}
			}
			if parent != nil {
				rec.Parent = parentID.String()
			}
			if top {
				rec.Name, rec.Labels = opts.Name, opts.Labels
			}
			if err := engram.Commit(ctx, st, res.ID, res.Enc, rec); err != nil {
				return fail("commit", err)
			}
			lr.Record = rec
		}
		out = append(out, lr)
		parent, parentID = &res.Root, res.ID
	}
	return out, nil
}

// newRecord describes one ingest of the layer im (with its chain below).
func newRecord(im *qcow2.Image, s engram.IngestStats) *engram.Record {
	info := im.Info()
	rec := &engram.Record{
		Source:      absPath(im.Path()),
		Format:      info.Format,
		ClusterSize: info.ClusterSize,
		VirtualSize: im.Size(),
		Created:     time.Now().UTC(),
		Stats:       s,
	}
	for l := im; l != nil; l = l.Backing() {
		li := l.Info()
		fsize := li.FileSize
		if fsize == 0 {
			if fi, err := os.Stat(l.Path()); err == nil {
				fsize = fi.Size()
			}
		}
		rec.Chain = append(rec.Chain, engram.Layer{
			Path: absPath(l.Path()), Format: li.Format, ClusterSize: li.ClusterSize, Size: li.VirtualSize,
			FileSize: fsize, Compression: li.CompressionType, ExtendedL2: li.ExtendedL2,
			CorruptMarked: li.CorruptMarked,
		})
		rec.CorruptMarked = rec.CorruptMarked || li.CorruptMarked
	}
	return rec
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

func pagesPresent(ctx context.Context, st chunkstore.Reader, root engram.Root) (bool, error) {
	ids := make([]chunkstore.ID, len(root.Pages))
	for i, p := range root.Pages {
		ids[i] = p.ID
	}
	have, err := st.HasMany(ctx, ids)
	if err != nil {
		return false, err
	}
	for _, h := range have {
		if !h {
			return false, nil
		}
	}
	return true, nil
}
