package main

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob/s3/s3test"
	"github.com/engram-vm/engram/internal/qemutest"
)

// An endpoint that stops answering in the middle of an ingest (a proxy
// in front of the real server stops forwarding after some MiB of
// uploads): the ingest fails with one line naming the store and the
// endpoint, soon after the idle timeout rather than after minutes; what
// was stored before is intact, and once the endpoint is back verify is
// clean and the same ingest completes.
func TestS3StallMidIngest(t *testing.T) {
	qemutest.Require(t)
	env := s3test.Env(t)
	s3test.SetEnv(t)
	p := s3test.NewProxy(t, env["AWS_ENDPOINT_URL"])
	t.Setenv("AWS_ENDPOINT_URL", p.URL())
	t.Setenv("ENGRAM_S3_TIMEOUT", "1")
	dir := t.TempDir()
	bucket := s3test.Bucket(t)
	store := "s3://" + bucket + "/fleet"
	ok(t, store, "init")

	base, _ := qcowWith("16M", nil, pattern[:3]...)(t, mkdir(t, dir, "base"))
	ok(t, store, "--cache-dir", filepath.Join(dir, "cacheA"), "ingest", "--name", "base", base)

	// 16 MiB of random data: several packs, none compressible.
	raw := make([]byte, 16<<20)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range raw {
		raw[i] = byte(rng.Uint32())
	}
	rawPath := filepath.Join(dir, "big.raw")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.qcow2")
	qemutest.Img(t, "convert", "-f", "raw", "-O", "qcow2", rawPath, big)
	os.Remove(rawPath)

	p.StallAfter(s3test.Up, 6<<20)
	t0 := time.Now()
	r := runEngram(t, store, "--cache-dir", filepath.Join(dir, "cacheA"), "ingest", "--name", "big", big)
	took := time.Since(t0)
	msg := strings.TrimSpace(r.stderr)
	t.Logf("exit %d after %s: %s", r.code, took.Round(time.Millisecond), msg)
	if r.code == 0 || strings.Count(msg, "\n") != 0 || !strings.HasPrefix(msg, "engram: ") {
		t.Fatalf("ingest through a stalled endpoint: exit %d, stderr %q; want a failure and one line", r.code, r.stderr)
	}
	for _, w := range []string{"s3://" + bucket + "/fleet", p.Addr(), "stopped answering"} {
		if !strings.Contains(msg, w) {
			t.Errorf("stderr %q does not mention %q", msg, w)
		}
	}
	// Not a timing test: only "not the minutes it took before".
	if took > 90*time.Second {
		t.Errorf("the stalled ingest took %s to fail with a 1 s idle timeout", took)
	}

	// Ctrl-C during a stall, with a timeout far off: out at once, 130.
	p.Resume()
	p.StallAfter(s3test.Up, 6<<20)
	e := startEngram(t, []string{"ENGRAM_S3_TIMEOUT=10m"}, store, "--cache-dir", filepath.Join(dir, "cacheA"), "ingest", "--name", "big", big)
	for !p.Stalled(s3test.Up) && !e.exited() {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	t0 = time.Now()
	_ = e.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-e.done:
	case <-time.After(time.Minute): // the timeout is 10 min: a generous bound
		t.Fatalf("SIGINT during a stall: still running after a minute")
	}
	if code := e.wait(t); code != exitInterrupted {
		t.Fatalf("SIGINT during a stall: exit %d, want %d: %s", code, exitInterrupted, e.out.String())
	}
	t.Logf("SIGINT during a stall: exit after %s", time.Since(t0).Round(time.Millisecond))

	p.Resume()
	ok(t, store, "--cache-dir", filepath.Join(dir, "cacheB"), "verify")
	if ls := ok(t, store, "--cache-dir", filepath.Join(dir, "cacheB"), "ls"); !strings.Contains(ls, "base") || strings.Contains(ls, "big") {
		t.Fatalf("after the failed ingest, ls:\n%s", ls)
	}
	ok(t, store, "--cache-dir", filepath.Join(dir, "cacheA"), "ingest", "--name", "big", big)
	out := filepath.Join(dir, "big-restored.qcow2")
	ok(t, store, "--cache-dir", filepath.Join(dir, "cacheC"), "restore", "-o", out, "big")
	qemutest.Compare(t, big, out)
	out = filepath.Join(dir, "base-restored.qcow2")
	ok(t, store, "--cache-dir", filepath.Join(dir, "cacheC"), "restore", "-o", out, "base")
	qemutest.Compare(t, base, out)
	ok(t, store, "--cache-dir", filepath.Join(dir, "cacheD"), "verify")

	t.Setenv("ENGRAM_S3_TIMEOUT", "soon")
	fails(t, store, 1, []string{"--cache-dir", filepath.Join(dir, "cacheD"), "ls"}, "ENGRAM_S3_TIMEOUT", "soon")
}
