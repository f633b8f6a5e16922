package ingest

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/internal/qemutest"
	"github.com/engram-vm/engram/qcow2"
)

// TestGuidedReread: a re-read cut where the last engram's chunks lie gives
// exactly the manifest of a fresh chunking, whatever changed in between;
// an unchanged disk takes the guided path, a changed one falls back.
func TestGuidedReread(t *testing.T) {
	ctx := context.Background()
	base := makeDisk(7, 24<<20)
	// A zero block inside a data cluster and a zero cluster, for the
	// changes below to fill.
	for i := 3 << 20; i < 4<<20; i++ {
		base[i] = byte(i) | 1
	}
	zeroBlock, zeroCluster := 3<<20+20<<10, 7<<20
	clear(base[zeroBlock : zeroBlock+4096])
	clear(base[zeroCluster : zeroCluster+64<<10])
	params := chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams}
	cases := []struct {
		name   string
		change func(b []byte)
		guided bool
	}{
		{"unchanged", func([]byte) {}, true},
		{"byte in a chunk", func(b []byte) { b[10<<20+777] ^= 0x5a }, false},
		{"first byte", func(b []byte) { b[0] ^= 1 }, false},
		{"last byte", func(b []byte) { b[len(b)-1] ^= 1 }, false},
		{"zero block filled", func(b []byte) { b[zeroBlock+100] = 1 }, false},
		{"zero cluster filled", func(b []byte) { b[zeroCluster+5000] = 1 }, false},
		{"data zeroed", func(b []byte) { clear(b[12<<20 : 12<<20+128<<10]) }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := chunkstore.NewMemory(params)
			prior, err := Run(ctx, st, &memSource{base}, Options{Workers: 2})
			if err != nil {
				t.Fatal(err)
			}
			disk := append([]byte(nil), base...)
			tc.change(disk)
			got, err := Run(ctx, st, &memSource{disk}, Options{Workers: 2, known: true, prior: &prior.Root})
			if err != nil {
				t.Fatal(err)
			}
			want, err := Run(ctx, chunkstore.NewMemory(params), &memSource{disk}, Options{Workers: 2})
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != want.ID {
				t.Fatalf("re-read gives %s, fresh chunking %s", got.ID.Short(), want.ID.Short())
			}
			if got.guided != tc.guided {
				t.Fatalf("guided %v, want %v", got.guided, tc.guided)
			}
			checkStored(t, st, got, disk)
		})
	}
}

