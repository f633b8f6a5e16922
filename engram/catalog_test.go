package engram

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
)

func newMem() *chunkstore.MemStore {
	return chunkstore.NewMemory(chunkstore.Params{Compression: "fastest", Chunking: chunkstore.DefaultChunkParams})
}

// commitRoot commits an empty engram of the given size under name.
func commitRoot(t *testing.T, st chunkstore.Store, size int64, name string, fp string) ID {
	t.Helper()
	enc := EncodeRoot(Root{Size: size})
	id := chunkstore.Sum(enc)
	if err := Commit(context.Background(), st, id, enc, &Record{Name: name, Source: "/x/" + name, Fingerprint: fp}); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestCatalog(t *testing.T) {
	ctx := context.Background()
	st := newMem()
	// Find two sizes whose IDs share MinPrefix hex digits, for an
	// ambiguous prefix.
	var ids []ID
	seen := map[string]ID{}
	for size := int64(512); len(ids) < 2; size += 512 {
		id := chunkstore.Sum(EncodeRoot(Root{Size: size}))
		if other, ok := seen[id.String()[:MinPrefix]]; ok {
			ids = []ID{other, id}
			break
		}
		seen[id.String()[:MinPrefix]] = id
	}
	var sizes []int64
	for _, want := range ids {
		for size := int64(512); ; size += 512 {
			if chunkstore.Sum(EncodeRoot(Root{Size: size})) == want {
				sizes = append(sizes, size)
				break
			}
		}
	}
	fp := strings.Repeat("ab", 32)
	a := commitRoot(t, st, sizes[0], "web-01", fp)
	b := commitRoot(t, st, sizes[1], "", "")

	for _, tc := range []struct {
		arg  string
		want ID
		err  error
	}{
		{"web-01", a, nil},
		{a.String(), a, nil},
		{b.String()[:12], b, nil},
		{a.String()[:MinPrefix], ID{}, ErrAmbiguous},
		// Shorter than MinPrefix: a missing short name ("01", "db") must
		// not select an engram whose ID starts with it.
		{b.String()[:MinPrefix-1], ID{}, ErrNotFound},
		{"nosuchname", ID{}, ErrNotFound},
		{"", ID{}, ErrNotFound},
	} {
		got, err := Resolve(ctx, st, tc.arg)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("Resolve(%q): %v, want %v", tc.arg, err, tc.err)
			}
			if tc.err == ErrAmbiguous && (!strings.Contains(err.Error(), a.String()) || !strings.Contains(err.Error(), b.String())) {
				t.Errorf("ambiguous prefix error does not list the candidates: %v", err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Resolve(%q) = %s, %v; want %s", tc.arg, got.Short(), err, tc.want.Short())
		}
	}

	var fpb [32]byte
	copy(fpb[:], []byte(strings.Repeat("\xab", 32)))
	if got, ok, err := LookupFingerprint(ctx, st, fpb); err != nil || !ok || got != a {
		t.Errorf("LookupFingerprint: %s %v %v", got.Short(), ok, err)
	}
	if err := ForgetFingerprints(ctx, st, a); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := LookupFingerprint(ctx, st, fpb); ok {
		t.Error("fingerprint still known after ForgetFingerprints")
	}

	entries, err := List(ctx, st)
	if err != nil || len(entries) != 2 {
		t.Fatalf("List: %d entries, %v", len(entries), err)
	}
	if err := Remove(ctx, st, a); err != nil {
		t.Fatal(err)
	}
	if _, err := Resolve(ctx, st, "web-01"); !errors.Is(err, ErrNotFound) {
		t.Errorf("name of a removed engram still resolves: %v", err)
	}
	if err := Remove(ctx, st, a); !errors.Is(err, ErrNotFound) {
		t.Errorf("removing twice: %v", err)
	}
	// The catalog chunk of the remaining engram is live for gc.
	var live []chunkstore.ID
	if err := LiveChunks(ctx, st, func(id chunkstore.ID) { live = append(live, id) }); err != nil {
		t.Fatal(err)
	}
	if len(live) != 1 {
		t.Errorf("LiveChunks reported %d chunks for one empty engram, want its catalog chunk", len(live))
	}
}

// TestNamesMoveAndDangle: Names gives each name to the engram it selects
// now (the newest ingest that gave it), oldest first, and skips a name
// whose record is gone instead of failing the listing.
func TestNamesMoveAndDangle(t *testing.T) {
	ctx := context.Background()
	st := newMem()
	a := commitRoot(t, st, 1<<20, "web", "")
	b := commitRoot(t, st, 2<<20, "web", "")
	commitRoot(t, st, 2<<20, "db", "")
	err := st.Update(ctx, func(tx chunkstore.MetaTx) error {
		return tx.Put(bucketNames, []byte("ghost"), []byte("no-such-record"))
	})
	if err != nil {
		t.Fatal(err)
	}
	names, err := Names(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names[b], ","); got != "web,db" || len(names[a]) != 0 {
		t.Errorf("names: %s %v, %s %v; want web,db on the newer only", a.Short(), names[a], b.Short(), names[b])
	}
	of, err := NamesOf(ctx, st, []ID{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if of[a] != "" || of[b] != "db" {
		t.Errorf("NamesOf: %q %q, want \"\" and db", of[a], of[b])
	}
}

// Names with control characters or invalid UTF-8 are refused, as git
// refuses such ref names; they stay valid by-name/ files of the mount, for
// the stores that already hold them.
func TestCheckName(t *testing.T) {
	for _, n := range []string{"web-01", "a b", "é", "✓ ok", "\u00a0nbsp", strings.Repeat("x", MaxNameLen)} {
		if err := CheckName(n); err != nil {
			t.Errorf("CheckName(%q) = %v, want nil", n, err)
		}
	}
	for _, n := range []string{"", ".", "..", "a/b", "/", "a\x00b", strings.Repeat("x", MaxNameLen+1)} {
		if err := CheckName(n); err == nil {
			t.Errorf("CheckName(%q) = nil, want an error", n)
		}
		if err := CheckFileName(n); err == nil {
			t.Errorf("CheckFileName(%q) = nil, want an error", n)
		}
	}
	for _, n := range []string{"evil\x1b[2J", "tab\there", "line\n", "del\x7f", "c1\u009b31m", "bad\xffutf8", "\xc3"} {
		if err := CheckName(n); err == nil {
			t.Errorf("CheckName(%q) = nil, want an error", n)
		}
		if err := CheckFileName(n); err != nil {
			t.Errorf("CheckFileName(%q) = %v, want nil (old stores hold such names)", n, err)
		}
	}
}

// A name spelled as another engram's full ID is refused, and in a store
// that holds one, the full ID still selects its own engram: `rm ID`
// removed the engram the name pointed at.
func TestFullIDBeatsName(t *testing.T) {
	ctx := context.Background()
	st := newMem()
	a := commitRoot(t, st, 1<<20, "a", "")
	b := commitRoot(t, st, 2<<20, a.String(), "")
	if err := CheckName(a.String()); err == nil {
		t.Errorf("CheckName(a full ID) = nil, want an error")
	}
	if got, err := Resolve(ctx, st, a.String()); err != nil || got != a {
		t.Errorf("Resolve(%s) = %s, %v; want the engram of that ID, not %s named so", a.Short(), got.Short(), err, b.Short())
	}
	// A name that is the full ID of no engram is still a name.
	c := commitRoot(t, st, 3<<20, strings.Repeat("ab", 32), "")
	if got, err := Resolve(ctx, st, strings.Repeat("ab", 32)); err != nil || got != c {
		t.Errorf("Resolve(a 64-hex name of no engram's ID) = %s, %v; want %s", got.Short(), err, c.Short())
	}
}
