package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/blobtest"
	"github.com/engram-vm/engram/chunkstore/blob/s3"
	"github.com/engram-vm/engram/chunkstore/blob/s3/s3test"
)

func TestMain(m *testing.M) { s3test.Main(m) }

func open(t *testing.T, cfg s3.Config, create bool) (*s3.Store, error) {
	t.Helper()
	return s3.Open(context.Background(), cfg, create)
}

func TestConformance(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) blob.Store {
		cfg := s3test.Config(t)
		cfg.Prefix = "some/prefix"
		s, err := open(t, cfg, true)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, blobtest.Options{})
}

// Two stores on one bucket under different prefixes do not see each other.
func TestPrefixIsolation(t *testing.T) {
	ctx := context.Background()
	cfg := s3test.Config(t)
	cfg.Prefix = "a"
	a, err := open(t, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Prefix = "ab"
	ab, err := open(t, cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Put(ctx, "x", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := ab.Put(ctx, "x", []byte("2")); err != nil {
		t.Fatalf("same name under another prefix: %v", err)
	}
	n := 0
	_ = a.List(ctx, "", func(in blob.Info) error { n++; return nil })
	if n != 1 {
		t.Fatalf("prefix a lists %d objects, want 1", n)
	}
}

func TestParseURL(t *testing.T) {
	for u, want := range map[string][2]string{
		"s3://bucket":          {"bucket", ""},
		"s3://bucket/":         {"bucket", ""},
		"s3://bucket/a/b":      {"bucket", "a/b"},
		"s3://my.bucket-1/p/":  {"my.bucket-1", "p"},
		"s3://engram-fleet/x1": {"engram-fleet", "x1"},
	} {
		b, p, err := s3.ParseURL(u)
		if err != nil || b != want[0] || p != want[1] {
			t.Errorf("ParseURL(%q) = %q, %q, %v; want %q, %q", u, b, p, err, want[0], want[1])
		}
	}
	for _, u := range []string{"s3:/bucket", "bucket", "s3://", "s3://B", "s3://ab", "s3://bu_cket", "s3://bucket/../x", "s3://bucket/a//b"} {
		if _, _, err := s3.ParseURL(u); err == nil {
			t.Errorf("ParseURL(%q) accepted", u)
		}
	}
}

// Each bad configuration is one line matching its sentinel.
func TestBadInput(t *testing.T) {
	oneLine := func(t *testing.T, err error, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Fatalf("error %v, want %v", err, want)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Fatalf("error is more than one line: %q", err)
		}
	}
	t.Run("NoBucket", func(t *testing.T) {
		_, err := open(t, s3test.Config(t), false)
		oneLine(t, err, blob.ErrNoBucket)
	})
	t.Run("WrongSecret", func(t *testing.T) {
		cfg := s3test.Config(t)
		cfg.SecretKey = "wrong"
		_, err := open(t, cfg, true)
		oneLine(t, err, blob.ErrAccessDenied)
	})
	t.Run("WrongKey", func(t *testing.T) {
		cfg := s3test.Config(t)
		cfg.AccessKey = "nobody"
		_, err := open(t, cfg, true)
		oneLine(t, err, blob.ErrAccessDenied)
	})
	t.Run("Refused", func(t *testing.T) {
		// A port nothing listens on: bind one, then close it.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		cfg := s3test.Config(t)
		cfg.Endpoint = "http://" + addr
		cfg.MaxRetries = 1
		_, err = open(t, cfg, true)
		oneLine(t, err, blob.ErrUnreachable)
	})
	t.Run("ClockSkew", func(t *testing.T) {
		// The server sees requests signed an hour ahead of its clock, as
		// from a host whose clock is wrong: the real server's answer.
		cfg := s3test.Config(t)
		target, err := url.Parse(cfg.Endpoint)
		if err != nil {
			t.Fatal(err)
		}
		proxy := httputil.NewSingleHostReverseProxy(target)
		direct := proxy.Director
		proxy.Director = func(r *http.Request) {
			direct(r)
			if d, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date")); err == nil {
				r.Header.Set("X-Amz-Date", d.Add(time.Hour).Format("20060102T150405Z"))
			}
		}
		srv := httptest.NewServer(proxy)
		defer srv.Close()
		cfg.Endpoint = srv.URL
		cfg.MaxRetries = 1
		_, err = open(t, cfg, true)
		oneLine(t, err, blob.ErrClockSkew)
		t.Log(err)
	})
	t.Run("Hung", func(t *testing.T) {
		// An endpoint that takes connections and never answers.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				conns = append(conns, c)
			}
		}()
		defer func(d time.Duration) { s3.OpenTimeout = d }(s3.OpenTimeout)
		s3.OpenTimeout = 300 * time.Millisecond
		cfg := s3test.Config(t)
		cfg.Endpoint = "http://" + l.Addr().String()
		_, err = open(t, cfg, false)
		oneLine(t, err, blob.ErrUnreachable)
		if !strings.Contains(err.Error(), l.Addr().String()) || !strings.Contains(err.Error(), "no answer") {
			t.Fatalf("error %q does not say the endpoint gave no answer", err)
		}
	})
	t.Run("BadEndpoint", func(t *testing.T) {
		cfg := s3test.Config(t)
		cfg.Endpoint = "ftp://x"
		if _, err := open(t, cfg, true); err == nil {
			t.Fatal("ftp endpoint accepted")
		}
	})
}

