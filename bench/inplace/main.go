// Command inplace measures reading an engram in place — through
// `engram serve` (NBD) and `engram mount` (FUSE) — against
// `engram restore -o - >/dev/null`, on one image, in one run:
//
//   - sequential read of the whole image: `nbdcopy nbd+unix://... null:`,
//     `dd bs=1M` from the mount, restore to /dev/null (wall, MB/s of guest
//     data, CPU of server + client);
//   - time from starting `engram serve` / `engram mount` to the first byte
//     read from it;
//   - random 4 KiB reads at queue depth 1 over the data (a small NBD client
//     in this program), cold (first touch after the server starts) and warm
//     (the same offsets again), p50 and p99, on a default store and on one
//     made with `engram init --block-size 256k`;
//   - peak RSS of the server (VmHWM).
//
// Usage: go run ./bench/inplace [-image IMG] [-engram bin/engram] [-reads 400] [-runs 3]
// Without -image it builds a synthetic 1 GiB image with 384 MiB of mixed
// data. The OS page cache is warm for the store's pack files in every
// case, so "cold" means cold in engram's caches, not on disk.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var (
	engramBin = flag.String("engram", "bin/engram", "engram binary")
	image     = flag.String("image", "", "image to measure (qcow2 or raw); default: a synthetic one")
	nreads    = flag.Int("reads", 400, "random 4 KiB reads per case")
	runs      = flag.Int("runs", 3, "runs of every case; the run with the median of each row's figure is shown")
	workDir   = flag.String("work", "", "scratch directory (default: a temporary one, removed)")
	copyFile  = flag.String("copy", "", "a file inside the image's file system (the whole disk an ext4 file system, as the bench corpus's): time copying it out through engram mount + a read-only loop mount, against restore + loop mount")
)

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "inplace: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	flag.Parse()
	for _, tool := range []string{"qemu-img", "qemu-io", "nbdcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			fatalf("%s not found (scripts/install-deps.sh installs it)", tool)
		}
	}
	bin, err := filepath.Abs(*engramBin)
	if err != nil {
		fatalf("%v", err)
	}
	*engramBin = bin
	dir := *workDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "engram-inplace-"); err != nil {
			fatalf("%v", err)
		}
		defer os.RemoveAll(dir)
	}
	img := *image
	if img == "" {
		img = filepath.Join(dir, "synthetic.raw")
		synthetic(img)
	}
	data := dataRanges(img)
	var dataBytes int64
	for _, r := range data {
		dataBytes += r[1] - r[0]
	}
	fmt.Printf("image %s: %d MiB of data\n\n", img, dataBytes>>20)

	var rows []row
	for _, bs := range []string{"", "256k"} {
		store := filepath.Join(dir, "store"+bs)
		args := []string{"--store", store, "init"}
		if bs != "" {
			args = append(args, "--block-size", bs)
		}
		run(args...)
		run("--store", store, "-q", "ingest", "--name", "img", img)
		label := "default store (1 MiB blocks)"
		if bs != "" {
			label = "store --block-size " + bs
		}
		var all [][]row
		for range max(1, *runs) {
			var rs []row
			if bs == "" {
				rs = append(rs, sequential(store, dir, dataBytes)...)
				if *copyFile != "" {
					rs = append(rs, copyOut(store, dir)...)
				}
			}
			all = append(all, append(rs, random(store, dir, data, label)...))
		}
		rows = append(rows, medians(all)...)
	}
	// CPU is the server's and the client's together; per GB of guest data.
	fmt.Printf("%-60s %18s %8s %8s %10s %9s\n", "test", "value", "MB/s", "CPU (s)", "CPU s/GB", "RSS (MiB)")
	for _, r := range rows {
		mbs, cpu, cpuGB, rss := "", "", "", ""
		if r.mbs > 0 {
			mbs = fmt.Sprintf("%.0f", r.mbs)
		}
		if r.cpu > 0 {
			cpu = fmt.Sprintf("%.2f", r.cpu)
			cpuGB = fmt.Sprintf("%.2f", r.cpu/(float64(dataBytes)/1e9))
		}
		if r.rss > 0 {
			rss = fmt.Sprintf("%d", r.rss>>20)
		}
		fmt.Printf("%-60s %18s %8s %8s %10s %9s\n", r.name, r.value, mbs, cpu, cpuGB, rss)
	}
}

