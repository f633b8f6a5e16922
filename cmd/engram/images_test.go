package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
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

	// A marked base under a clean overlay: the warning names the base, the
	// overlay's record says its chain holds a marked file.
	over := filepath.Join(dir, "over.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", "marked.qcow2", "-F", "qcow2", over)
	r = runEngram(t, store, "--json", "ingest", "--reread", over)
	if r.code != 0 || !strings.Contains(r.stderr, "engram: "+src+": warning: image is marked corrupt") {
		t.Errorf("ingest of an overlay on a marked base: exit %d, stderr %q", r.code, r.stderr)
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 1 || !rows[0].CorruptMarked {
		t.Errorf("overlay on a marked base: rows %+v (%v), want corrupt_marked", rows, err)
	}

	// A marked image that is refused for another reason gets its error alone.
	gone := filepath.Join(dir, "gone.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", "-u", "-b", "missing.qcow2", "-F", "qcow2", gone, "64M")
	patchFile(t, gone, func(b []byte) { b[79] |= 1 << 1 })
	fails(t, store, exitBadImage, []string{"ingest", gone}, gone, "missing.qcow2")

	// --refuse-corrupt: the old behaviour, before anything is written.
	fails(t, filepath.Join(dir, "store2"), exitBadImage, []string{"ingest", "--refuse-corrupt", src}, src, "marked corrupt")
	if _, err := os.Stat(filepath.Join(dir, "store2")); err == nil {
		t.Error("a refused ingest created the store")
	}
}

// A backing name whose header length covers trailing NULs is read as QEMU
// reads it (cut at the first NUL): the ingest works and restores identical.
func TestIngestNULPaddedBacking(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	base := filepath.Join(dir, "base.raw")
	qemutest.Create(t, "raw", base, "64M")
	qemutest.IO(t, base, "raw", "write -P 0x31 0 1M", "write -P 0x32 40M 1M")
	src := filepath.Join(dir, "over.qcow2")
	qemutest.Create(t, "qcow2", src, "64M", "backing_file=base.raw", "backing_fmt=raw")
	qemutest.IO(t, src, "qcow2", "write -P 0x33 512k 1M")
	patchFile(t, src, func(b []byte) {
		// backing_file_size (bytes 16..19): cover 24 of the NULs after the name.
		n := int(b[16])<<24 | int(b[17])<<16 | int(b[18])<<8 | int(b[19])
		n += 24
		b[16], b[17], b[18], b[19] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	})
	want := filepath.Join(dir, "want.raw")
	qemutest.ToRaw(t, src, want)

	r := runEngram(t, store, "ingest", src)
	if r.code != 0 {
		t.Fatalf("ingest: exit %d: %q", r.code, r.stderr)
	}
	if strings.ContainsRune(r.stderr, 0) {
		t.Errorf("stderr carries NUL bytes: %q", r.stderr)
	}
	out := filepath.Join(dir, "out.qcow2")
	ok(t, store, "restore", strings.TrimSpace(r.stdout), "-o", out)
	qemutest.Compare(t, want, out, "-f", "raw", "-F", "qcow2")
}

// Control characters from an image header reach stderr escaped, on one line.
func TestStderrEscapesControlCharacters(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "over.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", "-u", "-b", "XXXXXXXX.raw", "-F", "raw", src, "64M")
	patchFile(t, src, func(b []byte) {
		i := strings.Index(string(b), "XXXXXXXX.raw")
		copy(b[i:], "\x1b[31m\n\x07\x7f")
	})
	r := runEngram(t, filepath.Join(dir, "store"), "ingest", src)
	if r.code != exitBadImage {
		t.Fatalf("exit %d, want %d: %q", r.code, exitBadImage, r.stderr)
	}
	msg := strings.TrimSuffix(r.stderr, "\n")
	for _, c := range msg {
		if c < 0x20 || c == 0x7f {
			t.Fatalf("stderr carries control character %#x: %q", c, r.stderr)
		}
	}
	// The newline is the file name's, not a break between two errors.
	if !strings.Contains(msg, `\x1b[31m\x0a\x07\x7f.raw`) {
		t.Errorf("stderr %q does not show the escaped name", msg)
	}
}

