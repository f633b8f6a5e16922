package s3

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// DefaultIdleTimeout is how long a request may see no byte move, either
// way, before it fails (Config.IdleTimeout, ENGRAM_S3_TIMEOUT).
const DefaultIdleTimeout = 30 * time.Second

// TimeoutEnv names the variable ConfigFromEnv reads Config.IdleTimeout from.
const TimeoutEnv = "ENGRAM_S3_TIMEOUT"

// parseTimeout reads ENGRAM_S3_TIMEOUT: seconds ("45") or a Go duration
// ("45s", "2m"); "0" turns the idle timeout off.
func parseTimeout(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		n, nerr := strconv.ParseUint(v, 10, 32)
		if nerr != nil {
			return 0, fmt.Errorf("%s=%q: want seconds or a duration such as 45s or 2m (0: no idle timeout)", TimeoutEnv, v)
		}
		d = time.Duration(n) * time.Second
	}
	switch {
	case d < 0:
		return 0, fmt.Errorf("%s=%q: negative", TimeoutEnv, v)
	case d == 0:
		return -1, nil
	}
	return d, nil
}

// errStall is what a connection returns once nothing has moved on it for
// the idle timeout.
type errStall struct {
	idle time.Duration
	err  error // the deadline's error
}

func (e *errStall) Error() string   { return "no byte moved for " + e.idle.String() }
func (e *errStall) Unwrap() error   { return e.err }
func (e *errStall) Timeout() bool   { return true }
func (e *errStall) Temporary() bool { return true }

var _ net.Error = (*errStall)(nil)

// writePiece bounds one Write on the socket: a Write of more waits until
// the kernel took all of it, which on a slow link can outlast a tick.
const writePiece = 16 << 10

// idleConn fails a Read or Write once nothing has moved on the
// connection, either way, for idle (rclone's timeoutConn pushes a
// deadline on at every Read and Write; this does the same, and also
// counts the kernel's send queue). Progress is: a Read that returned
// bytes, a Write the kernel took bytes of, or a drop in the bytes the
// kernel still holds unacknowledged (SIOCOUTQ, Linux): after the last
// Write of an upload the body can sit in the socket's buffer for as long
// as a slow link needs to drain it, and that is moving, not stalled.
// Reads and Writes wake every tick to look; a transfer that keeps
// moving, however slowly, is never cut. Idle pooled connections are
// closed by the transport before their pending read could stall (Open
// sets IdleConnTimeout under idle).
type idleConn struct {
	net.Conn
	idle, tick time.Duration
	last       atomic.Int64 // UnixNano of the last progress
	lastQueue  atomic.Int64 // the send queue at the last look (-1: none since the last progress)
	raw        syscall.RawConn
}

func newIdleConn(c net.Conn, idle time.Duration) *idleConn {
	ic := &idleConn{Conn: c, idle: idle, tick: max(idle/4, 10*time.Millisecond)}
	ic.last.Store(time.Now().UnixNano())
	ic.lastQueue.Store(-1)
	if sc, ok := c.(syscall.Conn); ok {
		ic.raw, _ = sc.SyscallConn()
	}
	return ic
}

// moved records progress; the next look at the send queue starts afresh.
func (c *idleConn) moved() {
	c.last.Store(time.Now().UnixNano())
	c.lastQueue.Store(-1)
}

// deadline is when a Read or Write begun at from next wakes to look:
// a tick on, or when idle runs out since the last progress (or since
// from: a call begun after a long pause of the caller's own has its
// whole idle time), whichever is first.
func (c *idleConn) deadline(from time.Time) time.Time {
	now := time.Now().UnixNano()
	end := max(c.last.Load(), from.UnixNano()) + int64(c.idle)
	return time.Unix(0, min(now+int64(c.tick), max(end, now+int64(time.Millisecond))))
}

// waitMore reports whether a Read or Write begun at from that timed out
// is to go on waiting: something moved within idle.
func (c *idleConn) waitMore(from time.Time) bool {
	// Only a shrinking queue is the peer's doing (our Writes that grow
	// it count already); the first look after progress sets a baseline.
	if q := sendQueue(c.raw); q >= 0 {
		if prev := c.lastQueue.Swap(q); prev >= 0 && q < prev {
			c.last.Store(time.Now().UnixNano())
		}
	}
	last := time.Unix(0, max(c.last.Load(), from.UnixNano()))
	return time.Since(last) < c.idle
}

