package engram

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/sketch"
)

// BenchmarkSignatureCatalog10k stores the signatures of 10,000 engrams in a
// real store and reports how much index.db grew (goal: under 45 MB) as
// catalog-MB.
func BenchmarkSignatureCatalog10k(b *testing.B) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(51, 52))
	enc := make([][]byte, 10000)
	for i := range enc {
		bl := sketch.NewBuilder()
		for j := 0; j < 3000; j++ {
			var id [32]byte
			for k := range id {
				id[k] = byte(r.Uint32())
			}
			bl.Add(id, 64<<10)
		}
		enc[i] = bl.Sketch().Encode()
	}
	for b.Loop() {
		b.StopTimer()
		st := chunkstore.NewTestStore(b)
		path := filepath.Join(st.CacheDir(), "index.db")
		before, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for lo := 0; lo < len(enc); lo += 1000 {
			err := st.Update(ctx, func(tx chunkstore.MetaTx) error {
				for i := lo; i < lo+1000; i++ {
					id := chunkstore.Sum([]byte{byte(i), byte(i >> 8)})
					if err := tx.Put(bucketSketches, id[:], enc[i]); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		st.Close()
		after, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		// The file grows in steps; the bucket's pages are what it uses.
		db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
		if err != nil {
			b.Fatal(err)
		}
		var used int
		err = db.View(func(tx *bbolt.Tx) error {
			u := tx.Bucket([]byte("user"))
			if u == nil || u.Bucket(bucketSketches) == nil {
				return fmt.Errorf("no %s bucket", bucketSketches)
			}
			s := u.Bucket(bucketSketches).Stats()
			used = s.BranchAlloc + s.LeafAlloc
			return nil
		})
		db.Close()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(used)/1e6, "bucket-MB")
		b.ReportMetric(float64(after.Size()-before.Size())/1e6, "file-growth-MB")
		b.StartTimer()
	}
}
