package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/engram-vm/engram/chunkstore"
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

// TestCountsAgree: a count of one reads "1 range", "1 engram", not
// "1 ranges" (diff, verify, repair, stats, show).
func TestCountsAgree(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	a, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	b := filepath.Join(dir, "b.qcow2")
	qemutest.Img(t, "convert", "-O", "qcow2", a, b)
	qemutest.IO(t, b, "qcow2", "write -P 0x12 4096 1")
	ok(t, store, "ingest", "--name", "a", a)
	ok(t, store, "ingest", "--name", "b", b)
	out := ok(t, store, "diff", "a", "b")
	if !strings.Contains(out, "1 byte differs") || !strings.Contains(out, "1 range, ") {
		t.Errorf("diff:\n%s", out)
	}
	ok(t, store, "rm", "b")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"verify"}, "ok: 1 engram verified"},
		{[]string{"repair"}, "ok: 1 engram complete"},
		{[]string{"show", "a"}, "1 manifest page"},
	} {
		if out := ok(t, store, c.args...); !strings.Contains(out, c.want) {
			t.Errorf("engram %s: no %q in\n%s", strings.Join(c.args, " "), c.want, out)
		}
	}
	for _, out := range []string{ok(t, store, "stats"), ok(t, store, "show", "a"), ok(t, store, "repair")} {
		for _, bad := range []string{" 1 chunks", " 1 packs", " 1 engrams", " 1 records", " 1 frames", " 1 intact frames"} {
			if strings.Contains(out, bad) {
				t.Errorf("%q in\n%s", bad, out)
			}
		}
	}
}

// TestBadChunkingNamesConfig: chunking parameters in config.json that this
// version cannot cut with fail an ingest naming the store's config.json,
// not the image; restore still works (a newer version's store must).
func TestBadChunkingNamesConfig(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	a, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	ok(t, store, "ingest", "--name", "a", a)
	b := filepath.Join(dir, "b.qcow2")
	qemutest.Img(t, "convert", "-O", "qcow2", a, b)
	qemutest.IO(t, b, "qcow2", "write -P 0x12 0 4k")
	cfg := filepath.Join(store, "config.json")
	orig, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ from, to string }{
		{`"avg": 65536`, `"avg": 1000`},
		{`"algorithm": "aligned-cdc-xxh3"`, `"algorithm": "fastcdc-v9"`},
		// A value of the wrong JSON type is the same fault, not a
		// store that no command can open.
		{`"avg": 65536`, `"avg": "65536"`},
		{`"algorithm": "aligned-cdc-xxh3"`, `"algorithm": 7`},
	} {
		bad := strings.Replace(string(orig), c.from, c.to, 1)
		if bad == string(orig) {
			t.Fatalf("config.json has no %s:\n%s", c.from, orig)
		}
		if err := os.WriteFile(cfg, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		r := runEngram(t, store, "ingest", b)
		if r.code != exitFailure || !strings.Contains(r.stderr, cfg) || strings.Contains(r.stderr, "b.qcow2") {
			t.Errorf("%s: exit %d, stderr %q; want 1 naming %s and not the image", c.to, r.code, r.stderr, cfg)
		}
		out := filepath.Join(dir, "out.qcow2")
		ok(t, store, "restore", "--force", "a", "-o", out)
		qemutest.Compare(t, a, out)
	}
}

// TestRestoreToTerminalRefused: `restore -o -` with stdout a terminal is
// refused (exit 2) before anything is written, as restic dump does: gigabytes
// of raw disk on a terminal are never what the user meant.
func TestRestoreToTerminalRefused(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	a, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	ok(t, store, "ingest", "--name", "a", a)
	tty := openPTY(t)
	cmd := engramCmd(store, "restore", "a", "-o", "-")
	var se strings.Builder
	cmd.Stdout, cmd.Stderr = tty, &se
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitUsage || !strings.Contains(se.String(), "terminal") {
		t.Errorf("restore -o - to a terminal: %v, stderr %q; want exit 2 naming the terminal", err, se.String())
	}
}

