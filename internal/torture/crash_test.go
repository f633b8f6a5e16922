package torture

import (
	"fmt"
	"golang.org/x/sys/unix"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/engram-vm/engram/internal/qemutest"
)

// killAfter starts engram with args and SIGKILLs it after d. It reports
// whether the kill landed (false: the command finished first, with exit
// code code).
func killAfter(t *testing.T, store string, d time.Duration, args ...string) (killed bool, code int, stderr string) {
	t.Helper()
	cmd := exec.Command(engramBin, append([]string{"--store", store, "--lock-timeout", "2m", "-q"}, args...)...)
	var se strings.Builder
	cmd.Stderr = &se
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		return true, -1, se.String()
	}
	return false, cmd.ProcessState.ExitCode(), se.String()
}

// timed runs engram once to learn how long a command takes, so kill
// moments fall inside it.
func timed(t *testing.T, store string, args ...string) time.Duration {
	t.Helper()
	start := time.Now()
	ok(t, store, append([]string{"-q"}, args...)...)
	return time.Since(start)
}

// randomMoment is uniform in [0, 1.1·d]: most kills land while the command
// runs, a few just after it ends.
func randomMoment(r *rand.Rand, d time.Duration) time.Duration {
	return time.Duration(r.Int64N(int64(d)*11/10 + 1))
}

// committed is an engram known to be in the store and where it came from.
type committed struct{ id, src string }

// afterKill checks the store after a kill: it opens, verifies clean, and
// every engram committed before restores identical.
func afterKill(t *testing.T, store string, all []committed) error {
	t.Helper()
	if r := engram(t, engramBin, store, "ls"); r.code != 0 {
		return fmt.Errorf("ls after kill: exit %d: %s", r.code, r.stderr)
	}
	if err := verifyClean(t, store); err != nil {
		return err
	}
	for _, c := range all {
		if err := restoresIdentical(t, store, c.id, c.src); err != nil {
			return err
		}
	}
	return nil
}

func TestCrashIngest(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := initStore(t)
	r := rand.New(rand.NewPCG(1, 2))
	base := image(t, dir, 1000, 64, 8)
	all := []committed{{ingest(t, store, base), base}}
	d := timed(t, initStore(t), "ingest", base)
	n := pick(3, 24)
	for i := range n {
		img := image(t, dir, uint64(i), 64, 8)
		killed, code, se := killAfter(t, store, randomMoment(r, d), "ingest", img)
		if !killed && code != 0 {
			t.Fatalf("ingest %d finished before the kill with exit %d: %s", i, code, se)
		}
		err := afterKill(t, store, all)
		if err == nil {
			// The interrupted ingest re-runs and restores identical.
			id := ingest(t, store, img)
			all = append(all, committed{id, img})
			err = restoresIdentical(t, store, id, img)
		}
		record(t, "crash: ingest", killed, err)
		all = prune(all)
	}
}

func TestCrashRestore(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := initStore(t)
	r := rand.New(rand.NewPCG(3, 4))
	a, b := image(t, dir, 2000, 64, 12), image(t, dir, 2001, 64, 12)
	ida, idb := ingest(t, store, a), ingest(t, store, b)
	all := []committed{{ida, a}, {idb, b}}
	outDir := t.TempDir()
	d := timed(t, store, "restore", ida, "-o", filepath.Join(outDir, "probe.qcow2"))
	os.Remove(filepath.Join(outDir, "probe.qcow2"))
	n := pick(3, 24)
	for i := range n {
		out := filepath.Join(outDir, fmt.Sprintf("out-%d.qcow2", i))
		args := []string{"restore", ida, "-o", out}
		force := i%2 == 1
		if force {
			// Over an existing good restore of b: the kill must leave
			// either the old image or the new one, never a mix.
			ok(t, store, "-q", "restore", idb, "-o", out)
			args = append(args, "--force")
		}
		killed, code, se := killAfter(t, store, randomMoment(r, d), args...)
		if !killed && code != 0 {
			t.Fatalf("restore %d finished before the kill with exit %d: %s", i, code, se)
		}
		err := checkTarget(out, a, b, force)
		if err == nil {
			err = afterKill(t, store, all[:1])
		}
		if err == nil {
			ok(t, store, "-q", "restore", ida, "-o", out, "--force")
			if _, cerr := qemutest.Try("qemu-img", "compare", a, out); cerr != nil {
				err = fmt.Errorf("re-run restore differs: %v", cerr)
			}
		}
		record(t, "crash: restore", killed, err)
		os.Remove(out)
	}
	// Restore writes an anonymous O_TMPFILE file and names it only when
	// complete, so a kill leaves nothing. Where the file system lacks
	// O_TMPFILE it falls back to a hidden temp file a kill can leave.
	if left := tempLeftovers(outDir); len(left) > 0 {
		if unix.Access(outDir, unix.W_OK) == nil && supportsTmpfile(outDir) {
			t.Errorf("SIGKILLed restores left %d temp files beside their targets: %v", len(left), left)
		}
		summary.note("crash: restore (kills survived / tried)", "%d hidden temp files (.NAME.engram-tmp-*) left beside targets (no O_TMPFILE here); the targets themselves were never half written", len(left))
	}
}

