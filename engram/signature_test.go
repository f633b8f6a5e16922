package engram

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
)

// commitChunks stores n chunks of 8 KiB (seeded) as one engram with its
// signature from the ingest-side builder, and returns its ID and root.
func commitChunks(t *testing.T, st chunkstore.Store, seed, n int, withSig bool) (ID, Root) {
	t.Helper()
	ctx := context.Background()
	var pages []chunkstore.Chunk
	b := NewBuilder(int64(n)*8192, func(c chunkstore.Chunk) error { pages = append(pages, c); return nil })
	sk := NewSketchBuilder()
	var data []chunkstore.Chunk
	for i := 0; i < n; i++ {
		d := bytes.Repeat([]byte(fmt.Sprintf("%d-%d.", seed, i)), 8192)[:8192]
		id := chunkstore.Sum(d)
		data = append(data, chunkstore.Chunk{ID: id, Data: d})
		ref := ChunkRef{Offset: int64(i) * 8192, Length: 8192, ID: id}
		if err := b.Add(ref); err != nil {
			t.Fatal(err)
		}
		sk.Add(ref)
	}
	root, enc, id, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutMany(ctx, append(data, pages...)); err != nil {
		t.Fatal(err)
	}
	rec := &Record{Source: fmt.Sprintf("/x/%d", seed)}
	if withSig {
		rec.Signature = sk.Encode()
	}
	if err := Commit(ctx, st, id, enc, rec); err != nil {
		t.Fatal(err)
	}
	return id, root
}

func TestSignatureLifecycle(t *testing.T) {
	ctx := context.Background()
	st := newMem()
	a, rootA := commitChunks(t, st, 1, 300, true)
	b, _ := commitChunks(t, st, 2, 200, false)

	sa, err := LoadSketch(ctx, st, a)
	if err != nil {
		t.Fatal(err)
	}
	if sa.Chunks != 300 || sa.Weight != 600 {
		t.Errorf("signature header: %d chunks, weight %d; want 300, 600", sa.Chunks, sa.Weight)
	}
	// From the manifest: the same bytes as the ingest-side builder.
	built, err := BuildSketch(ctx, st, rootA)
	if err != nil || !bytes.Equal(built.Encode(), sa.Encode()) {
		t.Errorf("BuildSketch differs from the committed signature (%v)", err)
	}
	if _, err := LoadSketch(ctx, st, b); !errors.Is(err, ErrNoSignature) {
		t.Errorf("engram without signature: %v, want ErrNoSignature", err)
	}
	have, missing, err := LoadSketches(ctx, st)
	if err != nil || len(have) != 1 || len(missing) != 1 || missing[0] != b {
		t.Errorf("LoadSketches: %d have, missing %v, %v", len(have), missing, err)
	}
	// A commit without a signature (a reused ingest) keeps the one there.
	if err := Commit(ctx, st, a, EncodeRoot(rootA), &Record{Source: "/again", Reused: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSketch(ctx, st, a); err != nil {
		t.Errorf("after a reused commit: %v", err)
	}
	rep, err := RebuildSketches(ctx, st, false)
	if err != nil || len(rep.Built) != 1 || rep.Built[0] != b.String() || len(rep.Failed) != 0 {
		t.Errorf("rebuild: %+v, %v", rep, err)
	}
	if _, err := LoadSketch(ctx, st, b); err != nil {
		t.Errorf("after rebuild: %v", err)
	}
	// A future version is "no signature" (recompute), damage is an error.
	if err := st.Update(ctx, func(tx chunkstore.MetaTx) error {
		enc := sa.Encode()
		enc[4] = 9
		return tx.Put(bucketSketches, b[:], enc)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSketch(ctx, st, b); !errors.Is(err, ErrNoSignature) {
		t.Errorf("version 9: %v, want ErrNoSignature", err)
	}
	if err := st.Update(ctx, func(tx chunkstore.MetaTx) error { return tx.Put(bucketSketches, b[:], []byte("ENGS\x01\x00")) }); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadSketches(ctx, st); err == nil || errors.Is(err, ErrNoSignature) {
		t.Errorf("damaged signature: %v, want an error naming it", err)
	}
	// The rebuild the error asks for recomputes the damaged one alone.
	if rep, err := RebuildSketches(ctx, st, false); err != nil || len(rep.Built) != 1 || rep.Built[0] != b.String() || rep.Engrams != 2 {
		t.Errorf("rebuild of a damaged signature: %+v, %v", rep, err)
	}
	if _, err := LoadSketch(ctx, st, b); err != nil {
		t.Errorf("after rebuilding a damaged signature: %v", err)
	}
	if rep, err := RebuildSketches(ctx, st, true); err != nil || len(rep.Built) != 2 {
		t.Errorf("forced rebuild: %+v, %v", rep, err)
	}
	// Remove deletes the signature with the engram.
	if err := Remove(ctx, st, a); err != nil {
		t.Fatal(err)
	}
	if err := st.View(ctx, func(tx chunkstore.MetaTx) error {
		if tx.Get(bucketSketches, a[:]) != nil {
			return errors.New("signature of a removed engram is still there")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if err := Commit(ctx, st, b, EncodeRoot(Root{Size: 1}), &Record{Signature: []byte("junk")}); err == nil {
		t.Error("commit with a bad signature succeeded")
	}
}