// openPTY returns the terminal side of a new pseudo-terminal (its master
// is closed with it at the end of the test).
func openPTY(t *testing.T) *os.File {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("ptsname: %v", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open pty: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	// Drain what reaches the terminal, so a write never blocks.
	go io.Copy(io.Discard, m)
	return s
}

// TestMissingImageNamedOnce: an ingest argument that does not exist is
// named once ("x.qcow2: no such file or directory"), not "x: stat x: ...".
func TestMissingImageNamedOnce(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	missing := filepath.Join(dir, "missing.qcow2")
	fails(t, store, exitFailure, []string{"ingest", missing}, missing+": no such file or directory")
	if r := runEngram(t, store, "ingest", missing); strings.Count(r.stderr, missing) != 1 {
		t.Errorf("stderr %q names %s more than once", r.stderr, missing)
	}
}

// TestChainThinOutputNotDirectory: --chain and --thin write into the
// directory -o; an -o that is a file is refused as a bad command line
// (exit 2) saying so, not "mkdir F: not a directory", and left alone.
func TestChainThinOutputNotDirectory(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	a, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	ok(t, store, "ingest", "--name", "a", a)
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"--chain", "--thin"} {
		fails(t, store, exitUsage, []string{"restore", mode, "a", "-o", file}, "-o "+file, "not a directory")
		if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
			t.Errorf("restore %s changed %s: %q %v", mode, file, b, err)
		}
	}
}

