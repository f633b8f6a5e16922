package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// TestGetBlocksShared: GetBlocks hands out one decoded block for all the
// chunks stored in it, not copies; Chunk returns each chunk's bytes as a
// slice of it, and a chunk stored under an ID its bytes do not hash to is
// a *CorruptChunkError every time it is taken, its neighbours fine.
func TestGetBlocksShared(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := Init(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	// TrustIDs: PutMany takes the wrong ID as given.
	s, err := Open(ctx, dir, OpenOptions{Exclusive: true, TrustIDs: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var chunks []Chunk
	var ids []ID
	for i := range 5 {
		data := bytes.Repeat([]byte{byte(i), 3}, 10000+i)
		id := Sum(data)
		if i == 3 {
			id = Sum([]byte("not these bytes"))
		}
		chunks = append(chunks, Chunk{ID: id, Data: data})
		ids = append(ids, id)
	}
	if _, err := s.PutMany(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	for pass := range 2 { // cold, then from the store's block cache
		blocks, idx := make([]*Block, len(ids)), make([]int, len(ids))
		if err := GetBlocks(ctx, s, ids, blocks, idx); err != nil {
			t.Fatal(err)
		}
		for i := range ids {
			if blocks[i] != blocks[0] {
				t.Fatalf("pass %d: chunk %d in another block than chunk 0", pass, i)
			}
			if blocks[i].ID(idx[i]) != ids[i] {
				t.Fatalf("pass %d: chunk %d at index %d names another ID", pass, i, idx[i])
			}
			for range 2 {
				data, err := blocks[i].Chunk(idx[i])
				if i == 3 {
					if ce := (*CorruptChunkError)(nil); !errors.As(err, &ce) || ce.ID != ids[3] || ce.Pack == "" {
						t.Fatalf("pass %d: damaged chunk: %v", pass, err)
					}
					continue
				}
				if err != nil || !bytes.Equal(data, chunks[i].Data) {
					t.Fatalf("pass %d: chunk %d: %v", pass, i, err)
				}
			}
		}
		if blocks[0].Size() < int64(5*10000*2) {
			t.Fatalf("block size %d below its chunks' bytes", blocks[0].Size())
		}
	}
	// Get of the damaged chunk fails too, the others read.
	if _, err := s.Get(ctx, ids[3]); !errors.As(err, new(*CorruptChunkError)) {
		t.Fatalf("Get of the damaged chunk: %v", err)
	}
	if data, err := s.Get(ctx, ids[4]); err != nil || !bytes.Equal(data, chunks[4].Data) {
		t.Fatalf("Get: %v", err)
	}
}

// TestGetBlocksFallback: for a Reader without GetBlocks each chunk comes
// from Get as a checked block of its own.
func TestGetBlocksFallback(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(Params{Compression: "fastest", Chunking: DefaultChunkParams})
	data := []byte("some chunk")
	id := Sum(data)
	if _, err := m.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	blocks, idx := make([]*Block, 1), make([]int, 1)
	if err := GetBlocks(ctx, m, []ID{id}, blocks, idx); err != nil {
		t.Fatal(err)
	}
	if got, err := blocks[0].Chunk(idx[0]); err != nil || !bytes.Equal(got, data) || blocks[0].Chunks() != 1 {
		t.Fatalf("fallback block: %q, %v", got, err)
	}
	if err := GetBlocks(ctx, m, []ID{Sum([]byte("absent"))}, blocks, idx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent chunk: %v", err)
	}
}
