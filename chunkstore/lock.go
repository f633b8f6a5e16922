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
//
// flock prefers no one: a stream of overlapping shared holders (ingests
// back to back, a verify) kept an exclusive waiter out until its timeout.
// So an exclusive waiter marks its wait with an OFD write lock on byte 0
// of the same file (fcntl locks are independent of flock), and a shared
// locker that finds the mark waits behind it; the mark goes once the
// waiter holds the flock, or gives up, or dies. Where OFD locks are not
// supported nothing is marked and flock alone decides, as before.
type storeLock struct {
	f         *os.File
	exclusive bool
	held      bool // a flock is held (take then converts it)
}

// waitMark is the byte range an exclusive waiter locks.
func waitMark(typ int16) *unix.Flock_t {
	return &unix.Flock_t{Type: typ, Whence: 0, Start: 0, Len: 1}
}

// mark sets the exclusive waiter's mark; false when another waiter holds
// it (that one then goes first) or OFD locks are not supported.
func (l *storeLock) mark() bool {
	return unix.FcntlFlock(l.f.Fd(), unix.F_OFD_SETLK, waitMark(unix.F_WRLCK)) == nil
}

func (l *storeLock) unmark() {
	_ = unix.FcntlFlock(l.f.Fd(), unix.F_OFD_SETLK, waitMark(unix.F_UNLCK))
}

// waiterMarked says an exclusive locker is waiting (or holds the lock).
func (l *storeLock) waiterMarked() bool {
	lk := waitMark(unix.F_RDLCK)
	if err := unix.FcntlFlock(l.f.Fd(), unix.F_OFD_GETLK, lk); err != nil {
		return false
	}
	return lk.Type != unix.F_UNLCK
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
	marked, queued := false, false
	defer func() {
		if marked {
			l.unmark()
		}
	}()
	for {
		var err error
		// A conversion never queues: the waiter may be waiting for the
		// lock this process holds.
		if queued = !exclusive && !l.held && l.waiterMarked(); queued {
			err = unix.EWOULDBLOCK
		} else {
			if exclusive && !marked {
				marked = l.mark()
			}
			err = unix.Flock(int(l.f.Fd()), how|unix.LOCK_NB)
		}
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("chunkstore: lock %s: %w", path, err)
		}
		waited := time.Since(start)
		if waited >= timeout || ctx.Err() != nil {
			holder, _ := os.ReadFile(path)
			le := &LockedError{Dir: dir, Holder: strings.TrimSpace(string(holder)), Waited: waited.Round(time.Millisecond).String(), Queued: queued}
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
	l.exclusive, l.held = exclusive, true
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
