package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/internal/qemutest"
)

// familyImages builds, with qemu-img and qemu-io, a template, three clones
// as overlays on it and a clone of the first clone, each writing random
// data of its own (so it holds more than its parent) and overwriting a
// little of what it inherited. It returns the files by name.
func familyImages(t *testing.T, dir string) (names []string, files map[string]string, parent map[string]string) {
	t.Helper()
	r := rand.New(rand.NewPCG(31, 32))
	const size = 64 << 20
	raw := make([]byte, size)
	for i := 0; i < 12; i++ {
		for j := i * 4 << 20; j < i*4<<20+2<<20; j++ {
			raw[j] = byte(r.Uint32())
		}
	}
	rawPath := filepath.Join(dir, "template.raw")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	files = map[string]string{"template": filepath.Join(dir, "template.qcow2")}
	qemutest.Img(t, "convert", "-f", "raw", "-O", "qcow2", rawPath, files["template"])
	os.Remove(rawPath)
	randFile := func(name string, n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	parent = map[string]string{"c0": "template", "c1": "template", "c2": "template", "cc": "c0"}
	names = []string{"template", "c0", "c1", "c2", "cc"}
	for i, name := range names[1:] {
		p := parent[name]
		files[name] = filepath.Join(dir, name+".qcow2")
		qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", filepath.Base(files[p]), "-F", "qcow2", files[name])
		own := randFile(name+".own", 2<<20)
		small := randFile(name+".small", 128<<10)
		cmds := []string{
			fmt.Sprintf("write -s %s %dM 2M", own, 49+3*i),                 // new data where the parent has none
			fmt.Sprintf("write -s %s %dk 128k", small, 1024+i*4096+i*4096), // over inherited data
			fmt.Sprintf("write -z %dk 64k", 6144+i*4096),                   // zeros over inherited data
		}
		if name == "cc" {
			cmds[1] = fmt.Sprintf("write -s %s 49M 128k", small) // over c0's own data
		}
		qemutest.IO(t, files[name], "qcow2", cmds...)
	}
	return names, files, parent
}

// dropSignatures deletes every signature of the store at dir, as a store
// made before signatures would be.
func dropSignatures(t *testing.T, dir string) {
	t.Helper()
	ctx := context.Background()
	st, err := chunkstore.Open(ctx, dir, chunkstore.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	bucket := []byte("engram.sketches")
	err = st.Update(ctx, func(tx chunkstore.MetaTx) error {
		var keys [][]byte
		if err := tx.ForEach(bucket, nil, func(k, _ []byte) error { keys = append(keys, bytes.Clone(k)); return nil }); err != nil {
			return err
		}
		for _, k := range keys {
			if err := tx.Delete(bucket, k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

type lineageJSON struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Parent *struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	} `json:"parent"`
	Method  string `json:"method"`
	Figures *struct {
		Name      string  `json:"name"`
		Exact     bool    `json:"exact"`
		Contained float64 `json:"contained"`
	} `json:"figures"`
	RunnerUp *struct {
		Name string `json:"name"`
	} `json:"runner_up"`
}

func lineageOf(t *testing.T, store, name string) []lineageJSON {
	t.Helper()
	var rows []lineageJSON
	out := ok(t, store, "--json", "lineage", name)
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) == 0 {
		t.Fatalf("lineage --json %s: %v\n%s", name, err, out)
	}
	return rows
}

// TestLineageAndThinRestore is the fleet view end to end: a family ingested
// as chains (parents from overlay records), the same images flattened and
// ingested flat (parents from content: the template, not a sibling, and the
// right ancestor for a clone of a clone), and `restore --thin` of the flat
// set giving back template + overlays, identical, about as small as the
// originals.
func TestLineageAndThinRestore(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	names, files, parent := familyImages(t, dir)

	// As chains: the records decide.
	chainStore := filepath.Join(dir, "chains")
	for _, n := range names {
		ok(t, chainStore, "-q", "ingest", "--name", n, files[n])
	}
	if rows := lineageOf(t, chainStore, "cc"); rows[0].Method != "overlay-record" || rows[0].Parent == nil || rows[0].Parent.Name != "c0" {
		t.Errorf("chain-ingested cc: %+v, want parent c0 from the overlay record", rows[0])
	}

	// A store made before signatures: similar says what to run; a reused
	// ingest builds the missing signature; sketch --rebuild the rest.
	dropSignatures(t, chainStore)
	fails(t, chainStore, 1, []string{"similar", "c0"}, "no signature", "sketch --rebuild")
	ok(t, chainStore, "-q", "ingest", files["template"])
	var sigRows []struct {
		ID      string `json:"id"`
		Missing string `json:"missing"`
	}
	if err := json.Unmarshal([]byte(ok(t, chainStore, "--json", "sketch")), &sigRows); err != nil {
		t.Fatal(err)
	}
	missing := 0
	for _, s := range sigRows {
		if s.Missing != "" {
			missing++
		}
	}
	if len(sigRows) != len(names) || missing != len(names)-1 {
		t.Errorf("after dropping signatures and re-ingesting the template: %d of %d missing, want %d", missing, len(sigRows), len(names)-1)
	}
	if out := ok(t, chainStore, "sketch", "--rebuild"); !strings.Contains(out, "4 computed") {
		t.Errorf("sketch --rebuild: %s", out)
	}
	ok(t, chainStore, "similar", "c0")

	// restore --backing auto: the best engram whose source is on disk
	// unchanged; cc's is c0's file (its own data is all it holds).
	autoDir := filepath.Join(dir, "auto")
	os.Mkdir(autoDir, 0o755)
	for _, n := range []string{"c1", "cc"} {
		out := filepath.Join(autoDir, n+".qcow2")
		ok(t, chainStore, "restore", n, "-o", out, "--backing", "auto")
		qemutest.Compare(t, files[n], out)
		qemutest.Check(t, out)
		var hdr struct {
			Backing string `json:"backing-filename"`
		}
		if err := json.Unmarshal([]byte(qemutest.Img(t, "info", "--output=json", out)), &hdr); err != nil {
			t.Fatal(err)
		}
		if want := "../" + parent[n] + ".qcow2"; hdr.Backing != want {
			t.Errorf("--backing auto for %s: backing %q, want %q", n, hdr.Backing, want)
		}
	}
	// The template: whatever backs it (a clone holds it almost whole), identical.
	ok(t, chainStore, "restore", "template", "-o", filepath.Join(autoDir, "template.qcow2"), "--backing", "auto")
	qemutest.Compare(t, files["template"], filepath.Join(autoDir, "template.qcow2"))

	// Flattened and ingested flat: content decides.
	flatDir := filepath.Join(dir, "flat")
	os.Mkdir(flatDir, 0o755)
	flatStore := filepath.Join(dir, "flatstore")
	var origTotal int64
	for _, n := range names {
		fi, err := os.Stat(files[n])
		if err != nil {
			t.Fatal(err)
		}
		origTotal += fi.Size()
		flat := filepath.Join(flatDir, n+".qcow2")
		qemutest.Img(t, "convert", "-O", "qcow2", files[n], flat)
		ok(t, flatStore, "-q", "ingest", "--name", n, flat)
	}
	for _, n := range names {
		rows := lineageOf(t, flatStore, n)
		d := rows[0]
		want := parent[n]
		if want == "" {
			if d.Parent != nil || d.Method != "none" {
				t.Errorf("%s: %+v, want a family root", n, d)
			}
			continue
		}
		if d.Method != "content" || d.Parent == nil || d.Parent.Name != want || d.Figures == nil || !d.Figures.Exact {
			t.Errorf("flat %s: parent %+v by %s (figures %+v), want %s by content, confirmed exactly", n, d.Parent, d.Method, d.Figures, want)
		}
		// The whole line of ancestors follows.
		if n == "cc" && (len(rows) != 3 || rows[1].Name != "c0" || rows[2].Name != "template") {
			t.Errorf("lineage of cc: %+v, want cc <- c0 <- template", rows)
		}
	}
	var tree []lineageJSON
	if err := json.Unmarshal([]byte(ok(t, flatStore, "--json", "tree")), &tree); err != nil || len(tree) != len(names) {
		t.Fatalf("tree --json: %v, %d rows", err, len(tree))
	}
	for _, d := range tree {
		got := ""
		if d.Parent != nil {
			got = d.Parent.Name
		}
		if got != parent[d.Name] {
			t.Errorf("tree: %s under %q, want %q", d.Name, got, parent[d.Name])
		}
	}
	text := ok(t, flatStore, "tree")
	if !strings.Contains(text, "template") || !strings.Contains(text, "  ") {
		t.Errorf("tree:\n%s", text)
	}

	// similar: c0's closest is cc (it holds all of c0), then siblings or the template.
	var sim struct {
		Similar []struct {
			Name  string  `json:"name"`
			Exact bool    `json:"exact"`
			AInB  float64 `json:"this_in_it"`
		} `json:"similar"`
	}
	if err := json.Unmarshal([]byte(ok(t, flatStore, "--json", "similar", "--exact", "--top", "4", "c0")), &sim); err != nil {
		t.Fatal(err)
	}
	if len(sim.Similar) != 4 || sim.Similar[0].Name != "cc" || !sim.Similar[0].Exact || sim.Similar[0].AInB < 0.9 {
		t.Errorf("similar c0: %+v, want cc first holding nearly all of c0", sim.Similar)
	}
	ok(t, flatStore, "similar", "c0")

	// Signatures: one per engram, 4032 bytes; --rebuild --force redoes them.
	var sks []struct {
		Bytes int `json:"encoded_bytes"`
	}
	if err := json.Unmarshal([]byte(ok(t, flatStore, "--json", "sketch")), &sks); err != nil || len(sks) != len(names) {
		t.Fatalf("sketch --json: %v, %d rows", err, len(sks))
	}
	for _, s := range sks {
		if s.Bytes != 4032 {
			t.Errorf("signature of %d bytes, want 4032", s.Bytes)
		}
	}
	if out := ok(t, flatStore, "sketch", "--rebuild", "--force"); !strings.Contains(out, "5 computed") {
		t.Errorf("sketch --rebuild --force: %s", out)
	}
	fails(t, flatStore, 3, []string{"similar", "nosuch"}, "nosuch")
	fails(t, flatStore, 2, []string{"similar", "--top", "0", "c0"}, "--top")
	fails(t, flatStore, 2, []string{"restore", "--thin", "c0"}, "-o DIR")
	fails(t, flatStore, 2, []string{"restore", "--dry-run", "c0", "-o", "x.qcow2"}, "--thin")
	fails(t, flatStore, 2, []string{"sketch", "--force"}, "--rebuild")

	// restore --thin: the plan first, then the files.
	out := filepath.Join(dir, "thin")
	plan := ok(t, flatStore, "restore", "--thin", "--dry-run", "-o", out, "template", "c0", "c1", "c2", "cc")
	if _, err := os.Stat(out); err == nil {
		t.Errorf("--dry-run created %s", out)
	}
	if !strings.Contains(plan, "less than all flat") {
		t.Errorf("plan:\n%s", plan)
	}
	ok(t, flatStore, "restore", "--thin", "-o", out, "template", "c0", "c1", "c2", "cc")
	// Again without --force: refused before anything is written.
	fails(t, flatStore, 6, []string{"restore", "--thin", "-o", out, "template", "c0"}, "template.qcow2")
	var total int64
	for _, n := range names {
		f := filepath.Join(out, n+".qcow2")
		qemutest.Compare(t, files[n], f)
		qemutest.Check(t, f)
		info := qemutest.Img(t, "info", "--output=json", f)
		var hdr struct {
			Backing string `json:"backing-filename"`
		}
		if err := json.Unmarshal([]byte(info), &hdr); err != nil {
			t.Fatal(err)
		}
		want := ""
		if p := parent[n]; p != "" {
			want = p + ".qcow2"
		}
		if hdr.Backing != want {
			t.Errorf("thin %s: backing %q, want %q", n, hdr.Backing, want)
		}
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
	}
	// The catalog's journal and the cache lost: repair brings the catalog
	// back from its chunks and the signatures from the manifests.
	for _, d := range []string{"meta", "cache"} {
		if err := os.RemoveAll(filepath.Join(flatStore, d)); err != nil {
			t.Fatal(err)
		}
	}
	if out := ok(t, flatStore, "repair"); !strings.Contains(out, "signatures: 5 rebuilt") {
		t.Errorf("repair after losing the catalog:\n%s", out)
	}
	if rows := lineageOf(t, flatStore, "cc"); rows[0].Parent == nil || rows[0].Parent.Name != "c0" {
		t.Errorf("after repair, cc: %+v", rows[0])
	}
	t.Logf("thin restore: %d bytes on disk, original template + overlays %d", total, origTotal)
	if float64(total) > 1.1*float64(origTotal) {
		t.Errorf("thin restore: %d bytes on disk, more than 110%% of the original template + overlays (%d)", total, origTotal)
	}
}