// checkTarget says whether the restore target holds a whole image: absent
// (or the old image, with force) or the new one; never a partial file.
func checkTarget(out, newSrc, oldSrc string, force bool) error {
	if _, err := os.Stat(out); os.IsNotExist(err) {
		if force {
			return fmt.Errorf("%s: the old image vanished", out)
		}
		return nil
	}
	if _, err := qemutest.Try("qemu-img", "compare", newSrc, out); err == nil {
		return nil
	}
	if force {
		if _, err := qemutest.Try("qemu-img", "compare", oldSrc, out); err == nil {
			return nil
		}
	}
	return fmt.Errorf("%s: left half written", out)
}

func tempLeftovers(dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, ".*.engram-tmp-*"))
	return m
}

func TestCrashGC(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := initStore(t)
	r := rand.New(rand.NewPCG(5, 6))
	keep := image(t, dir, 3000, 64, 6)
	all := []committed{{ingest(t, store, keep), keep}}
	n := pick(3, 24)
	var d time.Duration
	for i := range n {
		// Two new engrams share the packs; removing one leaves packs
		// half dead, so gc rewrites them.
		x, y := image(t, dir, uint64(3100+2*i), 64, 6), image(t, dir, uint64(3101+2*i), 64, 6)
		idx, idy := ingest(t, store, x), ingest(t, store, y)
		all = append(all, committed{idy, y})
		if i == 0 {
			// Learn how long rm+gc takes on a copy of this store.
			probe := filepath.Join(t.TempDir(), "probe")
			copyDir(t, store, probe)
			d = timed(t, probe, "rm", idx) + timed(t, probe, "gc", "--threshold", "0.9")
		}
		var killed bool
		var code int
		var se string
		if i%4 == 3 { // sometimes kill rm itself
			killed, code, se = killAfter(t, store, randomMoment(r, d/4), "rm", idx)
		} else {
			ok(t, store, "-q", "rm", idx)
			killed, code, se = killAfter(t, store, randomMoment(r, d), "gc", "--threshold", "0.9")
		}
		if !killed && code != 0 {
			t.Fatalf("rm/gc %d finished before the kill with exit %d: %s", i, code, se)
		}
		err := afterKill(t, store, all)
		if err == nil {
			// Re-run: rm (if the kill hit it) and gc complete, and the
			// store still holds everything else.
			if rr := engram(t, engramBin, store, "-q", "rm", idx); rr.code != 0 && rr.code != 3 {
				err = fmt.Errorf("rm re-run: exit %d: %s", rr.code, rr.stderr)
			}
		}
		if err == nil {
			ok(t, store, "-q", "gc", "--threshold", "0.9")
			err = afterKill(t, store, all)
		}
		record(t, "crash: rm+gc", killed, err)
		os.Remove(x)
		all = prune(all)
	}
}

func TestCrashVerify(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := initStore(t)
	r := rand.New(rand.NewPCG(7, 8))
	img := image(t, dir, 4000, 64, 12)
	all := []committed{{ingest(t, store, img), img}}
	d := timed(t, store, "verify")
	for range pick(3, 20) {
		killed, code, se := killAfter(t, store, randomMoment(r, d), "verify")
		if !killed && code != 0 {
			t.Fatalf("verify finished before the kill with exit %d: %s", code, se)
		}
		record(t, "crash: verify", killed, afterKill(t, store, all))
	}
}

// prune keeps the restore checks short: the first engram and the last
// three; the images of the others are removed.
func prune(all []committed) []committed {
	if len(all) <= 4 {
		return all
	}
	for _, c := range all[1 : len(all)-3] {
		os.Remove(c.src)
	}
	return append(all[:1], all[len(all)-3:]...)
}

// record adds a kill trial to the summary; a kill that did not land (the
// command had finished) is noted but still checked.
func record(t *testing.T, row string, killed bool, err error) {
	t.Helper()
	row += " (kills survived / tried)"
	if !killed {
		summary.count(row, "runs that finished before their kill moment (checked all the same)")
	}
	summary.add(row, err == nil)
	if err != nil {
		t.Error(err)
	}
}

// supportsTmpfile reports whether dir's file system has O_TMPFILE.
func supportsTmpfile(dir string) bool {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR, 0o600)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}
