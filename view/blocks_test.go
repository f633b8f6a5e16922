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

// TestBlockCacheWholeBlocks: a read of most of a block caches the whole
// block, so its other chunks are cache hits that share its memory.
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
	const n = 1 << 20
	if _, err := r.ReadAt(make([]byte, n), 0); err != nil {
		t.Fatal(err)
	}
	// The store's first block holds the first MiB of data, which reaches
	// past the first MiB of the guest (a quarter of it is holes).
	var b engram.ChunkRef
	for _, ref := range img.refs {
		if ref.Offset >= n {
			b = ref
			break
		}
	}
	if !set.chunks.has(b.ID) {
		t.Fatal("the chunk after the ones read is not cached with their block")
	}
	before := set.Stats()
	got := make([]byte, b.Length)
	if _, err := r.ReadAt(got, b.Offset); err != nil || !bytes.Equal(got, img.guest[b.Offset:b.End()]) {
		t.Fatalf("read of the second chunk: %v", err)
	}
	if after := set.Stats(); after.ReadLoaded != before.ReadLoaded || after.ReadCached != before.ReadCached+1 {
		t.Fatalf("second chunk not a hit: before %+v, after %+v", before, after)
	}
}

// TestRandomReadKeepsChunk: a read that wants little of a block caches a
// copy of the chunks it wants, not the block: a set of random reads
// would otherwise need a block of cache each.
func TestRandomReadKeepsChunk(t *testing.T) {
	st := chunkstore.NewTestStore(t)
	img := makeImage(t, st, 4<<20, 23)
	set := newSet(t, st, Options{})
	d, err := set.Open(context.Background(), img.id)
	if err != nil {
		t.Fatal(err)
	}
	r := d.NewReader()
	defer r.Close()
	k := len(img.refs) / 2
	a := img.refs[k]
	got := make([]byte, 100)
	if _, err := r.ReadAt(got, a.Offset); err != nil || !bytes.Equal(got, img.guest[a.Offset:a.Offset+100]) {
		t.Fatalf("read: %v", err)
	}
	if set.chunks.has(img.refs[k-1].ID) || set.chunks.has(img.refs[k+1].ID) {
		t.Fatal("a random read of one chunk cached its neighbours")
	}
	if st := set.Stats(); st.ChunkBytes > int64(a.Length)+4096 {
		t.Fatalf("cache holds %d bytes for a chunk of %d", st.ChunkBytes, a.Length)
	}
	if _, err := r.ReadAt(got, a.Offset+100); err != nil || set.Stats().ReadLoaded != 1 {
		t.Fatalf("second read of the chunk: %v, %+v", err, set.Stats())
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
	if _, err := r.ReadAt(make([]byte, 128<<10), 0); err != nil {
		t.Fatal(err) // chunks 0 and 1: most of the block, which is cached
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

// TestConcurrentReadersOfOneBlock: many readers of one block at once, on
// a cold cache, get the right bytes and cache the block once; then many
// readers of its chunks at once get the right bytes or, for the damaged
// chunk, its error.
func TestConcurrentReadersOfOneBlock(t *testing.T) {
	st, eid, refs := damagedImage(t)
	set := newSet(t, st, Options{})
	d, err := set.Open(context.Background(), eid)
	if err != nil {
		t.Fatal(err)
	}
	check := func(k int, got []byte, err error) error {
		switch {
		case k == 2 && !errors.As(err, new(*chunkstore.CorruptChunkError)):
			return errors.New("damaged chunk read without error")
		case k != 2 && err != nil:
			return err
		case k != 2 && (got[0] != byte(k+1) || got[len(got)-1] != byte(k)):
			return errors.New("wrong bytes")
		}
		return nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 { // chunks 0 and 1, most of the block
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := d.NewReader()
			defer r.Close()
			got := make([]byte, 128<<10)
			var err error
			if g%2 == 0 {
				_, err = r.ReadAt(got, 0)
			} else {
				var vec [][]byte
				vec, err = r.ReadSlices(0, len(got))
				got = bytes.Join(vec, nil)
			}
			if err == nil && len(got) != 128<<10 {
				err = errors.New("short read")
			}
			if err != nil {
				errs <- err
				return
			}
			errs <- errors.Join(check(0, got[:refs[0].Length], nil), check(1, got[64<<10:64<<10+refs[1].Length], nil))
		}()
	}
	wg.Wait()
	set.chunks.mu.Lock()
	blocks := len(set.chunks.blocks)
	set.chunks.mu.Unlock()
	if blocks != 1 {
		t.Fatalf("%d blocks cached for one", blocks)
	}
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := d.NewReader()
			defer r.Close()
			k := g % 4
			got := make([]byte, refs[k].Length)
			_, err := r.ReadAt(got, refs[k].Offset)
			errs <- check(k, got, err)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestBlockLRUShadowedBlock: a block whose chunks are all cached in
// another block already (a copy loaded while the whole block came in) is
// not kept: it would hold budget no read can reach; and a whole block
// cached after a copy of one of its chunks replaces the copy.
func TestBlockLRUShadowedBlock(t *testing.T) {
	ctx := context.Background()
	st := chunkstore.NewTestStore(t)
	var ids []chunkstore.ID
	var chunks []chunkstore.Chunk
	for i := range 2 {
		data := bytes.Repeat([]byte{byte(i + 1)}, 5000)
		ids = append(ids, chunkstore.Sum(data))
		chunks = append(chunks, chunkstore.Chunk{ID: ids[i], Data: data})
	}
	if _, err := st.PutMany(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	blocks, idx := make([]*chunkstore.Block, 2), make([]int, 2)
	if err := chunkstore.GetBlocks(ctx, st, ids, blocks, idx); err != nil {
		t.Fatal(err)
	}
	whole := blocks[0]
	cp, err := whole.Copy(idx[1])
	if err != nil {
		t.Fatal(err)
	}
	c := newBlockLRU(1 << 20)
	mine := make([]bool, 2)
	c.reserve(ids, mine)
	c.finish(ids[0], whole, idx[0], nil)
	c.finish(ids[1], cp, 0, nil)
	if len(c.blocks) != 1 || c.used != whole.Size()+2*chunkIndexCost {
		t.Fatalf("%d blocks, %d bytes cached; want the whole block only", len(c.blocks), c.used)
	}
	if b, _, cached, _ := c.peek(ids[1]); !cached || b != whole {
		t.Fatal("second chunk not found in the whole block")
	}
	// The copy first, then its block: the block takes the chunk over.
	small := newBlockLRU(whole.Size() + 2*chunkIndexCost + cp.Size() + chunkIndexCost/2)
	small.finish(ids[1], cp, 0, nil)
	small.finish(ids[0], whole, idx[0], nil)
	if len(small.blocks) != 1 || small.used > small.max {
		t.Fatalf("%d blocks, %d of %d bytes", len(small.blocks), small.used, small.max)
	}
	for _, id := range ids {
		if b, _, cached, _ := small.peek(id); !cached || b != whole {
			t.Fatalf("chunk %s not in the block that stayed", id.Short())
		}
	}
}
