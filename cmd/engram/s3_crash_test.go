package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/s3"
	"github.com/engram-vm/engram/chunkstore/blob/s3/s3test"
	"github.com/engram-vm/engram/internal/qemutest"
)

// proc is an engram process started in the background.
type proc struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan struct{} // closed when it has exited; then err is set
	err  error
}

// startEngram starts engram with extra environment variables; the process
// is killed in t.Cleanup if the test leaves it running.
func startEngram(t *testing.T, env []string, store string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(engramBin, append([]string{"--store", store}, args...)...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait returns the exit code, or -9 when SIGKILL ended the process.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	<-p.done
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return -9
		}
		return ee.ExitCode()
	} else if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

// bucketNames lists the object names under prefix of the test bucket's
// "fleet" store.
func bucketNames(t *testing.T, bucket, prefix string) map[string]bool {
	t.Helper()
	cfg := s3test.Config(t)
	cfg.Bucket, cfg.Prefix = bucket, "fleet"
	bs, err := s3.Open(context.Background(), cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	if err := bs.List(context.Background(), prefix, func(in blob.Info) error { names[in.Name] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	return names
}

// orphanPacks counts pack objects without an index segment and segments
// without a pack.
func orphanPacks(t *testing.T, bucket string) int {
	t.Helper()
	packs, segs := map[string]bool{}, map[string]bool{}
	for n := range bucketNames(t, bucket, "packs/") {
		packs[filepath.Base(n)] = true
	}
	for n := range bucketNames(t, bucket, "index/") {
		segs[filepath.Base(n)] = true
	}
	n := 0
	for p := range packs {
		if !segs[p] {
			n++
		}
	}
	for s := range segs {
		if !packs[s] {
			n++
		}
	}
	return n
}

// fleetImages makes n qcow2 images sharing a 4 MiB template, each with
// 3 MiB of its own (at least one pack of its own per ingest).
func fleetImages(t *testing.T, dir, tag string, n int) []string {
	t.Helper()
	var imgs []string
	for i := range n {
		p, _ := qcowWith("16M", nil, "write -P 0x11 0 2M", "write -P 0x22 4M 2M",
			fmt.Sprintf("write -P 0x%x 8M 3M", 0x40+len(tag)*8+i))(t, mkdir(t, dir, fmt.Sprintf("%s%d", tag, i)))
		imgs = append(imgs, p)
	}
	return imgs
}

// kill -9 of an ingest at each injected point (ENGRAM_TEST_KILL_AT, see
// chunkstore/testhook.go), each beside an ingest that is not killed: the
// others succeed, verify is clean, the killed ingests re-run complete, and
// gc in two runs with a tiny margin removes the orphans and nothing else.
func TestS3KilledIngest(t *testing.T) {
	qemutest.Require(t)
	s3test.SetEnv(t)
	dir := t.TempDir()
	bucket := s3test.Bucket(t)
	store := "s3://" + bucket + "/fleet"
	cache := func(name string) string { return filepath.Join(dir, "cache-"+name) }
	ok(t, store, "init")
	base := fleetImages(t, dir, "base", 1)[0]
	ok(t, store, "--cache-dir", cache("base"), "ingest", "--name", "base", base)

	points := []string{"pack-put", "after-pack", "before-record"}
	killed := fleetImages(t, dir, "killed", len(points))
	others := fleetImages(t, dir, "other", len(points))
	for i, point := range points {
		k := startEngram(t, []string{"ENGRAM_TEST_KILL_AT=" + point}, store, "--cache-dir", cache("k-"+point), "ingest", "--name", "killed-"+point, killed[i])
		o := startEngram(t, nil, store, "--cache-dir", cache("o-"+point), "ingest", "--name", "other-"+point, others[i])
		if code := k.wait(t); code != -9 {
			t.Fatalf("ingest killed at %s: exit %d, want SIGKILL\n%s", point, code, &k.out)
		}
		if code := o.wait(t); code != 0 {
			t.Fatalf("ingest beside the one killed at %s: exit %d\n%s", point, code, &o.out)
		}
	}
	ls := ok(t, store, "--cache-dir", cache("fresh"), "ls")
	for _, point := range points {
		if strings.Contains(ls, "killed-"+point) || !strings.Contains(ls, "other-"+point) {
			t.Fatalf("after the kills, ls:\n%s", ls)
		}
	}
	if orphanPacks(t, bucket) == 0 {
		t.Fatal("the kill after a pack's PUT left no pack without a segment")
	}
	ok(t, store, "--cache-dir", cache("verify1"), "verify")

	// Re-run on the same hosts (their caches as the kills left them).
	for i, point := range points {
		ok(t, store, "--cache-dir", cache("k-"+point), "ingest", "--name", "killed-"+point, killed[i])
	}
	before := len(bucketNames(t, bucket, "packs/"))
	ok(t, store, "--cache-dir", cache("gc1"), "gc", "--margin", "1ns")
	ok(t, store, "--cache-dir", cache("gc2"), "gc", "--margin", "1ns")
	after := len(bucketNames(t, bucket, "packs/"))
	if n := orphanPacks(t, bucket); n != 0 || after >= before {
		t.Fatalf("after gc: %d packs (were %d), %d without a segment or segment without a pack", after, before, n)
	}
	ok(t, store, "--cache-dir", cache("verify2"), "verify")
	srcs := map[string]string{"base": base}
	for i, point := range points {
		srcs["killed-"+point], srcs["other-"+point] = killed[i], others[i]
	}
	for name, src := range srcs {
		out := filepath.Join(dir, name+"-restored.qcow2")
		ok(t, store, "--cache-dir", cache("restore"), "restore", "-o", out, name)
		qemutest.Compare(t, src, out)
	}
}

// gc running again and again while ingests run: an ingest either commits
// or is refused with the stale-view error; afterwards every committed
// engram verifies and restores. The margin is 1 ns, so each gc run sweeps
// what the run before it marked: a sweep can only remove a pack an
// ingest's record needs if two whole gc runs fit between the ingest's
// commit check and its record's PUT (a longer margin such as 1 s would
// leave a window of one margin's end instead; see DESIGN.md, the commit
// step). Then an ingest paused before its
// record (ENGRAM_TEST_PAUSE_BEFORE_RECORD) while gc marks its packs and the
// margin passes refuses to commit, and its re-run commits.
func TestS3GCDuringIngest(t *testing.T) {
	qemutest.Require(t)
	s3test.SetEnv(t)
	dir := t.TempDir()
	bucket := s3test.Bucket(t)
	store := "s3://" + bucket + "/fleet"
	cache := func(name string) string { return filepath.Join(dir, "cache-"+name) }
	ok(t, store, "init")
	imgs := fleetImages(t, dir, "img", 4)
	ok(t, store, "--cache-dir", cache("base"), "ingest", "--name", "vm0", imgs[0])
	ok(t, store, "--cache-dir", cache("base"), "rm", "vm0") // something for gc to condemn

	committed := map[string]string{}
	var refused []int
	gcRuns := 0
	var rewritten int64
	// Two rounds: the second re-runs refused ingests on the caches they
	// left, whose chunks gc has condemned or swept meanwhile.
	for round := range 2 {
		var ps []*proc
		for i := 1; i < len(imgs); i++ {
			ps = append(ps, startEngram(t, nil, store, "--cache-dir", cache(fmt.Sprintf("h%d", i)), "ingest", "--name", fmt.Sprintf("vm%d", i), imgs[i]))
		}
		// gc back to back until the ingests are done (bounded): each run
		// sweeps what the one before marked, packs of ingests still running
		// among them.
		// A threshold of 0.9 makes them rewrite the partly live packs too
		// (vm0's, whose chunks the clones share), under the ingests.
		for n := 0; n < 50 && slices.ContainsFunc(ps, func(p *proc) bool { return !p.exited() }); n++ {
			var st chunkstore.GCStats
			if err := json.Unmarshal([]byte(ok(t, store, "--cache-dir", cache("gc"), "--json", "gc", "--margin", "1ns", "--threshold", "0.9")), &st); err != nil {
				t.Fatal(err)
			}
			rewritten += st.PacksRewritten
			gcRuns++
		}
		for j, p := range ps {
			switch code := p.wait(t); {
			case code == 0:
				committed[fmt.Sprintf("vm%d", j+1)] = imgs[j+1]
			case code == 1 && strings.Contains(p.out.String(), "older than gc's margin"):
				refused = append(refused, j+1)
			default:
				t.Fatalf("round %d: ingest vm%d: exit %d\n%s", round, j+1, code, &p.out)
			}
		}
	}
	t.Logf("%d gc runs (%d packs rewritten); committed %d, refused %d times", gcRuns, rewritten, len(committed), len(refused))
	for _, i := range refused { // a refused ingest run again commits
		if _, done := committed[fmt.Sprintf("vm%d", i)]; !done {
			ok(t, store, "--cache-dir", cache(fmt.Sprintf("h%d", i)), "ingest", "--name", fmt.Sprintf("vm%d", i), imgs[i])
			committed[fmt.Sprintf("vm%d", i)] = imgs[i]
		}
	}
	// A pack certainly partly live: y's pack holds A and B, z (A alone)
	// dedups against it, y is removed. gc rewrites A out of the pack (with
	// the ingests above, whether a pack ends partly live depends on which
	// copy of a chunk stored twice wins), and every engram still restores.
	// B is 255 blocks of different bytes, so it is most of the pack.
	ycmds := []string{"write -P 0x61 0 1M"}
	for i := range 255 {
		ycmds = append(ycmds, fmt.Sprintf("write -P %d %d 4k", i+1, 4<<20+i*4096))
	}
	y, _ := qcowWith("8M", nil, ycmds...)(t, mkdir(t, dir, "y"))
	z, _ := qcowWith("8M", nil, "write -P 0x61 0 1M")(t, mkdir(t, dir, "z"))
	ok(t, store, "--cache-dir", cache("base"), "ingest", "--name", "y", y)
	ok(t, store, "--cache-dir", cache("base"), "ingest", "--name", "z", z)
	ok(t, store, "--cache-dir", cache("base"), "rm", "y")
	committed["z"] = z
	for range 2 {
		var st chunkstore.GCStats
		if err := json.Unmarshal([]byte(ok(t, store, "--cache-dir", cache("gc"), "--json", "gc", "--margin", "1ns", "--threshold", "0.9")), &st); err != nil {
			t.Fatal(err)
		}
		rewritten += st.PacksRewritten
	}
	if rewritten == 0 {
		t.Fatal("no gc run rewrote a pack")
	}
	ok(t, store, "--cache-dir", cache("gc"), "gc", "--margin", "1ns")
	ok(t, store, "--cache-dir", cache("gc"), "gc", "--margin", "1ns")
	ok(t, store, "--cache-dir", cache("verify"), "verify")
	for name, src := range committed {
		out := filepath.Join(dir, name+"-restored.qcow2")
		ok(t, store, "--cache-dir", cache("restore"), "restore", "-o", out, name)
		qemutest.Compare(t, src, out)
	}

	// Paused past the margin: gc marks the paused writer's packs (no record
	// names them yet) with a 1 ns margin, so when it resumes its view is
	// older than a mark whose margin has passed.
	gate := filepath.Join(dir, "resume")
	p := startEngram(t, []string{"ENGRAM_TEST_PAUSE_BEFORE_RECORD=" + gate}, store, "--cache-dir", cache("paused"), "ingest", "--name", "paused", imgs[0])
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(gate + ".paused"); err == nil {
			break
		}
		if time.Now().After(deadline) || p.exited() {
			t.Fatalf("the ingest never paused:\n%s", &p.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ok(t, store, "--cache-dir", cache("gc"), "gc", "--margin", "1ns")
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t); code != 1 {
		t.Fatalf("paused ingest: exit %d, want 1\n%s", code, &p.out)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(p.out.String()), "\n") {
		if !strings.HasPrefix(l, "engram: test hook:") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "older than gc's margin") {
		t.Fatalf("paused ingest: want the one-line stale-view error, got:\n%s", &p.out)
	}
	if ls := ok(t, store, "--cache-dir", cache("fresh"), "ls"); strings.Contains(ls, "paused") {
		t.Fatalf("the refused ingest committed:\n%s", ls)
	}
	ok(t, store, "--cache-dir", cache("paused"), "ingest", "--name", "paused", imgs[0])
	out := filepath.Join(dir, "paused-restored.qcow2")
	ok(t, store, "--cache-dir", cache("restore2"), "restore", "-o", out, "paused")
	qemutest.Compare(t, imgs[0], out)
	ok(t, store, "--cache-dir", cache("verify2"), "verify")
}
