package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// fleet builds base.qcow2 (random data with gaps) and n clones as qcow2
// overlays on it, each with its own writes.
func fleet(t *testing.T, dir string, n int) (base string, clones []string) {
	t.Helper()
	r := rand.New(rand.NewPCG(21, 22))
	const size = 96 << 20
	raw := make([]byte, size)
	for off := 0; off < 72<<20; off += 3 << 20 {
		for i := off; i < off+2<<20; i++ {
			raw[i] = byte(r.Uint32())
		}
	}
	rawPath := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	base = filepath.Join(dir, "base.qcow2")
	qemutest.Img(t, "convert", "-f", "raw", "-O", "qcow2", rawPath, base)
	os.Remove(rawPath)
	for i := range n {
		c := filepath.Join(dir, fmt.Sprintf("clone%d.qcow2", i))
		qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", c)
		qemutest.IO(t, c, "qcow2",
			fmt.Sprintf("write -P %d %dk 192k", 0x40+i, 1024+i*4096), // inside base data
			fmt.Sprintf("write -P %d 80M 1M", 0x60+i),                // where the base is empty
			fmt.Sprintf("write -z %dk 64k", 6144+i*512),              // zeros over base data
			fmt.Sprintf("write -P %d %dk 12k", 0x80+i, 9000+i*64),    // unaligned to chunks, 4 KiB-aligned
			"write -P 0x33 90M 512k",                                 // the same in every clone
		)
		clones = append(clones, c)
	}
	return base, clones
}

type ingestJSON struct {
	ID        string `json:"id"`
	Allocated int64  `json:"allocated_bytes"`
	Read      int64  `json:"read_bytes"`
	New       int64  `json:"new_bytes"`
	How       string `json:"how"`
}

func ingestRows(t *testing.T, store string, args ...string) []ingestJSON {
	t.Helper()
	var rows []ingestJSON
	out := ok(t, store, append([]string{"--json", "ingest"}, args...)...)
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("ingest --json: %v\n%s", err, out)
	}
	return rows
}

