package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/dir"
	"github.com/engram-vm/engram/chunkstore/blob/faulty"
	"github.com/engram-vm/engram/chunkstore/blob/mem"
	"github.com/engram-vm/engram/chunkstore/blob/s3"
	"github.com/engram-vm/engram/chunkstore/blob/s3/s3test"
	"golang.org/x/sync/errgroup"
)

// getManyStore is a bucket store of small blocks and packs (so a batch
// spans many frames and several packs) over a faulty wrapper that counts
// the Gets, holding chunks cs.
func getManyStore(t *testing.T, inner blob.Store, cs []Chunk) (*BlobStore, *faulty.Store) {
	t.Helper()
	fs := faulty.New(inner)
	initBlob(t, fs, InitOptions{PackSize: 512 << 10, BlockSize: 64 << 10})
	w := newBlobHost(t, fs)
	// Several PutMany calls: several packs.
	for k := 0; k < len(cs); k += 40 {
		if _, err := w.PutMany(context.Background(), cs[k:min(k+40, len(cs))]); err != nil {
			t.Fatal(err)
		}
	}
	return newBlobHost(t, fs), fs
}

// frameOf returns the pack and frame offset of chunk id in s's cache.
func frameOf(t *testing.T, s *BlobStore, id ID) (ID, entry) {
	t.Helper()
	e, h, ok, err := s.lookup(context.Background(), id)
	if err != nil || !ok {
		t.Fatalf("lookup %s: %v %v", id.Short(), ok, err)
	}
	return h, e
}

func checkGot(t *testing.T, want []Chunk, bufs [][]byte) {
	t.Helper()
	for i, c := range want {
		if !bytes.Equal(bufs[i], c.Data) {
			t.Fatalf("chunk %d (%s): %d bytes, not its data", i, c.ID.Short(), len(bufs[i]))
		}
	}
}

