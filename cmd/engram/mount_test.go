package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// mounted is a running `engram mount`.
type mounted struct {
	cmd    *exec.Cmd
	dir    string
	stderr chan string // the lines after "mounted", closed at exit
	exited chan struct{}
	code   int
}

// startMount runs `engram mount dir` in the background and returns once
// it says the mount is in place. The cleanup stops it and clears the
// mount point, whatever the test did.
func startMount(t *testing.T, store, dir string, args ...string) *mounted {
	t.Helper()
	cmd := exec.Command(engramBin, append([]string{"--store", store, "mount", dir}, args...)...)
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &mounted{cmd: cmd, dir: dir, stderr: make(chan string, 100), exited: make(chan struct{})}
	t.Cleanup(func() {
		if m.alive() {
			_ = cmd.Process.Signal(os.Interrupt)
			<-m.exited
		}
		if _, err := os.Stat(filepath.Join(dir, "by-id")); err == nil || errorsIsNotConn(err) {
			_ = exec.Command("fusermount3", "-u", "-z", dir).Run()
		}
	})
	sc := bufio.NewScanner(pipe)
	ready := false
	var early []string
	for sc.Scan() {
		if strings.Contains(sc.Text(), "engram: mounted") {
			ready = true
			break
		}
		early = append(early, sc.Text())
	}
	go func() {
		for sc.Scan() {
			m.stderr <- sc.Text()
		}
		close(m.stderr)
		_ = cmd.Wait()
		m.code = cmd.ProcessState.ExitCode()
		close(m.exited)
	}()
	if !ready {
		<-m.exited
		t.Fatalf("engram mount %s did not mount (exit %d): %s", dir, m.code, strings.Join(early, "\n"))
	}
	return m
}

func (m *mounted) alive() bool {
	select {
	case <-m.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGINT and waits; it returns the exit code and what was
// printed after "mounted".
func (m *mounted) stop(t *testing.T) (int, string) {
	t.Helper()
	return m.stopWith(t, os.Interrupt)
}

func (m *mounted) stopWith(t *testing.T, sig os.Signal) (int, string) {
	t.Helper()
	if err := m.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for l := range m.stderr {
		lines = append(lines, l)
	}
	<-m.exited
	return m.code, strings.Join(lines, "\n")
}

func errorsIsNotConn(err error) bool {
	var errno syscall.Errno
	pe, ok := err.(*os.PathError)
	if ok {
		errno, ok = pe.Err.(syscall.Errno)
	}
	return ok && errno == syscall.ENOTCONN
}

func isMountPoint(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(dir)
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == abs {
			return true
		}
	}
	return false
}

func pinFiles(t *testing.T, store string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(store, "pins", "*.pin"))
	return m
}

