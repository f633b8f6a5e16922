package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/engram-vm/engram/chunkstore/blob"
	dirblob "github.com/engram-vm/engram/chunkstore/blob/dir"
)

// fixSegmentsDir is RepairDir's first step when the store cannot be
// opened because its index is damaged: every refresh merges each index
// segment it lacks, so one damaged segment fails them all (Repair's own
// included) until it is replaced. Under the exclusive lock, each segment
// that fails its checks is replaced by the copy at the end of its pack,
// or removed when the pack holds no intact copy (its chunks then count as
// missing, and verify and repair name the engrams that need them). A
// segment of a newer format is left alone.
func fixSegmentsDir(ctx context.Context, dir string, opts OpenOptions) ([]Problem, error) {
	timeout := opts.LockTimeout // as Open reads it
	if timeout == 0 {
		timeout = DefaultLockTimeout
	} else if timeout < 0 {
		timeout = 0
	}
	lock, err := acquireLock(ctx, dir, timeout, opts.Command, true)
	if err != nil {
		return nil, err
	}
	defer lock.release()
	bs, err := dirblob.Open(dir, false)
	if err != nil {
		return nil, err
	}
	defer bs.Close()
	return fixSegments(ctx, bs)
}

func fixSegments(ctx context.Context, bs blob.Store) ([]Problem, error) {
	var hs []ID
	err := bs.List(ctx, blobIndexPrefix, func(in blob.Info) error {
		if h, err := ParseID(strings.TrimPrefix(in.Name, blobIndexPrefix)); err == nil {
			hs = append(hs, h)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []Problem
	for _, h := range hs {
		name := bs.String() + "/" + indexObject(h)
		b, err := blob.ReadAll(ctx, bs, indexObject(h), maxSegment)
		if errors.Is(err, blob.ErrNotExist) {
			continue
		}
		if err == nil {
			if _, err = decodeSegment(b); err == nil || errors.Is(err, ErrFormatVersion) {
				continue
			}
		} else if !errors.Is(err, blob.ErrRange) {
			return out, err
		}
		damage := err
		var seg []byte
		pack, err := blob.ReadAll(ctx, bs, packObject(h), maxPackObject)
		if err == nil {
			if seg, err = packSegment(pack); err == nil {
				_, err = decodeSegment(seg)
			}
		} else if !errors.Is(err, blob.ErrNotExist) && !errors.Is(err, blob.ErrRange) {
			return out, err
		}
		if derr := bs.Delete(ctx, indexObject(h)); derr != nil {
			return out, derr
		}
		if err != nil {
			out = append(out, Problem{Pack: name, Err: fmt.Errorf("index segment damaged (%v) and its pack has no intact copy (%v): removed", damage, err)})
			continue
		}
		if err := bs.Put(ctx, indexObject(h), seg); err != nil && !errors.Is(err, blob.ErrExist) {
			return out, err
		}
		out = append(out, Problem{Pack: name, Err: fmt.Errorf("index segment damaged (%v): replaced by the copy in its pack", damage)})
	}
	return out, nil
}
