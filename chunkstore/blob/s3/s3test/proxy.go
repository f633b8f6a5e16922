package s3test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Direction is one way through a Proxy.
type Direction int

const (
	Up   Direction = iota // client to server (requests, PUT bodies)
	Down                  // server to client (responses, GET bodies)
)

// Proxy is a TCP proxy in front of the test server that can be told to
// stop forwarding (keeping every connection open, as a stalled server or
// a black-holed path does) or to trickle bytes.
type Proxy struct {
	l      net.Listener
	target string
	conns  atomic.Int64 // accepted so far

	mu     sync.Mutex
	cond   *sync.Cond
	closed bool
	dir    [2]flow
	open   []net.Conn
}

type flow struct {
	stalled bool
	after   int64 // bytes still forwarded before stalling; < 0: no stall set
	piece   int   // trickle: bytes per write (0: no trickle)
	gap     time.Duration
}

// NewProxy starts a proxy to the server at endpoint (http://host:port);
// it stops with the test.
func NewProxy(t testing.TB, endpoint string) *Proxy { return newProxy(t, endpoint, false) }

// NewSlowProxy is NewProxy with a small receive buffer on the client's
// side: what the proxy has not forwarded is then not acknowledged
// either, as on a slow link (loopback's buffers would take a whole
// upload at once, and the client would see it sent). It is set on the
// listening socket, so the window is small from the handshake on.
func NewSlowProxy(t testing.TB, endpoint string) *Proxy { return newProxy(t, endpoint, true) }

func newProxy(t testing.TB, endpoint string, slow bool) *Proxy {
	t.Helper()
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	var lc net.ListenConfig
	if slow {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
			})
			return errors.Join(err, serr)
		}
	}
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{l: l, target: u.Host}
	p.cond = sync.NewCond(&p.mu)
	p.dir[Up].after, p.dir[Down].after = -1, -1
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// URL is the proxy's endpoint.
func (p *Proxy) URL() string { return "http://" + p.l.Addr().String() }

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// Conns is the number of connections accepted so far.
func (p *Proxy) Conns() int64 { return p.conns.Load() }

// Stall stops forwarding in d at once, on every connection.
func (p *Proxy) Stall(d Direction) { p.StallAfter(d, 0) }

// StallAfter forwards n more bytes in d, then stops.
func (p *Proxy) StallAfter(d Direction, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dir[d].after = n
	p.dir[d].stalled = n == 0
}

// Stalled reports whether d has stopped forwarding (a StallAfter that
// has run out).
func (p *Proxy) Stalled(d Direction) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dir[d].stalled
}

// Trickle forwards d piece bytes at a time with gap between pieces.
func (p *Proxy) Trickle(d Direction, piece int, gap time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dir[d].piece, p.dir[d].gap = piece, gap
}

// Resume forwards freely again both ways.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dir = [2]flow{{after: -1}, {after: -1}}
	p.cond.Broadcast()
}

// Close stops the proxy and closes its connections.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	conns := p.open
	p.open = nil
	p.cond.Broadcast()
	p.mu.Unlock()
	_ = p.l.Close()
	for _, c := range conns {
		_ = c.Close()
	}
}

func (p *Proxy) accept() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.conns.Add(1)
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			_ = s.Close()
			return
		}
		p.open = append(p.open, c, s)
		p.mu.Unlock()
		go p.pump(Up, c, s)
		go p.pump(Down, s, c)
	}
}

func (p *Proxy) pump(d Direction, src, dst net.Conn) {
	defer src.Close()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.forward(d, dst, buf[:n]) {
			return
		}
		if err != nil {
			return
		}
	}
}

// forward writes b to dst as d's state allows; false once closed.
func (p *Proxy) forward(d Direction, dst net.Conn, b []byte) bool {
	for len(b) > 0 {
		p.mu.Lock()
		f := &p.dir[d]
		for (f.stalled || f.after == 0) && !p.closed {
			f.stalled = true
			p.cond.Wait()
		}
		if p.closed {
			p.mu.Unlock()
			return false
		}
		k := len(b)
		if f.after > 0 {
			k = int(min(int64(k), f.after))
			f.after -= int64(k)
		}
		if f.piece > 0 {
			k = min(k, f.piece)
		}
		gap := f.gap
		p.mu.Unlock()
		if _, err := dst.Write(b[:k]); err != nil {
			return false
		}
		b = b[k:]
		if gap > 0 {
			time.Sleep(gap)
		}
	}
	return true
}
