package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Writers share the lock; gc (exclusive) waits for them, and its error
// names who holds it.
func TestLockTimeoutNamesHolder(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	Init(dir, InitOptions{})
	w, err := Open(ctx, dir, OpenOptions{Command: "engram ingest vm.qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w2, err := Open(ctx, dir, OpenOptions{LockTimeout: -1, Command: "engram ingest other.qcow2"})
	if err != nil {
		t.Fatalf("second writer beside the first: %v", err)
	}
	w2.Close()
	start := time.Now()
	_, err = Open(ctx, dir, OpenOptions{Exclusive: true, LockTimeout: 300 * time.Millisecond})
	var le *LockedError
	if !errors.Is(err, ErrLocked) || !errors.As(err, &le) {
		t.Fatalf("second writer: %v", err)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Fatal("gc did not wait")
	}
	if want := fmt.Sprintf("pid %d", os.Getpid()); !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "engram ingest") {
		t.Fatalf("error does not name the holder: %v", err)
	}
	t.Log(err)
}

func TestLockWaits(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	Init(dir, InitOptions{})
	w, err := Open(ctx, dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		w.Close()
	}()
	w2, err := Open(ctx, dir, OpenOptions{Exclusive: true, LockTimeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("waiting gc: %v", err)
	}
	// While gc holds it, a writer waits too.
	if _, err := Open(ctx, dir, OpenOptions{LockTimeout: -1}); !errors.Is(err, ErrLocked) {
		t.Fatalf("writer beside gc: %v", err)
	}
	w2.Close()
}

// A gc waiting for the lock goes before writers that come after it:
// flock alone let overlapping ingests keep it shared until gc's timeout.
func TestLockExclusiveWaiterFirst(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	Init(dir, InitOptions{})
	w, err := Open(ctx, dir, OpenOptions{Command: "engram ingest a"})
	if err != nil {
		t.Fatal(err)
	}
	gcCtx, cancel := context.WithCancel(ctx)
	gcDone := make(chan error, 1)
	go func() {
		g, err := Open(gcCtx, dir, OpenOptions{Exclusive: true, LockTimeout: time.Hour, Command: "engram gc"})
		if err == nil {
			err = g.Close()
		}
		gcDone <- err
	}()
	// Until gc has marked its wait, a second writer still gets in.
	probe, err := os.Open(filepath.Join(dir, lockName))
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	for !(&storeLock{f: probe}).waiterMarked() {
		select {
		case err := <-gcDone:
			t.Fatalf("gc returned while a writer held the lock: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	_, err = Open(ctx, dir, OpenOptions{LockTimeout: -1, Command: "engram ingest b"})
	var le *LockedError
	if !errors.As(err, &le) || !le.Queued || !strings.Contains(err.Error(), "gc or repair waiting") {
		cancel()
		<-gcDone
		t.Fatalf("writer after a waiting gc: %v, want it to wait behind gc", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-gcDone; err != nil {
		t.Fatalf("gc: %v", err)
	}
	cancel()
	// The mark went with gc: writers get in again.
	w, err = Open(ctx, dir, OpenOptions{LockTimeout: -1})
	if err != nil {
		t.Fatalf("writer after gc: %v", err)
	}
	w.Close()
}

// TestReadOnlyBesideWriter reads through a separate read-only Open while
// a writer in the same process keeps storing.
func TestReadOnlyBesideWriter(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	Init(dir, InitOptions{PackSize: 1 << 20})
	w, err := Open(ctx, dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	first := mkChunks(1, 20, 10000)
	if _, err := w.PutMany(ctx, first); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for b := uint64(0); ; b++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := w.PutMany(ctx, mkChunks(1000+b*10, 10, 10000)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	r, err := Open(ctx, dir, OpenOptions{ReadOnly: true, LockTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		for _, c := range first {
			if _, err := r.Get(ctx, c.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := r.Put(ctx, first[0].ID, first[0].Data); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Put on read-only = %v", err)
	}
	if err := r.Update(ctx, func(MetaTx) error { return nil }); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Update on read-only = %v", err)
	}
	close(stop)
	wg.Wait()
	if st, err := r.Verify(ctx, func(p Problem) { t.Errorf("verify: %s", p) }); err != nil || st.Problems > 0 {
		t.Fatalf("read-only verify: %+v %v", st, err)
	}
	r.Close()
}

// A read-only open with HoldShared (a whole-store verify) shares the lock
// with writers and keeps gc (exclusive) out until it closes; a plain
// read-only open takes no lock.
func TestReadOnlyHoldShared(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	Init(dir, InitOptions{})
	r, err := Open(ctx, dir, OpenOptions{ReadOnly: true, HoldShared: true, Command: "engram verify"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, dir, OpenOptions{Exclusive: true, LockTimeout: -1}); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "engram verify") {
		t.Fatalf("gc beside a holding reader: %v, want ErrLocked naming it", err)
	}
	w, err := Open(ctx, dir, OpenOptions{LockTimeout: -1})
	if err != nil {
		t.Fatalf("a writer beside a holding reader: %v", err)
	}
	w.Close()
	r.Close()
	gc, err := Open(ctx, dir, OpenOptions{Exclusive: true, LockTimeout: -1})
	if err != nil {
		t.Fatalf("gc after the reader closed: %v", err)
	}
	// A plain reader opens beside gc, and a holding one waits for it.
	plain, err := Open(ctx, dir, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("plain reader beside gc: %v", err)
	}
	plain.Close()
	if _, err := Open(ctx, dir, OpenOptions{ReadOnly: true, HoldShared: true, LockTimeout: -1}); !errors.Is(err, ErrLocked) {
		t.Fatalf("holding reader beside gc: %v, want ErrLocked", err)
	}
	gc.Close()
}
