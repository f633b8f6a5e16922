package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// -restore-rows: only the restore rows, to compare builds (issue 12's
// GetMany). The stores hold the template and clone-1; the restores run
// -repeat times, alternating between -engram and -ab when it is set (the
// same stores, so two builds are compared in one sitting); rows carry CPU
// seconds of engram and of the server. -latency delays every request in
// the proxy, as a remote bucket's round trip would.
var (
	restoreRows = flag.Bool("restore-rows", false, "only the restore rows (stores holding the template and clone-1)")
	repeat      = flag.Int("repeat", 1, "with -restore-rows: run the restore rows this many times")
	abBinary    = flag.String("ab", "", "with -restore-rows: a second engram binary; restores alternate between the two")
	latency     = flag.Duration("latency", 0, "delay every request by this much in the proxy (loopback has no round trip)")
)

// restoreRow is one line of the -restore-rows table.
type restoreRow struct {
	Test      string         `json:"test"`
	Store     string         `json:"store"`
	Binary    string         `json:"binary"`
	Seconds   float64        `json:"seconds"`
	CPU       float64        `json:"cpu_seconds"`        // user+sys of the engram process
	ServerCPU float64        `json:"server_cpu_seconds"` // the S3 server's meanwhile (Linux /proc)
	Requests  map[string]int `json:"requests,omitempty"`
}

func (b *bench) runRestoreRows(script string) ([]restoreRow, error) {
	paths, names := b.images(1)
	if err := b.start(script); err != nil {
		return nil, err
	}
	dirStore := filepath.Join(b.work, "dir-store")
	bucket, err := b.newBucket()
	if err != nil {
		return nil, err
	}
	s3Store := "s3://" + bucket + "/fleet"
	for i, p := range paths {
		if err := b.engramRun(dirStore, filepath.Join(b.work, "cache-dir"), "ingest", "--name", names[i], p); err != nil {
			return nil, err
		}
		if err := b.engramRun(s3Store, filepath.Join(b.work, "cache-fleet"), "ingest", "--name", names[i], p); err != nil {
			return nil, err
		}
	}
	bins := []string{b.engram}
	if *abBinary != "" {
		other, err := filepath.Abs(*abBinary)
		if err != nil {
			return nil, err
		}
		bins = append(bins, other)
	}
	var rows []restoreRow
	restore := "restore clone-1 (qcow2)"
	out := filepath.Join(b.work, "restored.qcow2")
	timed := func(bin, store, cache, test, kind string, compare bool) error {
		b.takeCounts()
		c := b.cmd(store, cache, "restore", "-o", out, "clone-1")
		c.Path, c.Args[0] = bin, bin
		var msg bytes.Buffer
		c.Stdout, c.Stderr = &msg, &msg
		srv0 := b.serverCPU()
		t0 := time.Now()
		if err := c.Run(); err != nil {
			return fmt.Errorf("%s restore: %v\n%s", bin, err, msg.String())
		}
		r := restoreRow{Test: test, Store: kind, Binary: filepath.Base(bin), Seconds: time.Since(t0).Seconds(),
			CPU:       (c.ProcessState.UserTime() + c.ProcessState.SystemTime()).Seconds(),
			ServerCPU: b.serverCPU() - srv0}
		if kind == "s3" {
			r.Requests = b.takeCounts()
		}
		rows = append(rows, r)
		if compare {
			if c, err := exec.Command("qemu-img", "compare", "-q", paths[1], out).CombinedOutput(); err != nil {
				return fmt.Errorf("qemu-img compare of clone-1 restored by %s from %s: %v %s", bin, kind, err, c)
			}
		}
		return os.Remove(out)
	}
	for k := range *repeat {
		for j, bin := range bins {
			cache := filepath.Join(b.work, fmt.Sprintf("cache-fresh-%d-%d", k, j))
			if err := timed(bin, dirStore, filepath.Join(b.work, "cache-dir"), restore, "dir", false); err != nil {
				return nil, err
			}
			if err := timed(bin, s3Store, cache, restore+", empty cache", "s3", false); err != nil {
				return nil, err
			}
			if err := timed(bin, s3Store, cache, restore+", warm cache", "s3", k == 0); err != nil {
				return nil, err
			}
			_ = os.RemoveAll(cache)
		}
	}
	return rows, nil
}

func printRestoreRows(rows []restoreRow) {
	fmt.Println("| test | store | binary | time | CPU | server CPU | requests (PUT / GET / LIST / other) |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, r := range rows {
		q := r.Requests
		fmt.Printf("| %s | %s | %s | %.2f s | %.2f s | %.2f s | %d (%d / %d / %d / %d) |\n", r.Test, r.Store, r.Binary, r.Seconds, r.CPU, r.ServerCPU,
			q["PUT"]+q["GET"]+q["LIST"]+q["other"], q["PUT"], q["GET"], q["LIST"], q["other"])
	}
}

// serverCPU is the server's user+sys CPU seconds so far (0 where /proc
// cannot tell).
func (b *bench) serverCPU() float64 {
	pid, err := os.ReadFile(filepath.Join(b.serverDir, "versitygw.pid"))
	if err != nil {
		return 0
	}
	st, err := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/stat")
	if err != nil {
		return 0
	}
	// After the command name (which may hold spaces), utime and stime are
	// the 12th and 13th fields, in clock ticks (100 Hz).
	f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	var ut, sys float64
	_, _ = fmt.Sscan(f[11], &ut)
	_, _ = fmt.Sscan(f[12], &sys)
	return (ut + sys) / 100
}
