package view

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/restore"
)

// testImage is guest content with the chunk refs that store it.
type testImage struct {
	guest []byte
	refs  []engram.ChunkRef
	id    engram.ID
}

// makeImage builds a guest of size bytes with random data runs and holes,
// chunks that cross page boundaries, and a last chunk that ends at an
// unaligned size, and commits it to st as an engram.
func makeImage(t testing.TB, st chunkstore.Store, size int64, seed uint64) *testImage {
	t.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 1))
	img := &testImage{guest: make([]byte, size)}
	var chunks []chunkstore.Chunk
	add := func(off, n int64) {
		if off+n > size {
			n = size - off
		}
		if n <= 0 {
			return
		}
		data := img.guest[off : off+n]
		for i := 0; i+8 <= len(data); i += 8 {
			binary.LittleEndian.PutUint64(data[i:], rng.Uint64()&0x0707070707070707) // compressible
		}
		data[0] = 1 // not zero
		id := chunkstore.Sum(data)
		chunks = append(chunks, chunkstore.Chunk{ID: id, Data: bytes.Clone(data)})
		img.refs = append(img.refs, engram.ChunkRef{Offset: off, Length: uint32(n), ID: id})
	}
	pos := int64(0)
	for pos < size {
		// Force chunks across each page boundary.
		if next := (pos/engram.PageSpan + 1) * engram.PageSpan; next-pos <= 64<<10 && next < size {
			add(pos, next-pos+64<<10)
			pos = next + 64<<10
			continue
		}
		n := int64(4096 * (1 + rng.IntN(64)))
		if rng.IntN(4) == 0 {
			pos += n // hole
			continue
		}
		add(pos, n)
		pos += n
	}
	// A chunk that ends exactly at the (unaligned) end.
	if last := img.refs[len(img.refs)-1]; last.End() < size-8192 {
		add(size-5000, 5000)
	}
	if _, err := st.PutMany(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	var pages []chunkstore.Chunk
	b := engram.NewBuilder(size, func(c chunkstore.Chunk) error { pages = append(pages, c); return nil })
	for _, r := range img.refs {
		if err := b.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	_, enc, id, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutMany(ctx, pages); err != nil {
		t.Fatal(err)
	}
	rec := &engram.Record{Source: "test", Stats: engram.IngestStats{StoredBytes: b.DataBytes()}}
	if err := engram.Commit(ctx, st, id, enc, rec); err != nil {
		t.Fatal(err)
	}
	img.id = id
	return img
}

func (img *testImage) dataBytes() int64 {
	var n int64
	for _, r := range img.refs {
		n += int64(r.Length)
	}
	return n
}

// isData reports whether guest offset off lies in a chunk.
func (img *testImage) isData(off int64) bool {
	for _, r := range img.refs {
		if off >= r.Offset && off < r.End() {
			return true
		}
	}
	return false
}

func memStore() *chunkstore.MemStore {
	return chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
}

// countingStore counts the Gets of each chunk.
type countingStore struct {
	chunkstore.Store
	mu   sync.Mutex
	gets map[chunkstore.ID]int
	n    atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, id chunkstore.ID) ([]byte, error) {
	c.mu.Lock()
	if c.gets == nil {
		c.gets = map[chunkstore.ID]int{}
	}
	c.gets[id]++
	c.mu.Unlock()
	c.n.Add(1)
	return c.Store.Get(ctx, id)
}

const testSize = 3*engram.PageSpan + 5*4096 + 512

func openTest(t *testing.T, st chunkstore.Store, img *testImage, opts Options) *Disk {
	t.Helper()
	set := newSet(t, st, opts)
	t.Cleanup(func() { set.Close() })
	d, err := set.Open(context.Background(), img.id)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestReadAtMatchesRestore(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   chunkstore.Store
	}{
		{"mem", memStore()},
		{"file-256k-blocks", chunkstore.NewTestStore(t, chunkstore.InitOptions{BlockSize: 256 << 10})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := makeImage(t, tc.st, testSize, 1)
			var want bytes.Buffer
			if err := restore.ToWriter(context.Background(), tc.st, img.id, &want, restore.Options{}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(want.Bytes(), img.guest) {
				t.Fatal("restore output differs from the guest")
			}
			d := openTest(t, tc.st, img, Options{})
			if d.Size() != testSize || d.DataBytes() != img.dataBytes() {
				t.Fatalf("size %d data %d, want %d %d", d.Size(), d.DataBytes(), int64(testSize), img.dataBytes())
			}
			r := d.NewReader()
			defer r.Close()
			// Whole disk in 1 MiB sequential reads, as a copy would.
			got := make([]byte, 0, testSize)
			buf := make([]byte, 1<<20)
			for off := int64(0); ; {
				n, err := r.ReadAt(buf, off)
				got = append(got, buf[:n]...)
				off += int64(n)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatal("sequential ReadAt differs from restore")
			}
			// Random ranges, including ones that cross pages and the end.
			rng := rand.New(rand.NewPCG(2, 2))
			for range 300 {
				off := rng.Int64N(testSize + 4096)
				p := make([]byte, 1+rng.IntN(3<<20))
				n, err := r.ReadAt(p, off)
				wantN := int(max(0, min(int64(len(p)), testSize-off)))
				if n != wantN || (n < len(p)) != (err == io.EOF) || (err != nil && err != io.EOF) {
					t.Fatalf("ReadAt(%d, %#x) = %d, %v; want %d", len(p), off, n, err, wantN)
				}
				if !bytes.Equal(p[:n], img.guest[min(off, testSize):min(off, testSize)+int64(n)]) {
					t.Fatalf("ReadAt(%d, %#x): content differs", len(p), off)
				}
				vec, err := r.ReadSlices(off, len(p))
				if got := bytes.Join(vec, nil); !bytes.Equal(got, p[:n]) || (n < len(p)) != (err == io.EOF) || (err != nil && err != io.EOF) {
					t.Fatalf("ReadSlices(%#x, %d): %d bytes, %v; ReadAt gave %d", off, len(p), len(got), err, n)
				}
			}
			if _, err := r.ReadAt(make([]byte, 1), -1); err == nil {
				t.Fatal("negative offset read without error")
			}
		})
	}
}

func TestExtentsMatchManifest(t *testing.T) {
	st := memStore()
	img := makeImage(t, st, testSize, 3)
	d := openTest(t, st, img, Options{})
	r := d.NewReader()
	// Merged data runs of the manifest.
	type run struct {
		off, n int64
		data   bool
	}
	check := func(off, length int64) {
		t.Helper()
		end := min(off+length, testSize)
		var want []run
		pos := off
		for _, ref := range img.refs {
			lo, hi := max(ref.Offset, off), min(ref.End(), end)
			if lo >= hi {
				continue
			}
			if lo > pos {
				want = append(want, run{pos, lo - pos, false})
			}
			if k := len(want) - 1; k >= 0 && want[k].data && want[k].off+want[k].n == lo {
				want[k].n += hi - lo
			} else {
				want = append(want, run{lo, hi - lo, true})
			}
			pos = hi
		}
		if pos < end {
			want = append(want, run{pos, end - pos, false})
		}
		var got []run
		err := r.Extents(off, length, func(o, n int64, data bool) error {
			got = append(got, run{o, n, data})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("Extents(%#x, %#x): %d runs, want %d", off, length, len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("Extents(%#x, %#x) run %d = %+v, want %+v", off, length, i, got[i], want[i])
			}
		}
	}
	check(0, testSize)
	check(0, 1<<62)
	rng := rand.New(rand.NewPCG(4, 4))
	for range 200 {
		check(rng.Int64N(testSize), rng.Int64N(40<<20))
	}
	// fn's error ends the walk and comes back.
	stop := errors.New("enough")
	if err := r.Extents(0, testSize, func(int64, int64, bool) error { return stop }); err != stop {
		t.Fatalf("Extents returned %v, want the callback's error", err)
	}
}

func TestSeekDataHole(t *testing.T) {
	st := memStore()
	img := makeImage(t, st, testSize, 5)
	d := openTest(t, st, img, Options{})
	r := d.NewReader()
	// Brute force on 4 KiB granularity plus every chunk edge.
	offs := []int64{0, testSize - 1}
	for _, ref := range img.refs {
		offs = append(offs, ref.Offset, ref.End()-1, ref.End(), ref.Offset-1)
	}
	rng := rand.New(rand.NewPCG(6, 6))
	for range 300 {
		offs = append(offs, rng.Int64N(testSize))
	}
	lastData := img.refs[len(img.refs)-1].End()
	for _, off := range offs {
		if off < 0 || off >= testSize {
			continue
		}
		// Expected: scan by chunk edges.
		wantData, wantHole := int64(-1), int64(testSize)
		for _, ref := range img.refs {
			if ref.End() > off {
				wantData = max(ref.Offset, off)
				break
			}
		}
		pos := off
		for _, ref := range img.refs {
			if ref.End() <= pos {
				continue
			}
			if ref.Offset > pos {
				break
			}
			pos = ref.End()
		}
		wantHole = min(pos, testSize)
		got, err := r.SeekData(off)
		if wantData < 0 {
			if !errors.Is(err, syscall.ENXIO) {
				t.Fatalf("SeekData(%#x) = %#x, %v; want ENXIO", off, got, err)
			}
		} else if err != nil || got != wantData {
			t.Fatalf("SeekData(%#x) = %#x, %v; want %#x", off, got, err, wantData)
		}
		if got, err := r.SeekHole(off); err != nil || got != wantHole {
			t.Fatalf("SeekHole(%#x) = %#x, %v; want %#x", off, got, err, wantHole)
		}
		if img.isData(off) != (wantHole > off) {
			t.Fatalf("%#x: data %v but hole at %#x", off, img.isData(off), wantHole)
		}
	}
	if lastData < testSize {
		if _, err := r.SeekData(lastData); !errors.Is(err, syscall.ENXIO) {
			t.Fatalf("SeekData past the last data: %v, want ENXIO", err)
		}
	}
	for _, f := range []func(int64) (int64, error){r.SeekData, r.SeekHole} {
		if _, err := f(testSize); !errors.Is(err, syscall.ENXIO) {
			t.Fatalf("seek at the end: %v, want ENXIO", err)
		}
		if _, err := f(-1); !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("seek to -1: %v, want EINVAL", err)
		}
	}
}

// TestConcurrentReaders reads one disk from many readers at once, some
// sequential, some random, all through one Set, and checks every byte; a
// chunk is loaded from the store once while it stays cached.
func TestConcurrentReaders(t *testing.T) {
	cs := &countingStore{Store: memStore()}
	img := makeImage(t, cs, testSize, 7)
	set := newSet(t, cs, Options{CacheSize: 1 << 30})
	d, err := set.Open(context.Background(), img.id)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := d.NewReader()
			defer r.Close()
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			buf := make([]byte, 256<<10)
			for i := range 200 {
				off := rng.Int64N(testSize)
				if g%2 == 0 {
					off = int64(i) * int64(len(buf)) % testSize
				}
				n, err := r.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], img.guest[off:off+int64(n)]) {
					errs <- errors.New("content differs")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for id, n := range cs.gets {
		if n != 1 {
			t.Fatalf("chunk %s loaded %d times with a cache big enough for all", id.Short(), n)
		}
	}
}

// TestCacheBound reads more than the budget and checks the caches stay
// inside it.
func TestCacheBound(t *testing.T) {
	cs := &countingStore{Store: memStore()}
	img := makeImage(t, cs, 5*engram.PageSpan, 8)
	set := newSet(t, cs, Options{CacheSize: MinCacheSize})
	d, err := set.Open(context.Background(), img.id)
	if err != nil {
		t.Fatal(err)
	}
	r := d.NewReader()
	buf := make([]byte, 128<<10)
	for off := int64(0); off < d.Size(); off += int64(len(buf)) {
		if _, err := r.ReadAt(buf, off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		st := set.Stats()
		if st.ChunkBytes+st.PageBytes+BlockCacheBytes(MinCacheSize) > MinCacheSize {
			t.Fatalf("caches hold %d + %d bytes, budget %d", st.ChunkBytes, st.PageBytes, MinCacheSize)
		}
	}
	r.Close()
	set.queued.Wait()
	if st := set.Stats(); st.ChunkBytes == 0 || st.ChunkMisses == 0 {
		t.Fatalf("cache unused: %+v", st)
	}
}

// TestReadAhead: sequential reads load chunks past what was read; random
// reads do not.
func TestReadAhead(t *testing.T) {
	cs := &countingStore{Store: memStore()}
	img := makeImage(t, cs, testSize, 10)
	set := newSet(t, cs, Options{})
	d, err := set.Open(context.Background(), img.id)
	if err != nil {
		t.Fatal(err)
	}
	r := d.NewReader()
	buf := make([]byte, 128<<10)
	const upto = 4 << 20
	for off := int64(0); off < upto; off += int64(len(buf)) {
		if _, err := r.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	r.Close()
	set.queued.Wait() // the read-ahead that was queued has loaded
	ahead := 0
	for _, ref := range img.refs {
		if ref.Offset >= upto && set.chunks.has(ref.ID) {
			ahead++
		}
	}
	if ahead == 0 {
		t.Fatal("sequential reads did not read ahead")
	}

	set2 := newSet(t, cs, Options{})
	d2, _ := set2.Open(context.Background(), img.id)
	r2 := d2.NewReader()
	rng := rand.New(rand.NewPCG(11, 11))
	read := map[chunkstore.ID]bool{}
	for range 20 {
		off := rng.Int64N(testSize - 4096)
		if _, err := r2.ReadAt(buf[:4096], off); err != nil {
			t.Fatal(err)
		}
		for _, ref := range img.refs {
			if ref.Offset < off+4096 && ref.End() > off {
				read[ref.ID] = true
			}
		}
	}
	r2.Close()
	set2.queued.Wait()
	for _, ref := range img.refs {
		if set2.chunks.has(ref.ID) && !read[ref.ID] {
			t.Fatalf("random reads loaded chunk at %#x they did not touch", ref.Offset)
		}
	}
}

// TestLoadOnce: many requests for the same chunks at once load each once.
func TestLoadOnce(t *testing.T) {
	cs := &countingStore{Store: memStore()}
	img := makeImage(t, cs, engram.PageSpan, 12)
	d := openTest(t, cs, img, Options{})
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := d.NewReader()
			defer r.Close()
			p := make([]byte, 2<<20)
			if _, err := r.ReadAt(p, 1<<20); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for id, n := range cs.gets {
		if n != 1 {
			t.Fatalf("chunk %s loaded %d times", id.Short(), n)
		}
	}
}

// TestMissingChunk: a chunk the store lost is an error naming the engram
// and the guest offset, not zeros.
func TestMissingChunk(t *testing.T) {
	st := memStore()
	img := makeImage(t, st, engram.PageSpan, 13)
	victim := img.refs[3]
	if _, err := st.GC(context.Background(), func(id chunkstore.ID) bool { return id != victim.ID }, chunkstore.GCOptions{}); err != nil {
		t.Fatal(err)
	}
	r := openTest(t, st, img, Options{}).NewReader()
	_, err := r.ReadAt(make([]byte, 4096), victim.Offset)
	if !errors.Is(err, chunkstore.ErrNotFound) || !bytes.Contains([]byte(err.Error()), []byte(img.id.Short())) {
		t.Fatalf("read of a lost chunk: %v", err)
	}
}

// newSet is NewSet with Close in the test's cleanup.
func newSet(t testing.TB, st chunkstore.Reader, opts Options) *Set {
	s := NewSet(st, opts)
	t.Cleanup(func() { s.Close() })
	return s
}

// TestChunkLengthMismatch: a manifest that gives a chunk a length other
// than its content's is an error on every read of it, never a panic,
// whether the chunk is cached yet or not.
func TestChunkLengthMismatch(t *testing.T) {
	ctx := context.Background()
	st := memStore()
	data := bytes.Repeat([]byte{9}, 8192)
	id := chunkstore.Sum(data)
	if _, err := st.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	var pages []chunkstore.Chunk
	b := engram.NewBuilder(1<<20, func(c chunkstore.Chunk) error { pages = append(pages, c); return nil })
	for _, r := range []engram.ChunkRef{{Offset: 0, Length: 8192, ID: id}, {Offset: 64 << 10, Length: 16384, ID: id}} {
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
	d, err := newSet(t, st, Options{}).Open(ctx, eid)
	if err != nil {
		t.Fatal(err)
	}
	r := d.NewReader()
	if _, err := r.ReadAt(make([]byte, 8192), 0); err != nil {
		t.Fatal(err) // the consistent ref; now the chunk is cached
	}
	for range 2 {
		if _, err := r.ReadAt(make([]byte, 128<<10), 0); !errors.Is(err, engram.ErrBadManifest) {
			t.Fatalf("read over a ref of the wrong length: %v", err)
		}
	}
}
