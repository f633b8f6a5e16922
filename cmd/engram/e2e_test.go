package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/engram-vm/engram/chunkstore/blob/s3/s3test"
	"github.com/engram-vm/engram/internal/qemutest"
)

var engramBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "engram-e2e-")
	if err != nil {
		panic(err)
	}
	engramBin = filepath.Join(dir, "engram")
	out, err := exec.Command("go", "build", "-o", engramBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building engram: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	s3test.Stop() // the S3 server, if a test started one
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// storeEnv holds extra environment variables (a []string) by store
// argument: the S3 server's credentials and a cache root for the stores
// storeKinds makes, so that parallel tests need no t.Setenv.
var storeEnv sync.Map

// engramCmd is the command running the built binary against store.
func engramCmd(store string, args ...string) *exec.Cmd {
	cmd := exec.Command(engramBin, append([]string{"--store", store}, args...)...)
	if e, ok := storeEnv.Load(store); ok {
		cmd.Env = append(os.Environ(), e.([]string)...)
	}
	return cmd
}

// storeKind makes a new empty store for a test and returns its --store
// argument.
type storeKind struct {
	name string
	make func(t *testing.T, dir string) string
}

// storeKinds are the stores the core end-to-end tests run against: the
// directory store, and a fresh bucket (with its own cache root) on the S3
// test server — skipped without one, failed under CI=true.
var storeKinds = []storeKind{
	{"dir", func(t *testing.T, dir string) string { return filepath.Join(dir, "store") }},
	{"s3", func(t *testing.T, dir string) string {
		var env []string
		for k, v := range s3test.Env(t) {
			env = append(env, k+"="+v)
		}
		store := "s3://" + s3test.Bucket(t) + "/e2e"
		storeEnv.Store(store, append(env, "ENGRAM_CACHE_DIR="+filepath.Join(dir, "cache")))
		t.Cleanup(func() { storeEnv.Delete(store) })
		ok(t, store, "init")
		return store
	}},
}

// runEngram runs the built binary against store.
func runEngram(t *testing.T, store string, args ...string) result {
	t.Helper()
	cmd := engramCmd(store, args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("engram %v: %v", args, err)
	}
	return r
}

// ok runs engram and fails the test unless it exits 0.
func ok(t *testing.T, store string, args ...string) string {
	t.Helper()
	r := runEngram(t, store, args...)
	if r.code != 0 {
		t.Fatalf("engram %s: exit %d\nstderr: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// fails runs engram and checks it exits with code, printing one line on
// stderr that contains each of want.
func fails(t *testing.T, store string, code int, args []string, want ...string) {
	t.Helper()
	r := runEngram(t, store, args...)
	if r.code != code {
		t.Fatalf("engram %s: exit %d, want %d\nstderr: %s", strings.Join(args, " "), r.code, code, r.stderr)
	}
	msg := strings.TrimSpace(r.stderr)
	if strings.Count(msg, "\n") != 0 || !strings.HasPrefix(msg, "engram: ") {
		t.Errorf("engram %s: want one line on stderr, got %q", strings.Join(args, " "), r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("engram %s: stderr %q does not mention %q", strings.Join(args, " "), msg, w)
		}
	}
}

// allocated is the guest bytes `qemu-img map` reports as data.
func allocated(t *testing.T, path string, extra ...string) int64 {
	var n int64
	for _, e := range qemutest.Map(t, path, extra...) {
		if e.Data {
			n += e.Length
		}
	}
	return n
}

type variant struct {
	name string
	make func(t *testing.T, dir string) (path, format string)
}

// qcowWith creates a qcow2 image with opts and writes a pattern into it.
func qcowWith(size string, opts []string, cmds ...string) func(t *testing.T, dir string) (string, string) {
	return func(t *testing.T, dir string) (string, string) {
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Create(t, "qcow2", p, size, opts...)
		qemutest.IO(t, p, "qcow2", cmds...)
		return p, "qcow2"
	}
}

var pattern = []string{
	"write -P 0x11 0 1M", "write -P 0x22 3M 192k", "write -P 0x33 5000k 4k", "write -z 3M 64k",
	"write -P 0x44 30M 2M", "write -P 0x55 63M 1M",
}

var variants = []variant{
	{"v2", qcowWith("64M", []string{"compat=0.10"}, pattern...)},
	{"v3", qcowWith("64M", nil, pattern...)},
	{"cluster512", qcowWith("64M", []string{"cluster_size=512"}, pattern...)},
	{"cluster4k", qcowWith("64M", []string{"cluster_size=4096"}, pattern...)},
	{"cluster2M", qcowWith("64M", []string{"cluster_size=2M"}, pattern...)},
	{"extended-l2", qcowWith("64M", []string{"extended_l2=on"}, append(pattern, "write -P 0x66 10M 8k", "write -z 30M 4k")...)},
	{"deflate", compressed("zlib")},
	{"zstd", compressed("zstd")},
	{"data-file", func(t *testing.T, dir string) (string, string) {
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Create(t, "qcow2", p, "64M", "data_file="+filepath.Join(dir, "img.data"))
		qemutest.IO(t, p, "qcow2", pattern...)
		return p, "qcow2"
	}},
	{"chain3-on-raw", func(t *testing.T, dir string) (string, string) {
		base := filepath.Join(dir, "base.raw")
		qemutest.Create(t, "raw", base, "64M")
		qemutest.IO(t, base, "raw", "write -P 0x71 0 4M", "write -P 0x72 32M 1M")
		prev, prevFmt := "base.raw", "raw"
		for i, cmds := range [][]string{
			{"write -P 0x81 1M 64k", "write -z 2M 128k"},
			{"write -P 0x82 40M 1M", "write -P 0x83 1M 4k"},
			{"write -z 32M 512k", "write -P 0x84 63M 1M"},
		} {
			p := filepath.Join(dir, fmt.Sprintf("layer%d.qcow2", i+1))
			qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", prev, "-F", prevFmt, p)
			qemutest.IO(t, p, "qcow2", cmds...)
			prev, prevFmt = filepath.Base(p), "qcow2"
		}
		return filepath.Join(dir, prev), "qcow2"
	}},
	{"snapshots", func(t *testing.T, dir string) (string, string) {
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Create(t, "qcow2", p, "64M")
		qemutest.IO(t, p, "qcow2", pattern[:3]...)
		qemutest.Img(t, "snapshot", "-c", "snap1", p)
		qemutest.IO(t, p, "qcow2", "write -P 0x99 0 512k", "write -z 3M 64k", "write -P 0x98 20M 1M")
		return p, "qcow2"
	}},
	{"sparse-raw", func(t *testing.T, dir string) (string, string) {
		p := filepath.Join(dir, "img.raw")
		qemutest.Create(t, "raw", p, "64M")
		qemutest.IO(t, p, "raw", "write -P 0x11 0 1M", "write -P 0x22 20M 256k", "write -P 0x33 63M 1M")
		return p, "raw"
	}},
}

// compressed makes a qcow2 whose clusters are compressed with ctype.
func compressed(ctype string) func(t *testing.T, dir string) (string, string) {
	return func(t *testing.T, dir string) (string, string) {
		src, _ := qcowWith("64M", nil, pattern...)(t, dir)
		p := filepath.Join(dir, "compressed.qcow2")
		qemutest.Img(t, "convert", "-c", "-O", "qcow2", "-o", "compression_type="+ctype, src, p)
		return p, "qcow2"
	}
}

func TestRoundTripVariants(t *testing.T) {
	qemutest.Require(t)
	for _, sk := range storeKinds {
		t.Run(sk.name, func(t *testing.T) { roundTripVariants(t, sk) })
	}
}

func roundTripVariants(t *testing.T, sk storeKind) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			store := sk.make(t, dir)
			src, srcFmt := v.make(t, dir)
			id := strings.TrimSpace(ok(t, store, "ingest", src))
			if len(id) != 64 {
				t.Fatalf("ingest printed %q, want an ID", id)
			}
			srcAlloc := allocated(t, src, "-f", srcFmt)

			out := filepath.Join(dir, "out.qcow2")
			ok(t, store, "restore", id[:10], "-o", out)
			qemutest.Compare(t, src, out, "-f", srcFmt, "-F", "qcow2")
			qemutest.Check(t, out)
			if a := allocated(t, out); a > srcAlloc {
				t.Errorf("restored qcow2 allocates %d bytes, source %d", a, srcAlloc)
			}

			raw := filepath.Join(dir, "out.raw")
			ok(t, store, "restore", id, "-O", "raw", "-o", raw)
			qemutest.Compare(t, src, raw, "-f", srcFmt, "-F", "raw")
			if a := allocated(t, raw, "-f", "raw"); a > srcAlloc {
				t.Errorf("restored raw allocates %d bytes, source %d", a, srcAlloc)
			}

			// Same content ingested again adds nothing and has the same ID.
			again := strings.TrimSpace(ok(t, store, "ingest", src))
			if again != id {
				t.Errorf("re-ingest gave ID %s, first %s", again, id)
			}
			ok(t, store, "verify")
		})
	}
}

