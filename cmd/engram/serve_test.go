package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/internal/qemutest"
)

// requireTools fails (CI=true) or skips the test when a tool is missing.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found on PATH; `make test` installs it (scripts/install-deps.sh)", tool)
			}
			t.Skipf("%s not found on PATH", tool)
		}
	}
}

// served is a running `engram serve`.
type served struct {
	cmd    *exec.Cmd
	addr   string // nbd://host:port or "" for a socket
	mu     sync.Mutex
	lines  []string // stderr after the "serving" line
	exited chan struct{}
	code   int
}

// startServe runs `engram serve args...` and returns once it listens.
// The cleanup stops it whatever the test did.
func startServe(t *testing.T, store string, args ...string) *served {
	t.Helper()
	cmd := exec.Command(engramBin, append([]string{"--store", store, "serve"}, args...)...)
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &served{cmd: cmd, exited: make(chan struct{})}
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			_ = cmd.Process.Kill()
			<-s.exited
		}
	})
	sc := bufio.NewScanner(pipe)
	var early []string
	ready := false
	for sc.Scan() {
		early = append(early, sc.Text())
		if m := regexp.MustCompile(`serving .* at (nbd://[^/]+)/`).FindStringSubmatch(sc.Text()); m != nil {
			s.addr = m[1]
		}
		if strings.Contains(sc.Text(), "engram: serving") {
			ready = true
			break
		}
	}
	go func() {
		for sc.Scan() {
			s.mu.Lock()
			s.lines = append(s.lines, sc.Text())
			s.mu.Unlock()
		}
		_ = cmd.Wait()
		s.code = cmd.ProcessState.ExitCode()
		close(s.exited)
	}()
	if !ready {
		<-s.exited
		t.Fatalf("engram serve %v did not start (exit %d): %s", args, s.code, strings.Join(early, "\n"))
	}
	s.lines = early
	return s
}

// stop signals the server and returns its exit code and stderr.
func (s *served) stop(t *testing.T, sig os.Signal) (int, string) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	<-s.exited
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.code, strings.Join(s.lines, "\n")
}

