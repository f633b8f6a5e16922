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

// DefaultLockTimeout is how long Open waits for the writer lock (and for
// index.db) when OpenOptions.LockTimeout is zero.
const DefaultLockTimeout = time.Minute

// writerLock is the flock on dir/lock held by the one writing process.
// The kernel drops it when the process dies, so it is never stale; the
// file's content only says who holds it, for the waiting side's message.
type writerLock struct {
	f *os.File
}

func acquireLock(ctx context.Context, dir string, timeout time.Duration, command string) (*writerLock, error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: open lock: %w", err)
	}
	start := time.Now()
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("chunkstore: lock %s: %w", path, err)
		}
		waited := time.Since(start)
		if waited >= timeout || ctx.Err() != nil {
			holder, _ := os.ReadFile(path)
			f.Close()
			le := &LockedError{Dir: dir, Holder: strings.TrimSpace(string(holder)), Waited: waited.Round(time.Millisecond).String()}
			if ctx.Err() != nil && waited < timeout {
				return nil, fmt.Errorf("%w (%w)", le, ctx.Err())
			}
			return nil, le
		}
		select {
		case <-ctx.Done():
		case <-time.After(min(100*time.Millisecond, timeout-waited)):
		}
	}
	host, _ := os.Hostname()
	if command == "" {
		command = strings.Join(os.Args, " ")
	}
	info := fmt.Sprintf("pid %d on host %s since %s (%s)\n", os.Getpid(), host, time.Now().Format(time.RFC3339), command)
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(info), 0)
	}
	return &writerLock{f: f}, nil
}

func (l *writerLock) release() error {
	if l == nil || l.f == nil {
		return nil
	}
	_ = l.f.Truncate(0)
	err := l.f.Close() // closing drops the flock
	l.f = nil
	return err
}
