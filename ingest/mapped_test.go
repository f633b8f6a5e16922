package ingest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/qcow2"
)

// mapCounter is an image that counts the reads Mapped served and can
// truncate its file under an ingest (after the first mapped read).
type mapCounter struct {
	*qcow2.Image
	path     string
	ok       atomic.Int64
	preads   atomic.Int64
	truncate bool
}

func (m *mapCounter) ReadAt(b []byte, off int64) (int, error) {
	m.preads.Add(1)
	return m.Image.ReadAt(b, off)
}

func (m *mapCounter) Mapped(off, n int64) ([]byte, bool, error) {
	b, ok, err := m.Image.Mapped(off, n)
	if ok && m.ok.Add(1) == 2 && m.truncate {
		if err := os.Truncate(m.path, 0); err != nil {
			return nil, false, err
		}
	}
	return b, ok, err
}

func openRaw(t *testing.T, disk []byte) (string, *qcow2.Image) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(p, disk, 0o644); err != nil {
		t.Fatal(err)
	}
	im, err := qcow2.Open(p, qcow2.Options{Format: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	return p, im
}

// TestRunMappedMatchesRead: chunks hashed straight from the file's mapping
// give the manifest that copied reads give, and what is stored rebuilds
// the disk (new chunks are copied out of the mapping before the store
// sees them).
func TestRunMappedMatchesRead(t *testing.T) {
	ctx := context.Background()
	disk := makeDisk(3, 64<<20)
	p, im := openRaw(t, disk)
	src := &mapCounter{Image: im, path: p}
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	// Every read mapped, all chunks new: each is copied out and hashed again.
	res, err := run(ctx, st, src, Options{Workers: 2}, &mapPolicy{always: true})
	if err != nil {
		t.Fatal(err)
	}
	if src.ok.Load() == 0 {
		t.Fatal("no read was served from the mapping")
	}
	// Known data again: once the first batch is found stored, reads come
	// from the mapping (more reads than read tokens, so some wait for it).
	src.ok.Store(0)
	again, err := Run(ctx, st, src, Options{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if again.ID != res.ID || again.Stats.NewChunks != 0 {
		t.Fatalf("re-ingest: ID %s vs %s, %d new chunks", again.ID.Short(), res.ID.Short(), again.Stats.NewChunks)
	}
	if src.ok.Load() == 0 {
		t.Fatal("re-ingest: no read was served from the mapping")
	}
	// Told the data is known (--reread of a known fingerprint): no read
	// is copied.
	src.ok.Store(0)
	src.preads.Store(0)
	if _, err := Run(ctx, st, src, Options{Workers: 2, known: true}); err != nil {
		t.Fatal(err)
	}
	if src.ok.Load() == 0 || src.preads.Load() != 0 {
		t.Fatalf("re-ingest of known data: %d mapped reads, %d copied", src.ok.Load(), src.preads.Load())
	}
	want, err := Run(ctx, chunkstore.NewMemory(st.Params()), &memSource{disk}, Options{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if res.ID != want.ID {
		t.Fatalf("mapped ingest ID %s, copied reads %s", res.ID.Short(), want.ID.Short())
	}
	checkStored(t, st, res, disk)
}

// checkStored fails unless every chunk of res is in st with the disk's
// bytes at its offset.
func checkStored(t *testing.T, st chunkstore.Store, res *Result, disk []byte) {
	t.Helper()
	ctx := context.Background()
	err := engram.ForEachChunk(ctx, st, res.Root, func(c engram.ChunkRef) error {
		b, err := st.Get(ctx, c.ID)
		if err != nil {
			return err
		}
		if string(b) != string(disk[c.Offset:c.Offset+int64(c.Length)]) {
			t.Fatalf("chunk at %#x differs from the disk", c.Offset)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRunFirstIngestCopies: an ingest of new data reads into private
// buffers and hashes each byte once, never from the mapping (which would
// cost a copy and a second hash of every new chunk).
func TestRunFirstIngestCopies(t *testing.T) {
	disk := makeDisk(5, 32<<20)
	p, im := openRaw(t, disk)
	src := &mapCounter{Image: im, path: p}
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	res, err := Run(context.Background(), st, src, Options{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if n := src.ok.Load(); n != 0 {
		t.Fatalf("%d reads of new data were served from the mapping", n)
	}
	checkStored(t, st, res, disk)
}

// TestRunMappedFewNew: a re-ingest of a disk with a few changed blocks
// reads from the mapping, and the few new chunks it finds there are
// stored with the bytes they hash to.
func TestRunMappedFewNew(t *testing.T) {
	ctx := context.Background()
	disk := makeDisk(6, 64<<20)
	for i := range disk {
		if disk[i] == 0 {
			disk[i] = byte(i) | 1 // no zero blocks: whole 4 MiB reads, chunks borrowed from them
		}
	}
	_, im := openRaw(t, disk)
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	if _, err := Run(ctx, st, im, Options{Workers: 2}); err != nil {
		t.Fatal(err)
	}
	changed := append([]byte(nil), disk...)
	for _, off := range []int{40 << 20, 50<<20 + 12345, 63 << 20} {
		copy(changed[off:], "changed after the first ingest")
	}
	p, im2 := openRaw(t, changed)
	src := &mapCounter{Image: im2, path: p}
	res, err := Run(ctx, st, src, Options{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if src.ok.Load() == 0 || res.Stats.NewChunks == 0 {
		t.Fatalf("%d mapped reads, %d new chunks: want both", src.ok.Load(), res.Stats.NewChunks)
	}
	want, err := Run(ctx, chunkstore.NewMemory(st.Params()), &memSource{changed}, Options{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if res.ID != want.ID {
		t.Fatalf("mapped ingest ID %s, copied reads %s", res.ID.Short(), want.ID.Short())
	}
	checkStored(t, st, res, changed)
}

// TestRunMappedFileShrinks: a file truncated while ingest reads it from
// its mapping gives an error, not a crash (SIGBUS).
func TestRunMappedFileShrinks(t *testing.T) {
	disk := makeDisk(4, 24<<20)
	p, im := openRaw(t, disk)
	src := &mapCounter{Image: im, path: p}
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	if _, err := Run(context.Background(), st, src, Options{Workers: 2}); err != nil {
		t.Fatal(err)
	}
	src.ok.Store(0)
	src.truncate = true
	_, err := run(context.Background(), st, src, Options{Workers: 2}, &mapPolicy{always: true})
	if err == nil || !strings.Contains(err.Error(), "did it shrink") {
		t.Fatalf("ingest of a file truncated under it: %v, want a memory fault error", err)
	}
}

// TestStoreBatchMappedChanged: a new chunk borrowed from the mapping whose
// bytes no longer hash to its ID (the image changed between hashing and
// storing) is refused, not stored under the old ID.
func TestStoreBatchMappedChanged(t *testing.T) {
	ctx := context.Background()
	ch, err := NewChunker(chunkstore.DefaultChunkParams)
	if err != nil {
		t.Fatal(err)
	}
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	data := []byte(strings.Repeat("guest bytes ", 2000))
	id := chunkstore.Sum(data)
	data[0] = 'G' // changed after hashing
	owner := &readBuf{mapped: true, done: func() {}}
	_, _, err = storeBatch(ctx, st, ch, batch{chunks: []chunkstore.Chunk{{ID: id, Data: data}}, owners: []*readBuf{owner}}, nil)
	if err == nil || !strings.Contains(err.Error(), "changed while it was read") {
		t.Fatalf("storeBatch of a changed mapped chunk: %v", err)
	}
	if have, _ := st.HasMany(ctx, []chunkstore.ID{id}); have[0] {
		t.Fatal("the changed chunk was stored under its old ID")
	}
}

// TestMapPolicy: no mapping before a batch is known, mapping while nearly
// everything is known, back to copies when recent batches turn new.
func TestMapPolicy(t *testing.T) {
	var p mapPolicy
	if p.useMap() {
		t.Fatal("mapped before any batch was stored")
	}
	p.record(8<<20, 0)
	if !p.useMap() {
		t.Fatal("not mapped after a known batch")
	}
	p.record(8<<20, 1<<20)
	if !p.useMap() {
		t.Fatal("not mapped at 1/17 new")
	}
	for range 8 {
		p.record(0, 8<<20)
	}
	if p.useMap() {
		t.Fatal("still mapped after 64 MiB of new data")
	}
	if !(&mapPolicy{always: true}).useMap() {
		t.Fatal("always does not map")
	}
}
