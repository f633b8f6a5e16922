package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// patchFile applies fn to the bytes of file p.
func patchFile(t *testing.T, p string, fn func(b []byte)) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	fn(b)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// corruptMarked makes a qcow2 v3 image with data and sets its corrupt bit
// (bit 1 of incompatible_features, header bytes 72..79 big-endian).
func corruptMarked(t *testing.T, dir string) string {
	p := filepath.Join(dir, "marked.qcow2")
	qemutest.Create(t, "qcow2", p, "64M")
	qemutest.IO(t, p, "qcow2", pattern...)
	patchFile(t, p, func(b []byte) { b[79] |= 1 << 1 })
	if out := qemutest.Img(t, "info", p); !strings.Contains(out, "corrupt: true") {
		t.Fatalf("qemu-img info does not see the corrupt bit:\n%s", out)
	}
	return p
}

// An image marked corrupt is archived as QEMU reads it, with a warning,
// restores identical to `qemu-img convert` of it, and its record says so.
func TestIngestCorruptMarked(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	src := corruptMarked(t, dir)

	r := runEngram(t, store, "ingest", "--name", "sick", src)
	if r.code != 0 {
		t.Fatalf("ingest: exit %d: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "engram: "+src+": warning: image is marked corrupt") {
		t.Errorf("ingest stderr does not warn about the corrupt bit:\n%s", r.stderr)
	}
	id := strings.TrimSpace(r.stdout)

	want := filepath.Join(dir, "want.raw")
	qemutest.ToRaw(t, src, want)
	out := filepath.Join(dir, "out.qcow2")
	ok(t, store, "restore", id, "-o", out)
	qemutest.Compare(t, want, out, "-f", "raw", "-F", "qcow2")
	qemutest.Check(t, out)

	if s := ok(t, store, "show", "sick"); !strings.Contains(s, "marked corrupt") {
		t.Errorf("show does not say the source was marked corrupt:\n%s", s)
	}
	var shown struct {
		Records []struct {
			CorruptMarked bool `json:"corrupt_marked"`
			Chain         []struct {
				CorruptMarked bool `json:"corrupt_marked"`
			} `json:"chain"`
		} `json:"records"`
	}
	if err := json.Unmarshal([]byte(ok(t, store, "--json", "show", "sick")), &shown); err != nil {
		t.Fatal(err)
	}
	if len(shown.Records) != 1 || !shown.Records[0].CorruptMarked || !shown.Records[0].Chain[0].CorruptMarked {
		t.Errorf("show --json records do not say corrupt_marked: %+v", shown.Records)
	}
	var rows []struct {
		CorruptMarked bool `json:"corrupt_marked"`
	}
	if err := json.Unmarshal([]byte(ok(t, store, "--json", "ingest", "--reread", src)), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || !rows[0].CorruptMarked {
		t.Errorf("ingest --json rows %+v, want corrupt_marked", rows)
	}
	if s := ok(t, store, "inspect", src); !strings.Contains(s, "marked corrupt") {
		t.Errorf("inspect does not say marked corrupt:\n%s", s)
	}

	// --refuse-corrupt: the old behaviour, before anything is written.
	fails(t, filepath.Join(dir, "store2"), exitBadImage, []string{"ingest", "--refuse-corrupt", src}, src, "marked corrupt")
	if _, err := os.Stat(filepath.Join(dir, "store2")); err == nil {
		t.Error("a refused ingest created the store")
	}
}
