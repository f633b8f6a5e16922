package nbd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// Device is what an export serves: a read-only disk. ReadAt must be safe
// for concurrent use (requests on one connection are served in parallel).
// Extents reports [off, off+length) as a sequence of consecutive ranges,
// data=false for ranges that read as zeros and are not stored (holes).
type Device interface {
	ReadAt(p []byte, off int64) (int, error)
	Extents(off, length int64, fn func(off, length int64, data bool) error) error
	Close() error
}

// SliceDevice is a Device that can also return the bytes of a range as
// slices that stay valid and unchanged until the reply is sent (cached
// chunks, shared zeros), like view.Reader.ReadSlices: structured read
// replies are then written from them without a copy.
type SliceDevice interface {
	Device
	ReadSlices(off int64, n int) ([][]byte, error)
}

// Export is one disk the server offers.
type Export struct {
	// Name selects the export (OPT_GO, OPT_EXPORT_NAME) and is listed by
	// OPT_LIST.
	Name string
	// ID, if set, is a second full name listed by OPT_LIST; a prefix of
	// it that matches no Name and no other export's ID selects it too.
	ID          string
	Description string
	Size        int64
	// Open is called once per connection that enters transmission with
	// this export; the Device is closed when the connection ends.
	Open func() (Device, error)
}

// Server serves a fixed set of exports. The zero value of each field is a
// sensible default; set fields before calling Serve.
type Server struct {
	Exports []Export
	// Default is the export an empty name selects; "" means the first
	// export when there is exactly one, else none.
	Default string
	// Logf reports client problems, one line each; nil discards them.
	Logf func(format string, args ...any)
	// HandshakeTimeout bounds the whole negotiation (default 30s).
	HandshakeTimeout time.Duration
	// WriteTimeout bounds sending one reply, so a client that stops
	// reading releases its buffers (default 2 min).
	WriteTimeout time.Duration
	// MaxInFlight bounds the requests served at once per connection
	// (default 16).
	MaxInFlight int
	// MaxConns bounds the connections served at once (default 256); one
	// more is closed at once and logged.
	MaxConns int
	// MaxBufferBytes bounds the read buffers of all connections together
	// (default 64 MiB, at least MaxPayload); one connection may hold at
	// most half of it, but never less than one MaxPayload request.
	MaxBufferBytes int64

	initOnce sync.Once
	budget   *semaphore.Weighted
	nextID   atomic.Uint64

	mu     sync.Mutex
	conns  map[*conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		if s.HandshakeTimeout <= 0 {
			s.HandshakeTimeout = 30 * time.Second
		}
		if s.WriteTimeout <= 0 {
			s.WriteTimeout = 2 * time.Minute
		}
		if s.MaxInFlight <= 0 {
			s.MaxInFlight = 16
		}
		if s.MaxConns <= 0 {
			s.MaxConns = 256
		}
		if s.MaxBufferBytes <= 0 {
			s.MaxBufferBytes = 64 << 20
		}
		s.MaxBufferBytes = max(s.MaxBufferBytes, MaxPayload)
		s.budget = semaphore.NewWeighted(s.MaxBufferBytes)
		s.conns = map[*conn]struct{}{}
	})
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// Serve accepts connections on l until ctx is cancelled, then closes l,
// lets every connection finish the requests it has in flight, and
// returns nil. An accept error other than the listener closing is
// returned.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.init()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var err error
	for {
		c, aerr := l.Accept()
		if aerr != nil {
			var ne net.Error
			if errors.As(aerr, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if ctx.Err() == nil && !errors.Is(aerr, net.ErrClosed) {
				err = aerr
			}
			break
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.ServeConn(ctx, c)
		}()
	}
	s.Shutdown()
	s.wg.Wait()
	return err
}

// Shutdown makes every connection stop reading new requests; requests in
// flight are answered, then the connections close. Connections still in
// the handshake are closed.
func (s *Server) Shutdown() {
	s.init()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.stop()
	}
	s.mu.Unlock()
}

// ServeConn runs the protocol on one accepted connection and closes it.
// It returns when the client disconnects, breaks the protocol, or ctx is
// cancelled.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) {
	s.init()
	c := newConn(s, nc, peerName(s.nextID.Add(1), nc))
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	if len(s.conns) >= s.MaxConns {
		s.mu.Unlock()
		s.logf("nbd: %s: refused, already serving %d connections", c.peer, s.MaxConns)
		nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	stop := context.AfterFunc(ctx, c.stop)
	defer stop()
	c.run(ctx)
}

// peerName names a client in log lines: a sequence number (unix socket
// peers have no address) and the remote address when there is one.
func peerName(n uint64, nc net.Conn) string {
	addr := ""
	if ra := nc.RemoteAddr(); ra != nil {
		addr = ra.String()
	}
	if addr == "" || addr == "@" || strings.HasPrefix(addr, "pipe") {
		return fmt.Sprintf("client %d", n)
	}
	return fmt.Sprintf("client %d (%s)", n, addr)
}

// lookup finds the export a client names: an exact name or full ID, then
// a unique ID prefix, then the default for "".
func (s *Server) lookup(name string) (*Export, bool) {
	if name == "" {
		def := s.Default
		if def == "" {
			if len(s.Exports) == 1 {
				return &s.Exports[0], true
			}
			return nil, false
		}
		name = def
	}
	for i := range s.Exports {
		if e := &s.Exports[i]; e.Name == name || (e.ID != "" && e.ID == name) {
			return e, true
		}
	}
	// At least 4 digits, as the CLI's IDs (engram.MinPrefix): a short
	// missing name ("01") must not select the export whose ID starts so.
	if len(name) < 4 {
		return nil, false
	}
	var found *Export
	for i := range s.Exports {
		e := &s.Exports[i]
		if e.ID != "" && strings.HasPrefix(e.ID, name) {
			if found != nil && found.ID != e.ID {
				return nil, false // ambiguous
			}
			if found == nil {
				found = e // the first name of that ID
			}
		}
	}
	return found, found != nil
}
