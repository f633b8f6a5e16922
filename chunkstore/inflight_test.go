package chunkstore

import (
	"context"
	"crypto/rand"
	"sync"
	"testing"
)

// Concurrent PutMany calls of one process holding the same chunks store
// each chunk once (ingest's neighbouring batches often share chunks).
func TestPutManyCoalescesConcurrentCalls(t *testing.T) {
	ctx := context.Background()
	st := NewTestStore(t)
	var chunks []Chunk
	for i := 0; i < 48; i++ {
		b := make([]byte, 32<<10)
		rand.Read(b)
		chunks = append(chunks, Chunk{ID: Sum(b), Data: b})
	}
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for g := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each call holds all chunks, rotated, so calls overlap in
			// different orders.
			mine := append(append([]Chunk(nil), chunks[g*8:]...), chunks[:g*8]...)
			_, errs[g] = st.PutMany(ctx, mine)
		}()
	}
	wg.Wait()
	for g, err := range errs {
		if err != nil {
			t.Fatalf("call %d: %v", g, err)
		}
	}
	s, err := st.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	raw := int64(len(chunks)) * 32 << 10
	if s.Chunks != int64(len(chunks)) || s.PackBytes > raw+raw/4 {
		t.Fatalf("stats %+v: want %d chunks in about %d pack bytes (each stored once)", s, len(chunks), raw)
	}
	for _, c := range chunks {
		if _, err := st.Get(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
	}
}