func (c *idleConn) stall(err error) error {
	return &errStall{idle: c.idle, err: err}
}

func (c *idleConn) Read(p []byte) (int, error) {
	from := time.Now()
	for {
		_ = c.Conn.SetReadDeadline(c.deadline(from))
		n, err := c.Conn.Read(p)
		if n > 0 {
			c.moved()
		}
		if n > 0 || err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		if !c.waitMore(from) {
			return 0, c.stall(err)
		}
	}
}

func (c *idleConn) Write(p []byte) (int, error) {
	from := time.Now()
	done := 0
	for len(p) > 0 {
		_ = c.Conn.SetWriteDeadline(c.deadline(from))
		n, err := c.Conn.Write(p[:min(len(p), writePiece)])
		if n > 0 {
			c.moved()
		}
		done += n
		p = p[n:]
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if c.waitMore(from) {
					continue
				}
				return done, c.stall(err)
			}
			return done, err
		}
	}
	return done, nil
}

// Stalls cost a Store call at most two attempts: minio-go retries every
// network error up to MaxRetries times, and each stalled attempt waits
// the whole idle time. The first stall is retried (a new connection may
// get through, where the stalled one was, say, dropped by a NAT); the
// second ends the call. Once any call has failed so, the endpoint is
// taken to be down and a later call's first stall ends it. Other errors
// (5xx, throttling, refused connections) keep minio-go's retries.
type callKey struct{}

type callState struct {
	stalls atomic.Int32
	stall  atomic.Pointer[errStall] // the first
	cancel context.CancelCauseFunc
}

// stallTripper counts the stalls of each call's attempts (see callState).
type stallTripper struct {
	rt http.RoundTripper
	s  *Store
}

func (t *stallTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(req)
	if err == nil {
		t.s.down.Store(false) // it answers again
	}
	var se *errStall
	if err != nil && errors.As(err, &se) {
		t.s.stalls.Add(1)
		if st, ok := req.Context().Value(callKey{}).(*callState); ok {
			st.stall.CompareAndSwap(nil, se)
			if st.stalls.Add(1) >= 2 || t.s.down.Load() {
				t.s.down.Store(true)
				st.cancel(se)
			}
		}
	}
	return resp, err
}

// call gives one Store call its context (see callState); end releases it.
// Ending it also stops the goroutines minio-go runs for a listing.
func (s *Store) call(ctx context.Context) (cctx context.Context, end func()) {
	cctx, cancel := context.WithCancelCause(ctx)
	if s.idle > 0 {
		cctx = context.WithValue(cctx, callKey{}, &callState{cancel: cancel})
	}
	return cctx, func() { cancel(nil) }
}

// stalled reports the stall that ended a call, if one did: err itself
// (a body that stopped half-way; a last attempt) or the cause its context
// was ended with. A call the caller cancelled is not a stall.
func (s *Store) stalled(ctx context.Context, err error) *errStall {
	if ctx == nil || s.idle <= 0 {
		return nil
	}
	var se *errStall
	if errors.As(context.Cause(ctx), &se) {
		return se
	}
	if ctx.Err() != nil {
		return nil // the caller's cancel or deadline
	}
	if errors.As(err, &se) {
		s.down.Store(true)
		if st, ok := ctx.Value(callKey{}).(*callState); !ok || st.stall.Load() != se {
			s.stalls.Add(1) // a body that stopped half-way: RoundTrip had returned
			if ok {
				st.stall.Store(se)
			}
		}
		return se
	}
	return nil
}

// stalledBefore reports a stall of an earlier attempt of the call: when
// the last attempt then failed on the network too (the server closed a
// retried connection, say), the stall is what the user needs to hear.
func (s *Store) stalledBefore(ctx context.Context) *errStall {
	if st, ok := ctx.Value(callKey{}).(*callState); ok && ctx.Err() == nil {
		return st.stall.Load()
	}
	return nil
}

// stallErr is the one line for a call ended by a stall.
func (s *Store) stallErr(what string, se *errStall) error {
	return fmt.Errorf("%s: %s stopped answering (nothing moved for %s; %s sets the limit): %w",
		what, endpointName(s.cfg.Endpoint), se.idle, TimeoutEnv, blob.ErrUnreachable)
}
