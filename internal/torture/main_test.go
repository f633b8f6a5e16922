package torture

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/engram-vm/engram/internal/qemutest"
)

var (
	engramBin string // plain build, for timing-sensitive suites
	raceBin   string // -race build when this test runs with -race, else engramBin
	full      = os.Getenv("ENGRAM_TORTURE") == "full"
)

// pick returns short in the default run and long under ENGRAM_TORTURE=full.
func pick(short, long int) int {
	if full {
		return long
	}
	return short
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "engram-torture-")
	if err != nil {
		panic(err)
	}
	engramBin = filepath.Join(dir, "engram")
	build := func(out string, flags ...string) {
		args := append([]string{"build"}, flags...)
		args = append(args, "-o", out, "github.com/engram-vm/engram/cmd/engram")
		if b, err := exec.Command("go", args...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building engram: %v\n%s", err, b)
			os.Exit(1)
		}
	}
	if b := os.Getenv("ENGRAM_TORTURE_BIN"); b != "" {
		engramBin = b // a prebuilt binary, e.g. one with local changes
	} else {
		build(engramBin)
	}
	raceBin = engramBin
	if raceEnabled {
		raceBin = filepath.Join(dir, "engram-race")
		build(raceBin, "-race")
	}
	code := m.Run()
	s := summary.String()
	fmt.Print(s)
	if p := os.Getenv("ENGRAM_TORTURE_SUMMARY"); p != "" {
		_ = os.WriteFile(p, []byte(s), 0o644)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// tally counts one kind of trial.
type tally struct {
	tried, ok int
	notes     []string
	counts    map[string]int // note -> times seen, printed "note (×n)"
}

// summaryT collects what every suite tried and how it went.
type summaryT struct {
	mu   sync.Mutex
	rows map[string]*tally
}

var summary = &summaryT{rows: map[string]*tally{}}

func (s *summaryT) add(row string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.rows[row]
	if t == nil {
		t = &tally{}
		s.rows[row] = t
	}
	t.tried++
	if ok {
		t.ok++
	}
}

func (s *summaryT) note(row, format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.rows[row]
	if t == nil {
		t = &tally{}
		s.rows[row] = t
	}
	t.notes = append(t.notes, fmt.Sprintf(format, args...))
}

// count records a repeated observation once, with how often it happened.
func (s *summaryT) count(row, note string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.rows[row]
	if t == nil {
		t = &tally{}
		s.rows[row] = t
	}
	if t.counts == nil {
		t.counts = map[string]int{}
	}
	if t.counts[note] == 0 {
		t.notes = append(t.notes, note)
	}
	t.counts[note]++
}

func (s *summaryT) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	mode := "short (default; ENGRAM_TORTURE=full for the long run)"
	if full {
		mode = "full"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n== engram torture summary, %s ==\n", mode)
	rows := make([]string, 0, len(s.rows))
	for r := range s.rows {
		rows = append(rows, r)
	}
	sort.Strings(rows)
	for _, r := range rows {
		t := s.rows[r]
		verdict := "nothing lost"
		if t.ok != t.tried {
			verdict = fmt.Sprintf("%d FAILED", t.tried-t.ok)
		}
		if t.tried > 0 {
			fmt.Fprintf(&b, "%-44s %5d / %-5d %s\n", r, t.ok, t.tried, verdict)
		}
		for _, n := range t.notes {
			if c := t.counts[n]; c > 0 {
				n = fmt.Sprintf("%s: %d", n, c)
			}
			fmt.Fprintf(&b, "    %s\n", n)
		}
	}
	return b.String()
}

type result struct {
	stdout, stderr string
	code           int
	maxRSS         int64 // KiB
	dur            time.Duration
}

// engram runs bin against store and returns what it did; it never fails
// the test by itself.
func engram(t testing.TB, bin, store string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--store", store, "--lock-timeout", "2m"}, args...)...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String(), dur: time.Since(start)}
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			r.maxRSS = ru.Maxrss
		}
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("engram %v: %v", args, err)
	}
	return r
}

// startEngram starts bin against store without waiting for it.
func startEngram(t testing.TB, bin, store string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--store", store, "--lock-timeout", "2m", "-q"}, args...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// ok runs engram and fails the test unless it exits 0; it returns stdout.
func ok(t testing.TB, store string, args ...string) string {
	t.Helper()
	r := engram(t, engramBin, store, args...)
	if r.code != 0 {
		t.Fatalf("engram %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// ingest ingests img and returns the engram ID.
func ingest(t testing.TB, store, img string) string {
	t.Helper()
	return strings.TrimSpace(ok(t, store, "-q", "ingest", img))
}

// restoresIdentical restores id to a temporary qcow2 and compares it with src.
func restoresIdentical(t testing.TB, store, id, src string) error {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.qcow2")
	if r := engram(t, engramBin, store, "-q", "restore", id, "-o", out); r.code != 0 {
		return fmt.Errorf("restore %s: exit %d: %s", id, r.code, strings.TrimSpace(r.stderr))
	}
	defer os.Remove(out)
	if _, err := qemutest.Try("qemu-img", "compare", src, out); err != nil {
		return fmt.Errorf("restore %s: differs from %s: %v", id, src, err)
	}
	return nil
}

// verifyClean runs engram verify and returns an error unless it is clean.
func verifyClean(t testing.TB, store string) error {
	t.Helper()
	r := engram(t, engramBin, store, "verify")
	if r.code != 0 {
		return fmt.Errorf("verify: exit %d: %s %s", r.code, strings.TrimSpace(r.stdout), strings.TrimSpace(r.stderr))
	}
	return nil
}

// initStore makes a store with small packs, so damage to one pack leaves
// others intact.
func initStore(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "store")
	ok(t, dir, "init")
	return dir
}

// image writes a qcow2 image of size MiB virtual with dataMiB of random
// (incompressible) and text-like data at seeded places, and returns its path.
func image(t testing.TB, dir string, seed uint64, sizeMiB, dataMiB int) string {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	raw := filepath.Join(dir, fmt.Sprintf("img-%d.raw", seed))
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(sizeMiB) << 20); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := 0; i < dataMiB; i++ {
		for j := 0; j < len(buf); j += 8 {
			v := r.Uint64()
			if j%4096 < 2048 { // half random, half compressible
				v &= 0x3f3f3f3f3f3f3f3f
			}
			for k := range 8 {
				buf[j+k] = byte(v >> (8 * k))
			}
		}
		off := int64(r.IntN(sizeMiB)) << 20
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	q := strings.TrimSuffix(raw, ".raw") + ".qcow2"
	qemutest.Img(t, "convert", "-f", "raw", "-O", "qcow2", raw, q)
	os.Remove(raw)
	return q
}

// copyDir copies a store directory (regular files only).
func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, fi.Mode())
	})
	if err != nil {
		t.Fatal(err)
	}
}
