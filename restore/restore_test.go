package restore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/internal/qemutest"
	"github.com/engram-vm/engram/qcow2"
)

// storeImage puts a small manifest with two chunks into a memory store and
// commits it; it returns the engram ID and the guest bytes.
func storeImage(t *testing.T, st *chunkstore.MemStore) (engram.ID, []byte) {
	t.Helper()
	ctx := context.Background()
	guest := make([]byte, 3*engram.PageSpan/2)
	a := bytes.Repeat([]byte("engram"), 10000)[:8192]
	b := bytes.Repeat([]byte{7, 1}, 8192)
	copy(guest[4096:], a)
	copy(guest[engram.PageSpan+65536:], b)
	var pages []chunkstore.Chunk
	bl := engram.NewBuilder(int64(len(guest)), func(c chunkstore.Chunk) error { pages = append(pages, c); return nil })
	for _, c := range []struct {
		off  int64
		data []byte
	}{{4096, a}, {engram.PageSpan + 65536, b}} {
		id := chunkstore.Sum(c.data)
		if _, err := st.Put(ctx, id, c.data); err != nil {
			t.Fatal(err)
		}
		if err := bl.Add(engram.ChunkRef{Offset: c.off, Length: uint32(len(c.data)), ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	_, enc, id, err := bl.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutMany(ctx, pages); err != nil {
		t.Fatal(err)
	}
	if err := engram.Commit(ctx, st, id, enc, &engram.Record{Source: "test"}); err != nil {
		t.Fatal(err)
	}
	return id, guest
}

func TestRawRoundTrip(t *testing.T) {
	ctx := context.Background()
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	id, guest := storeImage(t, st)

	var buf bytes.Buffer
	if err := ToWriter(ctx, st, id, &buf, Options{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), guest) {
		t.Fatal("streamed raw differs")
	}

	dir := t.TempDir()
	out := filepath.Join(dir, "out.raw")
	if err := ToFile(ctx, st, id, out, Options{Format: "raw"}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, guest) {
		t.Fatalf("raw file differs (%v)", err)
	}
	if err := ToFile(ctx, st, id, out, Options{Format: "raw"}); !errors.Is(err, ErrExists) {
		t.Fatalf("existing output: %v", err)
	}
	if err := ToFile(ctx, st, id, out, Options{Format: "raw", Force: true}); err != nil {
		t.Fatal(err)
	}

	part := make([]byte, 100000)
	if err := ReadRange(ctx, st, engramRoot(t, st, id), part, engram.PageSpan); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(part, guest[engram.PageSpan:engram.PageSpan+100000]) {
		t.Fatal("ReadRange differs")
	}
}

func engramRoot(t *testing.T, st chunkstore.Reader, id engram.ID) engram.Root {
	root, err := engram.LoadRoot(context.Background(), st, id)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// A restore that fails half way leaves nothing in the output directory.
func TestFailedRestoreLeavesNothing(t *testing.T) {
	ctx := context.Background()
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	id, _ := storeImage(t, st)
	// Damage the second data chunk.
	var second chunkstore.ID
	err := engram.ForEachChunk(ctx, st, engramRoot(t, st, id), func(c engram.ChunkRef) error { second = c.ID; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if !st.Corrupt(second) {
		t.Fatal("could not damage the chunk")
	}
	for _, format := range []string{"raw", "qcow2"} {
		dir := t.TempDir()
		err := ToFile(ctx, st, id, filepath.Join(dir, "out."+format), Options{Format: format})
		if !errors.Is(err, chunkstore.ErrCorruptChunk) {
			t.Fatalf("%s: restore of a damaged engram: %v", format, err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: failed restore left %v", format, ents)
		}
	}
}

// startsReader is a store that says which chunks start a block (every
// third, here) and records the GetMany batches.
type startsReader struct {
	*chunkstore.MemStore
	starts  map[chunkstore.ID]bool
	mu      sync.Mutex
	batches [][]chunkstore.ID
}

func (s *startsReader) BlockStarts(_ context.Context, ids []chunkstore.ID, starts []bool) error {
	for i, id := range ids {
		starts[i] = s.starts[id]
	}
	return nil
}

func (s *startsReader) GetMany(ctx context.Context, ids []chunkstore.ID, bufs [][]byte) error {
	s.mu.Lock()
	s.batches = append(s.batches, slices.Clone(ids))
	s.mu.Unlock()
	return chunkstore.GetMany(ctx, s.MemStore, ids, bufs)
}

// Restore jobs begin at a chunk that starts a block when the store can
// tell (BlockStarter), and the image is restored whole either way.
func TestJobsCutAtBlockStarts(t *testing.T) {
	ctx := context.Background()
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	const chunk = 96 << 10
	guest := make([]byte, 2*engram.PageSpan)
	var pages []chunkstore.Chunk
	bl := engram.NewBuilder(int64(len(guest)), func(c chunkstore.Chunk) error { pages = append(pages, c); return nil })
	sr := &startsReader{MemStore: st, starts: map[chunkstore.ID]bool{}}
	for k := range 200 {
		off := int64(k) * chunk
		if k%17 == 5 {
			continue // a hole: jobs hold runs that are not contiguous
		}
		data := bytes.Repeat([]byte{byte(k), byte(k >> 8), 1}, chunk/3+1)[:chunk]
		copy(guest[off:], data)
		id := chunkstore.Sum(data)
		if _, err := st.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
		sr.starts[id] = k%3 == 0
		if err := bl.Add(engram.ChunkRef{Offset: off, Length: chunk, ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	_, enc, id, err := bl.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutMany(ctx, pages); err != nil {
		t.Fatal(err)
	}
	if err := engram.Commit(ctx, st, id, enc, &engram.Record{Source: "test"}); err != nil {
		t.Fatal(err)
	}
	procs := runtime.GOMAXPROCS(0)
	for _, format := range []string{"raw", "qcow2"} {
		sr.batches = nil
		out := filepath.Join(t.TempDir(), "out."+format)
		if err := ToFile(ctx, sr, id, out, Options{Format: format}); err != nil {
			t.Fatal(err)
		}
		if n := runtime.GOMAXPROCS(0); n != procs {
			t.Fatalf("GOMAXPROCS %d after the restore, was %d", n, procs)
		}
		if format == "qcow2" {
			qemutest.Check(t, out)
			raw := filepath.Join(t.TempDir(), "out.raw")
			if err := os.WriteFile(raw, guest, 0o644); err != nil {
				t.Fatal(err)
			}
			qemutest.Compare(t, raw, out)
		} else if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, guest) {
			t.Fatalf("raw output differs (%v)", err)
		}
		jobs := 0
		for _, b := range sr.batches {
			if start, data := sr.starts[b[0]]; data { // not a manifest page
				jobs++
				if !start {
					t.Errorf("%s: a job of %d chunks begins inside a block", format, len(b))
				}
				// A job is fetched in pieces, each cut at the first block
				// start past pieceBytes (blocks are 3 chunks here).
				if len(b)*chunk >= pieceBytes+3*chunk {
					t.Errorf("%s: a piece of %d chunks", format, len(b))
				}
			}
		}
		if jobs < 8 {
			t.Fatalf("%s: %d pieces, want several", format, jobs)
		}
	}
}

// addProcs calls nest: the first raises GOMAXPROCS, the last puts it back,
// and each is told the value from before the first.
func TestAddProcsNests(t *testing.T) {
	n := runtime.GOMAXPROCS(0)
	b1, undo1 := addProcs(3)
	b2, undo2 := addProcs(3)
	if b1 != n || b2 != n || runtime.GOMAXPROCS(0) != n+3 {
		t.Fatalf("bases %d, %d and GOMAXPROCS %d, want %d, %d and %d", b1, b2, runtime.GOMAXPROCS(0), n, n, n+3)
	}
	undo1()
	if got := runtime.GOMAXPROCS(0); got != n+3 {
		t.Fatalf("GOMAXPROCS %d with one restore left, want %d", got, n+3)
	}
	undo2()
	if got := runtime.GOMAXPROCS(0); got != n {
		t.Fatalf("GOMAXPROCS %d after both, want %d", got, n)
	}
}

// The arena's buffers are empty, of the size asked, aligned for O_DIRECT,
// apart from each other and writable.
func TestArenaBuffers(t *testing.T) {
	const n, size = 3, jobBytes
	a := newArena(n, size)
	if a == nil {
		t.Skip("no anonymous mapping here")
	}
	defer a.release()
	if len(a.bufs) != n {
		t.Fatalf("%d buffers, want %d", len(a.bufs), n)
	}
	for i, p := range a.bufs {
		b := *p
		if len(b) != 0 || cap(b) != size || uintptrOf(b)%qcow2.DirectAlign != 0 {
			t.Fatalf("buffer %d: len %d cap %d at %#x", i, len(b), cap(b), uintptrOf(b))
		}
		b = b[:size]
		b[0], b[size-1] = byte(i+1), byte(i+1)
	}
	for i, p := range a.bufs {
		b := (*p)[:size]
		if b[0] != byte(i+1) || b[size-1] != byte(i+1) {
			t.Fatalf("buffer %d overlaps another", i)
		}
	}
}

// TestToFileRefusesNotRegular: a library caller's output path that is a
// FIFO, a device node or a directory is refused, Force or not, and left as
// it was (publishing renames over the path, which would replace it).
func TestToFileRefusesNotRegular(t *testing.T) {
	ctx := context.Background()
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	id, _ := storeImage(t, st)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	paths := map[string]os.FileMode{fifo: os.ModeNamedPipe, dir: os.ModeDir}
	// A character device made here (never a real one such as /dev/null);
	// mknod needs root.
	if dev := filepath.Join(dir, "null"); unix.Mknod(dev, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))) == nil {
		paths[dev] = os.ModeDevice | os.ModeCharDevice
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	for p, want := range paths {
		for _, format := range []string{"raw", "qcow2"} {
			err := ToFile(ctx, st, id, p, Options{Format: format, Force: true})
			var ne *NotRegularError
			if !errors.Is(err, ErrNotRegular) || !errors.As(err, &ne) || ne.Path != p {
				t.Errorf("%s (%s): %v, want ErrNotRegular", p, format, err)
			}
			if fi, err := os.Lstat(p); err != nil || fi.Mode().Type() != want.Type() {
				t.Errorf("%s (%s): now %v (%v), want %v", p, format, fi.Mode(), err, want)
			}
		}
	}
	if err := ToFile(ctx, st, id, link, Options{Force: true}); !errors.Is(err, ErrNotRegular) {
		t.Errorf("symlink to a FIFO: %v, want ErrNotRegular", err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("symlink replaced: %v %v", fi.Mode(), err)
	}
}

// TestDiskFullNamesFileOnce: a restore onto a full file system fails with
// ENOSPC naming its output once, whichever write (data, or the metadata
// a compressed qcow2 writes at the end) hit the full disk. It needs a
// tmpfs of its own, so root.
func TestDiskFullNamesFileOnce(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	// Fill it up.
	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	for buf := make([]byte, 64<<10); ; {
		if _, err := filler.Write(buf); err != nil {
			break
		}
	}
	filler.Close()
	ctx := context.Background()
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	id, _ := storeImage(t, st)
	for _, o := range []Options{{Format: "raw"}, {Format: "qcow2"}, {Format: "qcow2", Compress: true}} {
		out := filepath.Join(dir, "out."+o.Format)
		err := ToFile(ctx, st, id, out, o)
		// The path given, not the hidden file being written.
		if !errors.Is(err, unix.ENOSPC) || strings.Count(err.Error(), out) != 1 || strings.Contains(err.Error(), ".out.") {
			t.Errorf("%+v: %v, want ENOSPC naming %s once", o, err, out)
		}
	}
}

// TestToFileThroughSymlink: -o naming a symbolic link to a file writes the
// image into the link's target, as cp and qemu-img convert do, and keeps
// the link; a dangling link is refused and nothing is created.
func TestToFileThroughSymlink(t *testing.T) {
	ctx := context.Background()
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	id, guest := storeImage(t, st)
	dir := t.TempDir()
	sub := filepath.Join(dir, "images")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(sub, "vm.raw")
	if err := os.WriteFile(target, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("images/vm.raw", link); err != nil {
		t.Fatal(err)
	}
	if err := ToFile(ctx, st, id, link, Options{Format: "raw"}); !errors.Is(err, ErrExists) {
		t.Fatalf("without Force: %v, want ErrExists", err)
	}
	if err := ToFile(ctx, st, id, link, Options{Format: "raw", Force: true}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("link replaced: %v %v", fi.Mode(), err)
	}
	if got, err := os.ReadFile(target); err != nil || !bytes.Equal(got, guest) {
		t.Fatalf("target holds %d bytes (%v), want the image's %d", len(got), err, len(guest))
	}
	dangling := filepath.Join(dir, "dangling")
	if err := os.Symlink("nowhere.raw", dangling); err != nil {
		t.Fatal(err)
	}
	err := ToFile(ctx, st, id, dangling, Options{Format: "raw", Force: true})
	if err == nil || !strings.Contains(err.Error(), dangling) || !strings.Contains(err.Error(), "dangling") {
		t.Fatalf("dangling link: %v, want a refusal naming it", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "nowhere.raw")); err == nil {
		t.Fatal("a dangling link's target was created")
	}
}