// TestHelpWithArguments: --help (or -h) with arguments shows the command's
// help and exits 0, as --help alone does; it neither runs the command nor
// takes the arguments for help topics.
func TestHelpWithArguments(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	for _, args := range [][]string{
		{"ingest", "--help", img},
		{"ingest", img, "-h"},
		{"restore", "a", "-o", filepath.Join(dir, "out.qcow2"), "--help"},
		{"ls", "--help", "x"},
		{"gc", "-h", "x"},
	} {
		r := runEngram(t, store, args...)
		if r.code != 0 || !strings.Contains(r.stdout, "engram "+args[0]+" - ") || r.stderr != "" {
			t.Errorf("engram %s: exit %d, stdout %.60q, stderr %q; want its help and exit 0", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
	}
	if _, err := os.Stat(store); err == nil {
		t.Errorf("a --help made the store %s", store)
	}
}

// TestIngestDirNamesNonQcow2: a directory ingest names each *.qcow2 that is
// not qcow2 in one line, ingests the rest and exits non-zero.
func TestIngestDirNamesNonQcow2(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	imgs := filepath.Join(dir, "imgs")
	if err := os.Mkdir(imgs, 0o755); err != nil {
		t.Fatal(err)
	}
	good, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	if err := os.Rename(good, filepath.Join(imgs, "good.qcow2")); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(imgs, "bad.qcow2")
	if err := os.WriteFile(bad, []byte("not an image"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(imgs, "notes.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runEngram(t, store, "-q", "ingest", imgs)
	if r.code != exitFailure || strings.Count(r.stderr, bad) != 1 || strings.Contains(r.stderr, "notes.txt") || !strings.Contains(r.stderr, "1 file named *.qcow2 was skipped") {
		t.Errorf("exit %d, stderr %q; want 1 naming %s once", r.code, r.stderr, bad)
	}
	if ids := strings.Fields(r.stdout); len(ids) != 1 {
		t.Errorf("stdout %q, want the good image's ID", r.stdout)
	}
	if out := ok(t, store, "ls"); !strings.Contains(out, "good.qcow2") {
		t.Errorf("ls: %s", out)
	}
}

// TestGCKeptUnindexedPackExits1: gc that keeps a pack whose index segment
// is lost (engrams need its chunks) finishes its work, then exits 1 with
// one line naming the pack and engram repair; after repair gc exits 0.
func TestGCKeptUnindexedPackExits1(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img, _ := qcowWith("4M", nil, "write -P 0x11 0 64k", "write -P 0x22 1M 64k")(t, dir)
	ok(t, store, "ingest", "--name", "a", img)
	segs, err := os.ReadDir(filepath.Join(store, "index"))
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for i, e := range segs {
		s := filepath.Join(dir, "s"+strconv.Itoa(i))
		if out, err := exec.Command("cp", "-a", store, s).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
		if err := os.Remove(filepath.Join(s, "index", e.Name())); err != nil {
			t.Fatal(err)
		}
		r := runEngram(t, s, "gc")
		if !strings.Contains(r.stderr, "kept") {
			continue // a manifest's pack: gc refuses to run, which is tested elsewhere
		}
		kept++
		msg := strings.TrimSpace(r.stderr)
		if r.code != exitFailure || strings.Count(msg, "\n") != 0 || !strings.Contains(msg, e.Name()) || !strings.Contains(msg, "run engram repair") {
			t.Errorf("segment %s lost: gc exit %d, stderr %q; want 1 and one line naming the pack and engram repair", e.Name(), r.code, r.stderr)
		}
		ok(t, s, "repair")
		ok(t, s, "gc")
		ok(t, s, "verify")
	}
	if kept == 0 {
		t.Fatalf("no lost segment made gc keep a pack (%d segments)", len(segs))
	}
}

// TestJSONEmptyListsAreArrays: --json prints an empty list as [], not
// null, so `jq '.[]'` works on an empty store or a clean verify.
func TestJSONEmptyListsAreArrays(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	ok(t, store, "init")
	for _, args := range [][]string{{"tree"}, {"sketch"}, {"ls"}} {
		if out := strings.TrimSpace(ok(t, store, append([]string{"--json"}, args...)...)); out != "[]" {
			t.Errorf("--json %s on an empty store: %q, want []", args[0], out)
		}
	}
	img, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	ok(t, store, "ingest", "--name", "a", img)
	for _, args := range [][]string{{"verify"}, {"diff", "a", "a"}} {
		if out := ok(t, store, append([]string{"--json"}, args...)...); strings.Contains(out, "null") {
			t.Errorf("--json %s: %s, want [] for empty lists", args[0], out)
		}
	}
}

// TestVerifyWaitsForGC: a whole-store verify holds the store lock shared,
// so while gc holds it alone verify waits and then says the store is
// busy (exit 5) rather than reading packs gc is deleting; a verify of
// named engrams reads only the index and runs beside gc.
func TestVerifyWaitsForGC(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	ok(t, store, "ingest", "--name", "a", img)
	gc, err := chunkstore.Open(context.Background(), store, chunkstore.OpenOptions{Exclusive: true, Command: "engram gc"})
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	r := runEngram(t, store, "--lock-timeout", "200ms", "verify")
	if r.code != exitLocked || !strings.Contains(r.stderr, "engram gc") {
		t.Errorf("verify beside gc: exit %d, stderr %q; want %d naming the holder", r.code, r.stderr, exitLocked)
	}
	ok(t, store, "--lock-timeout", "200ms", "verify", "a")
	// 0 does not wait (as flock -w 0); it was chunkstore's "default", 10m.
	done := make(chan result, 1)
	go func() { done <- runEngram(t, store, "--lock-timeout", "0", "verify") }()
	select {
	case r := <-done:
		if r.code != exitLocked {
			t.Errorf("--lock-timeout 0 beside gc: exit %d, stderr %q; want %d", r.code, r.stderr, exitLocked)
		}
	case <-time.After(time.Minute):
		t.Fatal("--lock-timeout 0 waited for the lock")
	}
	fails(t, store, exitUsage, []string{"--lock-timeout", "-1s", "ls"}, "--lock-timeout", "negative")
}

// TestRmByNameKeepsOtherNames: one content ingested under two names is one
// engram; rm by one name is refused (exit 2, naming the other) and removes
// nothing; its ID or every name removes it, once, even if given twice.
func TestRmByNameKeepsOtherNames(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	cp := filepath.Join(dir, "copy.qcow2")
	qemutest.Img(t, "convert", "-O", "qcow2", img, cp)
	id := strings.TrimSpace(ok(t, store, "-q", "ingest", "--name", "web-01", img))
	if got := strings.TrimSpace(ok(t, store, "-q", "ingest", "--name", "scratch", cp)); got != id {
		t.Fatalf("same content, IDs %s and %s", id, got)
	}
	fails(t, store, exitUsage, []string{"rm", "scratch"}, "web-01", "ID")
	if out := ok(t, store, "ls"); !strings.Contains(out, "web-01") {
		t.Fatalf("refused rm removed it:\n%s", out)
	}
	ok(t, store, "rm", "scratch", "web-01", id[:12])
	if out := ok(t, store, "-q", "ls"); strings.Contains(out, id[:12]) {
		t.Fatalf("still listed after rm:\n%s", out)
	}
}

// TestThinFileNamedAsGiven: restore --thin names a file by the name the
// command line gives, not the engram's newest name (one content ingested
// as clone3, then again as flat3).
func TestThinFileNamedAsGiven(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	cp := filepath.Join(dir, "flat.qcow2")
	qemutest.Img(t, "convert", "-O", "qcow2", img, cp)
	ok(t, store, "ingest", "--name", "clone3", img)
	ok(t, store, "ingest", "--name", "flat3", cp)
	out := filepath.Join(dir, "out")
	ok(t, store, "restore", "--thin", "-o", out, "clone3")
	if _, err := os.Stat(filepath.Join(out, "clone3.qcow2")); err != nil {
		ents, _ := os.ReadDir(out)
		t.Fatalf("want clone3.qcow2: %v (have %v)", err, ents)
	}
	qemutest.Compare(t, img, filepath.Join(out, "clone3.qcow2"))
}

// TestIngestDirFollowsLinks: a directory ingest follows a symbolic link to
// an image (libvirt pools link to theirs) and names a dangling *.qcow2
// link, exiting 1, as it does a *.qcow2 that is not qcow2.
func TestIngestDirFollowsLinks(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	imgs := filepath.Join(dir, "imgs")
	if err := os.Mkdir(imgs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(img, filepath.Join(imgs, "vm.qcow2")); err != nil {
		t.Fatal(err)
	}
	r := runEngram(t, store, "-q", "ingest", imgs)
	if r.code != 0 || len(strings.Fields(r.stdout)) != 1 {
		t.Fatalf("linked image: exit %d, stdout %q, stderr %q; want its ID", r.code, r.stdout, r.stderr)
	}
	dangling := filepath.Join(imgs, "gone.qcow2")
	if err := os.Symlink(filepath.Join(dir, "nowhere.qcow2"), dangling); err != nil {
		t.Fatal(err)
	}
	r = runEngram(t, store, "-q", "ingest", imgs)
	if r.code != exitFailure || strings.Count(r.stderr, dangling) != 1 || len(strings.Fields(r.stdout)) != 1 {
		t.Errorf("dangling link: exit %d, stdout %q, stderr %q; want 1 naming %s, the other ingested", r.code, r.stdout, r.stderr, dangling)
	}
}

// TestHelpCommandWord: `engram help COMMAND` shows that command's help
// (exit 0) as `engram COMMAND --help` does; an unknown one is named.
func TestHelpCommandWord(t *testing.T) {
	store := filepath.Join(t.TempDir(), "store")
	if out := ok(t, store, "help", "ingest"); !strings.Contains(out, "engram ingest - ") {
		t.Errorf("help ingest: %q", out)
	}
	if out := ok(t, store, "help"); !strings.Contains(out, "COMMANDS:") {
		t.Errorf("help: %q", out)
	}
	fails(t, store, exitUsage, []string{"help", "nosuch"}, `"nosuch"`)
}

// TestNameMovedShownOnce: a name given to a second image moves to it, so
// ls, stats and tree show it on that engram only, and a name given twice
// to one engram is listed once (ls said "a" for both and "a,a,b").
func TestNameMovedShownOnce(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	d1, d2 := filepath.Join(dir, "1"), filepath.Join(dir, "2")
	for _, d := range []string{d1, d2} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, d1)
	cur, _ := qcowWith("4M", nil, "write -P 0x22 0 64k")(t, d2)
	oldID := strings.TrimSpace(ok(t, store, "-q", "ingest", "--name", "a", old))
	curID := strings.TrimSpace(ok(t, store, "-q", "ingest", "--name", "a", cur))
	ok(t, store, "-q", "ingest", "--name", "b", "--reread", cur)
	ok(t, store, "-q", "ingest", "--name", "b", "--reread", cur)
	rows := map[string]string{}
	for _, line := range strings.Split(ok(t, store, "ls"), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 1 {
			rows[f[0]] = f[1]
		}
	}
	if rows[oldID[:12]] != "-" || rows[curID[:12]] != "a,b" {
		t.Errorf("ls names: %v, want %s: - and %s: a,b", rows, oldID[:12], curID[:12])
	}
	var ls []struct {
		ID    string   `json:"id"`
		Names []string `json:"names"`
	}
	if err := json.Unmarshal([]byte(ok(t, store, "--json", "ls")), &ls); err != nil {
		t.Fatal(err)
	}
	for _, e := range ls {
		want := map[string]string{oldID: "", curID: "a b"}[e.ID]
		if got := strings.Join(e.Names, " "); got != want || e.Names == nil {
			t.Errorf("ls --json: %s names %q, want [%s]", e.ID[:12], e.Names, want)
		}
	}
	for _, args := range [][]string{{"stats"}, {"tree"}} {
		for _, line := range strings.Split(ok(t, store, args...), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == oldID[:12] && (f[1] == "a" || f[1] == "b") {
				t.Errorf("%s names %s %q, which selects %s:\n%s", args[0], oldID[:12], f[1], curID[:12], line)
			}
		}
	}
}

// TestRawRestoreRefusesQcow2Options: -O raw (or -o -) with --compress or
// --cluster-size is a bad command line, as qemu-img convert -O raw -c is;
// they were ignored and the raw file written uncompressed.
func TestRawRestoreRefusesQcow2Options(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	ok(t, store, "-q", "ingest", "--name", "a", img)
	out := filepath.Join(dir, "out.raw")
	for _, extra := range [][]string{{"--compress"}, {"--cluster-size", "512"}} {
		fails(t, store, exitUsage, append([]string{"restore", "a", "-O", "raw", "-o", out}, extra...), extra[0], "raw")
		fails(t, store, exitUsage, append([]string{"restore", "a", "-o", "-"}, extra...), extra[0], "raw")
		if _, err := os.Lstat(out); !os.IsNotExist(err) {
			t.Fatalf("refused restore wrote %s (%v)", out, err)
		}
	}
	ok(t, store, "-q", "restore", "a", "-O", "raw", "-o", out)
	qemutest.Compare(t, img, out)
}

// TestRestoreOntoItsOwnBacking: restore --force -o the backing file (or a
// file of its chain, or a link to it) is refused and the file kept; it
// replaced the base by an overlay backed by itself, which QEMU loops on.
func TestRestoreOntoItsOwnBacking(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	base := filepath.Join(dir, "base.qcow2")
	qemutest.Create(t, "qcow2", base, "4M")
	qemutest.IO(t, base, "qcow2", "write -P 0x11 0 1M")
	mid := filepath.Join(dir, "mid.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid)
	qemutest.IO(t, mid, "qcow2", "write -P 0x22 0 64k")
	clone := filepath.Join(dir, "clone.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", clone)
	qemutest.IO(t, clone, "qcow2", "write -P 0x33 64k 64k")
	ok(t, store, "-q", "ingest", "--name", "clone", clone)
	link := filepath.Join(dir, "link.qcow2")
	if err := os.Symlink("mid.qcow2", link); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	for _, f := range []string{base, mid, clone} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want[f] = b
	}
	for _, c := range [][2]string{{mid, mid}, {base, mid}, {link, mid}} {
		fails(t, store, exitUsage, []string{"restore", "clone", "-o", c[0], "--backing", c[1], "--force"}, c[0], "own backing")
	}
	// auto skips base, the only candidate: none is left.
	if r := runEngram(t, store, "restore", "clone", "-o", base, "--backing", "auto", "--force"); r.code != exitUsage || !strings.Contains(r.stderr, "own backing") || !strings.Contains(r.stderr, "skipping") {
		t.Errorf("restore -o base --backing auto --force: exit %d, want %d\nstderr: %s", r.code, exitUsage, r.stderr)
	}
	for f, b := range want {
		if got, err := os.ReadFile(f); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%s changed by a refused restore (%v)", f, err)
		}
	}
	out := filepath.Join(dir, "out.qcow2")
	ok(t, store, "-q", "restore", "clone", "-o", out, "--backing", mid)
	qemutest.Compare(t, clone, out)
}

// TestIngestRefusesImageBeingWritten: an image another process holds open
// for writing (QEMU's write lock: here qemu-io, as a running VM) is refused
// with exit 4 naming it, as qemu-img refuses it; --force-share reads it.
// It was archived silently, torn by whatever the writer did meanwhile.
func TestIngestRefusesImageBeingWritten(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	base := filepath.Join(dir, "base.qcow2")
	qemutest.Create(t, "qcow2", base, "4M")
	qemutest.IO(t, base, "qcow2", "write -P 0x11 0 1M")
	img := filepath.Join(dir, "vm.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", img)
	for _, writing := range []string{img, base} {
		io := exec.Command("qemu-io", "-f", "qcow2", writing)
		in, err := io.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := io.Start(); err != nil {
			t.Fatal(err)
		}
		// Once it has written, it holds the image open with its locks.
		if _, err := in.Write([]byte("write -P 0x22 0 64k\n")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		var got []byte
		for !bytes.Contains(got, []byte("wrote")) {
			n, err := out.Read(buf)
			if err != nil {
				t.Fatalf("qemu-io %s: %v (%q)", writing, err, got)
			}
			got = append(got, buf[:n]...)
		}
		fails(t, store, exitBadImage, []string{"ingest", img}, writing, "open for writing", "--force-share")
		ok(t, store, "-q", "ingest", "--force-share", img)
		in.Close()
		if err := io.Wait(); err != nil {
			t.Fatalf("qemu-io %s: %v", writing, err)
		}
	}
	ok(t, store, "-q", "ingest", "--name", "vm", img)
	out := filepath.Join(dir, "out.qcow2")
	ok(t, store, "-q", "restore", "vm", "-o", out)
	qemutest.Compare(t, img, out)
}

// TestThinEngramGivenTwice: restore --thin given one engram twice (or by
// two of its names) is a bad command line, exit 2 (it exited 1).
func TestThinEngramGivenTwice(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	ok(t, store, "-q", "ingest", "--name", "a", img)
	ok(t, store, "-q", "ingest", "--name", "b", img)
	out := filepath.Join(dir, "fleet")
	fails(t, store, exitUsage, []string{"restore", "--thin", "-o", out, "a", "a"}, "a given twice")
	fails(t, store, exitUsage, []string{"restore", "--thin", "--dry-run", "-o", out, "a", "b"}, "a and b are one engram")
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("refused restore --thin made %s (%v)", out, err)
	}
}

// TestSimilarHugeTop: similar --top larger than the catalog lists what
// there is; it sized a heap by --top and died out of memory.
func TestSimilarHugeTop(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	d1, d2 := filepath.Join(dir, "1"), filepath.Join(dir, "2")
	for _, d := range []string{d1, d2} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := qcowWith("4M", nil, "write -P 0x11 0 256k")(t, d1)
	b, _ := qcowWith("4M", nil, "write -P 0x11 0 256k", "write -P 0x22 1M 64k")(t, d2)
	ok(t, store, "-q", "ingest", "--name", "a", a)
	ok(t, store, "-q", "ingest", "--name", "b", b)
	if out := ok(t, store, "similar", "a", "--top", "99999999999"); !strings.Contains(out, " b ") {
		t.Errorf("similar --top 99999999999: %q, want b listed", out)
	}
}

// TestParseSize: the suffixes the flags' messages name (--cache-size says
// "up to 1T", which was refused), and no wrap-around past int64.
func TestParseSize(t *testing.T) {
	for s, want := range map[string]int64{"512": 512, "64k": 64 << 10, "2M": 2 << 20, "1G": 1 << 30, "1T": 1 << 40, "256MB": 256 << 20} {
		if got, err := parseSize(s); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "k", "-1", "1.5M", "18014398509481985k", "9223372036854775807k", "8388608T"} {
		if got, err := parseSize(s); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", s, got)
		}
	}
}

// TestNameMustBeAFileName: --name is refused (exit 2, nothing ingested)
// when engram mount could not show it as by-name/NAME.raw.
func TestNameMustBeAFileName(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img, _ := qcowWith("4M", nil, "write -P 0x11 0 64k")(t, dir)
	ok(t, store, "init")
	for _, n := range []string{"a/b", ".", "..", "", strings.Repeat("n", 252)} {
		fails(t, store, exitUsage, []string{"ingest", "--name", n, img}, "--name")
	}
	if out := ok(t, store, "-q", "ls"); strings.TrimSpace(out) != "" {
		t.Errorf("a refused ingest stored %q", out)
	}
	ok(t, store, "ingest", "--name", strings.Repeat("n", 251), img)
}

// TestStatsEmptyStore: the ratios of an empty store are "-", not 0.00x.
func TestStatsEmptyStore(t *testing.T) {
	qemutest.Require(t)
	store := filepath.Join(t.TempDir(), "store")
	ok(t, store, "init")
	out := ok(t, store, "stats")
	if strings.Contains(out, "0.00x") || !strings.Contains(out, "dedup -") || !strings.Contains(out, "compression -") {
		t.Errorf("stats of an empty store:\n%s", out)
	}
}

// TestThinFailedLeavesNoDir: a restore --thin or --chain that fails
// removes the -o directory it made (ENOSPC, Ctrl-C or a damaged
// pack left an empty DIR behind).
func TestThinFailedLeavesNoDir(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	// Incompressible data, so its pack is the largest: truncating that
	// one fails the restore at its data, after the catalog is read.
	data := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(data)
	img := filepath.Join(dir, "a.raw")
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	ok(t, store, "-q", "ingest", "--format", "raw", "--name", "a", img)
	packs, err := filepath.Glob(filepath.Join(store, "packs", "*", "*"))
	if err != nil || len(packs) == 0 {
		t.Fatalf("no packs in %s (%v)", store, err)
	}
	largest, size := "", int64(-1)
	for _, p := range packs {
		if fi, err := os.Stat(p); err == nil && fi.Size() > size {
			largest, size = p, fi.Size()
		}
	}
	if err := os.Truncate(largest, 100); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"--thin", "--chain"} {
		out := filepath.Join(dir, "fleet"+mode)
		if r := runEngram(t, store, "restore", mode, "-o", out, "a"); r.code == 0 || !strings.Contains(r.stderr, "corrupt") {
			t.Fatalf("restore %s from a truncated pack: exit %d, %s; want it to fail at the data", mode, r.code, r.stderr)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			ents, _ := os.ReadDir(out)
			t.Errorf("failed restore %s left %s (%v, holding %v)", mode, out, err, ents)
		}
	}
}

// TestBackingAutoSkipsOutput: --backing auto whose best candidate is -o
// itself takes the next candidate instead of refusing.
func TestBackingAutoSkipsOutput(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	mk := func(name string, cmds ...string) string {
		p := filepath.Join(dir, name)
		qemutest.Create(t, "qcow2", p, "8M")
		qemutest.IO(t, p, "qcow2", cmds...)
		return p
	}
	a := mk("a.qcow2", "write -P 0x11 0 4M")
	b := mk("b.qcow2", "write -P 0x11 0 4M", "write -P 0x22 4M 1M")
	c := mk("c.qcow2", "write -P 0x11 0 4M", "write -P 0x33 0 64k")
	ok(t, store, "-q", "ingest", a, b)
	ok(t, store, "-q", "ingest", "--name", "c", c)
	r := runEngram(t, store, "restore", "c", "-o", a, "--backing", "auto", "--force")
	if r.code != 0 || !strings.Contains(r.stderr, "skipping "+a) || !strings.Contains(r.stderr, b) {
		t.Fatalf("restore -o a --backing auto --force: exit %d\nstderr: %s", r.code, r.stderr)
	}
	qemutest.Compare(t, c, a)
	if info := qemutest.Img(t, "info", "--output=json", a); !strings.Contains(info, `"backing-filename": "b.qcow2"`) {
		t.Fatalf("-o a --backing auto: not on b.qcow2: %s", info)
	}
}