// TestMountCLI: engram mount serves every variant identical to its source;
// an engram being read survives rm + gc; SIGINT unmounts cleanly and
// drops the pin.
func TestMountCLI(t *testing.T) {
	qemutest.Require(t)
	qemutest.RequireFUSE(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	type img struct{ id, src, format string }
	imgs := map[string]img{}
	for _, v := range variants {
		switch v.name {
		case "v3", "zstd", "chain3-on-raw", "sparse-raw":
		default:
			continue
		}
		vd := filepath.Join(dir, v.name)
		if err := os.Mkdir(vd, 0o755); err != nil {
			t.Fatal(err)
		}
		src, format := v.make(t, vd)
		id := strings.TrimSpace(ok(t, store, "ingest", "--name", v.name, src))
		imgs[v.name] = img{id, src, format}
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	m := startMount(t, store, mnt, "--cache-size", "32M")
	for name, im := range imgs {
		qemutest.Compare(t, im.src, filepath.Join(mnt, "by-name", name+".raw"), "-f", im.format, "-F", "raw")
		qemutest.Compare(t, im.src, filepath.Join(mnt, "by-id", im.id+".raw"), "-f", im.format, "-F", "raw")
	}
	if p := pinFiles(t, store); len(p) != 1 {
		t.Fatalf("pin files while mounted: %v", p)
	}
	// An ingest in another process while mounted: it appears on re-list.
	late, _ := qcowWith("8M", nil, "write -P 0x5e 0 1M")(t, t.TempDir())
	ok(t, store, "ingest", "--name", "late", late)
	qemutest.Compare(t, late, filepath.Join(mnt, "by-name", "late.raw"), "-F", "raw")
	if ents, err := os.ReadDir(filepath.Join(mnt, "by-name")); err != nil || len(ents) != len(imgs)+1 {
		t.Fatalf("by-name after a late ingest: %v %v", ents, err)
	}

	// rm + gc while an engram is open and half read.
	victim := imgs["v3"]
	raw := filepath.Join(dir, "victim.raw")
	qemutest.ToRaw(t, victim.src, raw)
	want, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(mnt, "by-id", victim.id+".raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 2<<20)
	if _, err := io.ReadFull(f, head); err != nil || !bytes.Equal(head, want[:len(head)]) {
		t.Fatalf("read before rm: %v", err)
	}
	ok(t, store, "rm", victim.id)
	ok(t, store, "gc", "--threshold", "1")
	rest, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(append(head, rest...), want) {
		t.Fatalf("read after rm + gc differs: %v", err)
	}
	f.Close()
	if _, err := os.Stat(filepath.Join(mnt, "by-name", "v3.raw")); !os.IsNotExist(err) {
		t.Fatalf("by-name/v3.raw after rm: %v", err)
	}

	code, out := m.stop(t)
	if code != 0 {
		t.Fatalf("mount exited %d after SIGINT: %s", code, out)
	}
	if isMountPoint(t, mnt) {
		t.Fatal("still mounted after SIGINT")
	}
	if p := pinFiles(t, store); len(p) != 0 {
		t.Fatalf("pin files after a clean exit: %v", p)
	}
	// Released: gc now frees the removed engram's chunks.
	var gs struct {
		DeadChunks int64 `json:"dead_chunks"`
	}
	if err := json.Unmarshal([]byte(ok(t, store, "--json", "gc")), &gs); err != nil {
		t.Fatal(err)
	}
	if gs.DeadChunks == 0 {
		t.Fatal("gc after unmount freed nothing of the removed engram")
	}
}

// TestMountKilled: a mount whose server got SIGKILL is reported by the
// next engram mount, cleared by fusermount3 -u, and its pin is ignored.
func TestMountKilled(t *testing.T) {
	qemutest.Require(t)
	qemutest.RequireFUSE(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	src, _ := qcowWith("16M", nil, "write -P 0x11 0 1M")(t, dir)
	id := strings.TrimSpace(ok(t, store, "ingest", "--name", "k", src))
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	m := startMount(t, store, mnt)
	if _, err := os.ReadFile(filepath.Join(mnt, "by-id", id+".raw")); err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-m.exited
	fails(t, store, 1, []string{"mount", mnt}, mnt, "fusermount3 -u")
	qemutest.Run(t, "fusermount3", "-u", mnt)
	if isMountPoint(t, mnt) {
		t.Fatal("still mounted after fusermount3 -u")
	}
	// The dead server's pin protects nothing and goes.
	ok(t, store, "rm", "k")
	ok(t, store, "gc")
	if p := pinFiles(t, store); len(p) != 0 {
		t.Fatalf("pin of a killed server left after gc: %v", p)
	}
	m2 := startMount(t, store, mnt)
	if code, out := m2.stopWith(t, syscall.SIGTERM); code != 0 || isMountPoint(t, mnt) {
		t.Fatalf("second mount, SIGTERM: exit %d, %s, still mounted %v", code, out, isMountPoint(t, mnt))
	}
}

func TestMountBadInput(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	ok(t, store, "init")
	fails(t, store, 2, []string{"mount"}, "DIR")
	fails(t, store, 2, []string{"mount", dir, "--cache-size", "1k"}, "--cache-size")
	fails(t, store, 2, []string{"mount", dir, "--cache-size", "lots"}, "--cache-size")
	if _, err := os.Stat("/dev/fuse"); err == nil {
		fails(t, store, 1, []string{"mount", filepath.Join(dir, "nope")}, filepath.Join(dir, "nope"))
	}
	// Without fusermount3 on PATH: one line naming the package.
	cmd := exec.Command(engramBin, "--store", store, "mount", dir)
	cmd.Env = append(os.Environ(), "PATH="+t.TempDir())
	out, err := cmd.CombinedOutput()
	msg := strings.TrimSpace(string(out))
	if err == nil || strings.Count(msg, "\n") != 0 || !strings.Contains(msg, "fuse3") {
		t.Fatalf("mount without fusermount3: %v %q", err, msg)
	}
}

func TestInitBlockSize(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	ok(t, store, "init", "--block-size", "256k")
	b, err := os.ReadFile(filepath.Join(store, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		BlockSize int `json:"block_size"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil || cfg.BlockSize != 256<<10 {
		t.Fatalf("config.json block_size = %d, %v", cfg.BlockSize, err)
	}
	fails(t, filepath.Join(dir, "s2"), 2, []string{"init", "--block-size", "0"}, "--block-size")
	fails(t, filepath.Join(dir, "s3"), 2, []string{"init", "--block-size", "64M"}, "--block-size")
}

// TestMountBusy: SIGINT while a file is open in the mount says so and
// keeps serving; once it is closed, the next SIGINT unmounts.
func TestMountBusy(t *testing.T) {
	qemutest.Require(t)
	qemutest.RequireFUSE(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	src, _ := qcowWith("16M", nil, "write -P 0x11 0 1M")(t, dir)
	ok(t, store, "ingest", "--name", "b", src)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	m := startMount(t, store, mnt)
	f, err := os.Open(filepath.Join(mnt, "by-name", "b.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	line, open := <-m.stderr
	if !open || !strings.Contains(line, "busy") {
		t.Fatalf("SIGINT with a file open: %q", line)
	}
	b := make([]byte, 4096)
	if _, err := f.ReadAt(b, 0); err != nil || b[0] != 0x11 {
		t.Fatalf("read after a refused unmount: %v", err)
	}
	f.Close()
	if code, out := m.stop(t); code != 0 || isMountPoint(t, mnt) {
		t.Fatalf("second SIGINT: exit %d, %s, still mounted %v", code, out, isMountPoint(t, mnt))
	}
}

// TestErrorsOneLine: a path with control bytes in it comes out of an
// error message as '?', on one line.
func TestErrorsOneLine(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "a\nb\x1b[31mc")
	r := runEngram(t, filepath.Join(dir, "store"), "restore", "x", "-o", "-", "--store", bad)
	if r.code == 0 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || strings.ContainsAny(r.stderr[:len(r.stderr)-1], "\x1b\n") {
		t.Fatalf("error with control bytes: %q", r.stderr)
	}
}

// TestMountNonEmpty: a mount point with files in it is refused, naming
// it, as sshfs refuses; --nonempty mounts over them, and they are back
// after the unmount.
func TestMountNonEmpty(t *testing.T) {
	qemutest.Require(t)
	qemutest.RequireFUSE(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	src, _ := qcowWith("16M", nil, "write -P 0x11 0 1M")(t, dir)
	ok(t, store, "ingest", "--name", "n", src)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(mnt, "keep.txt")
	if err := os.WriteFile(keep, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	fails(t, store, exitFailure, []string{"mount", mnt}, mnt, "not empty", "--nonempty")
	if isMountPoint(t, mnt) {
		t.Fatal("mounted over a non-empty directory without --nonempty")
	}
	m := startMount(t, store, mnt, "--nonempty")
	if _, err := os.Stat(filepath.Join(mnt, "by-name", "n.raw")); err != nil {
		t.Fatalf("--nonempty mount: %v", err)
	}
	if code, out := m.stop(t); code != 0 {
		t.Fatalf("unmount: exit %d, %s", code, out)
	}
	if b, err := os.ReadFile(keep); err != nil || string(b) != "mine" {
		t.Fatalf("the hidden file after the unmount: %q %v", b, err)
	}
}
