package chunkstore

import (
	"bytes"
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

// Chunks cut from one buffer are compressed in place; chunks from
// separate buffers, or out of order, are joined first. Either way the
// frames decode to the chunks.
func TestEncodeBlocksContiguousRuns(t *testing.T) {
	c, err := getCodec(DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 96<<10)
	for i := range buf {
		buf[i] = byte(i * 7 / 3)
	}
	mk := func(parts ...[]byte) []Chunk {
		var out []Chunk
		for _, p := range parts {
			out = append(out, Chunk{ID: Sum(p), Data: p})
		}
		return out
	}
	other := append([]byte(nil), buf[32<<10:64<<10]...)
	cases := map[string]struct {
		run    []Chunk
		inline bool
	}{
		"one buffer":      {mk(buf[:32<<10], buf[32<<10:64<<10], buf[64<<10:]), true},
		"gap":             {mk(buf[:32<<10], buf[33<<10:64<<10]), false},
		"out of order":    {mk(buf[32<<10:64<<10], buf[:32<<10]), false},
		"other buffer":    {mk(buf[:32<<10], other), false},
		"capped at chunk": {mk(buf[:32<<10:32<<10], buf[32<<10:64<<10]), false},
		"empty chunk":     {mk(buf[:32<<10], buf[32<<10:32<<10], buf[32<<10:64<<10]), false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			b, ok := contiguous(tc.run)
			if ok != tc.inline {
				t.Fatalf("contiguous = %v, want %v", ok, tc.inline)
			}
			if ok {
				var want []byte
				for _, ch := range tc.run {
					want = append(want, ch.Data...)
				}
				if !bytes.Equal(b, want) {
					t.Fatal("contiguous block differs from the joined chunks")
				}
			}
			frames := encodeBlocks(tc.run, DefaultBlockSize, c)
			defer releaseFrames(frames)
			if len(frames) != 1 {
				t.Fatalf("%d frames, want 1", len(frames))
			}
			f, _, err := decodeFrame(frames[0].data)
			if err != nil {
				t.Fatal(err)
			}
			block, err := f.block()
			if err != nil {
				t.Fatal(err)
			}
			for i, fc := range f.Chunks {
				if got := block[fc.Off : fc.Off+fc.Len]; fc.ID != tc.run[i].ID || !bytes.Equal(got, tc.run[i].Data) {
					t.Fatalf("chunk %d differs", i)
				}
			}
		})
	}
}