func TestEscapeControl(t *testing.T) {
	for in, want := range map[string]string{
		"plain é ✓":      "plain é ✓",
		"a\x00b":         `a\x00b`,
		"\x1b[1mx\n":     `\x1b[1mx\x0a`,
		"bad\xffutf8":    `bad\xffutf8`,
		"c1\u009b31m":    `c1\u009b31m`,
		"tab\there\x7f!": `tab\x09here\x7f!`,
	} {
		if got := escapeControl(in); got != want {
			t.Errorf("escapeControl(%q) = %q, want %q", in, got, want)
		}
	}
}

// The error of a damaged L2 entry names the image once, and in a chain
// names the image asked for and the layer at fault once each.
func TestDamagedL2NamesPathOnce(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	base := filepath.Join(dir, "damaged.qcow2")
	qemutest.Create(t, "qcow2", base, "64M")
	qemutest.IO(t, base, "qcow2", "write -P 0x41 0 1M")
	patchFile(t, base, func(b []byte) {
		be := func(o uint64, n int) (v uint64) {
			for _, c := range b[o : o+uint64(n)] {
				v = v<<8 | uint64(c)
			}
			return v
		}
		l2 := be(be(40, 8), 8) & 0x00fffffffffffe00 // L1[0] -> first L2 table
		b[l2+7] |= 0x02                             // reserved bit 1 of the first L2 entry
	})
	over := filepath.Join(dir, "over.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", "damaged.qcow2", "-F", "qcow2", over)

	for _, c := range []struct{ image, other string }{{base, ""}, {over, base}} {
		r := runEngram(t, store, "ingest", c.image)
		if r.code != exitBadImage {
			t.Fatalf("ingest %s: exit %d, want %d: %s", c.image, r.code, exitBadImage, r.stderr)
		}
		msg := strings.TrimSpace(r.stderr)
		if i := strings.LastIndex(msg, "\n"); i >= 0 {
			msg = msg[i+1:] // after the "created store" note
		}
		if !strings.Contains(msg, "reserved bits set") {
			t.Errorf("stderr %q does not say what is wrong", msg)
		}
		for _, p := range []string{c.image, c.other} {
			if p != "" && strings.Count(msg, p) != 1 {
				t.Errorf("stderr %q names %s %d times, want once", msg, p, strings.Count(msg, p))
			}
		}
	}
}

// `engram --version` and `engram version [--json]` print the versions of
// the core dependencies that `go version -m` finds in the binary.
func TestVersion(t *testing.T) {
	out, err := exec.Command("go", "version", "-m", engramBin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	want := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "dep" {
			want[f[1]] = f[2]
		}
	}
	core := []string{"github.com/zeebo/blake3", "github.com/klauspost/compress", "go.etcd.io/bbolt", "github.com/urfave/cli/v2"}
	store := t.TempDir()
	for _, args := range [][]string{{"--version"}, {"version"}} {
		text := ok(t, store, args...)
		if !strings.HasPrefix(text, "engram ") || !strings.Contains(text, runtime.Version()) {
			t.Errorf("engram %v does not print engram's and Go's version:\n%s", args, text)
		}
		lines := map[string]bool{}
		for _, l := range strings.Split(text, "\n") {
			if f := strings.Fields(l); len(f) == 3 {
				lines[f[1]+" "+f[2]] = true
			}
		}
		for _, p := range core {
			if want[p] == "" || !lines[want[p]+" "+p] {
				t.Errorf("engram %v does not print %s %s:\n%s", args, p, want[p], text)
			}
		}
	}
	for _, args := range [][]string{{"--json", "version"}, {"version", "--json"}, {"--json", "--version"}} {
		var v struct {
			Version   string `json:"version"`
			GoVersion string `json:"go_version"`
			Modules   []struct {
				Path, Version string
			} `json:"modules"`
		}
		if err := json.Unmarshal([]byte(ok(t, store, args...)), &v); err != nil {
			t.Fatalf("engram %v: %v", args, err)
		}
		if v.Version == "" || v.GoVersion != runtime.Version() || len(v.Modules) != len(core) {
			t.Fatalf("engram %v: %+v", args, v)
		}
		for i, m := range v.Modules {
			if m.Path != core[i] || m.Version != want[m.Path] {
				t.Errorf("engram %v: module %+v, want %s %s", args, m, core[i], want[core[i]])
			}
		}
	}
	if _, err := os.Stat(filepath.Join(store, "config.json")); err == nil {
		t.Error("version touched the store")
	}
}

