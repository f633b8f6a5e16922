package engram

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
)

func TestPageRoundTrip(t *testing.T) {
	refs := []ChunkRef{
		{Offset: 3*PageSpan + 4096, Length: 65536, ID: chunkstore.Sum([]byte("a"))},
		{Offset: 3*PageSpan + 4096 + 65536, Length: 16384, ID: chunkstore.Sum([]byte("b"))},
		{Offset: 4*PageSpan - 4096, Length: 262144, ID: chunkstore.Sum([]byte("c"))}, // spills into the next page
	}
	b, err := EncodePage(3, refs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodePage(b, 3, 5*PageSpan)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(refs) {
		t.Fatalf("got %d refs", len(got))
	}
	for i := range refs {
		if got[i] != refs[i] {
			t.Errorf("ref %d: %+v, want %+v", i, got[i], refs[i])
		}
	}
	if _, err := DecodePage(b, 2, 5*PageSpan); !errors.Is(err, ErrBadManifest) {
		t.Errorf("wrong index: %v", err)
	}
	if _, err := DecodePage(b, 3, 4*PageSpan); !errors.Is(err, ErrBadManifest) {
		t.Errorf("chunk past the image end: %v", err)
	}
	if _, err := DecodePage(b[:len(b)-1], 3, 5*PageSpan); !errors.Is(err, ErrBadManifest) {
		t.Errorf("truncated: %v", err)
	}
	if _, err := EncodePage(3, []ChunkRef{refs[1], refs[0]}); err == nil {
		t.Error("unsorted refs encoded")
	}
}

func TestRootRoundTrip(t *testing.T) {
	r := Root{Size: 10*PageSpan + 512, Pages: []PageRef{{0, chunkstore.Sum([]byte("0"))}, {10, chunkstore.Sum([]byte("10"))}}}
	b := EncodeRoot(r)
	got, err := DecodeRoot(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Size != r.Size || len(got.Pages) != 2 || got.Pages[1] != r.Pages[1] {
		t.Fatalf("got %+v", got)
	}
	r.Pages[1].Index = 11 // past the end
	if _, err := DecodeRoot(EncodeRoot(r)); !errors.Is(err, ErrBadManifest) {
		t.Errorf("page past end: %v", err)
	}
}

func TestBuilderSplitsPages(t *testing.T) {
	var pages []chunkstore.Chunk
	b := NewBuilder(3*PageSpan, func(c chunkstore.Chunk) error { pages = append(pages, c); return nil })
	for _, off := range []int64{0, 65536, 2 * PageSpan, 2*PageSpan + 65536} {
		if err := b.Add(ChunkRef{Offset: off, Length: 65536, ID: chunkstore.Sum([]byte{byte(off >> 16)})}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Add(ChunkRef{Offset: 0, Length: 1}); err == nil {
		t.Error("out-of-order ref accepted")
	}
	root, enc, id, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) != 2 || len(root.Pages) != 2 || root.Pages[1].Index != 2 {
		t.Fatalf("pages %d, root %+v", len(pages), root)
	}
	if id != chunkstore.Sum(enc) {
		t.Error("ID is not the hash of the root encoding")
	}
}

func FuzzDecodePage(f *testing.F) {
	b, _ := EncodePage(1, []ChunkRef{{Offset: PageSpan, Length: 4096}, {Offset: PageSpan + 8192, Length: 4096}})
	f.Add(b, uint64(1), int64(2*PageSpan))
	f.Fuzz(func(t *testing.T, b []byte, index uint64, size int64) {
		refs, err := DecodePage(b, index, size)
		if err != nil {
			return
		}
		// What decodes must encode back to the same bytes.
		again, err := EncodePage(index, refs)
		if err != nil || string(again) != string(b[:len(again)]) {
			t.Fatalf("decoded page does not re-encode: %v", err)
		}
	})
}

func FuzzDecodeRoot(f *testing.F) {
	f.Add(EncodeRoot(Root{Size: 3 * PageSpan, Pages: []PageRef{{Index: 0}, {Index: 2}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRoot(b)
		if err != nil {
			return
		}
		if string(EncodeRoot(r)) != string(b) {
			t.Fatal("decoded root does not re-encode")
		}
	})
}

// FuzzDecodeRecord feeds arbitrary bytes as a catalog record (written by
// any host into the store's journal): an error or a record of this
// version, never a panic.
func FuzzDecodeRecord(f *testing.F) {
	good, err := json.Marshal(Record{V: recordVersion, Key: "k", Engram: "e", Source: "a.qcow2", Format: "qcow2", VirtualSize: 1 << 30,
		Labels: map[string]string{"role": "web"}, Chain: []Layer{{}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"v":2}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if rec, err := decodeRecord(b); err == nil && rec.V != recordVersion {
			t.Fatalf("accepted a record of version %d", rec.V)
		}
	})
}