func TestRestoreCompressedAndStdout(t *testing.T) {
	qemutest.Require(t)
	for _, sk := range storeKinds {
		t.Run(sk.name, func(t *testing.T) { restoreCompressedAndStdout(t, sk) })
	}
}

// restoreCompressedAndStdout: restore options, show, ls, rm, gc, verify.
func restoreCompressedAndStdout(t *testing.T, sk storeKind) {
	dir := t.TempDir()
	store := sk.make(t, dir)
	src, _ := qcowWith("64M", nil, pattern...)(t, dir)
	id := strings.TrimSpace(ok(t, store, "ingest", "--name", "web-01", "--label", "role=web", src))

	out := filepath.Join(dir, "c.qcow2")
	ok(t, store, "restore", "web-01", "--compress", "--cluster-size", "4k", "-o", out)
	qemutest.Compare(t, src, out)
	qemutest.Check(t, out)

	// -o - streams the raw image.
	cmd := engramCmd(store, "restore", id, "-o", "-")
	raw, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "want.raw")
	qemutest.ToRaw(t, src, want)
	wb, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, wb) {
		t.Fatalf("streamed raw (%d bytes) differs from qemu-img convert (%d bytes)", len(raw), len(wb))
	}

	// Existing output is refused without --force.
	fails(t, store, exitExists, []string{"restore", id, "-o", out}, "c.qcow2", "exists")
	ok(t, store, "restore", id, "-o", out, "--force")

	var shown map[string]any
	if err := json.Unmarshal([]byte(ok(t, store, "--json", "show", "web-01")), &shown); err != nil {
		t.Fatal(err)
	}
	if shown["id"] != id {
		t.Errorf("show --json id %v, want %s", shown["id"], id)
	}
	if ls := ok(t, store, "ls"); !strings.Contains(ls, "web-01") || !strings.Contains(ls, id[:12]) {
		t.Errorf("ls does not list web-01:\n%s", ls)
	}
	ok(t, store, "rm", "web-01")
	fails(t, store, exitNotFound, []string{"restore", id, "-o", filepath.Join(dir, "gone.qcow2")}, id)
	ok(t, store, "gc")
	ok(t, store, "verify")
}

