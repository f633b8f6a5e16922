package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// TestGlobalFlagAfterCommand: a global flag given after the command is
// named in one line as a global one that goes before the command (exit 2),
// not reported as unknown; a command's own flag of the same spelling and
// anything after "--" are the command's.
func TestGlobalFlagAfterCommand(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	ok(t, store, "ingest", "--name", "a", img)
	for _, c := range []struct {
		flag string
		args []string
	}{
		{"-q", []string{"ingest", img, "-q"}},
		{"--store", []string{"ls", "--store", store}},
		{"--store", []string{"ls", "--store=" + store}},
		{"--json", []string{"show", "a", "--json"}},
		{"--lock-timeout", []string{"restore", "a", "-o", filepath.Join(dir, "out.qcow2"), "--lock-timeout", "1s"}},
	} {
		args := c.args
		r := runEngram(t, store, args...)
		if r.code != exitUsage {
			t.Errorf("engram %s: exit %d, want %d", strings.Join(args, " "), r.code, exitUsage)
		}
		msg := strings.TrimSpace(r.stderr)
		if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, c.flag+" is a global flag") || !strings.Contains(msg, "before the command") {
			t.Errorf("engram %s: stderr %q, want one line naming a global flag", strings.Join(args, " "), r.stderr)
		}
	}
	// A flag's value that looks like a global flag is the flag's.
	ok(t, store, "ingest", "--name", "-q", img)
}

// TestLabelGivenTwice: one key with two values is refused, naming the key
// (exit 2), and nothing is ingested; the same pair twice is harmless.
func TestLabelGivenTwice(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	ok(t, store, "init")
	fails(t, store, exitUsage, []string{"ingest", "--label", "role=web", "--label", "role=db", img}, `"role"`, "twice")
	if out := ok(t, store, "-q", "ls"); strings.TrimSpace(out) != "" {
		t.Errorf("refused ingest stored %q", out)
	}
	ok(t, store, "ingest", "--label", "role=web", "--label", "role=web", img)
}

// TestLabelValueWithComma: a label value may hold a comma (a list of
// owners, a qemu-style option string); urfave/cli's slice flags split
// "note=a,b" into "note=a" and "b" by default.
func TestLabelValueWithComma(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	ok(t, store, "ingest", "--name", "a", "--label", "owners=ann,bob", img)
	if out := ok(t, store, "show", "a"); !strings.Contains(out, "owners=ann,bob") {
		t.Errorf("show: label lost its comma:\n%s", out)
	}
}