// TestGuidedRereadPriorUnreadable: a re-read whose previous engram's pages
// cannot be read (here: a store that never held them; in a bucket, a pack
// whose damaged segment this host skipped) chunks the image as usual
// instead of failing on the page.
func TestGuidedRereadPriorUnreadable(t *testing.T) {
	ctx := context.Background()
	disk := makeDisk(9, 12<<20)
	params := chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams}
	prior, err := Run(ctx, chunkstore.NewMemory(params), &memSource{disk}, Options{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	st := chunkstore.NewMemory(params)
	got, err := Run(ctx, st, &memSource{disk}, Options{Workers: 2, known: true, prior: &prior.Root})
	if err != nil {
		t.Fatalf("re-read with the previous engram's pages missing: %v", err)
	}
	if got.ID != prior.ID || got.guided {
		t.Fatalf("re-read gives %s (guided %v), want %s chunked as usual", got.ID.Short(), got.guided, prior.ID.Short())
	}
	checkStored(t, st, got, disk)
}

// TestGuidedRereadQcow2: Image with Reread on a qemu-img image gives the
// engram of the first ingest, and what is stored is what qemu-img reads.
func TestGuidedRereadQcow2(t *testing.T) {
	qemutest.Require(t)
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "img.qcow2")
	qemutest.Create(t, "qcow2", p, "64M")
	qemutest.IO(t, p, "qcow2", "write -P 0x31 0 3M", "write -P 0x32 5M 9M", "write -z 6M 64k", "write -P 0x33 40M 512k", "write -P 0x34 63M 1M")
	raw := filepath.Join(dir, "img.raw")
	qemutest.ToRaw(t, p, raw)
	disk, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	st := chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
	ingestOnce := func(reread bool) LayerResult {
		im, err := qcow2.Open(p, qcow2.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer im.Close()
		out, err := Image(ctx, st, im, ImageOptions{Options: Options{Workers: 2}, Reread: reread})
		if err != nil {
			t.Fatal(err)
		}
		return out[len(out)-1]
	}
	first := ingestOnce(false)
	again := ingestOnce(true)
	if again.ID != first.ID || again.Reused || again.Record.Stats.NewChunks != 0 {
		t.Fatalf("reread: %s (reused %v, %d new), first %s", again.ID.Short(), again.Reused, again.Record.Stats.NewChunks, first.ID.Short())
	}
	im, err := qcow2.Open(p, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	root, err := engram.LoadRoot(ctx, st, again.ID)
	if err != nil {
		t.Fatal(err)
	}
	checkStored(t, st, &Result{ID: again.ID, Root: root}, disk)
	// The same through Run, to see the guided path was taken (mapped reads
	// of a real qcow2).
	res, err := Run(ctx, st, im, Options{Workers: 2, known: true, prior: &root})
	if err != nil {
		t.Fatal(err)
	}
	if !res.guided || res.ID != first.ID {
		t.Fatalf("guided run: guided %v, ID %s, want %s", res.guided, res.ID.Short(), first.ID.Short())
	}
}

// TestGuidedRereadRandom: random edits (bytes flipped, ranges zeroed or
// filled, at random places) never make the guided re-read differ from a
// fresh chunking.
func TestGuidedRereadRandom(t *testing.T) {
	ctx := context.Background()
	params := chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams}
	base := makeDisk(8, 9<<20+12345) // not on the block grid: a short last block
	st := chunkstore.NewMemory(params)
	prior, err := Run(ctx, st, &memSource{base}, Options{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(9, 9))
	for i := range 16 {
		disk := append([]byte(nil), base...)
		for range 1 + r.IntN(3) {
			off := r.IntN(len(disk))
			n := min(1+r.IntN(256<<10), len(disk)-off)
			switch r.IntN(3) {
			case 0:
				disk[off] ^= byte(1 + r.IntN(255))
			case 1:
				clear(disk[off : off+n])
			default:
				for j := off; j < off+n; j++ {
					disk[j] = byte(r.Uint32())
				}
			}
		}
		got, err := Run(ctx, st, &memSource{disk}, Options{Workers: 2, known: true, prior: &prior.Root})
		if err != nil {
			t.Fatal(err)
		}
		want, err := Run(ctx, chunkstore.NewMemory(params), &memSource{disk}, Options{Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != want.ID {
			t.Fatalf("edit %d: re-read gives %s, fresh chunking %s", i, got.ID.Short(), want.ID.Short())
		}
		checkStored(t, st, got, disk)
	}
}

// TestGuidedRereadSpans: on a mapped image, a chunk that crosses from one
// read into the next is hashed as one slice of the mapping (no copy), and
// a change in either part of it is still found.
func TestGuidedRereadSpans(t *testing.T) {
	ctx := context.Background()
	params := chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams}
	base := makeDisk(11, 5*readSize+12288)
	for i := range base {
		base[i] |= 1 // no zero blocks: chunks cross every read boundary
	}
	st := chunkstore.NewMemory(params)
	_, im := openRaw(t, base)
	prior, err := Run(ctx, st, im, Options{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	var crossing []engram.ChunkRef
	if err := engram.ForEachChunk(ctx, st, prior.Root, func(c engram.ChunkRef) error {
		if b := (c.Offset/readSize + 1) * readSize; b < c.End() {
			crossing = append(crossing, c)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(crossing) < 4 {
		t.Fatalf("%d chunks cross a read boundary, want 4 or more", len(crossing))
	}
	got, err := Run(ctx, st, im, Options{Workers: 2, known: true, prior: &prior.Root})
	if err != nil {
		t.Fatal(err)
	}
	if !got.guided || got.ID != prior.ID || got.spans != len(crossing) {
		t.Fatalf("unchanged: guided %v, %d spans (want %d), ID %s want %s", got.guided, got.spans, len(crossing), got.ID.Short(), prior.ID.Short())
	}
	for i, c := range crossing[:2] {
		boundary := (c.Offset/readSize + 1) * readSize
		for _, at := range []int64{c.Offset + 1, boundary - 1, boundary, c.End() - 1} {
			disk := append([]byte(nil), base...)
			disk[at] ^= 0x80
			_, im := openRaw(t, disk)
			got, err := Run(ctx, st, im, Options{Workers: 2, known: true, prior: &prior.Root})
			if err != nil {
				t.Fatal(err)
			}
			want, err := Run(ctx, chunkstore.NewMemory(params), &memSource{disk}, Options{Workers: 2})
			if err != nil {
				t.Fatal(err)
			}
			if got.guided || got.ID != want.ID {
				t.Fatalf("chunk %d, byte %#x changed: guided %v, ID %s, fresh chunking %s", i, at, got.guided, got.ID.Short(), want.ID.Short())
			}
			checkStored(t, st, got, disk)
		}
	}
}
