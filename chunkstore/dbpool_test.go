package chunkstore

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A pool kept busy past dbMaxHold gives index.db up only when another
// handle marks that it waits (a restore nobody waits for never pauses),
// and then that handle gets in.
func TestDBPoolYieldsToWaiter(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := bolt.Open(path, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	a := newDBPool(path, false, time.Minute)
	defer a.close()
	view := func(tx *bolt.Tx) error { return nil }
	hold := func(until func() bool) {
		for !until() {
			if err := a.view(ctx, view); err != nil {
				t.Error(err)
				return
			}
		}
	}
	// Nobody waits: one hold, past dbMaxHold.
	start := time.Now()
	hold(func() bool { return time.Since(start) > dbMaxHold+300*time.Millisecond })
	a.mu.Lock()
	rotated := !a.pauseUntil.IsZero() // set only when a hold is ended
	a.mu.Unlock()
	if rotated {
		t.Fatal("pool gave the file up with nobody waiting")
	}
	// A second handle (another process, as far as flock goes) waits.
	b := newDBPool(path, false, time.Minute)
	defer b.close()
	done := make(chan error, 1)
	go func() { done <- b.update(ctx, func(tx *bolt.Tx) error { return nil }) }()
	finished := false
	hold(func() bool {
		select {
		case err := <-done:
			if err != nil {
				t.Error(err)
			}
			finished = true
		default:
		}
		return finished || time.Since(start) > dbMaxHoldAlone
	})
	if !finished {
		t.Fatal("the waiting handle did not get in before dbMaxHoldAlone")
	}
	if _, err := os.Stat(path + dbWaitSuffix); err != nil {
		t.Fatalf("no wait mark: %v", err)
	}
}
