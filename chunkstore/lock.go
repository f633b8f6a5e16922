package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultLockTimeout is how long Open waits for the store lock (and for
// index.db) when OpenOptions.LockTimeout is zero.
const DefaultLockTimeout = time.Minute

// lockWait is how long to wait for the store lock given an options'
// LockTimeout: 0 means DefaultLockTimeout, a negative value not at all.
func lockWait(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return DefaultLockTimeout
	case d < 0:
		return 0
	}
	return d
}

// storeLock is the flock on dir/lock. Writers of a directory store hold it
// shared (any number of ingests at once, as in a bucket), gc and the format
// upgrade exclusively (nothing writes meanwhile, so gc may delete at once).
// The kernel drops it when the process dies, so it is never stale; the
// file's content only says who took it last, for the waiting side's
// message.
type storeLock struct {
	f         *os.File
	exclusive bool
}

func acquireLock(ctx context.Context, dir string, timeout time.Duration, command string, exclusive bool) (*storeLock, error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: open lock: %w", err)
	}
	l := &storeLock{f: f}
	if err := l.take(ctx, dir, timeout, command, exclusive); err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// take (re)locks in the mode asked for; a conversion between modes is not
// atomic in flock, which is why gc opens the store exclusively from the
// start rather than upgrading a shared lock.
func (l *storeLock) take(ctx context.Context, dir string, timeout time.Duration, command string, exclusive bool) error {
	path := filepath.Join(dir, lockName)
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	start := time.Now()
	for {
		err := unix.Flock(int(l.f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("chunkstore: lock %s: %w", path, err)
		}
		waited := time.Since(start)
		if waited >= timeout || ctx.Err() != nil {
			holder, _ := os.ReadFile(path)
			le := &LockedError{Dir: dir, Holder: strings.TrimSpace(string(holder)), Waited: waited.Round(time.Millisecond).String()}
			if ctx.Err() != nil && waited < timeout {
				return fmt.Errorf("%w (%w)", le, ctx.Err())
			}
			return le
		}
		select {
		case <-ctx.Done():
		case <-time.After(min(100*time.Millisecond, timeout-waited)):
		}
	}
	l.exclusive = exclusive
	host, _ := os.Hostname()
	if command == "" {
		command = strings.Join(os.Args, " ")
	}
	info := fmt.Sprintf("pid %d on host %s since %s (%s)\n", os.Getpid(), host, time.Now().Format(time.RFC3339), command)
	if err := l.f.Truncate(0); err == nil {
		_, _ = l.f.WriteAt([]byte(info), 0)
	}
	return nil
}

func (l *storeLock) release() error {
	if l == nil || l.f == nil {
		return nil
	}
	if l.exclusive {
		_ = l.f.Truncate(0) // a shared holder cannot know it is the last
	}
	err := l.f.Close() // closing drops the flock
	l.f = nil
	return err
}