// Formats QEMU probes but engram does not read are refused by name (exit
// 4) from the bytes their probers check, before the store is touched.
func TestIngestRefusesOtherFormatsByName(t *testing.T) {
	dir := t.TempDir()
	le32 := func(b []byte, v uint32) { b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24) }
	be32 := func(b []byte, v uint32) { b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v) }
	bochs := make([]byte, 64<<10)
	copy(bochs, "Bochs Virtual HD Image")
	copy(bochs[32:], "Redolog")
	copy(bochs[48:], "Growing")
	le32(bochs[64:], 0x00020000)
	cloop := append([]byte("#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"), make([]byte, 64<<10)...)
	dmg := make([]byte, 64<<10)
	copy(dmg[len(dmg)-512:], "koly")
	be32(dmg[len(dmg)-508:], 4)
	be32(dmg[len(dmg)-504:], 512)
	qcow := make([]byte, 64<<10)
	copy(qcow, "QFI\xfb\x00\x00\x00\x01")
	for _, c := range []struct {
		file, want string
		data       []byte
	}{
		{"disk.img", "bochs image", bochs},
		{"disk.img", "cloop image", cloop},
		{"disk.img", "dmg image", dmg},
		{"disk.dmg", "dmg image", make([]byte, 64<<10)},
		{"disk.img", "qcow (the legacy version 1 format, not qcow2) image", qcow},
	} {
		p := filepath.Join(dir, c.file)
		if err := os.WriteFile(p, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		store := filepath.Join(dir, "store")
		fails(t, store, exitBadImage, []string{"ingest", p}, p+": "+c.want)
		if _, err := os.Stat(store); err == nil {
			t.Fatalf("refusing %s created the store", c.want)
		}
		os.Remove(p)
	}
}

func TestErrorLine(t *testing.T) {
	joined := errors.Join(errors.New("a.qcow2\nb: bad"), errors.New("second"))
	for _, c := range []struct {
		err  error
		want string
	}{
		{errors.New("x\x1b[2J\ny"), `x\x1b[2J\x0ay`},
		{joined, `a.qcow2\x0ab: bad; second`},
		{fmt.Errorf("dir /s\n: %w", joined), `dir /s\x0a: a.qcow2\x0ab: bad; second`},
		{fmt.Errorf("%w: %w", errors.New("p\nq"), errors.New("r")), `p\x0aq: r`},
	} {
		if got := errorLine(c.err); got != c.want {
			t.Errorf("errorLine(%q) = %q, want %q", c.err, got, c.want)
		}
	}
}

// ls shows an engram's data size even when its last ingest was
// recognised unchanged and read nothing (it showed 0 B).
func TestLsDataAfterUnchangedIngest(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	src, _ := qcowWith("16M", nil, "write -P 0x5a 0 1M")(t, dir)
	ok(t, store, "ingest", src)
	ok(t, store, "ingest", "--name", "again", src) // unchanged: reads nothing
	if ls := ok(t, store, "ls"); !strings.Contains(ls, "1.0 MiB") {
		t.Errorf("ls does not show the engram's 1 MiB of data: %q", ls)
	}
}

// Names and paths with control characters reach stdout escaped too (ls,
// show, stats), not only stderr.
func TestStdoutEscapesNames(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	src, _ := qcowWith("16M", nil, "write -P 0x5a 0 1M")(t, dir)
	id := strings.TrimSpace(ok(t, store, "ingest", src))
	legacyName(t, store, id, "evil\x1b[2J\r")
	for _, args := range [][]string{{"ls"}, {"show", "evil\x1b[2J\r"}, {"stats"}} {
		out := ok(t, store, args...)
		if strings.ContainsAny(out, "\x1b\r") {
			t.Errorf("engram %s: raw control characters on stdout: %q", args[0], out)
		}
		if !strings.Contains(out, `evil\x1b[2J\x0d`) && !strings.Contains(out, `"evil\x1b[2J\r"`) {
			t.Errorf("engram %s: the name is not shown escaped: %q", args[0], out)
		}
	}
}

