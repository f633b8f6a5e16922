package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// TestQuiet: -q silences progress, plans and notes, as restic's --quiet
// does, and never a warning or an error. restore --thin printed its plan
// table, and ingest and inspect printed the dirty-bit and probed-raw
// notes, under -q.
func TestQuiet(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	a := filepath.Join(dir, "a.qcow2")
	b := filepath.Join(dir, "b.qcow2")
	for _, p := range []string{a, b} {
		qemutest.Create(t, "qcow2", p, "8M")
		qemutest.IO(t, p, "qcow2", "write -P 0x11 0 4M")
	}
	qemutest.IO(t, b, "qcow2", "write -P 0x22 4M 64k")
	ok(t, store, "-q", "ingest", "--name", "a", a)
	ok(t, store, "-q", "ingest", "--name", "b", b)

	quiet := func(args ...string) {
		t.Helper()
		r := runEngram(t, store, append([]string{"-q"}, args...)...)
		if r.code != 0 || r.stdout != "" || r.stderr != "" {
			t.Errorf("engram -q %s: exit %d, stdout %q, stderr %q; want exit 0 and nothing printed", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
	}
	quiet("restore", "--thin", "--dry-run", "-o", filepath.Join(dir, "plan"), "a", "b")
	out := filepath.Join(dir, "thin")
	quiet("restore", "--thin", "-o", out, "a", "b")
	qemutest.Compare(t, b, filepath.Join(out, "b.qcow2"))

	dirty := filepath.Join(dir, "dirty.qcow2")
	qemutest.Create(t, "qcow2", dirty, "8M", "lazy_refcounts=on")
	// qemu-io's abort dies as a killed VM does, leaving the dirty bit.
	_ = exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 1M", "-c", "abort", dirty).Run()
	raw := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(raw, []byte(strings.Repeat("x", 1<<16)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dirty, raw} {
		if r := runEngram(t, store, "-q", "inspect", p); r.code != 0 || r.stderr != "" {
			t.Errorf("engram -q inspect %s: exit %d, stderr %q; want no note", p, r.code, r.stderr)
		}
		r := runEngram(t, store, "-q", "ingest", p)
		if r.code != 0 || r.stderr != "" || strings.Count(r.stdout, "\n") != 1 {
			t.Errorf("engram -q ingest %s: exit %d, stdout %q, stderr %q; want only the ID", p, r.code, r.stdout, r.stderr)
		}
		// Without -q the note is there.
		if r := runEngram(t, store, "inspect", p); !strings.Contains(r.stderr, "note: ") && !strings.Contains(r.stderr, "reading as raw") {
			t.Errorf("engram inspect %s: stderr %q, want its note", p, r.stderr)
		}
	}

	// A warning stays.
	marked := corruptMarked(t, dir)
	r := runEngram(t, store, "-q", "ingest", marked)
	if r.code != 0 || !strings.Contains(r.stderr, "warning: image is marked corrupt") {
		t.Errorf("engram -q ingest of an image marked corrupt: exit %d, stderr %q; want the warning", r.code, r.stderr)
	}
}
