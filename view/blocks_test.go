package view

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
)

// TestBlockCacheWholeBlocks: a read of one chunk caches the whole block
// it lives in, so the block's other chunks are cache hits that share its
// memory.
func TestBlockCacheWholeBlocks(t *testing.T) {
	st := chunkstore.NewTestStore(t)
	img := makeImage(t, st, 4<<20, 21)
	set := newSet(t, st, Options{})
	d, err := set.Open(context.Background(), img.id)
	if err != nil {
		t.Fatal(err)
	}
	r := d.NewReader()
	defer r.Close()
	a := img.refs[0]
	if _, err := r.ReadAt(make([]byte, 512), a.Offset); err != nil {
		t.Fatal(err)
	}
	// The first chunks were stored together in the store's first block.
	b := img.refs[1]
	if !set.chunks.has(b.ID) {
		t.Fatal("the chunk after the one read is not cached with its block")
	}
	before := set.Stats()
	if before.ChunkBytes < int64(a.Length+b.Length) {
		t.Fatalf("cache holds %d bytes, less than two chunks", before.ChunkBytes)
	}
	got := make([]byte, b.Length)
	if _, err := r.ReadAt(got, b.Offset); err != nil || !bytes.Equal(got, img.guest[b.Offset:b.End()]) {
		t.Fatalf("read of the second chunk: %v", err)
	}
	if after := set.Stats(); after.ReadLoaded != before.ReadLoaded || after.ReadCached != before.ReadCached+1 {
		t.Fatalf("second chunk not a hit: before %+v, after %+v", before, after)
	}
}

// TestBlockCacheBound reads a store of whole blocks twice the size of the
// budget and checks the block cache stays inside its part of the budget
// (whole blocks counted), evicts, and reads right throughout.
func TestBlockCacheBound(t *testing.T) {
	st := chunkstore.NewTestStore(t)
	img := makeImage(t, st, 3*MinCacheSize, 22)
	set := newSet(t, st, Options{CacheSize: MinCacheSize})
	d, err := set.Open(context.Background(), img.id)
	if err != nil {
		t.Fatal(err)
	}
	limit := set.chunks.max
	if limit+BlockCacheBytes(MinCacheSize)+MinCacheSize/16 > MinCacheSize {
		t.Fatalf("chunk cache of %d bytes: the split exceeds the budget", limit)
	}
	for pass := range 2 {
		r := d.NewReader()
		buf := make([]byte, 1<<20)
		for off := int64(0); off < d.Size(); off += int64(len(buf)) {
			n, err := r.ReadAt(buf, off)
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:n], img.guest[off:off+int64(n)]) {
				t.Fatalf("pass %d: wrong bytes at %#x", pass, off)
			}
			if st := set.Stats(); st.ChunkBytes > limit {
				t.Fatalf("pass %d: block cache holds %d bytes, limit %d", pass, st.ChunkBytes, limit)
			}
		}
		r.Close()
		set.queued.Wait()
	}
	set.chunks.mu.Lock()
	blocks := len(set.chunks.blocks)
	set.chunks.mu.Unlock()
	if blocks == 0 || int64(blocks)*chunkstore.DefaultBlockSize > 2*limit {
		t.Fatalf("%d blocks cached under a limit of %d bytes", blocks, limit)
	}
	if st := set.Stats(); st.ChunkBytes < limit/2 {
		t.Fatalf("cache barely used: %+v", st)
	}
}

