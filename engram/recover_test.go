package engram

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
)

// testEngram stores an engram of n data chunks (seeded) and returns its
// root encoding and ID.
func testEngram(t *testing.T, st chunkstore.Store, seed uint64, n int) ([]byte, ID) {
	t.Helper()
	ctx := context.Background()
	r := rand.New(rand.NewPCG(seed, seed))
	size := int64(n) * PageSpan / 2
	var chunks []chunkstore.Chunk
	b := NewBuilder(size, func(c chunkstore.Chunk) error { chunks = append(chunks, c); return nil })
	for i := range n {
		d := make([]byte, 65536)
		for j := range d {
			d[j] = byte(r.Uint32())
		}
		c := chunkstore.Chunk{ID: chunkstore.Sum(d), Data: d}
		chunks = append(chunks, c)
		if err := b.Add(ChunkRef{Offset: int64(i) * PageSpan / 2, Length: 65536, ID: c.ID}); err != nil {
			t.Fatal(err)
		}
	}
	_, enc, id, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutMany(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	return enc, id
}

// commitWithCatalog is Commit followed by the catalog chunk the one line
// in Commit stores (there before the transaction; the bytes are the same).
func commitWithCatalog(t *testing.T, st chunkstore.Store, id ID, root []byte, rec *Record) {
	t.Helper()
	ctx := context.Background()
	if err := Commit(ctx, st, id, root, rec); err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := storeCatalogChunk(ctx, st, root, js); err != nil {
		t.Fatal(err)
	}
}

func TestCatalogChunkRoundTrip(t *testing.T) {
	root := EncodeRoot(Root{Size: 3 * PageSpan, Pages: []PageRef{{1, chunkstore.Sum([]byte("p"))}}})
	id := chunkstore.Sum(root)
	rec := &Record{V: recordVersion, Key: "0000000000000001-abcdef01", Engram: id.String(), Name: "web", Source: "/x.qcow2", Format: "qcow2"}
	b := EncodeCatalogChunk(root, rec)
	gotRoot, gotRec, err := DecodeCatalogChunk(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gotRoot, root) || gotRec.Key != rec.Key || gotRec.Name != "web" {
		t.Fatalf("round trip: %+v", gotRec)
	}
	if !maybeCatalogLen(len(b)) {
		t.Errorf("length %d looks like a data chunk or a page", len(b))
	}
	// Every record length gets padded off the two excluded shapes.
	for n := 0; n < 20000; n++ {
		js := append([]byte(`{"v":1}`), bytes.Repeat([]byte(" "), n)...)
		if c := encodeCatalogChunk(root, js); !maybeCatalogLen(len(c)) {
			t.Fatalf("record of %d bytes: catalog chunk of %d bytes not recognisable", len(js), len(c))
		}
	}

	if _, _, err := DecodeCatalogChunk([]byte("ENGP....")); !errors.Is(err, ErrNotCatalogChunk) {
		t.Errorf("page bytes: %v", err)
	}
	bad := func(name string, b []byte) {
		t.Helper()
		if _, _, err := DecodeCatalogChunk(b); !errors.Is(err, ErrBadManifest) {
			t.Errorf("%s: %v, want ErrBadManifest", name, err)
		}
	}
	bad("truncated header", b[:10])
	bad("truncated root", b[:catalogHeaderLen+len(root)-1])
	bad("no record", b[:catalogHeaderLen+len(root)])
	other := *rec
	other.Engram = chunkstore.Sum([]byte("x")).String()
	bad("root of another engram", EncodeCatalogChunk(root, &other))
	c := bytes.Clone(b)
	c[4] = 2
	bad("version 2", c)
	c = bytes.Clone(b)
	c[8], c[9], c[10], c[11] = 0xff, 0xff, 0xff, 0x7f
	bad("huge root length", c)
}

func FuzzDecodeCatalogChunk(f *testing.F) {
	root := EncodeRoot(Root{Size: 2 * PageSpan, Pages: []PageRef{{0, chunkstore.Sum([]byte("p"))}}})
	rec := &Record{V: recordVersion, Key: "k", Engram: chunkstore.Sum(root).String(), Name: "n", Labels: map[string]string{"a": "b"}}
	f.Add(EncodeCatalogChunk(root, rec))
	f.Add([]byte(catalogMagic))
	f.Add(EncodeCatalogChunk(EncodeRoot(Root{}), &Record{V: 1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		root, rec, err := DecodeCatalogChunk(b)
		if err != nil {
			if !errors.Is(err, ErrBadManifest) && !errors.Is(err, ErrNotCatalogChunk) {
				t.Fatalf("error matches no sentinel: %v", err)
			}
			return
		}
		if id, _ := rec.EngramID(); chunkstore.Sum(root) != id {
			t.Fatal("accepted a root that does not hash to the engram")
		}
		// What decodes re-encodes to something that decodes the same.
		root2, rec2, err := DecodeCatalogChunk(EncodeCatalogChunk(root, rec))
		if err != nil || !bytes.Equal(root, root2) || rec2.Key != rec.Key {
			t.Fatalf("re-encode: %v", err)
		}
	})
}

func TestRecoverCatalogAfterIndexLoss(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := chunkstore.Init(dir, chunkstore.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	st, err := chunkstore.Open(ctx, dir, chunkstore.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rootA, idA := testEngram(t, st, 1, 5)
	rootB, idB := testEngram(t, st, 2, 40) // spans 20 pages
	commitWithCatalog(t, st, idA, rootA, &Record{Name: "a", Source: "/a"})
	commitWithCatalog(t, st, idA, rootA, &Record{Name: "a2", Source: "/a-again"})
	commitWithCatalog(t, st, idB, rootB, &Record{Name: "b", Labels: map[string]string{"k": "v"}})
	commitWithCatalog(t, st, idB, rootB, &Record{Name: "b", Source: "/b-newer"}) // the name moves here
	before, err := List(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	var catIDs []chunkstore.ID
	if err := CatalogChunkIDs(ctx, st, func(id chunkstore.ID) { catIDs = append(catIDs, id) }); err != nil {
		t.Fatal(err)
	}
	if have, err := st.HasMany(ctx, catIDs); err != nil || len(have) != 4 || !have[0] || !have[1] || !have[2] || !have[3] {
		t.Fatalf("CatalogChunkIDs gave %d IDs, held %v, %v", len(catIDs), have, err)
	}
	// An intact catalog: nothing to do.
	rep, err := RecoverCatalog(ctx, st)
	if err != nil || len(rep.Engrams) != 0 || rep.CatalogChunks != 4 {
		t.Fatalf("intact catalog: %+v, %v", rep, err)
	}
	st.Close()

	// The catalog lives in the store's journal objects (meta/); the cache
	// is rebuilt from them. Lose both, and a garbage cache on top.
	if err := os.RemoveAll(filepath.Join(dir, "meta")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cache", "index.db"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	rr, err := chunkstore.RepairDir(ctx, dir, chunkstore.OpenOptions{})
	if err != nil || rr.Problems != nil || !rr.MetadataLost {
		t.Fatalf("RepairDir: %+v, %v", rr, err)
	}
	st, err = chunkstore.Open(ctx, dir, chunkstore.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if l, _ := List(ctx, st); len(l) != 0 {
		t.Fatalf("catalog survived the loss of its journal: %d engrams", len(l))
	}
	rep, err = RecoverCatalog(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Engrams) != 2 || rep.Incomplete != 0 || rep.CatalogChunks != 4 || len(rep.Unreadable) != 0 {
		t.Fatalf("recovered %+v", rep)
	}
	// Roughly the catalog chunks and no data chunk are read.
	if rep.Candidates > 6 {
		t.Errorf("read %d candidate chunks for 4 catalog chunks", rep.Candidates)
	}
	after, err := List(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(before)
	b, _ := json.Marshal(after)
	if !bytes.Equal(a, b) {
		t.Fatalf("catalog differs after recovery:\nbefore %s\nafter  %s", a, b)
	}
	for name, want := range map[string]ID{"a": idA, "a2": idA, "b": idB} {
		if id, err := Resolve(ctx, st, name); err != nil || id != want {
			t.Errorf("name %s: %v, %v", name, id, err)
		}
	}
	e, _ := Get(ctx, st, idB)
	var bName string
	for _, r := range e.Records {
		if r.Name == "b" && r.Source == "/b-newer" {
			bName = r.Key
		}
	}
	err = st.View(ctx, func(tx chunkstore.MetaTx) error {
		if got := string(tx.Get(bucketNames, []byte("b"))); got != bName {
			t.Errorf("name b points at %s, want the newest record %s", got, bName)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []ID{idA, idB} {
		if err := Check(ctx, st, id, nil); err != nil {
			t.Error(err)
		}
	}
	// Recovery is idempotent.
	if rep, err := RecoverCatalog(ctx, st); err != nil || len(rep.Engrams) != 0 {
		t.Fatalf("second recovery: %+v, %v", rep, err)
	}
}

func TestRecoverCatalogReportsIncomplete(t *testing.T) {
	ctx := context.Background()
	st := chunkstore.NewMemory(chunkstore.Params{})
	root, id := testEngram(t, st, 3, 3)
	commitWithCatalog(t, st, id, root, &Record{Name: "x"})
	if err := Remove(ctx, st, id); err != nil {
		t.Fatal(err)
	}
	// Lose a data chunk: the engram comes back, named incomplete.
	r, _ := DecodeRoot(root)
	refs, err := LoadPage(ctx, st, r, r.Pages[0])
	if err != nil {
		t.Fatal(err)
	}
	live := func(c chunkstore.ID) bool { return c != refs[1].ID }
	if _, err := st.GC(ctx, live, chunkstore.GCOptions{}); err != nil {
		t.Fatal(err)
	}
	rep, err := RecoverCatalog(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Engrams) != 1 || rep.Incomplete != 1 || !strings.Contains(rep.Engrams[0].Incomplete, "1 chunk missing, 0 damaged") {
		t.Fatalf("%+v", rep)
	}
	if got, err := Resolve(ctx, st, "x"); err != nil || got != id {
		t.Fatalf("name x: %v, %v", got, err)
	}
}
