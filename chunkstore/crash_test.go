package chunkstore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The crash tests run this test binary again as a child (selected by
// envChild) and SIGKILL it at a random moment.
const envChild = "CHUNKSTORE_CRASH_CHILD"

// TestCrashChild is the child's body; it does nothing in a normal run.
func TestCrashChild(t *testing.T) {
	mode := os.Getenv(envChild)
	if mode == "" {
		t.Skip("helper process for the crash tests")
	}
	ctx := context.Background()
	dir := os.Getenv("CHUNKSTORE_CRASH_DIR")
	// gc holds the lock exclusively, as the CLI's does, and so deletes at once.
	s, err := Open(ctx, dir, OpenOptions{Exclusive: mode == "gc", Command: "crash child " + mode})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	switch mode {
	case "put":
		base, _ := strconv.ParseUint(os.Getenv("CHUNKSTORE_CRASH_BASE"), 10, 64)
		for b := uint64(0); ; b++ {
			cs := mkChunks(base+b*16, 16, 12000)
			if _, err := s.PutMany(ctx, cs); err != nil {
				fmt.Println("error", err)
				os.Exit(2)
			}
			var line strings.Builder
			line.WriteString("ok")
			for _, c := range cs {
				line.WriteString(" " + c.ID.String())
			}
			fmt.Println(line.String()) // os.Stdout is unbuffered
		}
	case "fsize":
		// Files may not grow past 1 MiB: the pack write fails like a full
		// disk would, with EFBIG instead of ENOSPC.
		lim := unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}
		if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &lim); err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		for b := uint64(0); ; b++ {
			// Growing batches: one PutMany is one pack object, and the
			// one that passes 1 MiB fails.
			cs := mkChunks(b*1000, 16*(b+1), 12000)
			if _, err := s.PutMany(ctx, cs); err != nil {
				fmt.Println("failed", err)
				// The store keeps working for reads after the failure.
				if _, err := s.Get(ctx, cs[0].ID); !errors.Is(err, ErrNotFound) {
					fmt.Println("error after failed put:", err)
				}
				os.Exit(0)
			}
			var line strings.Builder
			line.WriteString("ok")
			for _, c := range cs {
				line.WriteString(" " + c.ID.String())
			}
			fmt.Println(line.String())
		}
	case "deferput":
		s.Close() // the child opens its own, with DeferSync
		deferPutChild(ctx, dir)
	case "gc":
		for {
			if _, err := s.GC(ctx, gcLive, GCOptions{Threshold: 0.9}); err != nil {
				fmt.Println("error", err)
				os.Exit(2)
			}
			fmt.Println("gc done")
		}
	}
}

// gcLive is the crash tests' liveness rule: half of all IDs.
func gcLive(id ID) bool { return id[0]&1 == 0 }

type child struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	ids     []ID
	lines   []string
	done    chan struct{}
	acked   chan struct{} // closed at the first acknowledged batch
	ackSeen bool
}

func startChild(t *testing.T, mode, dir string, base uint64) *child {
	t.Helper()
	return startChildEnv(t, mode, dir, base, nil)
}

// startChildEnv is startChild with more environment (test hooks).
func startChildEnv(t *testing.T, mode, dir string, base uint64, env []string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envChild+"="+mode, "CHUNKSTORE_CRASH_DIR="+dir, fmt.Sprintf("CHUNKSTORE_CRASH_BASE=%d", base))
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, done: make(chan struct{}), acked: make(chan struct{})}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			c.lines = append(c.lines, line)
			if rest, ok := strings.CutPrefix(line, "ok "); ok {
				if !c.ackSeen {
					c.ackSeen = true
					close(c.acked)
				}
				for _, h := range strings.Fields(rest) {
					if id, err := ParseID(h); err == nil {
						c.ids = append(c.ids, id)
					}
				}
			}
			c.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	return c
}

func (c *child) kill(t *testing.T) {
	t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
	_ = c.cmd.Wait()
	for _, l := range c.lines {
		if strings.HasPrefix(l, "error") {
			t.Fatalf("child failed: %s", l)
		}
	}
}