type storeStats struct {
	Store struct {
		Chunks   int64 `json:"chunks"`
		RawBytes int64 `json:"raw_bytes"`
	} `json:"store"`
}

func stats(t *testing.T, store string) storeStats {
	var s storeStats
	if err := json.Unmarshal([]byte(ok(t, store, "--json", "stats")), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// Two clones of one base: the second costs only its own chunks, and a file
// that sits at another 4 KiB-aligned offset in it is stored once.
func TestClonesDedup(t *testing.T) {
	qemutest.Require(t)
	for _, sk := range storeKinds {
		t.Run(sk.name, func(t *testing.T) { clonesDedup(t, sk) })
	}
}

func clonesDedup(t *testing.T, sk storeKind) {
	dir := t.TempDir()
	store := sk.make(t, dir)
	r := rand.New(rand.NewPCG(7, 8))
	randBytes := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	const size = 64 << 20
	base := make([]byte, size)
	for off := 0; off < 40<<20; off += 8 << 20 {
		copy(base[off:], randBytes(4<<20))
	}
	file := randBytes(2 << 20)
	mk := func(name string, fileAt int) string {
		img := bytes.Clone(base)
		copy(img[fileAt:], file)
		rawPath := filepath.Join(dir, name+".raw")
		if err := os.WriteFile(rawPath, img, 0o644); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name+".qcow2")
		qemutest.Img(t, "convert", "-f", "raw", "-O", "qcow2", rawPath, p)
		return p
	}
	ok(t, store, "ingest", mk("base", 0)) // the file is not in the base
	before := stats(t, store)
	ok(t, store, "ingest", mk("clone1", 48<<20+4096*3))
	mid := stats(t, store)
	ok(t, store, "ingest", mk("clone2", 52<<20+4096*7))
	after := stats(t, store)

	first := mid.Store.RawBytes - before.Store.RawBytes
	second := after.Store.RawBytes - mid.Store.RawBytes
	if first < int64(len(file)) || first > int64(len(file))+512<<10 {
		t.Errorf("first clone added %d bytes, want about the file's %d", first, len(file))
	}
	if second > int64(len(file))/4 {
		t.Errorf("second clone added %d bytes; the file at another aligned offset should be stored once", second)
	}
}

func TestBadInput(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	good, _ := qcowWith("64M", nil, pattern...)(t, dir)
	id := strings.TrimSpace(ok(t, store, "ingest", good))

	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	trunc := filepath.Join(dir, "truncated.qcow2")
	os.WriteFile(trunc, data[:len(data)/2], 0o644)
	fails(t, store, exitBadImage, []string{"ingest", trunc}, "truncated.qcow2")

	corrupt := filepath.Join(dir, "corrupt.qcow2")
	bad := bytes.Clone(data)
	copy(bad[20:24], []byte{0, 0, 0, 40}) // cluster_bits = 40
	os.WriteFile(corrupt, bad, 0o644)
	fails(t, store, exitBadImage, []string{"ingest", corrupt}, "corrupt.qcow2")

	overlay := filepath.Join(dir, "overlay.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", "missing-base.qcow2", "-F", "qcow2", "-u", overlay, "64M")
	fails(t, store, exitBadImage, []string{"ingest", overlay}, "missing-base.qcow2", "overlay.qcow2")

	notStore := filepath.Join(dir, "notastore")
	os.MkdirAll(notStore, 0o755)
	os.WriteFile(filepath.Join(notStore, "hello.txt"), []byte("hi"), 0o644)
	fails(t, notStore, exitFailure, []string{"ingest", good}, "notastore")
	fails(t, notStore, exitFailure, []string{"ls"}, "notastore")

	fails(t, store, exitNotFound, []string{"restore", "deadbeef", "-o", filepath.Join(dir, "x.qcow2")}, "deadbeef")
	fails(t, store, exitFailure, []string{"restore", id, "-o", filepath.Join(dir, "no", "such", "dir", "x.qcow2")}, filepath.Join(dir, "no", "such", "dir"))
	fails(t, store, exitUsage, []string{"restore", id})
	fails(t, store, exitUsage, []string{"restore", id, "-o", filepath.Join(dir, "y"), "-O", "vmdk"}, "vmdk")
	// An -o that is not a regular file is refused before anything is
	// written: the finished file would be renamed over it (a device node
	// such as /dev/sdb or /dev/null replaced by a file), even with --force.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	fails(t, store, exitUsage, []string{"restore", id, "-o", fifo, "-O", "raw", "--force"}, "fifo", "not a regular file")
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("restore over a FIFO replaced it: %v %v", fi.Mode(), err)
	}
	fails(t, store, exitUsage, []string{"restore", id, "-o", dir, "--force"}, "is a directory")
	// Every bad command line exits 2: a command's own unknown flag, an
	// unknown command, arguments to a command that takes none (gc would
	// have collected the whole store), a --threshold outside 0..1.
	fails(t, store, exitUsage, []string{"ls", "--bogus"}, "bogus")
	fails(t, store, exitUsage, []string{"frobnicate"}, "frobnicate")
	fails(t, store, exitUsage, []string{"gc", id}, "gc takes no arguments")
	fails(t, store, exitUsage, []string{"ls", id}, "ls takes no arguments")
	fails(t, store, exitUsage, []string{"gc", "--threshold", "2"}, "--threshold")

	// Nothing above damaged the store or left output behind.
	ok(t, store, "verify")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), "engram-tmp") || e.Name() == "x.qcow2" {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}
