package chunkstore

import (
	"context"
	"fmt"
	"time"
)

// Maintainer checks and compacts a store. BlobStore and MemStore implement it.
type Maintainer interface {
	// Verify re-reads every frame, recomputes every chunk's BLAKE3, checks
	// the index against the packs, and calls report for each problem
	// (report may be nil). The error is for failures to run at all; a
	// store with problems returns them through report and
	// VerifyStats.Problems.
	Verify(ctx context.Context, report func(Problem)) (VerifyStats, error)
	// GC drops the chunks for which live returns false and rewrites the
	// packs whose live fraction falls under opts.Threshold. It must not
	// run while another caller is storing chunks that live does not know
	// about yet. Killed at any point, it leaves a store that verifies and
	// holds every live chunk.
	GC(ctx context.Context, live func(ID) bool, opts GCOptions) (GCStats, error)
	// Repair rebuilds the index from the packs: every intact frame's
	// chunks are indexed, entries pointing at damaged or missing frames are
	// dropped (so a later ingest stores those chunks again), and the
	// metadata buckets are carried over when the old index is readable.
	Repair(ctx context.Context) (RepairReport, error)
}

// Problem is one thing Verify found wrong.
type Problem struct {
	ID     ID     // the chunk concerned; zero for damage no index entry points at
	Pack   string // pack file path ("" for MemStore or index-only problems)
	Offset int64  // frame offset in the pack
	Err    error
}

func (p Problem) String() string {
	s := ""
	if !p.ID.IsZero() {
		s = "chunk " + p.ID.String() + ": "
	}
	if p.Pack != "" {
		s += fmt.Sprintf("%s at 0x%x: ", p.Pack, p.Offset)
	}
	return s + p.Err.Error()
}

// VerifyStats counts what Verify read.
type VerifyStats struct {
	Packs    int64 `json:"packs"`
	Frames   int64 `json:"frames"`
	Chunks   int64 `json:"chunks"` // index entries checked
	Bytes    int64 `json:"bytes"`  // pack bytes read
	Problems int64 `json:"problems"`
}

// GCOptions tune GC.
type GCOptions struct {
	// DryRun computes what GC would do and changes nothing.
	DryRun bool
	// Threshold is the live fraction under which a pack is rewritten
	// (0 means 0.5; below 0, no pack is rewritten). Packs with no live
	// chunk are always deleted.
	Threshold float64
	// Progress, if set, is called with the packs handled and to handle.
	Progress func(done, total int64)
	// Margin (bucket stores) is how long a pack gc condemned waits before
	// a later gc may delete it; 0 means DefaultGCMargin.
	Margin time.Duration
	// LeaseTimeout (bucket stores) is the age at which another gc's lease
	// counts as stale; 0 means DefaultGCLeaseTimeout.
	LeaseTimeout time.Duration
}

// GCStats says what GC did (or, with DryRun, would do).
type GCStats struct {
	Chunks         int64 `json:"chunks"`          // chunks examined
	DeadChunks     int64 `json:"dead_chunks"`     // dropped from the index
	DeadBytes      int64 `json:"dead_bytes"`      // their stored bytes
	PacksRewritten int64 `json:"packs_rewritten"` // live chunks moved, pack deleted
	PacksDeleted   int64 `json:"packs_deleted"`   // deleted with nothing live in them
	ChunksMoved    int64 `json:"chunks_moved"`
	BytesWritten   int64 `json:"bytes_written"` // frame bytes written to new packs
	BytesFreed     int64 `json:"bytes_freed"`   // pack file bytes removed
	// UploadsAborted counts stale multipart uploads aborted (bucket stores).
	UploadsAborted int64 `json:"uploads_aborted,omitempty"`
	// Unindexed names the packs without an index segment that gc kept
	// because their own segment copy holds chunks engrams need (a lost
	// segment); Repair re-indexes them.
	Unindexed []string `json:"unindexed,omitempty"`
}

// RepairReport says what Repair found and did.
type RepairReport struct {
	Packs        int64     `json:"packs"`
	Frames       int64     `json:"frames"`     // intact frames indexed
	Chunks       int64     `json:"chunks"`     // chunks in the new index
	BadFrames    int64     `json:"bad_frames"` // damaged frames skipped
	Added        int64     `json:"added"`      // chunks the old index lacked
	Dropped      int64     `json:"dropped"`    // old entries with no intact frame
	MetadataLost bool      `json:"metadata_lost"`
	Salvaged     int64     `json:"packs_salvaged"` // damaged packs rewritten without their damage
	Problems     []Problem `json:"-"`
}
