package chunkstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestEveryCompressionRoundTrips stores compressible and random chunks at
// every compression setting and reads them back from a reopened store,
// whose config still names the setting it was made with.
func TestEveryCompressionRoundTrips(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 2))
	var chunks []Chunk
	for i := range 40 {
		b := make([]byte, 8<<10+r.IntN(100<<10))
		if i%2 == 0 {
			for j := range b {
				b[j] = byte(r.Uint32())
			}
		} else {
			copy(b, strings.Repeat(fmt.Sprintf("log line %d: service started\n", i), len(b)/20+1))
		}
		chunks = append(chunks, Chunk{ID: Sum(b), Data: b})
	}
	for _, name := range Compressions {
		t.Run(name, func(t *testing.T) {
			st := NewTestStore(t, InitOptions{Compression: name})
			if _, err := st.PutMany(ctx, chunks); err != nil {
				t.Fatal(err)
			}
			dir := st.Dir()
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			st, err := Open(ctx, dir, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if got := st.Params().Compression; got != name {
				t.Fatalf("reopened store records compression %q, made with %q", got, name)
			}
			for _, c := range chunks {
				b, err := st.Get(ctx, c.ID)
				if err != nil {
					t.Fatal(err)
				}
				if string(b) != string(c.Data) {
					t.Fatalf("chunk %s differs", c.ID.Short())
				}
			}
		})
	}
	if _, err := encoderOptions("fastest-entropy"); err == nil || !strings.Contains(err.Error(), "fastest-noentropy") {
		t.Fatalf("unknown compression: %v", err)
	}
}
