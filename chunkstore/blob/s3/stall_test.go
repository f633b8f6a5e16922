package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/s3"
	"github.com/engram-vm/engram/chunkstore/blob/s3/s3test"
)

// stallStore opens a fresh bucket through a proxy, with the idle timeout
// given.
func stallStore(t *testing.T, idle time.Duration) (*s3.Store, *s3test.Proxy, s3.Config) {
	t.Helper()
	cfg := s3test.Config(t)
	cfg.Prefix = "p"
	p := s3test.NewProxy(t, cfg.Endpoint)
	cfg.Endpoint = p.URL()
	cfg.IdleTimeout = idle
	s, err := open(t, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	return s, p, cfg
}

func body(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// A stall is one line naming the bucket and the endpoint, wrapping
// ErrUnreachable, and costs at most two attempts (minio-go would retry
// it MaxRetries times, each waiting the whole timeout).
func checkStall(t *testing.T, err error, s *s3.Store, p *s3test.Proxy, cfg s3.Config, stalls0 int64, took time.Duration) {
	t.Helper()
	if !errors.Is(err, blob.ErrUnreachable) {
		t.Fatalf("error %v, want endpoint unreachable", err)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, "stopped answering") ||
		!strings.Contains(msg, "s3://"+cfg.Bucket+"/p") || !strings.Contains(msg, p.Addr()) {
		t.Fatalf("error %q: want one line naming s3://%s/p and %s, saying it stopped answering", msg, cfg.Bucket, p.Addr())
	}
	if n := s.Stalls() - stalls0; n < 1 || n > 2 {
		t.Errorf("%d attempts stalled, want 1 or 2 (at most one retry)", n)
	}
	// Not a timing assertion so much as "not the old 2 minutes x 5".
	if took > time.Minute {
		t.Errorf("took %s to report a stall with a 1s idle timeout", took)
	}
	t.Logf("%s after %s", msg, took.Round(time.Millisecond))
}

func TestStalledGet(t *testing.T) {
	ctx := context.Background()
	s, p, cfg := stallStore(t, time.Second)
	data := body(1 << 20)
	if err := s.Put(ctx, "obj", data); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		stall func()
	}{
		{"NoAnswer", func() { p.Stall(s3test.Down) }},
		{"BothWays", func() { p.Stall(s3test.Up); p.Stall(s3test.Down) }},
		// Headers and part of the body, then nothing.
		{"MidBody", func() { p.StallAfter(s3test.Down, 64<<10) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.stall()
			c0, t0 := s.Stalls(), time.Now()
			_, err := s.Get(ctx, "obj", 0, -1)
			checkStall(t, err, s, p, cfg, c0, time.Since(t0))
			p.Resume()
			got, err := s.Get(ctx, "obj", 0, -1)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("after the endpoint recovered: %d bytes, %v", len(got), err)
			}
		})
	}
}

func TestStalledPut(t *testing.T) {
	ctx := context.Background()
	s, p, cfg := stallStore(t, time.Second)
	data := body(4 << 20)
	for i, tc := range []struct {
		name  string
		stall func()
	}{
		{"NoAnswer", func() { p.Stall(s3test.Down) }},
		// The server stops reading the upload half-way.
		{"MidUpload", func() { p.StallAfter(s3test.Up, 1<<20) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "obj" + string(rune('a'+i))
			tc.stall()
			c0, t0 := s.Stalls(), time.Now()
			err := s.Put(ctx, name, data)
			checkStall(t, err, s, p, cfg, c0, time.Since(t0))
			p.Resume()
			if got, err := s.Get(ctx, name, 0, -1); err == nil && !bytes.Equal(got, data) {
				t.Fatalf("a stalled PUT left %d bytes that are not the body", len(got))
			}
			if err := s.Put(ctx, name, data); err != nil && !errors.Is(err, blob.ErrExist) {
				t.Fatalf("PUT after the endpoint recovered: %v", err)
			}
			got, err := s.Get(ctx, name, 0, -1)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("after the endpoint recovered: %d bytes, %v", len(got), err)
			}
		})
	}
}

