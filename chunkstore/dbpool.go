package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// dbPool shares one handle of index.db among the goroutines of a process
// and closes it whenever nobody uses it. bbolt holds an flock on the file
// while it is open (exclusive for writers, shared for readers), so keeping
// it open for a whole ingest would lock every other process out. Instead
// the handle lives only while transactions run, plus a short linger so
// back-to-back calls reuse it; a handle kept busy for longer than maxHold
// is closed and the pool pauses for longer than bbolt's 50 ms flock retry
// interval, so a process waiting in bolt.Open gets its turn. That happens
// only when a process says it is waiting (it touches index.db.wait after
// each attempt that timed out), or after dbMaxHoldAlone for those that do
// not: a restore that nobody waits for never pauses.
type dbPool struct {
	path     string
	readOnly bool
	timeout  time.Duration

	mu         sync.Mutex
	cond       *sync.Cond
	db         *bolt.DB
	refs       int
	openedAt   time.Time // start of the current hold (see acquire)
	closedAt   time.Time
	draining   bool
	pauseUntil time.Time
	linger     *time.Timer
	gen        int // bumps on every close, so a stale linger timer does nothing
	closed     bool
	checkedAt  time.Time // last look at the wait mark
	waiting    bool      // what it said
}

const (
	dbLinger = 2 * time.Millisecond
	// dbReadLinger is the linger after a read: restore's fetchers look
	// chunks up every few ms between decodes, and with 2 ms the handle was
	// closed and reopened (flock, mmap) ~60 times in a restore of a clone,
	// each reopen holding up every other lookup. A process waiting polls
	// every 50 ms anyway and says so (dbWaitSuffix).
	dbReadLinger = 25 * time.Millisecond
	dbMaxHold    = time.Second
	dbRotPause   = 120 * time.Millisecond // > bbolt's 50 ms flock poll, with slack for a loaded machine
	// dbMaxHoldAlone bounds a hold when no process marked that it waits
	// (one too old to leave the mark still gets its turn).
	dbMaxHoldAlone = 10 * time.Second
	dbWaitSuffix   = ".wait"
	dbWaitFresh    = time.Second            // a mark this recent says someone waits (they touch it every 200 ms)
	dbWaitCheck    = 100 * time.Millisecond // how often a holder looks at the mark
)

func newDBPool(path string, readOnly bool, timeout time.Duration) *dbPool {
	p := &dbPool{path: path, readOnly: readOnly, timeout: timeout}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *dbPool) acquire(ctx context.Context) (*bolt.DB, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if p.closed {
			return nil, ErrClosed
		}
		if p.db != nil && !p.draining {
			if held := time.Since(p.openedAt); held > dbMaxHold && (held > dbMaxHoldAlone || p.othersWaitLocked()) {
				if p.refs == 0 {
					p.closeLocked()
					p.pauseUntil = time.Now().Add(dbRotPause)
				} else {
					p.draining = true
				}
				continue
			}
			if p.linger != nil {
				p.linger.Stop()
				p.linger = nil
			}
			p.refs++
			return p.db, nil
		}
		if p.db != nil { // draining: wait for the users to leave
			p.cond.Wait()
			continue
		}
		if d := time.Until(p.pauseUntil); d > 0 {
			p.mu.Unlock()
			time.Sleep(d)
			p.mu.Lock()
			continue
		}
		break
	}
	db, err := p.open(ctx)
	if err != nil {
		return nil, err
	}
	// Short idle gaps do not count as giving the file up: a process that
	// polls for the flock every 50 ms would rarely hit them. Only a pause
	// of dbRotPause starts a new hold.
	if time.Since(p.closedAt) >= dbRotPause {
		p.openedAt = time.Now()
	}
	p.db, p.refs = db, 1
	return db, nil
}