// legacyName gives engram id the name, bypassing the refusal of control
// characters, as a store written before it may hold one.
func legacyName(t *testing.T, store, id, name string) {
	t.Helper()
	ctx := context.Background()
	st, err := chunkstore.Open(ctx, store, chunkstore.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	eid, err := chunkstore.ParseID(id)
	if err != nil {
		t.Fatal(err)
	}
	root, err := engram.LoadRoot(ctx, st, eid)
	if err != nil {
		t.Fatal(err)
	}
	e, err := engram.Get(ctx, st, eid)
	if err != nil {
		t.Fatal(err)
	}
	rec := *e.Records[0]
	rec.Name, rec.Key, rec.Created = name, "", time.Time{}
	if err := engram.Commit(ctx, st, eid, engram.EncodeRoot(root), &rec); err != nil {
		t.Fatal(err)
	}
}

// A name with control characters or invalid UTF-8 is refused at ingest
// (exit 2, one line, the name escaped), as git refuses such ref names;
// one a store already holds still lists, restores and rms.
func TestNameControlBytes(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	src, _ := qcowWith("16M", nil, "write -P 0x5a 0 1M")(t, dir)
	for n, shown := range map[string]string{
		"evil\x1b[2J": `evil\x1b[2J`, "tab\tx": `tab\x09x`, "del\x7f": `del\x7f`,
		"c1\u009b31m": `c1\u009b31m`, "bad\xff": `bad\xff`,
	} {
		fails(t, store, exitUsage, []string{"ingest", "--name", n, src}, "--name "+shown+":")
	}
	if _, err := os.Stat(store); !os.IsNotExist(err) {
		t.Fatalf("a refused ingest made the store (%v)", err)
	}
	id := strings.TrimSpace(ok(t, store, "ingest", src))
	bad := "old\x1b[31m\u009bname"
	legacyName(t, store, id, bad)
	if out := ok(t, store, "ls"); !strings.Contains(out, `old\x1b[31m\u009bname`) {
		t.Errorf("ls does not show the old name escaped:\n%s", out)
	}
	out := filepath.Join(dir, "out.qcow2")
	ok(t, store, "-q", "restore", bad, "-o", out)
	qemutest.Compare(t, src, out)
	ok(t, store, "rm", bad)
	if out := ok(t, store, "ls"); strings.Contains(out, id[:12]) {
		t.Errorf("rm by the old name left the engram:\n%s", out)
	}
}

func TestSafeWriterSplitsRunes(t *testing.T) {
	var b strings.Builder
	w := &safeWriter{w: &b}
	in := "é\x1b[1m\tx\n✓"
	for i := 0; i < len(in); i++ {
		w.Write([]byte{in[i]})
	}
	w.flush()
	if want := `é\x1b[1m` + "\tx\n✓"; b.String() != want {
		t.Fatalf("got %q, want %q", b.String(), want)
	}
}

// TestIngestDirty: an image left dirty by a killed writer (lazy
// refcounts) is archived as QEMU reads it, exit 0, with one note naming it.
func TestIngestDirty(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	src := filepath.Join(dir, "dirty.qcow2")
	qemutest.Create(t, "qcow2", src, "8M", "lazy_refcounts=on")
	// qemu-io's abort dies as a killed VM does; its exit status is SIGABRT.
	_ = exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "abort", src).Run()
	if _, err := qemutest.Try("qemu-img", "check", src); err == nil {
		t.Fatal("fixture: qemu-img check finds nothing to repair in the aborted image")
	}
	r := runEngram(t, store, "ingest", src)
	if r.code != 0 {
		t.Fatalf("ingest: exit %d: %s", r.code, r.stderr)
	}
	if n := strings.Count(r.stderr, "not closed cleanly"); n != 1 || !strings.Contains(r.stderr, "engram: "+src+": note: image was not closed cleanly") {
		t.Fatalf("ingest stderr, want one note naming %s:\n%s", src, r.stderr)
	}
	want := filepath.Join(dir, "want.raw")
	qemutest.ToRaw(t, src, want)
	out := filepath.Join(dir, "out.raw")
	ok(t, store, "-q", "restore", strings.TrimSpace(r.stdout), "-O", "raw", "-o", out)
	qemutest.Compare(t, want, out, "-f", "raw", "-F", "raw")
}
