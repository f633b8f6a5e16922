package fleet

import (
	"context"
	"encoding/hex"
	"fmt"
	"sort"

	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/qcow2"
	"github.com/engram-vm/engram/sketch"
)

// SourceOnDisk returns the path of a source file of m that is still on
// disk unchanged: a record's source whose chain fingerprint today equals
// the one recorded at ingest (so its guest content is m's). Newest first.
func SourceOnDisk(m *Member) (string, bool) {
	for i := len(m.Records) - 1; i >= 0; i-- {
		r := m.Records[i]
		if r.Fingerprint == "" || r.Source == "" {
			continue
		}
		im, err := qcow2.Open(r.Source, qcow2.Options{Format: r.Format})
		if err != nil {
			continue
		}
		fp, err := im.Fingerprint()
		im.Close()
		if err == nil && hex.EncodeToString(fp[:]) == r.Fingerprint {
			return r.Source, true
		}
	}
	return "", false
}

// BackingChoice is the backing file chosen for one engram.
type BackingChoice struct {
	Member    *Member
	Path      string // the member's source file, unchanged since its ingest
	Bytes     int64  // guest data bytes the overlay holds (exact)
	FlatBytes int64  // guest data bytes of a standalone file
}

// ChooseBacking picks, for engram id, the engram whose source file is still
// on disk unchanged and leaves the fewest bytes for an overlay to hold
// (exact manifest diff), among the best by signature. It returns nil when
// none saves at least opts.MinSaving of a standalone file.
func (f *Fleet) ChooseBacking(ctx context.Context, id engram.ID, opts ThinOptions) (*BackingChoice, error) {
	if opts.MinSaving <= 0 {
		opts.MinSaving = 0.1
	}
	if opts.Shortlist <= 0 {
		opts.Shortlist = 4
	}
	m := f.byID[id]
	if m == nil {
		return nil, fmt.Errorf("%w: %s", engram.ErrNotFound, id)
	}
	if m.Sketch == nil {
		return nil, fmt.Errorf("engram %s: %w (run engram sketch --rebuild)", id.Short(), engram.ErrNoSignature)
	}
	root, err := engram.LoadRoot(ctx, f.r, id)
	if err != nil {
		return nil, err
	}
	flat, err := f.dataBytes(ctx, root)
	if err != nil {
		return nil, err
	}
	type cand struct {
		m      *Member
		shared float64
	}
	var cands []cand
	for _, b := range f.Members {
		if b != m && b.Sketch != nil {
			if s := sketch.Compare(m.Sketch, b.Sketch).Shared; s > 0 {
				cands = append(cands, cand{b, s})
			}
		}
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].shared > cands[j].shared })
	best := &BackingChoice{Bytes: flat, FlatBytes: flat}
	tried := 0
	for k, c := range cands {
		if tried >= opts.Shortlist || k >= 8*opts.Shortlist {
			break
		}
		path, ok := SourceOnDisk(c.m)
		if !ok || (opts.Skip != nil && opts.Skip(path)) {
			continue
		}
		tried++
		broot, err := engram.LoadRoot(ctx, f.r, c.m.ID)
		if err != nil {
			return nil, err
		}
		n, err := f.overlayBytes(ctx, broot, root)
		if err != nil {
			return nil, fmt.Errorf("engram %s over %s: %w", m.Label(), c.m.Label(), err)
		}
		if n < best.Bytes {
			best.Member, best.Path, best.Bytes = c.m, path, n
		}
	}
	if best.Member == nil || float64(flat-best.Bytes) < opts.MinSaving*float64(flat) {
		return nil, nil
	}
	return best, nil
}