// othersWaitLocked says whether a process marked recently that it waits
// for index.db; it looks at the mark at most every dbWaitCheck.
func (p *dbPool) othersWaitLocked() bool {
	if now := time.Now(); now.Sub(p.checkedAt) >= dbWaitCheck {
		p.checkedAt = now
		fi, err := os.Stat(p.path + dbWaitSuffix)
		p.waiting = err == nil && now.Sub(fi.ModTime()) < dbWaitFresh
	}
	return p.waiting
}

// markWaiting tells the process holding index.db that this one waits for
// it. Failing (a read-only directory) only leaves that process to give the
// file up after dbMaxHoldAlone.
func (p *dbPool) markWaiting() {
	name := p.path + dbWaitSuffix
	now := time.Now()
	if err := os.Chtimes(name, now, now); errors.Is(err, os.ErrNotExist) {
		if f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE, 0o644); err == nil {
			f.Close()
		}
	}
}

func (p *dbPool) open(ctx context.Context) (db *bolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil { // bbolt panics on some damaged files
			db, err = nil, fmt.Errorf("%s: %v: %w", p.path, r, ErrIndexDamaged)
		}
	}()
	// bbolt would silently create (or initialise an empty) index.db; a
	// store whose index vanished must go through Repair instead.
	if fi, err := os.Stat(p.path); err != nil {
		return nil, fmt.Errorf("%s: %w (run repair to rebuild it): %w", p.path, ErrIndexDamaged, err)
	} else if fi.Size() == 0 {
		return nil, fmt.Errorf("%s: empty file (run repair to rebuild it): %w", p.path, ErrIndexDamaged)
	}
	deadline := time.Now().Add(p.timeout)
	for {
		db, err = bolt.Open(p.path, 0o644, &bolt.Options{Timeout: 200 * time.Millisecond, ReadOnly: p.readOnly})
		if err == nil {
			return db, nil
		}
		if !errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w: %w", p.path, ErrIndexDamaged, err)
		}
		p.markWaiting()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: waiting for another process: %w", p.path, ctx.Err())
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: another process kept it locked for over %s: %w", p.path, p.timeout, ErrLocked)
		}
	}
}

func (p *dbPool) release(write bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refs--
	if p.refs > 0 {
		return
	}
	if p.draining || p.closed {
		p.closeLocked()
		if !p.closed {
			p.pauseUntil = time.Now().Add(dbRotPause)
		}
		return
	}
	gen := p.gen
	linger := dbReadLinger
	if write {
		linger = dbLinger
	}
	p.linger = time.AfterFunc(linger, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.gen == gen && p.refs == 0 && p.db != nil {
			p.closeLocked()
		}
	})
}

func (p *dbPool) closeLocked() {
	if p.linger != nil {
		p.linger.Stop()
		p.linger = nil
	}
	if p.db != nil {
		_ = p.db.Close()
		p.db = nil
		p.closedAt = time.Now()
	}
	p.draining = false
	p.gen++
	p.cond.Broadcast()
}

// close closes the handle once the last user releases it.
func (p *dbPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.refs == 0 {
		p.closeLocked()
	}
	p.cond.Broadcast()
}

// view runs fn in a read transaction; a panic inside bbolt (damaged page)
// becomes ErrIndexDamaged.
func (p *dbPool) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	return p.run(ctx, false, fn)
}

func (p *dbPool) update(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if p.readOnly {
		return ErrReadOnly
	}
	return p.run(ctx, true, fn)
}

func (p *dbPool) run(ctx context.Context, write bool, fn func(tx *bolt.Tx) error) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	db, err := p.acquire(ctx)
	if err != nil {
		return err
	}
	defer p.release(write)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: %v: %w", p.path, r, ErrIndexDamaged)
		}
	}()
	if write {
		return db.Update(fn)
	}
	return db.View(fn)
}

// flush waits for the current users to finish and closes the handle, so
// the file can be replaced (Repair).
func (p *dbPool) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.db != nil {
		if p.refs == 0 {
			p.closeLocked()
			return
		}
		p.draining = true
		p.cond.Wait()
	}
}
