package chunkstore

import (
	"context"
	"fmt"
)

// Whole-block runs: the decoding both stores' GetMany share.
//
// A GetMany caller that reads a disk in order (restore) asks for the chunks
// of a block one after another, into buffers that lie back to back in one
// array. When a run of such requests is every chunk of one frame, in
// order, the block is decoded straight into the caller's memory: no block
// buffer to allocate (and zero), no copy out of it, and each chunk is
// hashed right after it was decoded, while it is still in the CPU cache.
// Anything else (a block shared with the next call, a block already in the
// cache) goes through the block cache as a single Get would.

// blockRun returns the end k of the run that starts at request i: ids[i:k]
// are consecutive chunks of the frame ents[i] points into, from the start
// of its block, with bufs[i:k] of the chunks' lengths and back to back in
// bufs[i]'s array. dst is that memory, bufs[i][:total]. k == i when request
// i does not start such a run. Whether the run is the whole block is known
// only once the frame is read (see frame.decodeRunInto).
func blockRun(ents []entry, bufs [][]byte, i int) (k int, dst []byte) {
	e := ents[i]
	if e.BlockOff != 0 || bufs[i] == nil || len(bufs[i]) != int(e.RawLen) {
		return i, nil
	}
	total := len(bufs[i])
	for k = i + 1; k < len(ents); k++ {
		prev, next, n := bufs[k-1], bufs[k], ents[k]
		if n.Pack != e.Pack || n.FrameOff != e.FrameOff || n.BlockOff != uint32(total) ||
			len(next) != int(n.RawLen) || !adjacent(prev, next) {
			break
		}
		total += len(next)
	}
	if cap(bufs[i]) < total {
		return i, nil // cannot happen for adjacent slices of one array
	}
	return k, bufs[i][:total]
}

// wholeRun is blockRun for a GetMany that groups its requests by frame
// (BlobStore's): idx are the indices, ascending, of the requests for one
// frame. It reads only those requests (others may be filled meanwhile).
// It returns the memory to decode the block into when they are one run
// from the block's start (frame.decodeRunInto then says whether the
// run is the whole block), else nil.
func wholeRun(ents []entry, bufs [][]byte, idx []int) []byte {
	if len(idx) == 0 {
		return nil
	}
	i := idx[0]
	for j, x := range idx {
		if x != i+j {
			return nil
		}
	}
	// Look at this frame's requests only: other frames' may be being
	// filled by other goroutines.
	n := len(idx)
	if k, dst := blockRun(ents[i:i+n], bufs[i:i+n], 0); k == n {
		return dst
	}
	return nil
}

// adjacent says whether b starts where a ends, within a's array. Comparing
// element addresses needs no unsafe: a's capacity must reach past its end.
func adjacent(a, b []byte) bool {
	return len(b) > 0 && cap(a) > len(a) && &a[:len(a)+1][len(a)] == &b[0]
}

// decodeRunInto decodes the frame's block into dst and checks it against
// the run of chunks ids (at the block offsets of ents): ok is false, with
// dst untouched, when the run is not the frame's whole chunk list (the
// caller then goes through the block cache). err is a reason to report
// about the frame (decompression failed) or about one chunk (hash or
// length mismatch); bad is the index in ids of that chunk, or -1. slack
// bytes past dst (within its capacity) may be overwritten with garbage:
// the caller passes more than 0 only for memory it writes again later.
func (f *frame) decodeRunInto(dst []byte, slack int, ids []ID, ents []entry) (ok bool, bad int, err error) {
	if int(f.RawLen) != len(dst) || len(f.Chunks) != len(ids) {
		return false, -1, nil
	}
	for j, c := range f.Chunks {
		if c.ID != ids[j] || c.Off != ents[j].BlockOff || c.Len != ents[j].RawLen {
			return false, -1, nil
		}
	}
	if err := f.decodeInto(dst, slack); err != nil {
		return true, -1, err
	}
	for j, c := range f.Chunks {
		if got := Sum(dst[c.Off : c.Off+c.Len]); got != c.ID {
			return true, j, fmt.Errorf("content hashes to %s", got.Short())
		}
	}
	return true, -1, nil
}

// decodeInto writes the frame's block into dst, which must be exactly the
// block's length. The decoder is not allowed to grow dst, so the block
// lands in the caller's memory or decoding fails. It may use slack bytes
// past dst's end as scratch (see decodeSlack).
func (f *frame) decodeInto(dst []byte, slack int) error {
	if len(dst) != int(f.RawLen) {
		return fmt.Errorf("block is %d bytes, buffer %d", f.RawLen, len(dst))
	}
	if f.Codec == codecRaw {
		copy(dst, f.Payload)
		return nil
	}
	slack = max(0, min(slack, cap(dst)-len(dst)))
	out, err := decompressInto(f.Payload, dst[:0:len(dst)+slack])
	if err != nil {
		return err
	}
	if len(out) != len(dst) || (len(out) > 0 && &out[0] != &dst[0]) {
		return fmt.Errorf("block decompressed to %d bytes, frame says %d", len(out), f.RawLen)
	}
	return nil
}

// BlockStarter is implemented by stores that can say which chunks start a
// block (are the first chunk of their frame). A reader that cuts its
// GetMany batches just before such chunks asks for whole blocks only, and
// each is decoded straight into its buffers (restore does).
type BlockStarter interface {
	// BlockStarts sets starts[i] to whether ids[i] starts a block. A chunk
	// not in the store is an error (*NotFoundError), as for Get.
	BlockStarts(ctx context.Context, ids []ID, starts []bool) error
}

// BlockStarts fills starts as r's BlockStarts does; ok is false (and
// starts untouched) when r cannot tell.
func BlockStarts(ctx context.Context, r Reader, ids []ID, starts []bool) (ok bool, err error) {
	b, ok := r.(BlockStarter)
	if !ok {
		return false, nil
	}
	return true, b.BlockStarts(ctx, ids, starts)
}
