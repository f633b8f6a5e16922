package chunkstore

import (
	"bytes"
	"context"
	"encoding/json"
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
// segment of a newer format is left alone. Damaged journal entries go too
// (fixJournal).
func fixSegmentsDir(ctx context.Context, dir string, opts OpenOptions) (segs, journal []Problem, err error) {
	timeout := lockWait(opts.LockTimeout)
	lock, err := acquireLock(ctx, dir, timeout, opts.Command, true)
	if err != nil {
		return nil, nil, err
	}
	defer lock.release()
	bs, err := dirblob.Open(dir, false)
	if err != nil {
		return nil, nil, err
	}
	defer bs.Close()
	return fixObjects(ctx, bs)
}

// fixObjects is fixSegments and fixJournal.
func fixObjects(ctx context.Context, bs blob.Store) (segs, journal []Problem, err error) {
	if segs, err = fixSegments(ctx, bs); err != nil {
		return segs, nil, err
	}
	if journal, err = fixJournal(ctx, bs); err != nil {
		return segs, journal, err
	}
	lists, err := fixLists(ctx, bs, blobGCPrefix, blobDamagePrefix)
	return append(segs, lists...), journal, err
}

// fixLists removes the gc lists and damage lists (those of prefixes) that
// cannot be read (and are not of a newer version): a directory store's
// gc, holding the store alone, needs no list and deletes them all, and a
// damage list only tells caches what verify finds again.
func fixLists(ctx context.Context, bs blob.Store, prefixes ...string) ([]Problem, error) {
	var names []string
	for _, prefix := range prefixes {
		err := bs.List(ctx, prefix, func(in blob.Info) error {
			if _, _, ok := parseGCName(in.Name); ok || strings.HasPrefix(in.Name, blobDamagePrefix) {
				names = append(names, in.Name)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return removeDamaged(ctx, bs, names, maxGCList, func(n string, b []byte) error {
		if strings.HasPrefix(n, blobDamagePrefix) {
			var d damageList
			if err := json.Unmarshal(b, &d); err != nil {
				return err
			} else if d.V < damageVersion {
				return fmt.Errorf("bad version %d", d.V)
			}
			return nil
		}
		if _, err := decodeGCList(b); err != nil && !errors.Is(err, ErrFormatVersion) {
			return err
		}
		return nil
	}, func(err error) error { return fmt.Errorf("unreadable list (%v): removed", err) })
}

// removeDamaged reads each object of names (at most max bytes) and
// deletes those that cannot be read whole or that check refuses, with a
// Problem each says why; objects gone meanwhile are skipped, and an error
// of the store itself ends it.
func removeDamaged(ctx context.Context, bs blob.Store, names []string, max int64,
	check func(name string, b []byte) error, why func(error) error) ([]Problem, error) {
	var out []Problem
	for _, n := range names {
		b, err := blob.ReadAll(ctx, bs, n, max)
		if errors.Is(err, blob.ErrNotExist) {
			continue
		}
		if err != nil && !errors.Is(err, blob.ErrRange) {
			return out, err
		}
		if err == nil {
			if err = check(n, b); err == nil {
				continue
			}
		}
		if derr := bs.Delete(ctx, n); derr != nil {
			return out, derr
		}
		out = append(out, Problem{Pack: bs.String() + "/" + n, Err: why(err)})
	}
	return out, nil
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
		if err != nil {
			if derr := bs.Delete(ctx, indexObject(h)); derr != nil {
				return out, derr
			}
			out = append(out, Problem{Pack: name, Err: fmt.Errorf("index segment damaged (%v) and its pack has no intact copy (%v): removed", damage, err)})
			continue
		}
		// One atomic overwrite where the store has it (S3, directory), so
		// a host refreshing meanwhile finds the damaged segment (skipped
		// with a warning, read again next time) or the copy, never no
		// segment and no warning. Read back: the put must have landed.
		if err := blob.Replace(ctx, bs, indexObject(h), seg); err != nil {
			return out, err
		}
		if b, err := blob.ReadAll(ctx, bs, indexObject(h), maxSegment); err != nil {
			return out, err
		} else if !bytes.Equal(b, seg) {
			return out, fmt.Errorf("%s: replaced by the copy in its pack, but reads back %d bytes that differ from it", name, len(b))
		}
		out = append(out, Problem{Pack: name, Err: fmt.Errorf("index segment damaged (%v): replaced by the copy in its pack", damage)})
	}
	return out, nil
}

// journalIntact checks a journal entry's body against the hash its name
// carries (journalName), so that damage is told from an entry of a newer
// format, which is left for a newer program.
func journalIntact(name string, body []byte) error {
	if _, ok := parseJournalName(name); !ok {
		return nil // not an entry (refresh skips such names)
	}
	if got := Sum(body).String()[:16]; got != name[len(name)-16:] {
		return fmt.Errorf("content hashes to %s, not its name", got)
	}
	return nil
}

// fixJournal removes the journal entries under meta/ that fail
// journalIntact or, intact, cannot be parsed as any version of the
// format, and says whether it removed any: the catalog must then be
// rebuilt from catalog chunks (RecoverCatalog), since what those entries
// did is lost.
func fixJournal(ctx context.Context, bs blob.Store) ([]Problem, error) {
	names, err := journalNames(ctx, bs)
	if err != nil {
		return nil, err
	}
	return removeDamaged(ctx, bs, names, maxJournalObject, func(n string, b []byte) error {
		if err := journalIntact(n, b); err != nil {
			return err
		}
		var j journal
		return json.Unmarshal(b, &j)
	}, func(err error) error {
		return fmt.Errorf("catalog journal entry damaged (%v): removed; the catalog is rebuilt from catalog chunks", err)
	})
}

// verifySegment reports the index segment of pack h when it fails its
// checks: the cache keeps its own copy of each segment it merged, so the
// damage shows only at the next rebuild of a cache (another host's, or
// this one's), which then fails every command until repair.
func (s *BlobStore) verifySegment(ctx context.Context, h ID, emit func(Problem)) error {
	b, err := blob.ReadAll(ctx, s.bs, indexObject(h), maxSegment)
	if errors.Is(err, blob.ErrNotExist) {
		return nil // swept since the refresh, or lost: the refresh deals with it
	}
	if err == nil {
		if _, err = decodeSegment(b); err == nil || errors.Is(err, ErrFormatVersion) {
			return nil
		}
	} else if !errors.Is(err, blob.ErrRange) {
		return err
	}
	emit(Problem{Pack: s.bs.String() + "/" + indexObject(h), Err: fmt.Errorf("index segment damaged (%v); engram repair replaces it from its pack", err)})
	return nil
}
