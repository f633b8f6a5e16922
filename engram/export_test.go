package engram

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/engram-vm/engram/chunkstore"
)

// BulkCatalog writes n engrams (empty roots of distinct sizes), one named
// record each and the signature sig(i), straight into the catalog buckets
// in transactions of 1000: a big catalog for benchmarks without n fsyncs.
func BulkCatalog(ctx context.Context, w chunkstore.Writer, n int, sig func(i int) []byte) ([]ID, error) {
	ids := make([]ID, n)
	for lo := 0; lo < n; lo += 1000 {
		err := w.Update(ctx, func(tx chunkstore.MetaTx) error {
			for i := lo; i < min(lo+1000, n); i++ {
				root := EncodeRoot(Root{Size: int64(i+1) << 20})
				id := chunkstore.Sum(root)
				ids[i] = id
				rec := &Record{V: recordVersion, Engram: id.String(), Name: fmt.Sprintf("vm-%05d", i), Source: fmt.Sprintf("/images/vm-%05d.qcow2", i),
					Format: "qcow2", VirtualSize: int64(i+1) << 20, Created: time.Unix(int64(i), 0).UTC(),
					Chain: []Layer{{Path: fmt.Sprintf("/images/vm-%05d.qcow2", i), Format: "qcow2", ClusterSize: 65536}}}
				rec.Key = newRecordKey(rec.Created)
				enc, err := json.Marshal(rec)
				if err != nil {
					return err
				}
				for _, kv := range []struct{ b, k, v []byte }{
					{bucketEngrams, id[:], root}, {bucketRecords, []byte(rec.Key), enc},
					{bucketNames, []byte(rec.Name), []byte(rec.Key)}, {bucketSketches, id[:], sig(i)},
				} {
					if err := tx.Put(kv.b, kv.k, kv.v); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return ids, nil
}