// gc's clean-up of unfinished multipart uploads: only those under the
// store's prefix and older than the cut-off go.
func TestAbortStaleUploads(t *testing.T) {
	ctx := context.Background()
	cfg := s3test.Config(t)
	cfg.Prefix = "mine"
	s, err := open(t, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	other := cfg
	other.Prefix = "theirs"
	o, err := open(t, other, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.StartUpload(ctx, "packs/a"); err != nil {
		t.Fatal(err)
	}
	if err := o.StartUpload(ctx, "packs/b"); err != nil {
		t.Fatal(err)
	}
	if n, err := s.AbortStaleUploads(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("uploads begun just now, cut-off an hour ago: aborted %d, %v; want 0", n, err)
	}
	if n, err := s.AbortStaleUploads(ctx, time.Now().Add(time.Minute)); err != nil || n != 1 {
		t.Fatalf("aborted %d, %v; want 1 (only under its own prefix)", n, err)
	}
	if n, err := s.AbortStaleUploads(ctx, time.Now().Add(time.Minute)); err != nil || n != 0 {
		t.Fatalf("second run aborted %d, %v; want 0", n, err)
	}
	if n, err := o.AbortStaleUploads(ctx, time.Now().Add(time.Minute)); err != nil || n != 1 {
		t.Fatalf("the other prefix: aborted %d, %v; want 1", n, err)
	}
}

// flipReader flips one byte of what it reads, at offset at.
type flipReader struct {
	r   io.ReadCloser
	off int64
	at  int64
}

func (f *flipReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if f.at >= f.off && f.at < f.off+int64(n) {
		p[f.at-f.off] ^= 0x01
	}
	f.off += int64(n)
	return n, err
}

func (f *flipReader) Close() error { return f.r.Close() }

// A PUT whose body is damaged between engram and the server is refused,
// so a damaged pack is never stored as if it were whole. Over plain HTTP
// the body's signature guards it (no Content-MD5 is sent); a proxy in
// front of the real server flips one byte of every PUT body.
func TestDamagedBodyRefused(t *testing.T) {
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
	direct := proxy.Director
	var md5Sent atomic.Bool
	proxy.Director = func(r *http.Request) {
		direct(r)
		if r.Method == http.MethodPut && r.Body != nil {
			if r.Header.Get("Content-Md5") != "" {
				md5Sent.Store(true)
			}
			r.Body = &flipReader{r: r.Body, at: 3000}
		}
	}
	srv := httptest.NewServer(proxy)
	defer srv.Close()
	plain := cfg
	cfg.Endpoint = srv.URL
	cfg.MaxRetries = 1
	s, err := open(t, cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("engram "), 1000)
	if err := s.Put(ctx, "p", data); err == nil {
		t.Fatal("a PUT with a damaged body was accepted")
	} else {
		t.Log(err)
	}
	if md5Sent.Load() {
		t.Error("Content-MD5 sent over plain HTTP, where the body is signed")
	}
	direct2, err := open(t, plain, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := direct2.Get(ctx, "p", 0, -1); !errors.Is(err, blob.ErrNotExist) {
		t.Fatalf("after the refused PUT, get: %v, want not found", err)
	}
}