func resolveID(t *testing.T, store, name string) string {
	t.Helper()
	ctx := context.Background()
	st, err := chunkstore.Open(ctx, store, chunkstore.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	id, err := engram.Resolve(ctx, st, name)
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}

// manifestData is the engram's data ranges (chunks, adjacent ones merged).
func manifestData(t *testing.T, store, name string) [][2]int64 {
	t.Helper()
	ctx := context.Background()
	st, err := chunkstore.Open(ctx, store, chunkstore.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	id, err := engram.Resolve(ctx, st, name)
	if err != nil {
		t.Fatal(err)
	}
	root, err := engram.LoadRoot(ctx, st, id)
	if err != nil {
		t.Fatal(err)
	}
	var out [][2]int64
	err = engram.ForEachChunk(ctx, st, root, func(r engram.ChunkRef) error {
		out = mergeRange(out, r.Offset, int64(r.Length))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mergeRange(rs [][2]int64, off, n int64) [][2]int64 {
	if k := len(rs); k > 0 && rs[k-1][1] == off {
		rs[k-1][1] = off + n
		return rs
	}
	return append(rs, [2]int64{off, off + n})
}

// nbdinfoMap is the data ranges of `nbdinfo --map --json`.
func nbdinfoMap(t *testing.T, uri string) [][2]int64 {
	t.Helper()
	out := qemutest.Run(t, "nbdinfo", "--map", "--json", uri)
	var es []struct {
		Offset int64 `json:"offset"`
		Length int64 `json:"length"`
		Type   int   `json:"type"`
	}
	if err := json.Unmarshal([]byte(out), &es); err != nil {
		t.Fatalf("nbdinfo --map --json: %v: %s", err, out)
	}
	var rs [][2]int64
	for _, e := range es {
		if e.Type&1 == 0 { // not a hole
			rs = mergeRange(rs, e.Offset, e.Length)
		}
	}
	return rs
}

func qemuMapData(t *testing.T, uri string) [][2]int64 {
	t.Helper()
	var rs [][2]int64
	for _, e := range qemutest.Map(t, uri, "-f", "raw") {
		if e.Data {
			rs = mergeRange(rs, e.Start, e.Length)
		}
	}
	return rs
}

func findVariant(t *testing.T, name string) variant {
	for _, v := range variants {
		if v.name == name {
			return v
		}
	}
	t.Fatalf("no variant %q", name)
	return variant{}
}

// TestServeRealClients: a flat image, a 3-deep chain and a compressed
// image through `engram serve`, judged by qemu-img, nbdinfo, nbdcopy and
// qemu-io.
func TestServeRealClients(t *testing.T) {
	qemutest.Require(t)
	requireTools(t, "nbdinfo", "nbdcopy")
	for _, vname := range []string{"v3", "chain3-on-raw", "zstd"} {
		t.Run(vname, func(t *testing.T) {
			dir := t.TempDir()
			store := filepath.Join(dir, "store")
			src, _ := findVariant(t, vname).make(t, dir)
			ok(t, store, "ingest", "--name", "vm", src)
			id := resolveID(t, store, "vm")
			srcRaw := filepath.Join(dir, "src.raw")
			qemutest.ToRaw(t, src, srcRaw)
			sock := filepath.Join(dir, "nbd.sock")
			srv := startServe(t, store, "--socket", sock)
			uri := "nbd+unix:///vm?socket=" + sock

			qemutest.Compare(t, src, uri, "-F", "raw")
			tcp := startServe(t, store, "--listen", "127.0.0.1:0", "vm")
			qemutest.Compare(t, src, tcp.addr+"/vm", "-F", "raw")
			if code, log := tcp.stop(t, os.Interrupt); code != 0 {
				t.Fatalf("serve --listen: exit %d: %s", code, log)
			}
			qemutest.Compare(t, src, "nbd+unix:///"+id[:12]+"?socket="+sock, "-F", "raw") // a unique ID prefix

			want := manifestData(t, store, "vm")
			if got := nbdinfoMap(t, uri); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("nbdinfo --map data %v, manifest %v", got, want)
			}
			if got := qemuMapData(t, uri); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("qemu-img map data %v, manifest %v", got, want)
			}

			// nbdcopy writes only data: the copy is sparse and equal.
			cp := filepath.Join(dir, "copy.raw")
			qemutest.Run(t, "nbdcopy", uri, cp)
			qemutest.Run(t, "cmp", srcRaw, cp)
			var dataBytes int64
			for _, r := range want {
				dataBytes += r[1] - r[0]
			}
			var st syscall.Stat_t
			if err := syscall.Stat(cp, &st); err != nil {
				t.Fatal(err)
			}
			if alloc := st.Blocks * 512; alloc > dataBytes+1<<20 {
				t.Errorf("nbdcopy output allocates %d bytes for %d data bytes: holes were copied", alloc, dataBytes)
			}
			cp4 := filepath.Join(dir, "copy4.raw")
			qemutest.Run(t, "nbdcopy", "--connections=4", uri, cp4)
			qemutest.Run(t, "cmp", srcRaw, cp4)

			conv := filepath.Join(dir, "conv.qcow2")
			qemutest.Img(t, "convert", "-f", "raw", "-O", "qcow2", uri, conv)
			qemutest.Compare(t, src, conv)

			// A qcow2 overlay on the export takes writes and reads them back.
			ov := filepath.Join(dir, "ov.qcow2")
			qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", uri, "-F", "raw", ov)
			writes := []string{"write -P 0xee 1M 64k", "write -z 0 4k"}
			qemutest.IO(t, ov, "qcow2", append(writes, "read -P 0xee 1M 64k", "read -P 0 0 4k")...)
			exp := filepath.Join(dir, "expected.raw")
			qemutest.Run(t, "cp", "--sparse=always", srcRaw, exp)
			qemutest.IO(t, exp, "raw", writes...)
			qemutest.Compare(t, ov, exp)

			list := qemutest.Run(t, "nbdinfo", "--list", "nbd+unix:///?socket="+sock)
			for _, w := range []string{`export="vm"`, id} {
				if !strings.Contains(list, w) {
					t.Errorf("nbdinfo --list does not show %s:\n%s", w, list)
				}
			}
			if vname == "v3" {
				// Finish a live restore: the overlay becomes standalone.
				qemutest.Img(t, "rebase", "-b", "", ov)
				code, log := srv.stop(t, syscall.SIGTERM)
				if code != 0 {
					t.Fatalf("serve exit %d after SIGTERM: %s", code, log)
				}
				qemutest.Compare(t, ov, exp) // server gone: all data is in the overlay
				qemutest.Check(t, ov)
				return
			}
			if code, log := srv.stop(t, os.Interrupt); code != 0 {
				t.Fatalf("serve exit %d after SIGINT: %s", code, log)
			}
		})
	}
}

// TestServeTCPAndFlags: TCP listening, the non-loopback warning, bad
// flags and names, every engram exported by default, rm + gc while served.
func TestServeTCPAndFlags(t *testing.T) {
	qemutest.Require(t)
	requireTools(t, "nbdinfo")
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	src, _ := findVariant(t, "sparse-raw").make(t, dir)
	ok(t, store, "ingest", "--name", "a", "--format", "raw", src)
	other := filepath.Join(dir, "other.raw")
	qemutest.Create(t, "raw", other, "8M")
	qemutest.IO(t, other, "raw", "write -P 0x5a 1M 1M")
	otherID := strings.Fields(ok(t, store, "ingest", "--format", "raw", other))[0] // no name: exported by ID
	ids := strings.Fields(ok(t, store, "-q", "ls"))

	fails(t, store, exitUsage, []string{"serve", "--listen", "127.0.0.1:0", "--socket", filepath.Join(dir, "s")}, "not both")
	fails(t, store, exitNotFound, []string{"serve", "--socket", filepath.Join(dir, "s"), "nosuchname"}, "nosuchname")
	fails(t, store, exitUsage, []string{"serve", "--cache-size", "12q"}, "--cache-size")
	if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fails(t, store, exitFailure, []string{"serve", "--socket", filepath.Join(dir, "file")}, "not a socket")

	srv := startServe(t, store, "--listen", "127.0.0.1:0")
	if srv.addr == "" {
		t.Fatalf("no nbd:// address in %q", srv.lines)
	}
	qemutest.Compare(t, src, srv.addr+"/a", "-f", "raw", "-F", "raw")
	list := qemutest.Run(t, "nbdinfo", "--list", srv.addr)
	for _, w := range append([]string{`export="a"`}, ids...) {
		if !strings.Contains(list, w) {
			t.Errorf("nbdinfo --list does not show %s:\n%s", w, list)
		}
	}
	// rm + gc while served: the pin keeps the chunks.
	ok(t, store, "rm", "a")
	ok(t, store, "gc")
	qemutest.Compare(t, src, srv.addr+"/a", "-f", "raw", "-F", "raw")
	// A client that sends garbage is named in one line; the server goes on.
	sendGarbage(t, strings.TrimPrefix(srv.addr, "nbd://"))
	qemutest.Compare(t, other, srv.addr+"/"+otherID, "-f", "raw", "-F", "raw")
	code, log := srv.stop(t, os.Interrupt)
	if code != 0 || !strings.Contains(log, "bad option magic") || !strings.Contains(log, "client ") {
		t.Fatalf("serve exit %d, log %q", code, log)
	}
	for _, l := range strings.Split(log, "\n") {
		if strings.ContainsFunc(l, func(r rune) bool { return r < 0x20 && r != '\t' }) {
			t.Errorf("control bytes on stderr: %q", l)
		}
	}

	// 0.0.0.0 is not loopback: warn.
	srv = startServe(t, store, "--listen", "0.0.0.0:0", otherID)
	if code, log := srv.stop(t, os.Interrupt); code != 0 || !strings.Contains(log, "no authentication") {
		t.Fatalf("non-loopback listen: exit %d, stderr %q", code, log)
	}
}

func sendGarbage(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 18)
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("\x00\x00\x00\x01GET /\x1b[2J HTTP/1.1\r\n\r\n"))
	// The server hangs up on us.
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// bootSector is a hand-assembled x86 real-mode boot sector: it reads LBA
// bootLBA with int 13h AH=42h (extended read) to 0:8000, compares its
// first 8 bytes with "ENGRAMOK" and writes 0x10 (found) or 0x20 to the
// isa-debug-exit port 0xf4, which makes QEMU exit with 0x21 or 0x41.
func bootSector() []byte {
	code := []byte{
		0xFA,       // cli
		0x31, 0xC0, // xor ax,ax
		0x8E, 0xD8, // mov ds,ax
		0x8E, 0xC0, // mov es,ax
		0x8E, 0xD0, // mov ss,ax
		0xBC, 0x00, 0x7C, // mov sp,0x7c00
		0xFB,             // sti
		0xBE, 0x32, 0x7C, // mov si,dap (0x7c32); dl = boot drive from the BIOS
		0xB4, 0x42, // mov ah,0x42
		0xCD, 0x13, // int 0x13
		0x72, 0x15, // jc fail
		0xBE, 0x00, 0x80, // mov si,0x8000
		0xBF, 0x42, 0x7C, // mov di,marker (0x7c42)
		0xB9, 0x08, 0x00, // mov cx,8
		0xFC,       // cld
		0xF3, 0xA6, // repe cmpsb
		0x75, 0x07, // jne fail
		0xB0, 0x10, // mov al,0x10
		0xE6, 0xF4, // out 0xf4,al
		0xF4, 0xEB, 0xFD, // hlt; jmp $-1
		0xB0, 0x20, // fail: mov al,0x20
		0xE6, 0xF4, // out 0xf4,al
		0xF4, 0xEB, 0xFD, // hlt; jmp $-1
	}
	dap := []byte{0x10, 0, 1, 0, 0x00, 0x80, 0, 0} // size, 0, 1 sector, to 0000:8000
	for i := 0; i < 8; i++ {
		dap = append(dap, byte(uint64(bootLBA)>>(8*i)))
	}
	s := append(append(code, dap...), "ENGRAMOK"...)
	s = append(s, make([]byte, 510-len(s))...)
	return append(s, 0x55, 0xAA)
}

const bootLBA = 0x18000 // 48 MiB into a 64 MiB disk

// TestServeBoot boots QEMU from a qcow2 overlay on the export. The run is
// bounded by a timeout; how long it takes is not judged.
func TestServeBoot(t *testing.T) {
	qemutest.Require(t)
	requireTools(t, "qemu-system-x86_64")
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	img := filepath.Join(dir, "boot.raw")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteAt(bootSector(), 0)
	if err == nil {
		_, err = f.WriteAt([]byte("ENGRAMOK and more"), bootLBA*512)
	}
	if err == nil {
		err = f.Truncate(64 << 20)
	}
	if err == nil {
		err = f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	ok(t, store, "ingest", "--name", "boot", "--format", "raw", img)
	sock := filepath.Join(dir, "nbd.sock")
	startServe(t, store, "--socket", sock)
	vm := filepath.Join(dir, "vm.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", "nbd+unix:///boot?socket="+sock, "-F", "raw", vm)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-machine", "accel=kvm:tcg", "-m", "32", "-nographic", "-monitor", "none", "-serial", "none",
		"-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
		"-drive", "file="+vm+",format=qcow2,if=ide")
	out, err := cmd.CombinedOutput()
	code := cmd.ProcessState.ExitCode()
	if ctx.Err() != nil {
		t.Fatalf("the VM did not report within the bound: %s", out)
	}
	if code != 0x10<<1|1 {
		t.Fatalf("VM exit %d (%v), want %d (the boot sector found its marker): %s", code, err, 0x10<<1|1, out)
	}
}

// TestServeScratchView checks the README recipe for a writable scratch
// view: nbdkit's cow filter over the export takes writes, the export and
// the store stay unchanged.
func TestServeScratchView(t *testing.T) {
	qemutest.Require(t)
	requireTools(t, "nbdkit")
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	src, _ := findVariant(t, "v3").make(t, dir)
	ok(t, store, "ingest", "--name", "vm", src)
	sock := filepath.Join(dir, "nbd.sock")
	startServe(t, store, "--socket", sock)
	scratch := filepath.Join(dir, "scratch.sock")
	// Without -f nbdkit returns once it listens, and writes its pid.
	pidFile := filepath.Join(dir, "nbdkit.pid")
	qemutest.Run(t, "nbdkit", "-P", pidFile, "-U", scratch, "--filter=cow", "nbd", "socket="+sock, "export=vm")
	t.Cleanup(func() {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			t.Errorf("nbdkit pid: %v", err)
			return
		}
		var pid int
		if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
	})
	cow := "nbd+unix:///?socket=" + scratch
	qemutest.IO(t, cow, "raw", "write -P 0xee 0 64k", "read -P 0xee 0 64k", "read -P 0x22 3200k 64k")
	qemutest.Compare(t, src, "nbd+unix:///vm?socket="+sock, "-F", "raw")
}