// testBlobGetMany is the GetMany suite for a bucket store over inner.
func testBlobGetMany(t *testing.T, inner blob.Store) {
	ctx := context.Background()
	cs := mkChunks(100, 120, 9000)
	s, fs := getManyStore(t, inner, cs)
	frames := map[blockKey]bool{}
	for _, c := range cs {
		_, e := frameOf(t, s, c.ID)
		frames[blockKey{e.Pack, e.FrameOff}] = true
	}
	if len(frames) < 10 {
		t.Fatalf("only %d frames: the test wants many", len(frames))
	}

	t.Run("all, few requests", func(t *testing.T) {
		s.cache.reset()
		before := fs.Calls(faulty.Get)
		bufs := make([][]byte, len(cs))
		ids := make([]ID, len(cs))
		for i, c := range cs {
			ids[i] = c.ID
			if i%2 == 0 {
				bufs[i] = make([]byte, len(c.Data)) // half into the caller's buffers
			}
		}
		if err := s.GetMany(ctx, ids, bufs); err != nil {
			t.Fatal(err)
		}
		checkGot(t, cs, bufs)
		// One Get per run of adjacent frames of a pack: here one per pack.
		if n := fs.Calls(faulty.Get) - before; n >= len(frames) || n > 4 {
			t.Fatalf("%d Gets for %d frames in 3 packs", n, len(frames))
		}
	})

	t.Run("shuffled, duplicates, one frame out of order", func(t *testing.T) {
		s.cache.reset()
		r := rand.New(rand.NewPCG(1, 2))
		var want []Chunk
		for _, k := range r.Perm(len(cs))[:50] {
			want = append(want, cs[k])
		}
		want = append(want, want[3], want[3], want[10]) // present twice (and thrice)
		// Chunks of one frame, last first.
		_, e0 := frameOf(t, s, cs[0].ID)
		for k := len(cs) - 1; k >= 0; k-- {
			if _, e := frameOf(t, s, cs[k].ID); e.Pack == e0.Pack && e.FrameOff == e0.FrameOff {
				want = append(want, cs[k])
			}
		}
		ids := make([]ID, len(want))
		for i, c := range want {
			ids[i] = c.ID
		}
		bufs := make([][]byte, len(want))
		if err := s.GetMany(ctx, ids, bufs); err != nil {
			t.Fatal(err)
		}
		checkGot(t, want, bufs)
	})

	t.Run("a frame shared with the next batch is fetched once", func(t *testing.T) {
		s.cache.reset()
		// cs[k] and cs[k+1] share a frame when both are in it.
		k := 1
		for ; k < len(cs)-1; k++ {
			_, a := frameOf(t, s, cs[k].ID)
			_, b := frameOf(t, s, cs[k+1].ID)
			if a.Pack == b.Pack && a.FrameOff == b.FrameOff {
				break
			}
		}
		before := fs.Calls(faulty.Get)
		if err := s.GetMany(ctx, []ID{cs[k].ID}, [][]byte{nil}); err != nil {
			t.Fatal(err)
		}
		mid := fs.Calls(faulty.Get)
		bufs := [][]byte{nil}
		if err := s.GetMany(ctx, []ID{cs[k+1].ID}, bufs); err != nil {
			t.Fatal(err)
		}
		if mid-before != 1 || fs.Calls(faulty.Get) != mid {
			t.Fatalf("Gets: %d for the first batch, %d for the second (want 1, 0)", mid-before, fs.Calls(faulty.Get)-mid)
		}
		checkGot(t, cs[k+1:k+2], bufs)
	})

	t.Run("missing", func(t *testing.T) {
		missing := mkChunk(999, 100)
		before := fs.Calls(faulty.Get)
		err := s.GetMany(ctx, []ID{cs[0].ID, missing.ID}, [][]byte{nil, nil})
		var nf *NotFoundError
		if !errors.Is(err, ErrNotFound) || !errors.As(err, &nf) || nf.ID != missing.ID {
			t.Fatalf("GetMany with a missing chunk = %v", err)
		}
		if n := fs.Calls(faulty.Get) - before; n != 0 {
			t.Fatalf("%d Gets before finding a chunk missing", n)
		}
	})

	t.Run("wrong buffer length", func(t *testing.T) {
		err := s.GetMany(ctx, []ID{cs[0].ID}, [][]byte{make([]byte, 3)})
		var le *LengthError
		if !errors.As(err, &le) || le.ID != cs[0].ID || le.Want != 3 {
			t.Fatalf("GetMany into a short buffer = %v", err)
		}
	})

	t.Run("concurrent batches", func(t *testing.T) {
		s.cache.reset()
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for g := range errs {
			wg.Go(func() {
				// Overlapping windows, as restore's workers read.
				lo := g * 10
				want := cs[lo : lo+30]
				ids := make([]ID, len(want))
				for i, c := range want {
					ids[i] = c.ID
				}
				bufs := make([][]byte, len(want))
				if errs[g] = s.GetMany(ctx, ids, bufs); errs[g] == nil {
					for i, c := range want {
						if !bytes.Equal(bufs[i], c.Data) {
							errs[g] = fmt.Errorf("batch %d chunk %d differs", g, i)
						}
					}
				}
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("transient errors", func(t *testing.T) {
		s.cache.reset()
		ids := make([]ID, len(cs))
		for i, c := range cs {
			ids[i] = c.ID
		}
		fs.Add(faulty.Fault{Op: faulty.Get, Prefix: blobPacksPrefix, Skip: 1, Times: 1})
		err := s.GetMany(ctx, ids, make([][]byte, len(ids)))
		fs.Clear()
		if !errors.Is(err, faulty.ErrInjected) || errors.Is(err, ErrCorruptChunk) {
			t.Fatalf("GetMany with a failing Get = %v, want the injected error, not damage", err)
		}
		// Nothing is left claimed: the next call (and Get) read everything.
		bufs := make([][]byte, len(ids))
		if err := s.GetMany(ctx, ids, bufs); err != nil {
			t.Fatal(err)
		}
		checkGot(t, cs, bufs)
		if _, err := s.Get(ctx, cs[5].ID); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("pack gone once: refresh and read again", func(t *testing.T) {
		s.cache.reset()
		fs.Add(faulty.Fault{Op: faulty.Get, Prefix: blobPacksPrefix, Times: 1, Err: blob.ErrNotExist})
		bufs := make([][]byte, 3)
		err := s.GetMany(ctx, []ID{cs[0].ID, cs[50].ID, cs[100].ID}, bufs)
		fs.Clear()
		if err != nil {
			t.Fatal(err)
		}
		checkGot(t, []Chunk{cs[0], cs[50], cs[100]}, bufs)
	})
}

func TestBlobGetManyMem(t *testing.T) { testBlobGetMany(t, mem.New()) }

// A bucket asks readers for more in flight; memory (like a directory)
// gives no advice.
func TestBlobReadParallelism(t *testing.T) {
	bs := mem.New()
	initBlob(t, bs, InitOptions{})
	if n := newBlobHost(t, bs).ReadParallelism(); n != 0 {
		t.Fatalf("mem: ReadParallelism %d, want 0", n)
	}
	cfg := s3test.Config(t)
	cfg.Prefix = "parallelism"
	s3s, err := s3.Open(context.Background(), cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	initBlob(t, s3s, InitOptions{})
	s, err := OpenBlob(context.Background(), s3s, BlobOpenOptions{CacheRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := s.ReadParallelism(); n != remoteReaders {
		t.Fatalf("s3: ReadParallelism %d, want %d", n, remoteReaders)
	}
}

func TestBlobGetManyS3(t *testing.T) {
	cfg := s3test.Config(t)
	cfg.Prefix = "getmany"
	bs, err := s3.Open(context.Background(), cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	testBlobGetMany(t, bs)
}

// A flipped byte is named: the first chunk asked for in the damaged frame,
// its pack object and the frame's offset; chunks of other frames are read.
func TestBlobGetManyRot(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{PackSize: 512 << 10, BlockSize: 64 << 10})
	s, err := OpenBlob(ctx, bs, BlobOpenOptions{CacheRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cs := mkChunks(300, 40, 9000)
	if _, err := s.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	h, e := frameOf(t, s, cs[20].ID)
	if !bs.Corrupt(packObject(h), e.FrameOff+int64(e.FrameLen)/2) {
		t.Fatal("corrupt failed")
	}
	first := -1 // the first chunk of the damaged frame, in request order
	ids := make([]ID, 0, len(cs))
	for i := len(cs) - 1; i >= 0; i-- {
		ids = append(ids, cs[i].ID)
		if _, f := frameOf(t, s, cs[i].ID); f.FrameOff == e.FrameOff && first < 0 {
			first = i
		}
	}
	s.cache.reset()
	err = s.GetMany(ctx, ids, make([][]byte, len(ids)))
	var ce *CorruptChunkError
	if !errors.As(err, &ce) || !errors.Is(err, ErrCorruptChunk) {
		t.Fatalf("GetMany over a flipped byte = %v", err)
	}
	if ce.ID != cs[first].ID || ce.Offset != e.FrameOff || !strings.HasSuffix(ce.Pack, packObject(h)) || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("error names chunk %s pack %s offset %d (%v); want %s, %s, %d", ce.ID.Short(), ce.Pack, ce.Offset, err, cs[first].ID.Short(), packObject(h), e.FrameOff)
	}
	// Get says the same of that chunk.
	_, gerr := s.Get(ctx, cs[first].ID)
	if gerr == nil || gerr.Error() != err.Error() {
		t.Fatalf("Get says %v, GetMany %v", gerr, err)
	}
	// A batch without the damaged frame is fine.
	var ok []ID
	for _, c := range cs {
		if _, f := frameOf(t, s, c.ID); f.FrameOff != e.FrameOff {
			ok = append(ok, c.ID)
		}
	}
	if err := s.GetMany(ctx, ok, make([][]byte, len(ok))); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkGetManyRestore reads benchCorpus("files") the way restore does
// (4 workers, jobs of 4 MiB of consecutive chunks into one buffer each)
// from a FileStore and from a BlobStore over blob/dir, the directory
// store's next form: ranged reads must be cheap there too.
func BenchmarkGetManyRestore(b *testing.B) {
	ctx := context.Background()
	cs := benchCorpus(b, "files")
	ids := make([]ID, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	put := func(s Store) {
		for k := 0; k < len(cs); k += 64 { // 4 MiB batches, as ingest
			if _, err := s.PutMany(ctx, cs[k:min(k+64, len(cs))]); err != nil {
				b.Fatal(err)
			}
		}
	}
	fsStore := NewTestStore(b)
	put(fsStore)
	root := b.TempDir()
	bd, err := dir.Open(filepath.Join(root, "bucket"), true)
	if err != nil {
		b.Fatal(err)
	}
	if err := InitBlob(ctx, bd, InitOptions{}); err != nil {
		b.Fatal(err)
	}
	bstore, err := OpenBlob(ctx, bd, BlobOpenOptions{CacheRoot: filepath.Join(root, "cache")})
	if err != nil {
		b.Fatal(err)
	}
	defer bstore.Close()
	put(bstore)
	for _, st := range []struct {
		name  string
		s     Reader
		reset func()
	}{{"filestore", fsStore, fsStore.cache.reset}, {"blob-dir", bstore, bstore.cache.reset}} {
		b.Run(st.name, func(b *testing.B) {
			b.SetBytes(int64(len(cs)) * 65536)
			cpu0 := cpuTime()
			for b.Loop() {
				st.reset()
				jobs := make(chan int)
				var g errgroup.Group
				for range 4 {
					g.Go(func() error {
						buf := make([]byte, 64*65536)
						bufs := make([][]byte, 64)
						for k := range jobs {
							n := min(64, len(ids)-k)
							for j := range n {
								bufs[j] = buf[j*65536 : (j+1)*65536 : (j+1)*65536]
							}
							if err := GetMany(ctx, st.s, ids[k:k+n], bufs[:n]); err != nil {
								return err
							}
						}
						return nil
					})
				}
				for k := 0; k < len(ids); k += 64 {
					jobs <- k
				}
				close(jobs)
				if err := g.Wait(); err != nil {
					b.Fatal(err)
				}
			}
			// CPU, not wall: the machine is shared.
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the process's user+sys time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// A fresh cache reads the segments several at once: a failing read fails
// the open (nothing half-merged), the next open sees every chunk.
func TestBlobReadSegments(t *testing.T) {
	ctx := context.Background()
	cs := mkChunks(500, 90, 9000)
	_, fs := getManyStore(t, mem.New(), cs)
	fs.Add(faulty.Fault{Op: faulty.Get, Prefix: blobIndexPrefix, Skip: 1, Times: 1})
	if _, err := OpenBlob(ctx, nopClose{fs}, BlobOpenOptions{CacheRoot: t.TempDir()}); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("open with a failing segment read = %v", err)
	}
	fs.Clear()
	s := newBlobHost(t, fs)
	ids := make([]ID, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	bufs := make([][]byte, len(ids))
	if err := s.GetMany(ctx, ids, bufs); err != nil {
		t.Fatal(err)
	}
	checkGot(t, cs, bufs)
}

// shortGets is a blob store that breaks its contract: pack reads come back
// one byte short.
type shortGets struct{ blob.Store }

func (s shortGets) Get(ctx context.Context, name string, off, length int64) ([]byte, error) {
	b, err := s.Store.Get(ctx, name, off, length)
	if err == nil && strings.HasPrefix(name, blobPacksPrefix) && len(b) > 0 {
		b = b[:len(b)-1]
	}
	return b, err
}

// A short read is damage named like any other, not a panic.
func TestBlobGetManyShortRead(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{PackSize: 512 << 10, BlockSize: 64 << 10})
	cs := mkChunks(700, 20, 9000)
	w := newBlobHost(t, bs)
	if _, err := w.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	s, err := OpenBlob(ctx, shortGets{bs}, BlobOpenOptions{CacheRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.GetMany(ctx, []ID{cs[0].ID, cs[19].ID}, make([][]byte, 2))
	var ce *CorruptChunkError
	if !errors.As(err, &ce) || !errors.Is(err, blob.ErrRange) || ce.ID != cs[0].ID {
		t.Fatalf("GetMany over short reads = %v", err)
	}
}

// Chunks asked for back to back in one buffer, as restore does: every
// frame decodes straight into it, the decoder using the start of the next
// frame's memory as scratch (decodeSlack), never the memory past the last
// chunk. A damaged frame among them is a one-line *CorruptChunkError.
func TestBlobGetManyBackToBack(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{PackSize: 1 << 20, BlockSize: 64 << 10})
	s, err := OpenBlob(ctx, bs, BlobOpenOptions{CacheRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cs := mkChunks(500, 60, 9000)
	if _, err := s.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	read := func() ([][]byte, []byte, error) {
		n := 0
		for _, c := range cs {
			n += len(c.Data)
		}
		arr := bytes.Repeat([]byte{0xaa}, n+4096)
		ids, bufs := make([]ID, len(cs)), make([][]byte, len(cs))
		off := 0
		for i, c := range cs {
			ids[i], bufs[i] = c.ID, arr[off:off+len(c.Data)]
			off += len(c.Data)
		}
		s.cache.reset()
		return bufs, arr[n:], s.GetMany(ctx, ids, bufs)
	}
	bufs, tail, err := read()
	if err != nil {
		t.Fatal(err)
	}
	checkGot(t, cs, bufs)
	if !bytes.Equal(tail, bytes.Repeat([]byte{0xaa}, len(tail))) {
		t.Fatal("GetMany wrote past the last buffer")
	}
	// Several frames, compressed, so the slack path was taken.
	_, first := frameOf(t, s, cs[0].ID)
	h, mid := frameOf(t, s, cs[30].ID)
	if first.FrameOff == mid.FrameOff {
		t.Fatal("test wants several frames")
	}
	if !bs.Corrupt(packObject(h), mid.FrameOff+int64(mid.FrameLen)/2) {
		t.Fatal("corrupt failed")
	}
	_, _, err = read()
	var ce *CorruptChunkError
	if !errors.As(err, &ce) || ce.Offset != mid.FrameOff || strings.Contains(err.Error(), "\n") {
		t.Fatalf("GetMany over a damaged frame = %v", err)
	}
}

// BlockStarts says which chunks are the first of their frame; a chunk not
// stored is a *NotFoundError.
func TestBlobBlockStarts(t *testing.T) {
	ctx := context.Background()
	bs := mem.New()
	initBlob(t, bs, InitOptions{PackSize: 1 << 20, BlockSize: 64 << 10})
	s, err := OpenBlob(ctx, bs, BlobOpenOptions{CacheRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cs := mkChunks(700, 40, 9000)
	if _, err := s.PutMany(ctx, cs); err != nil {
		t.Fatal(err)
	}
	ids := make([]ID, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	starts := make([]bool, len(ids))
	if ok, err := BlockStarts(ctx, s, ids, starts); !ok || err != nil {
		t.Fatalf("BlockStarts: %v %v", ok, err)
	}
	n := 0
	for i, id := range ids {
		if _, e := frameOf(t, s, id); starts[i] != (e.BlockOff == 0) {
			t.Fatalf("chunk %d: start %v, block offset %d", i, starts[i], e.BlockOff)
		}
		if starts[i] {
			n++
		}
	}
	if n < 3 || !starts[0] {
		t.Fatalf("%d block starts among %d chunks", n, len(ids))
	}
	missing := mkChunk(9999, 100).ID
	var nf *NotFoundError
	if err := s.BlockStarts(ctx, []ID{ids[0], missing}, make([]bool, 2)); !errors.As(err, &nf) || nf.ID != missing {
		t.Fatalf("BlockStarts of a missing chunk: %v", err)
	}
}

// A directory store's ranges are read into reused buffers: a raw
// (incompressible) block that goes to the block cache must be a copy, so
// that reads of other packs into the same buffer do not change it.
func TestBlobGetManyRawBlockOwnsItsMemory(t *testing.T) {
	ctx := context.Background()
	s := NewTestStore(t, InitOptions{PackSize: 512 << 10, BlockSize: 128 << 10})
	if _, ok := s.bs.(blob.IntoGetter); !ok {
		t.Skip("the directory store reads into the caller's buffers no more")
	}
	rng := rand.New(rand.NewPCG(7, 13))
	cs := make([]Chunk, 64) // 16 KiB each: 8 to a block, 32 to a pack
	for i := range cs {
		d := make([]byte, 16<<10)
		for j := range d {
			d[j] = byte(rng.Uint32())
		}
		cs[i] = Chunk{ID: Sum(d), Data: d}
	}
	for k := 0; k < len(cs); k += 32 {
		if _, err := s.PutMany(ctx, cs[k:k+32]); err != nil {
			t.Fatal(err)
		}
	}
	// Half of the first block: not a whole run, so through the cache.
	bufs := make([][]byte, 4)
	if err := s.GetMany(ctx, []ID{cs[0].ID, cs[1].ID, cs[2].ID, cs[3].ID}, bufs); err != nil {
		t.Fatal(err)
	}
	checkGot(t, cs[:4], bufs)
	// Other packs' ranges, read into the buffers the first range used
	// (a sync.Pool's: many rounds, so that every pooled buffer is used).
	for r := 0; r < 64; r++ {
		r := r % 8
		ids := []ID{cs[32+r].ID, cs[40+r].ID, cs[48+r].ID}
		bufs := make([][]byte, len(ids))
		if err := s.GetMany(ctx, ids, bufs); err != nil {
			t.Fatal(err)
		}
		checkGot(t, []Chunk{cs[32+r], cs[40+r], cs[48+r]}, bufs)
	}
	// The rest of the first block, from the cache.
	bufs = make([][]byte, 4)
	if err := s.GetMany(ctx, []ID{cs[4].ID, cs[5].ID, cs[6].ID, cs[7].ID}, bufs); err != nil {
		t.Fatal(err)
	}
	checkGot(t, cs[4:8], bufs)
}