// damagedImage stores four chunks in one block, the third under an ID its
// bytes do not hash to (the frame itself is sound), and an engram of
// them; it returns the engram's ID and refs.
func damagedImage(t *testing.T) (chunkstore.Store, engram.ID, []engram.ChunkRef) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	if err := chunkstore.Init(dir, chunkstore.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	// TrustIDs: the store takes the wrong ID as given.
	st, err := chunkstore.Open(ctx, dir, chunkstore.OpenOptions{Exclusive: true, TrustIDs: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var chunks []chunkstore.Chunk
	var refs []engram.ChunkRef
	for i := range 4 {
		data := bytes.Repeat([]byte{byte(i + 1), 7, byte(i)}, 20000)
		id := chunkstore.Sum(data)
		if i == 2 {
			id = chunkstore.Sum([]byte("something else"))
		}
		chunks = append(chunks, chunkstore.Chunk{ID: id, Data: data})
		refs = append(refs, engram.ChunkRef{Offset: int64(i) * 64 << 10, Length: uint32(len(data)), ID: id})
	}
	if _, err := st.PutMany(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	var pages []chunkstore.Chunk
	b := engram.NewBuilder(1<<20, func(c chunkstore.Chunk) error { pages = append(pages, c); return nil })
	for _, r := range refs {
		if err := b.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	_, enc, eid, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutMany(ctx, pages); err != nil {
		t.Fatal(err)
	}
	if err := engram.Commit(ctx, st, eid, enc, &engram.Record{Source: "test"}); err != nil {
		t.Fatal(err)
	}
	return st, eid, refs
}

// TestDamagedChunkInCachedBlock: a chunk whose bytes do not match its ID
// fails every read of it, whether its block is cached already or not, by
// ReadAt and ReadSlices, while its neighbours in the block read fine.
func TestDamagedChunkInCachedBlock(t *testing.T) {
	st, eid, refs := damagedImage(t)
	set := newSet(t, st, Options{})
	d, err := set.Open(context.Background(), eid)
	if err != nil {
		t.Fatal(err)
	}
	r := d.NewReader()
	defer r.Close()
	if _, err := r.ReadAt(make([]byte, 100), refs[0].Offset); err != nil {
		t.Fatal(err) // caches the block
	}
	if !set.chunks.has(refs[2].ID) {
		t.Fatal("the damaged chunk's block is not cached")
	}
	for i := range 3 {
		_, err := r.ReadAt(make([]byte, 100), refs[2].Offset+10)
		if ce := (*chunkstore.CorruptChunkError)(nil); !errors.As(err, &ce) || ce.ID != refs[2].ID {
			t.Fatalf("ReadAt %d of the damaged chunk: %v", i, err)
		}
		if _, err := r.ReadSlices(0, 1<<20); !errors.As(err, new(*chunkstore.CorruptChunkError)) {
			t.Fatalf("ReadSlices %d over the damaged chunk: %v", i, err)
		}
	}
	for _, k := range []int{0, 1, 3} {
		got := make([]byte, refs[k].Length)
		if _, err := r.ReadAt(got, refs[k].Offset); err != nil || got[0] != byte(k+1) {
			t.Fatalf("chunk %d next to the damaged one: %v", k, err)
		}
	}
}

// TestConcurrentReadersOfOneBlock: many readers of the chunks of one
// block at once, on a cold cache, get the right bytes (or the damaged
// chunk's error), and the block is cached once.
func TestConcurrentReadersOfOneBlock(t *testing.T) {
	st, eid, refs := damagedImage(t)
	set := newSet(t, st, Options{})
	d, err := set.Open(context.Background(), eid)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := d.NewReader()
			defer r.Close()
			k := g % 4
			ref := refs[k]
			got := make([]byte, ref.Length)
			_, err := r.ReadAt(got, ref.Offset)
			switch {
			case k == 2 && !errors.As(err, new(*chunkstore.CorruptChunkError)):
				errs <- errors.New("damaged chunk read without error")
			case k != 2 && err != nil:
				errs <- err
			case k != 2 && (got[0] != byte(k+1) || got[len(got)-1] != byte(k)):
				errs <- errors.New("wrong bytes")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	set.chunks.mu.Lock()
	defer set.chunks.mu.Unlock()
	if len(set.chunks.blocks) != 1 {
		t.Fatalf("%d blocks cached for one", len(set.chunks.blocks))
	}
}