// A transfer that keeps moving is never cut, however long it takes: here
// four times the idle timeout, in pieces a tenth of it apart.
func TestSlowButMoving(t *testing.T) {
	ctx := context.Background()
	idle := 2 * time.Second
	cfg := s3test.Config(t)
	p := s3test.NewSlowProxy(t, cfg.Endpoint)
	cfg.Endpoint = p.URL()
	cfg.IdleTimeout = idle
	s, err := open(t, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	data := body(160 << 10) // 40 pieces of 4 KiB, 200 ms apart: 8 s
	p.Trickle(s3test.Up, 4<<10, idle/10)
	t0 := time.Now()
	if err := s.Put(ctx, "slow", data); err != nil {
		t.Fatalf("slow PUT: %v", err)
	}
	t.Logf("PUT of %d bytes took %s", len(data), time.Since(t0).Round(time.Millisecond))
	p.Resume()
	p.Trickle(s3test.Down, 4<<10, idle/10)
	t0 = time.Now()
	got, err := s.Get(ctx, "slow", 0, -1)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("slow GET: %d bytes, %v", len(got), err)
	}
	t.Logf("GET of %d bytes took %s", len(data), time.Since(t0).Round(time.Millisecond))
}

// Cancelling (Ctrl-C) during a stall returns at once, long before the
// idle timeout.
func TestStallCancel(t *testing.T) {
	s, p, _ := stallStore(t, 10*time.Minute)
	if err := s.Put(context.Background(), "obj", body(1<<20)); err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"get", "put"} {
		t.Run(op, func(t *testing.T) {
			p.Stall(s3test.Down)
			defer p.Resume()
			ctx, cancel := context.WithCancel(context.Background())
			// Ctrl-C a moment into the stall (whether or not the request
			// is out yet, it must end).
			time.AfterFunc(300*time.Millisecond, cancel)
			t0 := time.Now()
			var err error
			if op == "get" {
				_, err = s.Get(ctx, "obj", 0, -1)
			} else {
				err = s.Put(ctx, "obj2", body(1<<20))
			}
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("error %v, want context canceled", err)
			}
			if took := time.Since(t0); took > time.Minute {
				t.Fatalf("cancel took %s", took)
			}
		})
	}
}

func TestTimeoutEnv(t *testing.T) {
	for v, want := range map[string]time.Duration{"45": 45 * time.Second, "1.5s": 1500 * time.Millisecond, "2m": 2 * time.Minute, "0": -1} {
		t.Setenv(s3.TimeoutEnv, v)
		cfg, err := s3.ConfigFromEnv("bucket", "")
		if err != nil || cfg.IdleTimeout != want {
			t.Errorf("%s=%s: %v, %v; want %v", s3.TimeoutEnv, v, cfg.IdleTimeout, err, want)
		}
	}
	for _, v := range []string{"x", "-5s", "10 s", "5d"} {
		t.Setenv(s3.TimeoutEnv, v)
		if _, err := s3.ConfigFromEnv("bucket", ""); err == nil || !strings.Contains(err.Error(), s3.TimeoutEnv) {
			t.Errorf("%s=%q: %v, want an error naming the variable", s3.TimeoutEnv, v, err)
		}
	}
}

// Bounding stalls leaves minio-go's retries of other failures alone: a
// server that answers 503 SlowDown to the first three attempts of a PUT
// still gets it stored.
func TestRetriesOf503Kept(t *testing.T) {
	ctx := context.Background()
	cfg := s3test.Config(t)
	if _, err := open(t, cfg, true); err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(cfg.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	var refused atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && refused.Add(1) <= 3 {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	cfg.Endpoint = srv.URL
	cfg.IdleTimeout = time.Second
	s, err := open(t, cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "obj", body(64<<10)); err != nil {
		t.Fatalf("PUT refused 3 times with 503, then accepted: %v", err)
	}
	if n := refused.Load(); n != 4 {
		t.Fatalf("%d PUT attempts, want 4", n)
	}
}
