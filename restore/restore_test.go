package restore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
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
