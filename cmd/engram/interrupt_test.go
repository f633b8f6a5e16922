package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/engram-vm/engram/internal/qemutest"
)

// Ctrl-C during an ingest: exit 130 with nothing committed (or, if the
// ingest won the race, a complete engram); the store verifies either way
// and the same ingest then succeeds.
func TestInterruptedIngest(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	raw := filepath.Join(dir, "big.raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	// 256 MiB of incompressible data keeps the ingest busy for a while.
	buf := make([]byte, 1<<20)
	for i := 0; i < 256; i++ {
		for j := range buf {
			buf[j] = byte(uint32(i*7919+j*31) * 2654435761 >> 24)
		}
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	ok(t, store, "init")

	for _, delay := range []time.Duration{50 * time.Millisecond, 300 * time.Millisecond} {
		cmd := exec.Command(engramBin, "--store", store, "ingest", "--format", "raw", raw)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		// The delay counts from the first staged pack: a signal sent by
		// the clock alone can arrive on a loaded machine before the
		// process has installed its handler, and kill it outright.
		for staged := false; !staged; time.Sleep(time.Millisecond) {
			des, _ := os.ReadDir(filepath.Join(store, ".tmp"))
			staged = len(des) > 0
			if len(waited) > 0 {
				break // finished first
			}
		}
		time.Sleep(delay)
		cmd.Process.Signal(syscall.SIGINT)
		err := <-waited
		var ee *exec.ExitError
		code := 0
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		t.Logf("SIGINT after %v: exit %d", delay, code)
		ls := strings.TrimSpace(ok(t, store, "-q", "ls"))
		switch code {
		case exitInterrupted:
			if !strings.Contains(stderr.String(), "interrupted") {
				t.Errorf("stderr after Ctrl-C: %q", stderr.String())
			}
			if ls != "" {
				t.Errorf("interrupted ingest committed an engram: %s", ls)
			}
		case 0:
			// Finished before the signal arrived: it must be whole.
		default:
			t.Fatalf("ingest after SIGINT: exit %d: %s", code, stderr.String())
		}
		ok(t, store, "verify")
	}
	id := strings.TrimSpace(ok(t, store, "ingest", "--format", "raw", raw))
	out := filepath.Join(dir, "out.raw")
	ok(t, store, "restore", id, "-O", "raw", "-o", out)
	qemutest.Compare(t, raw, out, "-f", "raw", "-F", "raw")
}
