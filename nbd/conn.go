package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// conn is one client connection: the handshake, then the transmission
// phase with a reader loop that dispatches requests to goroutines.
type conn struct {
	srv  *Server
	nc   net.Conn
	peer string
	r    *bufio.Reader

	wmu sync.Mutex // one writer at a time: replies interleave whole
	w   *bufio.Writer

	stopOnce sync.Once
	stopped  chan struct{}

	// negotiated
	noZeroes   bool
	structured bool
	metaExport string // export the base:allocation context was set for
	metaSet    bool
}

func newConn(s *Server, nc net.Conn, peer string) *conn {
	return &conn{
		srv: s, nc: nc, peer: peer,
		r:       bufio.NewReaderSize(nc, 64<<10),
		w:       bufio.NewWriterSize(nc, 64<<10),
		stopped: make(chan struct{}),
	}
}

// stop makes the reader loop end: a read deadline in the past wakes a
// blocked read without closing the socket under in-flight replies.
func (c *conn) stop() {
	c.stopOnce.Do(func() {
		close(c.stopped)
		c.nc.SetReadDeadline(time.Unix(1, 0))
	})
}

func (c *conn) isStopped() bool {
	select {
	case <-c.stopped:
		return true
	default:
		return false
	}
}

// protoError is a peer's breach of the protocol: logged, then the
// connection is dropped.
type protoError struct{ msg string }

func (e *protoError) Error() string { return e.msg }

func protof(format string, args ...any) error { return &protoError{fmt.Sprintf(format, args...)} }

// errAbort ends the handshake at the client's request (OPT_ABORT).
var errAbort = errors.New("client aborted the handshake")

func (c *conn) run(ctx context.Context) {
	defer c.nc.Close()
	c.nc.SetDeadline(time.Now().Add(c.srv.HandshakeTimeout))
	exp, dev, err := c.handshake()
	if err != nil {
		c.report("handshake", err)
		return
	}
	defer dev.Close()
	c.nc.SetDeadline(time.Time{})
	if c.isStopped() { // shut down while negotiating
		return
	}
	c.transmit(ctx, exp, dev)
}

// report logs why a phase ended, unless the client simply hung up.
func (c *conn) report(phase string, err error) {
	var pe *protoError
	var ne net.Error
	switch {
	case errors.Is(err, errAbort), errors.Is(err, io.EOF) && !c.isStopped():
		// a client may hang up at any time in the handshake (nbdinfo --list)
	case c.isStopped():
	case errors.As(err, &pe):
		c.srv.logf("nbd: %s: %s: %v; disconnected", c.peer, phase, err)
	case errors.As(err, &ne) && ne.Timeout():
		c.srv.logf("nbd: %s: %s timed out; disconnected", c.peer, phase)
	case errors.Is(err, io.ErrUnexpectedEOF):
		c.srv.logf("nbd: %s: %s: connection closed mid-message", c.peer, phase)
	default:
		c.srv.logf("nbd: %s: %s: %v", c.peer, phase, err)
	}
}

func (c *conn) flushW() error {
	c.nc.SetWriteDeadline(time.Now().Add(c.srv.WriteTimeout))
	return c.w.Flush()
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// discard reads and drops n bytes without buffering them.
func (c *conn) discard(n int64) error {
	_, err := io.CopyN(io.Discard, c.r, n)
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}