func crashRounds() int {
	if n, err := strconv.Atoi(os.Getenv("CHUNKSTORE_CRASH_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 5
}

func verifyClean(t *testing.T, s Maintainer) {
	t.Helper()
	st, err := s.Verify(context.Background(), func(p Problem) { t.Errorf("verify: %s", p) })
	if err != nil || st.Problems > 0 {
		t.Fatalf("verify: %+v, %v", st, err)
	}
}

func TestCrashDuringPut(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := Init(dir, InitOptions{PackSize: 512 << 10, BlockSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	var acked []ID
	for round := range crashRounds() {
		c := startChild(t, "put", dir, uint64(round)<<32)
		// Kill at a random moment after the first batch is acknowledged,
		// however long a loaded machine (or -race) takes to start the child.
		select {
		case <-c.acked:
		case <-c.done:
		}
		time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
		c.kill(t)
		acked = append(acked, c.ids...)
		s, err := Open(ctx, dir, OpenOptions{})
		if err != nil {
			t.Fatalf("round %d: open after kill: %v", round, err)
		}
		verifyClean(t, s)
		for _, id := range acked {
			if _, err := s.Get(ctx, id); err != nil {
				t.Fatalf("round %d: acknowledged chunk lost: %v", round, err)
			}
		}
		st, _ := s.Stats(ctx)
		t.Logf("round %d: %d acknowledged chunks, store %+v", round, len(acked), st)
		s.Close()
	}
	if len(acked) == 0 {
		t.Fatal("the child never acknowledged a batch")
	}
}

func TestCrashDuringGC(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := Init(dir, InitOptions{PackSize: 64 << 10, BlockSize: 32 << 10}); err != nil {
		t.Fatal(err)
	}
	var all []Chunk
	for round := range crashRounds() {
		s, err := Open(ctx, dir, OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for b := range 8 {
			cs := mkChunks(uint64(round*1000+b*40), 40, 6000)
			if _, err := s.PutMany(ctx, cs); err != nil {
				t.Fatal(err)
			}
			all = append(all, cs...)
		}
		s.Close()
		c := startChild(t, "gc", dir, 0)
		time.Sleep(time.Duration(20+rand.IntN(300)) * time.Millisecond)
		c.kill(t)
		s, err = Open(ctx, dir, OpenOptions{})
		if err != nil {
			t.Fatalf("round %d: open after kill: %v", round, err)
		}
		verifyClean(t, s)
		for _, ch := range all {
			if !gcLive(ch.ID) {
				continue
			}
			got, err := s.Get(ctx, ch.ID)
			if err != nil || !bytes.Equal(got, ch.Data) {
				t.Fatalf("round %d: live chunk %s lost: %v", round, ch.ID.Short(), err)
			}
		}
		st, _ := s.Stats(ctx)
		t.Logf("round %d (gc lines %d): %+v", round, len(c.lines), st)
		s.Close()
	}
}

// TestReadWhileWriterProcess opens the store read-only while another
// process writes to it.
func TestReadWhileWriterProcess(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := Init(dir, InitOptions{PackSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	c := startChild(t, "put", dir, 1<<40)
	defer c.kill(t)
	deadline := time.Now().Add(20 * time.Second)
	read := 0
	for read < 50 && time.Now().Before(deadline) {
		c.mu.Lock()
		ids := append([]ID(nil), c.ids...)
		c.mu.Unlock()
		if len(ids) == 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		r, err := Open(ctx, dir, OpenOptions{ReadOnly: true, LockTimeout: 10 * time.Second})
		if err != nil {
			t.Fatalf("read-only open beside a writer process: %v", err)
		}
		for _, id := range ids[max(0, len(ids)-10):] {
			if _, err := r.Get(ctx, id); err != nil {
				t.Fatalf("Get beside a writer process: %v", err)
			}
			read++
		}
		if _, err := r.Stats(ctx); err != nil {
			t.Fatal(err)
		}
		r.Close()
	}
	if read < 50 {
		t.Fatalf("read only %d chunks in 20 s", read)
	}
}

// TestFileSizeLimit makes a pack write fail mid-PutMany (as a full disk
// would): the error names the pack and wraps the syscall error, and the
// store stays consistent.
func TestFileSizeLimit(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := Init(dir, InitOptions{Compression: "fastest", BlockSize: 1}); err != nil {
		t.Fatal(err)
	}
	c := startChild(t, "fsize", dir, 0)
	<-c.done
	_ = c.cmd.Wait()
	var failed string
	for _, l := range c.lines {
		if strings.HasPrefix(l, "error") {
			t.Fatalf("child: %s", l)
		}
		if strings.HasPrefix(l, "failed") {
			failed = l
		}
	}
	if !strings.Contains(failed, "file too large") || !strings.Contains(failed, dir) || !strings.Contains(failed, packsDir+"/") {
		t.Fatalf("put error = %q", failed)
	}
	t.Log(failed)
	s, err := Open(ctx, dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	verifyClean(t, s)
	for _, id := range c.ids {
		if _, err := s.Get(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.PutMany(ctx, mkChunks(1<<30, 4, 1000)); err != nil {
		t.Fatal(err)
	}
}
