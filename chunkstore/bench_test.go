package chunkstore

import (
	"context"
	"crypto/rand"
	"io/fs"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// benchCorpus is ~24 MiB of real files (Go toolchain sources and
// binaries: text and machine code, like a system disk), cut into 64 KiB
// chunks.
func benchCorpus(b *testing.B, kind string) []Chunk {
	b.Helper()
	const total = 24 << 20
	var data []byte
	switch kind {
	case "files":
		root := runtime.GOROOT()
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || len(data) >= total {
				return fs.SkipAll
			}
			if d.Type().IsRegular() {
				if buf, err := os.ReadFile(p); err == nil {
					data = append(data, buf...)
				}
			}
			return nil
		})
	case "random":
		data = make([]byte, total)
		rand.Read(data)
	}
	if len(data) > total {
		data = data[:total]
	}
	var cs []Chunk
	for off := 0; off+65536 <= len(data); off += 65536 {
		d := data[off : off+65536]
		cs = append(cs, Chunk{ID: Sum(d), Data: d})
	}
	return cs
}

// BenchmarkBlockSize compares per-chunk compression with blocks of
// consecutive chunks: stored bytes per raw byte, and Get latency with a
// cold and a warm block cache.
func BenchmarkBlockSize(b *testing.B) {
	ctx := context.Background()
	for _, kind := range []string{"files", "random"} {
		cs := benchCorpus(b, kind)
		for _, level := range []string{"fastest", "default"} {
			for _, bs := range []int{1, 256 << 10, 1 << 20, 2 << 20} {
				name := kind + "/" + level + "/block=" + map[int]string{1: "chunk", 256 << 10: "256K", 1 << 20: "1M", 2 << 20: "2M"}[bs]
				b.Run(name, func(b *testing.B) {
					s := NewTestStore(b, InitOptions{Compression: level, BlockSize: bs})
					for i := 0; i < len(cs); i += 64 { // ingest-sized batches
						if _, err := s.PutMany(ctx, cs[i:min(i+64, len(cs))]); err != nil {
							b.Fatal(err)
						}
					}
					st, _ := s.Stats(ctx)
					ratio := float64(st.PackBytes) / float64(st.RawBytes)
					b.Run("GetRandom", func(b *testing.B) {
						b.SetBytes(65536)
						for i := 0; b.Loop(); i++ {
							s.cache.reset()
							if _, err := s.Get(ctx, cs[mrand.IntN(len(cs))].ID); err != nil {
								b.Fatal(err)
							}
						}
						b.ReportMetric(ratio, "stored/raw")
					})
					b.Run("GetSequential", func(b *testing.B) {
						b.SetBytes(65536)
						for i := 0; b.Loop(); i++ {
							if _, err := s.Get(ctx, cs[i%len(cs)].ID); err != nil {
								b.Fatal(err)
							}
						}
					})
				})
			}
		}
	}
}

func BenchmarkPut(b *testing.B) {
	ctx := context.Background()
	cs := benchCorpus(b, "files")
	b.Run("New", func(b *testing.B) {
		s := NewTestStore(b)
		b.SetBytes(16 * 65536)
		n := 0
		for b.Loop() {
			batch := make([]Chunk, 16)
			for j := range batch {
				// Vary the data so every chunk is new.
				c := cs[n%len(cs)]
				d := append([]byte{}, c.Data...)
				d[0], d[1], d[2] = byte(n), byte(n>>8), byte(n>>16)
				batch[j] = Chunk{ID: Sum(d), Data: d}
				n++
			}
			if _, err := s.PutMany(ctx, batch); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Duplicate", func(b *testing.B) {
		s := NewTestStore(b)
		if _, err := s.PutMany(ctx, cs[:256]); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(16 * 65536)
		i := 0
		for b.Loop() {
			batch := cs[i%240 : i%240+16]
			i += 16
			// The caller hashes its chunks; count that, as ingest pays it.
			for _, c := range batch {
				_ = Sum(c.Data)
			}
			if n, err := s.PutMany(ctx, batch); err != nil || n != 0 {
				b.Fatal(n, err)
			}
		}
	})
	b.Run("NewParallel", func(b *testing.B) {
		s := NewTestStore(b)
		b.SetBytes(16 * 65536)
		b.RunParallel(func(pb *testing.PB) {
			r := mrand.New(mrand.NewPCG(mrand.Uint64(), 1))
			for pb.Next() {
				batch := make([]Chunk, 16)
				for j := range batch {
					d := append([]byte{}, cs[r.IntN(len(cs))].Data...)
					for k := range 8 {
						d[k] = byte(r.Uint32())
					}
					batch[j] = Chunk{ID: Sum(d), Data: d}
				}
				if _, err := s.PutMany(ctx, batch); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkHasMillion looks up IDs in an index of 1M chunks, built by
// inserting entries straight into bbolt.
func BenchmarkHasMillion(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	if err := Init(dir, InitOptions{}); err != nil {
		b.Fatal(err)
	}
	s0, err := Open(ctx, dir, OpenOptions{}) // creates the cache
	if err != nil {
		b.Fatal(err)
	}
	s0.Close()
	db, err := bolt.Open(filepath.Join(dir, dirCacheName, indexName), 0o644, nil)
	if err != nil {
		b.Fatal(err)
	}
	db.NoSync = true
	const n = 1 << 20
	ids := make([]ID, n)
	for i := range ids {
		rand.Read(ids[i][:])
	}
	e := entry{Pack: 1, FrameOff: packHeaderSize, FrameLen: 100, RawLen: 10, Share: 100}
	for i := 0; i < n; i += 100000 {
		err := db.Update(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketChunks)
			c.FillPercent = 0.9
			for _, id := range ids[i:min(i+100000, n)] {
				if err := c.Put(id[:], e.encode()); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	db.Close()
	s, err := Open(ctx, dir, OpenOptions{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.Run("HasMany1000", func(b *testing.B) {
		// Half present, half absent, generated outside the timed loop.
		qs := make([][]ID, 64)
		for i := range qs {
			qs[i] = make([]ID, 1000)
			for j := range qs[i] {
				if j%2 == 0 {
					qs[i][j] = ids[mrand.IntN(n)]
				} else {
					rand.Read(qs[i][j][:])
				}
			}
		}
		q := qs[0]
		for i := 0; b.Loop(); i++ {
			q = qs[i%len(qs)]
			if _, err := s.HasMany(ctx, q); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(q)), "ns/id")
	})
	b.Run("Has", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Has(ctx, ids[mrand.IntN(n)]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
