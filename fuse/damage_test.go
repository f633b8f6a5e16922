package fuse

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/internal/qemutest"
	"github.com/engram-vm/engram/view"
)

// TestDamagedChunkEIO: through a real mount, a chunk whose bytes do not
// match its ID (in a block whose frame is sound, so only the chunk's hash
// can tell) is EIO on every read of it, the first and the ones after its
// block is cached, while the chunks stored beside it read right.
func TestDamagedChunkEIO(t *testing.T) {
	qemutest.RequireFUSE(t)
	ctx := context.Background()
	dir := t.TempDir()
	sdir := filepath.Join(dir, "store")
	if err := chunkstore.Init(sdir, chunkstore.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	// TrustIDs: the store keeps the wrong ID as given.
	st, err := chunkstore.Open(ctx, sdir, chunkstore.OpenOptions{Exclusive: true, TrustIDs: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	const span = 64 << 10
	var chunks []chunkstore.Chunk
	var refs []engram.ChunkRef
	for i := range 4 {
		data := bytes.Repeat([]byte{byte(0x51 + i)}, span)
		id := chunkstore.Sum(data)
		if i == 2 {
			id = chunkstore.Sum([]byte("other bytes"))
		}
		chunks = append(chunks, chunkstore.Chunk{ID: id, Data: data})
		refs = append(refs, engram.ChunkRef{Offset: int64(i) * span, Length: span, ID: id})
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
	_, enc, id, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutMany(ctx, pages); err != nil {
		t.Fatal(err)
	}
	if err := engram.Commit(ctx, st, id, enc, &engram.Record{Source: "test", Name: "vm"}); err != nil {
		t.Fatal(err)
	}
	set := view.NewSet(st, view.Options{CacheSize: 64 << 20})
	t.Cleanup(func() { set.Close() })
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(mnt, st, set, Options{Errorf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			_ = exec.Command("fusermount3", "-u", "-z", mnt).Run()
		}
	})
	// O_DIRECT: each read goes to the server, not to pages the kernel
	// kept from an earlier one.
	f, err := os.OpenFile(filepath.Join(mnt, "by-id", id.String()+".raw"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := make([]byte, 1<<20) // page-aligned, as a large allocation is
	// First the two chunks before the damaged one: most of the block, so
	// the block is cached whole.
	if n, err := f.ReadAt(p[:2*span], 0); err != nil || n != 2*span || p[0] != 0x51 || p[span] != 0x52 {
		t.Fatalf("read of the chunks before the damaged one: %d, %v", n, err)
	}
	for i := range 3 {
		if _, err := f.ReadAt(p[:span], 2*span); !errors.Is(err, syscall.EIO) {
			t.Fatalf("read %d of the damaged chunk: %v, want EIO", i, err)
		}
	}
	if n, err := f.ReadAt(p[:span], 3*span); err != nil || n != span || p[0] != 0x54 || p[span-1] != 0x54 {
		t.Fatalf("read of the chunk after the damaged one: %d, %v", n, err)
	}
}