type row struct {
	name, value string
	key         float64 // the figure the median is taken of (time)
	mbs, cpu    float64
	rss         int64
}

// medians picks, for each row, the run whose key is the median.
func medians(all [][]row) []row {
	out := make([]row, len(all[0]))
	for i := range out {
		var col []row
		for _, rs := range all {
			col = append(col, rs[i])
		}
		sort.Slice(col, func(a, b int) bool { return col[a].key < col[b].key })
		out[i] = col[len(col)/2]
	}
	return out
}

func run(args ...string) string {
	cmd := exec.Command(*engramBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		fatalf("engram %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// synthetic writes a 1 GiB raw image: 96 runs of 4 MiB, half random and
// half log-like text, spread over the disk with holes between.
func synthetic(path string) {
	f, err := os.Create(path)
	if err != nil {
		fatalf("%v", err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 4<<20)
	for i := 0; i < 96; i++ {
		for j := 0; j < len(buf); j += 4096 {
			blk := buf[j : j+4096]
			if (j/4096)%2 == 0 {
				for k := range blk {
					blk[k] = byte(rng.Uint32())
				}
			} else {
				line := fmt.Sprintf("2026-12-01T07:%02d:%02d host%d sshd[%d]: Accepted publickey for user%d\n", i%60, j%60, i, j, rng.IntN(100))
				for k := 0; k < len(blk); k += len(line) {
					copy(blk[k:], line)
				}
			}
		}
		if _, err := f.WriteAt(buf, int64(i)*(10<<20)+int64(i%3)*4096); err != nil {
			fatalf("%v", err)
		}
	}
	if err := f.Truncate(1 << 30); err != nil {
		fatalf("%v", err)
	}
	f.Close()
}

// dataRanges is `qemu-img map` data of the image, as [start, end).
func dataRanges(img string) [][2]int64 {
	out, err := exec.Command("qemu-img", "map", "--output=json", img).Output()
	if err != nil {
		fatalf("qemu-img map %s: %v", img, err)
	}
	var es []struct {
		Start, Length int64
		Data          bool
	}
	if err := json.Unmarshal(out, &es); err != nil {
		fatalf("qemu-img map: %v", err)
	}
	var rs [][2]int64
	for _, e := range es {
		if e.Data {
			rs = append(rs, [2]int64{e.Start, e.Start + e.Length})
		}
	}
	return rs
}

// timed runs a shell command and returns its wall time and CPU.
func timed(shell string) (time.Duration, float64) {
	cmd := exec.Command("sh", "-c", shell)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		fatalf("%s: %v: %s", shell, err, errb.String())
	}
	return time.Since(t0), cmd.ProcessState.UserTime().Seconds() + cmd.ProcessState.SystemTime().Seconds()
}

// server is a running `engram serve` or `engram mount`.
type server struct {
	cmd   *exec.Cmd
	start time.Time
}

func startEngram(args ...string) *server {
	cmd := exec.Command(*engramBin, args...)
	cmd.Stderr = io.Discard
	s := &server{cmd: cmd, start: time.Now()}
	if err := cmd.Start(); err != nil {
		fatalf("%v", err)
	}
	return s
}

// cpu is the server's user+system time so far.
func (s *server) cpu() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// rss is the server's peak resident set (VmHWM).
func (s *server) rss() int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			kb, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func (s *server) stop() {
	s.cmd.Process.Signal(os.Interrupt)
	s.cmd.Wait()
}

func mbs(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

func sequential(store, dir string, dataBytes int64) []row {
	var rows []row
	d, cpu := timed(fmt.Sprintf("%s --store %s restore img -o - >/dev/null", *engramBin, store))
	restoreMBs := mbs(dataBytes, d)
	rows = append(rows, row{name: "sequential: restore -o - >/dev/null", value: fmt.Sprintf("%.2f s", d.Seconds()), key: d.Seconds(), mbs: restoreMBs, cpu: cpu})

	sock := filepath.Join(dir, "nbd.sock")
	s := startEngram("--store", store, "serve", "--socket", sock, "img")
	c := dialRetry(sock)
	first := time.Since(s.start)
	c.close()
	rows = append(rows, row{name: "serve: start to first byte", value: fmt.Sprintf("%.0f ms", first.Seconds()*1000), key: first.Seconds()})
	c0 := s.cpu()
	d, ccpu := timed(fmt.Sprintf("nbdcopy 'nbd+unix:///img?socket=%s' null:", sock))
	rows = append(rows, row{name: "sequential: serve + nbdcopy null:", value: fmt.Sprintf("%.2f s (%.2fx)", d.Seconds(), mbs(dataBytes, d)/restoreMBs), key: d.Seconds(), mbs: mbs(dataBytes, d), cpu: s.cpu() - c0 + ccpu, rss: s.rss()})
	s.stop()

	if _, err := os.Stat("/dev/fuse"); err == nil {
		mnt := filepath.Join(dir, "mnt")
		os.MkdirAll(mnt, 0o755)
		m := startEngram("--store", store, "mount", mnt)
		file := filepath.Join(mnt, "by-name", "img.raw")
		var f *os.File
		for {
			var err error
			if f, err = os.Open(file); err == nil {
				break
			}
			if time.Since(m.start) > time.Minute {
				fatalf("mount did not appear: %v", err)
			}
			time.Sleep(time.Millisecond)
		}
		f.Read(make([]byte, 1))
		first := time.Since(m.start)
		f.Close()
		rows = append(rows, row{name: "mount: start to first byte", value: fmt.Sprintf("%.0f ms", first.Seconds()*1000), key: first.Seconds()})
		c0 := m.cpu()
		d, ccpu := timed(fmt.Sprintf("dd if=%s of=/dev/null bs=1M", file))
		rows = append(rows, row{name: "sequential: mount + dd bs=1M", value: fmt.Sprintf("%.2f s (%.2fx)", d.Seconds(), mbs(dataBytes, d)/restoreMBs), key: d.Seconds(), mbs: mbs(dataBytes, d), cpu: m.cpu() - c0 + ccpu, rss: m.rss()})
		m.stop()
	}
	return rows
}

// copyOut copies -copy out of the engram's file system twice: through
// `engram mount` and a read-only loop mount of its file (the clock starts
// with the mount), and by restoring the disk to a raw file and loop-mounting
// that. A step that fails makes its row say so instead of ending the bench.
func copyOut(store, dir string) []row {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil
	}
	try := func(name string, steps func() error) row {
		t0 := time.Now()
		if err := steps(); err != nil {
			return row{name: name, value: "failed: " + strings.ReplaceAll(err.Error(), "\n", " ")}
		}
		d := time.Since(t0)
		return row{name: name, value: fmt.Sprintf("%.0f ms", d.Seconds()*1000), key: d.Seconds()}
	}
	sh := func(cmd string) error {
		out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v: %s", cmd, err, out)
		}
		return nil
	}
	mnt, loop := filepath.Join(dir, "copy-mnt"), filepath.Join(dir, "copy-loop")
	os.MkdirAll(mnt, 0o755)
	os.MkdirAll(loop, 0o755)
	dst := filepath.Join(dir, "copied")
	var rows []row
	rows = append(rows, try("copy one file out: mount + loop mount + cp", func() error {
		m := startEngram("--store", store, "mount", mnt)
		defer m.stop()
		file := filepath.Join(mnt, "by-name", "img.raw")
		for {
			if _, err := os.Stat(file); err == nil {
				break
			}
			if time.Since(m.start) > time.Minute {
				return fmt.Errorf("mount did not appear")
			}
			time.Sleep(time.Millisecond)
		}
		defer sh("umount " + loop)
		return sh(fmt.Sprintf("mount -o loop,ro,noload %s %s && cp %s/%s %s && umount %s", file, loop, loop, *copyFile, dst, loop))
	}))
	raw := filepath.Join(dir, "copy.raw")
	rows = append(rows, try("copy one file out: restore -O raw + loop mount + cp", func() error {
		defer os.Remove(raw)
		defer sh("umount " + loop)
		return sh(fmt.Sprintf("%s --store %s restore img -O raw -o %s && mount -o loop,ro,noload %s %s && cp %s/%s %s && umount %s",
			*engramBin, store, raw, raw, loop, loop, *copyFile, dst, loop))
	}))
	return rows
}

func random(store, dir string, data [][2]int64, label string) []row {
	rng := rand.New(rand.NewPCG(3, 4))
	var total int64
	for _, r := range data {
		total += (r[1] - r[0]) / 4096
	}
	offs := make([]int64, *nreads)
	for i := range offs {
		k := rng.Int64N(total)
		for _, r := range data {
			if n := (r[1] - r[0]) / 4096; k < n {
				offs[i] = r[0] + k*4096
				break
			} else {
				k -= n
			}
		}
	}
	sock := filepath.Join(dir, "nbd.sock")
	s := startEngram("--store", store, "serve", "--socket", sock, "img")
	defer s.stop()
	c := dialRetry(sock)
	defer c.close()
	measure := func() (p50, p99 time.Duration) {
		lat := make([]time.Duration, len(offs))
		for i, off := range offs {
			t0 := time.Now()
			c.read(off, 4096)
			lat[i] = time.Since(t0)
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		return lat[len(lat)/2], lat[len(lat)*99/100]
	}
	cold50, cold99 := measure()
	warm50, warm99 := measure()
	us := func(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d.Nanoseconds())/1e3) }
	return []row{
		{name: "random 4K QD1 cold p50 / p99, " + label, value: us(cold50) + " / " + us(cold99), key: cold50.Seconds()},
		{name: "random 4K QD1 warm p50 / p99, " + label, value: us(warm50) + " / " + us(warm99), key: warm50.Seconds(), rss: s.rss()},
	}
}

// nbdClient is the least NBD client that reads: fixed newstyle, OPT_GO,
// simple replies.
type nbdClient struct {
	c net.Conn
	r *bufio.Reader
}

func dialRetry(sock string) *nbdClient {
	t0 := time.Now()
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			nc := &nbdClient{c: c, r: bufio.NewReader(c)}
			if err = nc.handshake("img"); err == nil {
				nc.read(0, 4096) // the first byte
				return nc
			}
			c.Close()
		}
		if time.Since(t0) > time.Minute {
			fatalf("serve did not answer: %v", err)
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			fatalf("connect: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}

func (n *nbdClient) handshake(name string) error {
	h := make([]byte, 18)
	if _, err := io.ReadFull(n.r, h); err != nil {
		return err
	}
	b := binary.BigEndian.AppendUint32(nil, 3) // fixed newstyle, no zeroes
	b = binary.BigEndian.AppendUint64(b, 0x49484156454F5054)
	b = binary.BigEndian.AppendUint32(b, 7) // OPT_GO
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(name)+2))
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	b = append(b, 0, 0)
	if _, err := n.c.Write(b); err != nil {
		return err
	}
	for {
		rh := make([]byte, 20)
		if _, err := io.ReadFull(n.r, rh); err != nil {
			return err
		}
		typ, ln := binary.BigEndian.Uint32(rh[12:]), binary.BigEndian.Uint32(rh[16:])
		if _, err := io.CopyN(io.Discard, n.r, int64(ln)); err != nil {
			return err
		}
		if typ == 1 {
			return nil
		}
		if typ&(1<<31) != 0 {
			return fmt.Errorf("OPT_GO: error %#x", typ)
		}
	}
}

var readBuf = make([]byte, 1<<20)

func (n *nbdClient) read(off int64, length int) {
	b := binary.BigEndian.AppendUint32(nil, 0x25609513)
	b = binary.BigEndian.AppendUint32(b, 0) // flags, READ
	b = binary.BigEndian.AppendUint64(b, 1)
	b = binary.BigEndian.AppendUint64(b, uint64(off))
	b = binary.BigEndian.AppendUint32(b, uint32(length))
	if _, err := n.c.Write(b); err != nil {
		fatalf("read: %v", err)
	}
	h := make([]byte, 16)
	if _, err := io.ReadFull(n.r, h); err != nil {
		fatalf("read: %v", err)
	}
	if e := binary.BigEndian.Uint32(h[4:]); e != 0 {
		fatalf("read at %d: NBD error %d", off, e)
	}
	if _, err := io.ReadFull(n.r, readBuf[:length]); err != nil {
		fatalf("read: %v", err)
	}
}

func (n *nbdClient) close() {
	b := binary.BigEndian.AppendUint32(nil, 0x25609513)
	b = binary.BigEndian.AppendUint32(b, 2) // DISC
	b = append(b, make([]byte, 20)...)
	n.c.Write(b)
	n.c.Close()
}
