package ingest

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/qcow2"
)

// memSource is a guest disk in memory whose extent map says data wherever
// a 64 KiB cluster has a non-zero byte.
type memSource struct{ b []byte }

func (m *memSource) Size() int64 { return int64(len(m.b)) }

func (m *memSource) ReadAt(p []byte, off int64) (int, error) {
	return copy(p, m.b[off:]), nil
}

func (m *memSource) Extents(off, length int64) ([]qcow2.Extent, error) {
	const cl = 64 << 10
	var out []qcow2.Extent
	for s := off; s < off+length; s += cl {
		n := min(cl, off+length-s)
		data := !bytes.Equal(m.b[s:s+n], make([]byte, n))
		out = append(out, qcow2.Extent{Start: s, Length: n, Data: data, Zero: !data, Present: data, Offset: -1})
	}
	return out, nil
}

func makeDisk(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, size)
	for off := 0; off < size; {
		n := (1 + r.IntN(64)) * 4096
		if r.IntN(3) > 0 {
			for i := off; i < min(off+n, size); i++ {
				b[i] = byte(r.Uint32())
			}
		}
		off += n
	}
	return b
}

func TestRunRebuildsContent(t *testing.T) {
	ctx := context.Background()
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "default", Chunking: chunkstore.DefaultChunkParams})
	disk := makeDisk(1, 40<<20+512) // not a multiple of 4 KiB at the end
	copy(disk[len(disk)-100:], "tail bytes that end off the 4 KiB grid")
	res, err := Run(ctx, st, &memSource{disk}, Options{Workers: 3})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(disk))
	err = engram.ForEachChunk(ctx, st, res.Root, func(c engram.ChunkRef) error {
		b, err := st.Get(ctx, c.ID)
		if err != nil {
			return err
		}
		copy(got[c.Offset:], b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, disk) {
		t.Fatal("manifest does not rebuild the disk")
	}
	if res.Stats.NewChunks == 0 || res.Stats.NewBytes == 0 {
		t.Errorf("stats %+v", res.Stats)
	}

	// Same content again: same ID, nothing new.
	again, err := Run(ctx, st, &memSource{disk}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if again.ID != res.ID || again.Stats.NewChunks != 0 {
		t.Errorf("re-ingest: ID %s vs %s, %d new chunks", again.ID.Short(), res.ID.Short(), again.Stats.NewChunks)
	}
}

func TestRunCancelled(t *testing.T) {
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Run(ctx, st, &memSource{makeDisk(2, 8<<20)}, Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled run: %v", err)
	}
}
