package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// testable is what the conformance suite needs of a store.
type testable interface {
	Store
	Maintainer
}

// mkChunk returns a deterministic chunk: semi-compressible bytes from seed.
func mkChunk(seed uint64, size int) Chunk {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, size)
	for i := 0; i < size; i += 8 {
		v := r.Uint64()
		if v%4 == 0 { // a quarter random words, the rest text-like
			for j := 0; j < 8 && i+j < size; j++ {
				b[i+j] = byte(v >> (8 * j))
			}
		} else {
			for j := 0; j < 8 && i+j < size; j++ {
				b[i+j] = "engram store "[(i+j+int(v%3))%13]
			}
		}
	}
	return Chunk{ID: Sum(b), Data: b}
}

func mkChunks(from, n uint64, size int) []Chunk {
	out := make([]Chunk, n)
	for i := range out {
		out[i] = mkChunk(from+uint64(i), size+int((from+uint64(i))%7)*1000)
	}
	return out
}

// runConformance is the suite every Store implementation passes.
func runConformance(t *testing.T, newStore func(t *testing.T) testable) {
	ctx := context.Background()
	t.Run("PutGet", func(t *testing.T) {
		s := newStore(t)
		cs := mkChunks(1, 40, 20000)
		n, err := s.PutMany(ctx, cs)
		if err != nil || n != len(cs) {
			t.Fatalf("PutMany = %d, %v; want %d", n, err, len(cs))
		}
		n, err = s.PutMany(ctx, cs)
		if err != nil || n != 0 {
			t.Fatalf("second PutMany = %d, %v; want 0", n, err)
		}
		added, err := s.Put(ctx, cs[0].ID, cs[0].Data)
		if err != nil || added {
			t.Fatalf("Put of a stored chunk = %v, %v", added, err)
		}
		for _, c := range cs {
			got, err := s.Get(ctx, c.ID)
			if err != nil || !bytes.Equal(got, c.Data) {
				t.Fatalf("Get %s: %v (equal %v)", c.ID.Short(), err, bytes.Equal(got, c.Data))
			}
		}
		missing := mkChunk(999, 100)
		if ok, err := s.Has(ctx, cs[3].ID); !ok || err != nil {
			t.Fatalf("Has = %v, %v", ok, err)
		}
		if ok, err := s.Has(ctx, missing.ID); ok || err != nil {
			t.Fatalf("Has(missing) = %v, %v", ok, err)
		}
		has, err := s.HasMany(ctx, []ID{cs[0].ID, missing.ID, cs[1].ID})
		if err != nil || !has[0] || has[1] || !has[2] {
			t.Fatalf("HasMany = %v, %v", has, err)
		}
		_, err = s.Get(ctx, missing.ID)
		var nf *NotFoundError
		if !errors.Is(err, ErrNotFound) || !errors.As(err, &nf) || nf.ID != missing.ID {
			t.Fatalf("Get(missing) = %v", err)
		}
		ents, err := s.Lookup(ctx, []ID{cs[5].ID, missing.ID})
		if err != nil || len(ents) != 1 || ents[0].ID != cs[5].ID || ents[0].RawLen != len(cs[5].Data) || ents[0].StoredLen <= 0 {
			t.Fatalf("Lookup = %+v, %v", ents, err)
		}
		st, err := s.Stats(ctx)
		if err != nil || st.Chunks != int64(len(cs)) {
			t.Fatalf("Stats = %+v, %v", st, err)
		}
		var raw int64
		for _, c := range cs {
			raw += int64(len(c.Data))
		}
		if st.RawBytes != raw || st.StoredBytes <= 0 || st.StoredBytes > st.PackBytes {
			t.Fatalf("Stats = %+v, raw %d", st, raw)
		}
	})
	t.Run("GetMany", func(t *testing.T) {
		s := newStore(t)
		cs := mkChunks(1, 40, 20000)
		cs = append(cs, mkChunk(77, 3000), Chunk{ID: Sum(nil)})
		if _, err := s.PutMany(ctx, cs); err != nil {
			t.Fatal(err)
		}
		// Out of order and repeated: every chunk comes from its own place.
		order := []int{5, 3, 41, 0, 39, 5, 40, 17}
		ids := make([]ID, len(order))
		bufs := make([][]byte, len(order))
		for i, k := range order {
			ids[i], bufs[i] = cs[k].ID, make([]byte, len(cs[k].Data))
		}
		if err := GetMany(ctx, s, ids, bufs); err != nil {
			t.Fatal(err)
		}
		for i, k := range order {
			if !bytes.Equal(bufs[i], cs[k].Data) {
				t.Fatalf("GetMany chunk %d (%d) differs", i, k)
			}
		}
		var le *LengthError
		if err := GetMany(ctx, s, []ID{cs[2].ID}, [][]byte{make([]byte, 10)}); !errors.As(err, &le) || le.ID != cs[2].ID || le.Len != len(cs[2].Data) {
			t.Fatalf("GetMany with a short buffer = %v", err)
		}
		missing := mkChunk(999, 100)
		if err := GetMany(ctx, s, []ID{cs[2].ID, missing.ID}, [][]byte{make([]byte, len(cs[2].Data)), make([]byte, 100)}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("GetMany of a missing chunk = %v", err)
		}
	})
	t.Run("EdgeChunks", func(t *testing.T) {
		s := newStore(t)
		empty := Chunk{ID: Sum(nil), Data: nil}
		big := mkChunk(5, MaxChunkSize)
		if n, err := s.PutMany(ctx, []Chunk{empty, big, empty}); err != nil || n != 2 {
			t.Fatalf("PutMany = %d, %v", n, err)
		}
		if got, err := s.Get(ctx, empty.ID); err != nil || len(got) != 0 {
			t.Fatalf("Get(empty) = %d bytes, %v", len(got), err)
		}
		if got, err := s.Get(ctx, big.ID); err != nil || !bytes.Equal(got, big.Data) {
			t.Fatalf("Get(big): %v", err)
		}
		tooBig := make([]byte, MaxChunkSize+1)
		if _, err := s.Put(ctx, Sum(tooBig), tooBig); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Put(too big) = %v", err)
		}
		wrong := mkChunk(6, 1000)
		if _, err := s.Put(ctx, Sum([]byte("x")), wrong.Data); err == nil {
			t.Fatal("Put with a wrong ID succeeded")
		}
	})
	t.Run("Concurrent", func(t *testing.T) {
		s := newStore(t)
		// 8 writers over overlapping ranges: every chunk is stored once.
		const writers, per = 8, 30
		var added atomic.Int64
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for b := 0; b < 3; b++ {
					cs := mkChunks(uint64(w%4*per/2+b*7), per/2, 9000)
					n, err := s.PutMany(ctx, cs)
					if err != nil {
						t.Error(err)
						return
					}
					added.Add(int64(n))
					for _, c := range cs {
						got, err := s.Get(ctx, c.ID)
						if err != nil || !bytes.Equal(got, c.Data) {
							t.Errorf("Get %s: %v", c.ID.Short(), err)
							return
						}
					}
				}
			}()
		}
		wg.Wait()
		st, err := s.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Chunks != added.Load() {
			t.Fatalf("stored %d chunks, PutMany reported %d added", st.Chunks, added.Load())
		}
	})
	t.Run("SameIDConcurrently", func(t *testing.T) {
		s := newStore(t)
		cs := mkChunks(100, 20, 30000)
		var added atomic.Int64
		var wg sync.WaitGroup
		for range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n, err := s.PutMany(ctx, cs)
				if err != nil {
					t.Error(err)
				}
				added.Add(int64(n))
			}()
		}
		wg.Wait()
		st, _ := s.Stats(ctx)
		if added.Load() != int64(len(cs)) || st.Chunks != int64(len(cs)) {
			t.Fatalf("added %d, stats %+v; want %d", added.Load(), st, len(cs))
		}
	})
	t.Run("MetaTx", func(t *testing.T) {
		s := newStore(t)
		b := []byte("records")
		err := s.Update(ctx, func(tx MetaTx) error {
			for _, k := range []string{"b/2", "a/1", "b/1", "c"} {
				if err := tx.Put(b, []byte(k), []byte("v"+k)); err != nil {
					return err
				}
			}
			return tx.Put([]byte("other"), []byte("b/x"), []byte("o"))
		})
		if err != nil {
			t.Fatal(err)
		}
		boom := errors.New("boom")
		err = s.Update(ctx, func(tx MetaTx) error {
			if err := tx.Put(b, []byte("b/3"), []byte("lost")); err != nil {
				return err
			}
			if err := tx.Delete(b, []byte("c")); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("Update = %v", err)
		}
		err = s.View(ctx, func(tx MetaTx) error {
			if v := tx.Get(b, []byte("a/1")); string(v) != "va/1" {
				return fmt.Errorf("Get a/1 = %q", v)
			}
			if v := tx.Get(b, []byte("c")); string(v) != "vc" {
				return fmt.Errorf("rolled-back delete: Get c = %q", v)
			}
			if v := tx.Get([]byte("nobucket"), []byte("a")); v != nil {
				return fmt.Errorf("missing bucket Get = %q", v)
			}
			var keys []string
			if err := tx.ForEach(b, []byte("b/"), func(k, v []byte) error {
				keys = append(keys, string(k))
				return nil
			}); err != nil {
				return err
			}
			if fmt.Sprint(keys) != "[b/1 b/2]" {
				return fmt.Errorf("ForEach b/ = %v", keys)
			}
			if err := tx.ForEach([]byte("nobucket"), nil, func(k, v []byte) error { return errors.New("visited") }); err != nil {
				return err
			}
			if err := tx.Put(b, []byte("x"), []byte("y")); err == nil {
				return errors.New("Put in View succeeded")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		err = s.Update(ctx, func(tx MetaTx) error { return tx.Delete(b, []byte("a/1")) })
		if err != nil {
			t.Fatal(err)
		}
		_ = s.View(ctx, func(tx MetaTx) error {
			if v := tx.Get(b, []byte("a/1")); v != nil {
				t.Errorf("deleted key still there: %q", v)
			}
			return nil
		})
	})
	t.Run("GC", func(t *testing.T) {
		s := newStore(t)
		// A directory store whose lock this test holds exclusively deletes
		// dead packs at once; a bucket store waits out a margin.
		bs, isBlob := s.(*BlobStore)
		if isBlob && !bs.local.exclusive() {
			t.Skip("a bucket store collects in two phases with a margin: blobgc_test.go")
		}
		var all []Chunk
		for i := range 7 { // the 7th batch all dead: its packs are freed
			cs := mkChunks(uint64(1000+i*50), 50, 8000)
			if _, err := s.PutMany(ctx, cs); err != nil {
				t.Fatal(err)
			}
			all = append(all, cs...)
		}
		live := map[ID]bool{}
		for i, c := range all {
			// Packs of the first batches become mostly dead, of the last
			// ones mostly live.
			if (i < 150 && i%5 == 0) || (i >= 150 && i < 300 && i%5 != 0) {
				live[c.ID] = true
			}
		}
		before, _ := s.Stats(ctx)
		dry, err := s.GC(ctx, func(id ID) bool { return live[id] }, GCOptions{DryRun: true})
		if err != nil {
			t.Fatal(err)
		}
		if dry.DeadChunks != int64(len(all)-len(live)) {
			t.Fatalf("dry run: %+v", dry)
		}
		if st, _ := s.Stats(ctx); st != before {
			t.Fatalf("dry run changed the store: %+v -> %+v", before, st)
		}
		var progressed int64
		gs, err := s.GC(ctx, func(id ID) bool { return live[id] }, GCOptions{Progress: func(d, n int64) { progressed = d }})
		if err != nil {
			t.Fatal(err)
		}
		if gs.DeadChunks != int64(len(all)-len(live)) {
			t.Fatalf("GC stats %+v", gs)
		}
		for i, c := range all {
			got, err := s.Get(ctx, c.ID)
			if live[c.ID] {
				if err != nil || !bytes.Equal(got, c.Data) {
					t.Fatalf("live chunk %s after GC: %v", c.ID.Short(), err)
				}
			} else if !errors.Is(err, ErrNotFound) && (!isBlob || i >= 300) {
				// (A blob store keeps the dead chunks of packs that hold
				// live ones until they are rewritten: not the 7th batch.)
				t.Fatalf("dead chunk %s after GC: %v", c.ID.Short(), err)
			}
		}
		after, _ := s.Stats(ctx)
		if after.Chunks != int64(len(live)) && !isBlob {
			t.Fatalf("after GC: %+v, want %d chunks", after, len(live))
		}
		if isBlob {
			if after.PackBytes >= before.PackBytes || gs.BytesFreed == 0 || progressed == 0 {
				t.Fatalf("GC freed nothing: before %+v after %+v, %+v", before, after, gs)
			}
		}
		// Putting a collected chunk again works.
		c := all[301] // dead, in a pack with nothing live
		if added, err := s.Put(ctx, c.ID, c.Data); err != nil || !added {
			t.Fatalf("re-Put after GC = %v, %v", added, err)
		}
	})
	t.Run("VerifyClean", func(t *testing.T) {
		s := newStore(t)
		if _, err := s.PutMany(ctx, mkChunks(7, 30, 50000)); err != nil {
			t.Fatal(err)
		}
		var probs []Problem
		st, err := s.Verify(ctx, func(p Problem) { probs = append(probs, p) })
		if err != nil || len(probs) != 0 || st.Problems != 0 || st.Chunks != 30 {
			t.Fatalf("Verify = %+v, %v, %v", st, err, probs)
		}
	})
}

func TestConformanceDirStore(t *testing.T) {
	runConformance(t, func(t *testing.T) testable {
		return NewTestStore(t, InitOptions{PackSize: 256 << 10, BlockSize: 64 << 10})
	})
}

func TestConformanceDirStorePerChunk(t *testing.T) {
	runConformance(t, func(t *testing.T) testable {
		return NewTestStore(t, InitOptions{PackSize: 1 << 20, BlockSize: 1, Compression: "fastest"})
	})
}

func TestConformanceMemStore(t *testing.T) {
	runConformance(t, func(t *testing.T) testable {
		s := NewMemory(Params{})
		t.Cleanup(func() {
			if st, err := s.Verify(context.Background(), nil); err != nil || st.Problems > 0 {
				t.Errorf("verify: %+v %v", st, err)
			}
		})
		return s
	})
}
