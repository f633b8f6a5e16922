package view

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
)

// gcLikeCLI runs gc the way `engram gc` does: catalog plus pins.
func gcLikeCLI(t *testing.T, st *chunkstore.BlobStore) chunkstore.GCStats {
	t.Helper()
	ctx := context.Background()
	live := map[chunkstore.ID]bool{}
	if err := engram.LiveChunks(ctx, st, func(id chunkstore.ID) { live[id] = true }); err != nil {
		t.Fatal(err)
	}
	if err := PinnedChunks(ctx, st.Dir(), st, func(id chunkstore.ID) { live[id] = true }); err != nil {
		t.Fatal(err)
	}
	gs, err := st.GC(ctx, func(id chunkstore.ID) bool { return live[id] }, chunkstore.GCOptions{Threshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	return gs
}

// TestPinSurvivesRmAndGC: an engram open through a pinned Set stays
// readable after rm + gc; once the pin is released, gc frees it.
func TestPinSurvivesRmAndGC(t *testing.T) {
	ctx := context.Background()
	st := chunkstore.NewTestStore(t, chunkstore.InitOptions{PackSize: 1 << 20})
	img := makeImage(t, st, 2*engram.PageSpan, 14)
	pins, err := NewPins(st.Dir(), "test")
	if err != nil {
		t.Fatal(err)
	}
	d, err := newSet(t, st, Options{Pins: pins}).Open(ctx, img.id)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ListPins(st.Dir()); err != nil || len(got) != 1 || got[0].ID != img.id {
		t.Fatalf("ListPins = %v, %v", got, err)
	}
	if err := engram.Remove(ctx, st, img.id); err != nil {
		t.Fatal(err)
	}
	if gs := gcLikeCLI(t, st); gs.DeadChunks > 1 { // the catalog chunk may go
		t.Fatalf("gc removed %d chunks of a pinned engram", gs.DeadChunks)
	}
	// A fresh Set so nothing comes from the cache.
	d2 := &Disk{set: newSet(t, st, Options{}), id: d.id, root: d.root, dataBytes: -1}
	p := make([]byte, d2.Size())
	if _, err := d2.NewReader().ReadAt(p, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, img.guest) {
		t.Fatal("pinned engram reads differently after rm + gc")
	}
	if err := pins.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pins.Path()); !os.IsNotExist(err) {
		t.Fatalf("pin file left after Close: %v", err)
	}
	if gs := gcLikeCLI(t, st); gs.DeadChunks < int64(len(img.refs)) {
		t.Fatalf("gc after release freed %d chunks, want at least %d", gs.DeadChunks, len(img.refs))
	}
}

// TestStalePinIgnored: a pin file nobody holds (its process died) is
// removed by gc and protects nothing; a live one that does not decode
// stops gc with an error naming it.
func TestStalePinIgnored(t *testing.T) {
	ctx := context.Background()
	st := chunkstore.NewTestStore(t)
	img := makeImage(t, st, engram.PageSpan, 15)
	pins, err := NewPins(st.Dir(), "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newSet(t, st, Options{Pins: pins}).Open(ctx, img.id); err != nil {
		t.Fatal(err)
	}
	// A copy of the live pin under another name, unlocked: a dead process.
	b, err := os.ReadFile(pins.Path())
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(st.Dir(), PinsDir, "host.1.dead.pin")
	if err := os.WriteFile(stale, b, 0o644); err != nil {
		t.Fatal(err)
	}
	pins.Close()
	if err := engram.Remove(ctx, st, img.id); err != nil {
		t.Fatal(err)
	}
	if got, err := ListPins(st.Dir()); err != nil || len(got) != 0 {
		t.Fatalf("ListPins with only a dead pin = %v, %v", got, err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatal("dead pin file not removed")
	}
	if gs := gcLikeCLI(t, st); gs.DeadChunks < int64(len(img.refs)) {
		t.Fatalf("a dead pin kept chunks: %d freed", gs.DeadChunks)
	}

	// A live pin file with garbage in it.
	pins2, _ := NewPins(st.Dir(), "test")
	img2 := makeImage(t, st, engram.PageSpan, 16)
	if _, err := newSet(t, st, Options{Pins: pins2}).Open(ctx, img2.id); err != nil {
		t.Fatal(err)
	}
	defer pins2.Close()
	if err := os.WriteFile(pins2.Path(), []byte("{\"format\":\"engram-pin\",\"version\":1,\"engrams\":[{\"id\":\"zz\"}]}"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = ListPins(st.Dir())
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(pins2.Path())) {
		t.Fatalf("ListPins on a bad live pin: %v", err)
	}
}

// TestPinFunc: Pin protects engrams named up front until release.
func TestPinFunc(t *testing.T) {
	ctx := context.Background()
	st := chunkstore.NewTestStore(t)
	img := makeImage(t, st, engram.PageSpan, 17)
	release, err := Pin(st.Dir(), []engram.ID{img.id})
	if err != nil {
		t.Fatal(err)
	}
	if err := engram.Remove(ctx, st, img.id); err != nil {
		t.Fatal(err)
	}
	if gs := gcLikeCLI(t, st); gs.DeadChunks > 1 {
		t.Fatalf("gc removed %d chunks of a pinned engram", gs.DeadChunks)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if gs := gcLikeCLI(t, st); gs.DeadChunks < int64(len(img.refs)) {
		t.Fatalf("gc after release freed %d chunks", gs.DeadChunks)
	}
	if _, err := Pin(st.Dir(), []engram.ID{img.id}); !errors.Is(err, engram.ErrNotFound) {
		t.Fatalf("pinning a removed engram: %v", err)
	}
}

// FuzzDecodePin: a pin file's content never panics the decoder, and what
// decodes names engrams whose roots hash to their IDs.
func FuzzDecodePin(f *testing.F) {
	root := engram.EncodeRoot(engram.Root{Size: 3 * engram.PageSpan, Pages: []engram.PageRef{{Index: 1}}})
	id := chunkstore.Sum(root)
	good := `{"format":"engram-pin","version":1,"pid":1,"host":"h","engrams":[{"id":"` + id.String() + `","root":"` + base64.StdEncoding.EncodeToString(root) + `"}]}`
	f.Add([]byte(good))
	f.Add([]byte(`{"format":"engram-pin","version":1,"engrams":[]}`))
	f.Add([]byte(`{"format":"engram-pin","version":2}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		pins, err := decodePin(b, "fuzz.pin")
		if err != nil {
			return
		}
		for _, p := range pins {
			if chunkstore.Sum(engram.EncodeRoot(p.Root)) != p.ID {
				t.Fatalf("decoded pin %s with a root of another ID", p.ID.Short())
			}
		}
	})
}
