package chunkstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// Listing the catalog journal from where the cache is.
//
// Journal names sort by their writers' clocks, so a refresh lists meta/
// after (the newest applied entry's time - journalLookback) instead of
// all of it (S3 ListObjectsV2 StartAfter): on a store with N entries a
// refresh then costs one LIST request, not N/1000. The lookback catches
// entries that sort before the newest applied one but arrived later: a
// writer's name carries its clock when it started the PUT, so an entry
// can only be missed if two hosts' clocks differ, plus the PUT's duration,
// plus the server's list lag, by more than the lookback. S3 refuses
// requests more than 15 minutes off its clock, so two hosts are at most
// 30 minutes apart. What a stalled PUT could still leave out is caught
// by a full listing: on a new cache, whenever an entry sorting before an
// applied one calls for a rebuild, and when the last full listing is
// older than journalFullEvery. gc's check for records it has not seen
// (catalogChangedSinceView) always lists everything.
const (
	journalLookback  = time.Hour
	journalFullEvery = DefaultGCMargin
)

// keyJournalListed (cache meta bucket) -> uint64 LE UnixNano of the last
// refresh that listed all of meta/.
var keyJournalListed = []byte("journal_listed")

// listJournal lists the journal entries a refresh must consider, and
// says whether that is all of them (full, or a listing that must be).
func (s *BlobStore) listJournal(ctx context.Context, full bool) ([]string, bool, error) {
	after := ""
	if !full {
		var last string
		var listed int64
		err := s.db.view(ctx, func(tx *bolt.Tx) error {
			last = lastApplied(tx)
			if v := tx.Bucket(bucketMeta).Get(keyJournalListed); len(v) == 8 {
				listed = int64(binary.LittleEndian.Uint64(v))
			}
			return nil
		})
		if err != nil {
			return nil, false, err
		}
		t, ok := parseJournalName(last)
		if ok && listed > 0 && s.now()-listed < int64(journalFullEvery) && t > int64(journalLookback) {
			// A name of that time without its hash sorts before every
			// entry of that time.
			after = fmt.Sprintf("%s%016x", blobMetaPrefix, t-int64(journalLookback))
		}
	}
	var names []string
	err := s.bs.ListAfter(ctx, blobMetaPrefix, after, func(in blob.Info) error {
		if _, ok := parseJournalName(in.Name); ok {
			names = append(names, in.Name)
		}
		return nil
	})
	return names, after == "", err
}

func markJournalListed(tx *bolt.Tx, t int64) error {
	return tx.Bucket(bucketMeta).Put(keyJournalListed, binary.LittleEndian.AppendUint64(nil, uint64(t)))
}