func TestFleet(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	base, clones := fleet(t, dir, 3)

	// The first clone brings its base in as a lower-layer engram.
	first := ingestRows(t, store, "--name", "clone0", clones[0])
	if first[0].How != "overlay" || first[0].Read < 48<<20 {
		t.Errorf("first clone: %+v, want its base read in full and the clone as an overlay on it", first[0])
	}
	// The base was ingested as the first clone's lower layer: now it is
	// recognised, and the other clones cost only their own clusters.
	if rows := ingestRows(t, store, base); rows[0].How != "unchanged" || rows[0].Read != 0 {
		t.Errorf("base after its clone: %+v, want unchanged", rows[0])
	}
	rows := ingestRows(t, store, clones[1], clones[2])
	for i, r := range rows {
		if r.How != "overlay" {
			t.Errorf("clone %d ingested as %q, want overlay", i+1, r.How)
		}
		// Own data is ~1.8 MiB; re-chunking reads a neighbourhood around it.
		if r.Read > 8<<20 || r.New > 3<<20 {
			t.Errorf("clone %d: read %d, new %d bytes; want only its own clusters", i+1, r.Read, r.New)
		}
	}
	if again := ingestRows(t, store, clones[1]); again[0].How != "unchanged" || again[0].ID != rows[0].ID {
		t.Errorf("re-ingest of clone1: %+v", again[0])
	}

	// Each chain-aware engram is the engram of the flattened image.
	flatStore := filepath.Join(dir, "flatstore")
	for i, c := range clones {
		flat := filepath.Join(dir, fmt.Sprintf("flat%d.qcow2", i))
		qemutest.Img(t, "convert", "-O", "qcow2", c, flat)
		id := strings.TrimSpace(ok(t, flatStore, "ingest", flat))
		want := first[0].ID
		if i > 0 {
			want = rows[i-1].ID
		}
		if id != want {
			t.Errorf("clone %d: chain-aware ID %s, flat %s", i, want[:12], id[:12])
		}
	}

	// Overlay restore: identical, and no more clusters than the clone's own.
	ids := []string{first[0].ID, rows[0].ID, rows[1].ID}
	for i, c := range clones {
		out := filepath.Join(dir, fmt.Sprintf("restored%d.qcow2", i))
		ok(t, store, "restore", ids[i], "-o", out, "--backing", base)
		qemutest.Compare(t, c, out)
		qemutest.Check(t, out)
		if own, got := ownData(t, c), ownData(t, out); got > own {
			t.Errorf("clone %d: overlay holds %d bytes of its own, source %d", i, got, own)
		}
	}

	// Overlay restore over a backing the store has never seen: it is read.
	other := filepath.Join(dir, "other-base.qcow2")
	qemutest.Img(t, "convert", "-O", "qcow2", "-o", "cluster_size=65536", base, other)
	qemutest.IO(t, other, "qcow2", "write -P 0x99 2M 64k")
	out := filepath.Join(dir, "on-other.qcow2")
	id1 := rows[0].ID
	ok(t, store, "restore", id1, "-o", out, "--backing", other)
	qemutest.Compare(t, clones[1], out)
	qemutest.Check(t, out)

	// --chain gives the same shape back.
	chainDir := filepath.Join(dir, "chain")
	ok(t, store, "restore", "--chain", id1, "-o", chainDir)
	top := filepath.Join(chainDir, "clone1.qcow2")
	qemutest.Compare(t, clones[1], top)
	if got, want := chainDepth(t, top), chainDepth(t, clones[1]); got != want {
		t.Errorf("restored chain has %d files, source %d", got, want)
	}

	// diff names the clone's changed ranges.
	d := ok(t, store, "diff", first[0].ID, id1)
	if !strings.Contains(d, "differ") {
		t.Errorf("diff output: %s", d)
	}

	// Unique bytes of an engram are what rm + gc frees.
	var st struct {
		Store struct {
			StoredBytes int64 `json:"stored_bytes"`
		} `json:"store"`
		PerEngram []struct {
			ID     string `json:"id"`
			Unique int64  `json:"unique_bytes"`
		} `json:"per_engram"`
	}
	if err := json.Unmarshal([]byte(ok(t, store, "--json", "stats")), &st); err != nil {
		t.Fatal(err)
	}
	var unique int64 = -1
	for _, e := range st.PerEngram {
		if e.ID == rows[1].ID {
			unique = e.Unique
		}
	}
	before := st.Store.StoredBytes
	ok(t, store, "rm", rows[1].ID)
	ok(t, store, "gc")
	if err := json.Unmarshal([]byte(ok(t, store, "--json", "stats")), &st); err != nil {
		t.Fatal(err)
	}
	if freed := before - st.Store.StoredBytes; freed != unique || unique <= 0 {
		t.Errorf("stats said clone2 has %d unique bytes; rm + gc freed %d", unique, freed)
	}
	ok(t, store, "verify")
	ok(t, store, "restore", id1, "-o", filepath.Join(dir, "after-gc.qcow2"))
	qemutest.Compare(t, clones[1], filepath.Join(dir, "after-gc.qcow2"))
}

// ownData is the guest bytes an image allocates itself (depth 0), as data.
func ownData(t *testing.T, path string) int64 {
	var n int64
	for _, e := range qemutest.Map(t, path) {
		if e.Depth == 0 && e.Present {
			n += e.Length
		}
	}
	return n
}

func chainDepth(t *testing.T, path string) int {
	out := qemutest.Img(t, "info", "--backing-chain", "--output=json", path)
	var infos []map[string]any
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatal(err)
	}
	return len(infos)
}

// --chain of an overlay whose parent engram was removed writes the chain
// as far as it still exists: the overlay standalone, with a note, rather
// than failing with "no such engram" about an ID the user never gave.
func TestRestoreChainParentRemoved(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	base, clones := fleet(t, dir, 1)
	baseID := strings.TrimSpace(ok(t, store, "ingest", base))
	cloneID := strings.TrimSpace(ok(t, store, "ingest", clones[0]))
	ok(t, store, "rm", baseID)
	out := filepath.Join(dir, "chain")
	r := runEngram(t, store, "restore", "--chain", cloneID, "-o", out)
	if r.code != 0 || !strings.Contains(r.stderr, "was removed") {
		t.Fatalf("restore --chain with its parent removed: exit %d: %s", r.code, r.stderr)
	}
	top := filepath.Join(out, filepath.Base(clones[0]))
	qemutest.Compare(t, clones[0], top)
	if got := chainDepth(t, top); got != 1 {
		t.Errorf("restored chain has %d files, want the overlay standalone", got)
	}
}
