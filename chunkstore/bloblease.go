package chunkstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// A gc holding gc/lease shows it is alive with beats: gc/lease-beat-T-R
// objects (T its clock in hex nanoseconds, as in gc lists; R random), one
// every quarter of the lease timeout. The lease counts as stale only when
// neither it nor its newest beat is younger than the timeout, so a gc (or
// repair) that runs for longer than the timeout keeps it. Put never
// replaces an object, and deleting the lease to put a fresh one would
// leave a moment without it, in which a writer waiting for the sweep to
// end (awaitNoGC) would go on while the sweep still runs. Older programs
// ignore the beats (they list gc/ by its list prefixes only) and take a
// lease older than the timeout for stale, as before.
const gcBeatPrefix = "gc/lease-beat-"

func beatName(t int64) string {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("%s%016x-%s", gcBeatPrefix, t, hex.EncodeToString(r[:]))
}

func parseBeatName(name string) (int64, bool) {
	rest, ok := strings.CutPrefix(name, gcBeatPrefix)
	if !ok || len(rest) != 25 || rest[16] != '-' {
		return 0, false
	}
	v, err := strconv.ParseUint(rest[:16], 16, 63)
	return int64(v), err == nil
}

// leaseAlive is when the gc holding lease l last showed it was alive: the
// lease's own time or its newest beat's. A killed holder's beats are all
// older than a lease taken after them, so they never count for a new one.
func (s *BlobStore) leaseAlive(ctx context.Context, l gcLease) (int64, error) {
	t := l.Time
	err := s.bs.List(ctx, gcBeatPrefix, func(in blob.Info) error {
		if v, ok := parseBeatName(in.Name); ok && v > t {
			t = v
		}
		return nil
	})
	return t, err
}

// beatLease puts a beat every period until stop is called, which waits for
// the beater to end and then deletes the lease and its beats (the lease
// first, so no moment shows beats that outlive their lease as alive).
func (s *BlobStore) beatLease(ctx context.Context, period time.Duration) (stop func()) {
	period = max(period, time.Millisecond)
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				// A failed beat is retried at the next tick; after a
				// timeout without one the lease is stale, as a killed
				// gc's would be.
				_ = s.bs.Put(ctx, beatName(s.now()), nil)
			}
		}
	}()
	return func() {
		cancel()
		wg.Wait()
		ctx := context.WithoutCancel(ctx)
		_ = s.bs.Delete(ctx, gcLeaseName)
		s.deleteBeats(ctx)
	}
}

// deleteBeats removes every beat (best effort: a beat left over is older
// than any lease taken after it and never counts).
func (s *BlobStore) deleteBeats(ctx context.Context) {
	var names []string
	_ = s.bs.List(ctx, gcBeatPrefix, func(in blob.Info) error {
		names = append(names, in.Name)
		return nil
	})
	for _, n := range names {
		if err := s.bs.Delete(ctx, n); err != nil && !errors.Is(err, blob.ErrNotExist) {
			return
		}
	}
}
