package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// Config says which bucket to use and how to reach it.
type Config struct {
	Bucket string
	Prefix string // object names are Prefix + "/" + name ("" for none)
	// Endpoint is the server's URL (http://host:port or https://...);
	// empty means AWS (s3.amazonaws.com) with virtual-host requests.
	Endpoint string
	Region   string
	// Static credentials; all empty means the environment chain.
	AccessKey, SecretKey, SessionToken string
	// MaxRetries bounds attempts per request (0: 5); a stalled request
	// gets at most two (see IdleTimeout).
	MaxRetries int
	// IdleTimeout fails a request once no byte has moved on its
	// connection, either way, for this long (0: DefaultIdleTimeout; < 0:
	// never, leaving only a 2-minute wait for the response's headers).
	IdleTimeout time.Duration
}

// ConfigFromEnv fills Endpoint, Region and credentials from the AWS
// environment variables (credentials are left to the chain when unset),
// and IdleTimeout from ENGRAM_S3_TIMEOUT.
func ConfigFromEnv(bucket, prefix string) (Config, error) {
	c := Config{Bucket: bucket, Prefix: strings.Trim(prefix, "/"), Endpoint: os.Getenv("AWS_ENDPOINT_URL")}
	c.Region = os.Getenv("AWS_REGION")
	if c.Region == "" {
		c.Region = os.Getenv("AWS_DEFAULT_REGION")
	}
	if v := os.Getenv(TimeoutEnv); v != "" {
		d, err := parseTimeout(v)
		if err != nil {
			return Config{}, err
		}
		c.IdleTimeout = d
	}
	return c, nil
}

// ParseURL splits s3://BUCKET[/PREFIX].
func ParseURL(u string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(u, "s3://")
	if !ok {
		return "", "", fmt.Errorf("%q: not an s3:// URL", u)
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	prefix = strings.Trim(prefix, "/")
	if !validBucket(bucket) {
		return "", "", fmt.Errorf("%q: bucket name %q is not valid (3-63 of a-z, 0-9, '.', '-')", u, bucket)
	}
	if prefix != "" {
		if err := blob.CheckName(prefix); err != nil {
			return "", "", fmt.Errorf("%q: prefix: %w", u, err)
		}
	}
	return bucket, prefix, nil
}

func validBucket(b string) bool {
	if len(b) < 3 || len(b) > 63 {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return false
		}
	}
	return b[0] != '.' && b[0] != '-' && b[len(b)-1] != '.' && b[len(b)-1] != '-'
}

// Store is a bucket (under a prefix) as a blob.Store.
type Store struct {
	c      *minio.Client
	cfg    Config
	bucket string
	prefix string // "" or "p/"
	where  string // s3://bucket/prefix
	md5    bool   // send Content-MD5 with every PUT (see Open)
	idle   time.Duration
	down   atomic.Bool  // a call failed on a stall (see callState)
	stalls atomic.Int64 // attempts that stalled (for tests)
}

var _ blob.Store = (*Store)(nil)

// OpenTimeout bounds Open's first request (a variable for tests).
var OpenTimeout = 30 * time.Second

// endpointName is the endpoint for messages.
func endpointName(endpoint string) string {
	if endpoint == "" {
		return "https://s3.amazonaws.com"
	}
	return endpoint
}

// Open connects to the bucket and checks that it exists; with create, a
// missing bucket is created (as restic init does). Errors are one line:
// no such bucket, access denied, endpoint unreachable, clock skew.
func Open(ctx context.Context, cfg Config, create bool) (*Store, error) {
	if !validBucket(cfg.Bucket) {
		return nil, fmt.Errorf("s3: bucket name %q is not valid", cfg.Bucket)
	}
	s := &Store{cfg: cfg, bucket: cfg.Bucket, where: "s3://" + cfg.Bucket}
	if cfg.Prefix != "" {
		s.prefix = cfg.Prefix + "/"
		s.where += "/" + cfg.Prefix
	}
	opts := &minio.Options{Region: cfg.Region, MaxRetries: cfg.MaxRetries}
	if opts.MaxRetries == 0 {
		opts.MaxRetries = 5
	}
	switch {
	case cfg.AccessKey != "" || cfg.SecretKey != "":
		opts.Creds = credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, cfg.SessionToken)
	default:
		opts.Creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{}, &credentials.FileAWSCredentials{}, &credentials.IAM{},
		})
	}
	host := "s3.amazonaws.com"
	opts.Secure = true
	if cfg.Endpoint != "" {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || (u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("s3: AWS_ENDPOINT_URL %q: want http(s)://host[:port]", cfg.Endpoint)
		}
		host, opts.Secure = u.Host, u.Scheme == "https"
		opts.BucketLookup = minio.BucketLookupPath
	}
	tr, err := minio.DefaultTransport(opts.Secure)
	if err != nil {
		return nil, fmt.Errorf("s3: %w", err)
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	s.idle = cfg.IdleTimeout
	if s.idle == 0 {
		s.idle = DefaultIdleTimeout
	}
	if s.idle > 0 {
		idle := s.idle
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return newIdleConn(c, idle), nil
		}
		// The pool drops a connection before its pending read (the
		// transport's, waiting for the next response) reaches the idle
		// deadline, so an unused connection is not taken for a stall.
		tr.IdleConnTimeout = min(tr.IdleConnTimeout, idle/2)
		tr.ResponseHeaderTimeout = 0 // the idle timeout covers it
		opts.Transport = &stallTripper{rt: tr, s: s}
	} else {
		tr.DialContext = dialer.DialContext
		tr.ResponseHeaderTimeout = 2 * time.Minute
		opts.Transport = tr
	}
	c, err := minio.New(host, opts)
	if err != nil {
		return nil, fmt.Errorf("s3: %s: %w", s.where, err)
	}
	s.c = c
	// A one-key listing rather than HEAD: its reply has a body, so a bad
	// key is told apart from a missing bucket.
	// It is bounded: an endpoint that takes the connection and never
	// answers would otherwise hold every command for the transport's
	// header timeout times minio-go's retries (over ten minutes).
	exists := true
	lctx, cancel := context.WithTimeout(ctx, OpenTimeout)
	defer cancel()
	lctx, end := s.call(lctx)
	defer end()
	for oi := range c.ListObjects(lctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, MaxKeys: 1}) {
		if oi.Err != nil {
			if ctx.Err() == nil && errors.Is(lctx.Err(), context.DeadlineExceeded) {
				return nil, fmt.Errorf("%s: %s gave no answer in %s: %w", s.where, endpointName(cfg.Endpoint), OpenTimeout, blob.ErrUnreachable)
			}
			err := s.mapErr(lctx, "open", "", oi.Err)
			if !errors.Is(err, blob.ErrNoBucket) {
				return nil, err
			}
			exists = false
		}
		break
	}
	// Over plain HTTP minio-go signs the body itself (SHA-256 per 64 KiB,
	// STREAMING-AWS4-HMAC-SHA256-PAYLOAD), which the server checks: a
	// Content-MD5 as well is the same guard twice and cost 7% of a bucket
	// ingest's CPU. Over HTTPS the body goes unsigned, and Content-MD5 is
	// what lets the server refuse a body damaged between the two ends.
	s.md5 = true
	if v, err := opts.Creds.GetWithContext(nil); !opts.Secure && err == nil && v.SignerType.IsV4() {
		s.md5 = false
	}
	if !exists {
		if !create {
			return nil, fmt.Errorf("%s: %w", s.where, blob.ErrNoBucket)
		}
		mctx, end := s.call(ctx)
		err := c.MakeBucket(mctx, s.bucket, minio.MakeBucketOptions{Region: cfg.Region})
		end()
		if err != nil {
			code := minio.ToErrorResponse(err).Code
			if code != "BucketAlreadyOwnedByYou" && code != "BucketAlreadyExists" {
				return nil, s.mapErr(mctx, "create bucket", "", err)
			}
		}
	}
	return s, nil
}

func (s *Store) String() string { return s.where }

// Close does nothing (connections are pooled by the transport).
func (s *Store) Close() error { return nil }

// mapErr turns a minio-go error into one line matching a blob sentinel
// where one applies.
func (s *Store) mapErr(ctx context.Context, op, name string, err error) error {
	what := s.where + ": " + op
	if name != "" {
		what += " " + name
	}
	if se := s.stalled(ctx, err); se != nil {
		return s.stallErr(what, se)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", what, err)
	}
	resp := minio.ToErrorResponse(err)
	var kind error
	switch resp.Code {
	case "NoSuchKey":
		kind = blob.ErrNotExist
	case "NoSuchBucket":
		return fmt.Errorf("%s: %w", s.where, blob.ErrNoBucket)
	case "SignatureDoesNotMatch", "BadDigest", "XAmzContentSHA256Mismatch":
		if op == "put" || op == "replace" {
			// Open proved the keys with a listing: a PUT refused on its
			// signature or digest most likely had its body changed on
			// the way (the keys could also have changed meanwhile).
			return fmt.Errorf("%s: refused (%s): the body was damaged on the way, or the keys changed since the bucket was opened; nothing was stored", what, resp.Code)
		}
		if resp.Code != "SignatureDoesNotMatch" {
			break
		}
		return fmt.Errorf("%s: %s: %w", s.where, resp.Code, blob.ErrAccessDenied)
	case "AccessDenied", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken", "AllAccessDisabled",
		"XAdminUserNotFound": // versitygw's answer to an unknown key
		return fmt.Errorf("%s: %s: %w", s.where, resp.Code, blob.ErrAccessDenied)
	case "RequestTimeTooSkewed":
		return fmt.Errorf("%s: %w", s.where, blob.ErrClockSkew)
	case "PreconditionFailed":
		kind = blob.ErrExist
	case "InvalidRange":
		kind = blob.ErrRange
	}
	if kind == nil {
		switch resp.StatusCode {
		case http.StatusNotFound:
			kind = blob.ErrNotExist
		case http.StatusForbidden:
			return fmt.Errorf("%s: %w", s.where, blob.ErrAccessDenied)
		case http.StatusPreconditionFailed:
			kind = blob.ErrExist
		case http.StatusRequestedRangeNotSatisfiable:
			kind = blob.ErrRange
		}
	}
	if kind != nil {
		return fmt.Errorf("%s: %w", what, kind)
	}
	var ue *url.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ue) {
		if se := s.stalledBefore(ctx); se != nil {
			return s.stallErr(what, se)
		}
		ep := s.cfg.Endpoint
		if ep == "" {
			ep = "s3.amazonaws.com"
		}
		detail := err.Error()
		if oe != nil {
			detail = oe.Err.Error()
		}
		return fmt.Errorf("%s: %w: %s (%s)", s.where, blob.ErrUnreachable, ep, oneLine(detail))
	}
	if resp.Code != "" {
		return fmt.Errorf("%s: %s: %s", what, resp.Code, oneLine(resp.Message))
	}
	return fmt.Errorf("%s: %s", what, oneLine(err.Error()))
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	return s
}

// putOptions are those of every PUT: one request, never multipart, with
// a Content-MD5 where the body is not signed (see Open).
func (s *Store) putOptions() minio.PutObjectOptions {
	return minio.PutObjectOptions{DisableMultipart: true, ContentType: "application/octet-stream", SendContentMd5: s.md5}
}

// Put is one create-only PutObject (If-None-Match: *), never multipart.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	if err := blob.CheckName(name); err != nil {
		return fmt.Errorf("%s: put: %w", s.where, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: put %s: %w", s.where, name, err)
	}
	opts := s.putOptions()
	opts.SetMatchETagExcept("*")
	ctx, end := s.call(ctx)
	defer end()
	_, err := s.c.PutObject(ctx, s.bucket, s.prefix+name, bytes.NewReader(data), int64(len(data)), opts)
	if err == nil {
		return nil
	}
	if s.stalled(ctx, err) != nil {
		return s.mapErr(ctx, "put", name, err) // a StatObject would stall too
	}
	err = s.mapErr(ctx, "put", name, err)
	if errors.Is(err, blob.ErrUnreachable) && ctx.Err() == nil {
		// A server that refuses the condition (412) before reading the
		// body resets the connection under a large upload; the object is
		// then there.
		if _, serr := s.c.StatObject(ctx, s.bucket, s.prefix+name, minio.StatObjectOptions{}); serr == nil {
			return fmt.Errorf("%s: put %s: %w", s.where, name, blob.ErrExist)
		}
	}
	return err
}

// Replace is one PutObject without If-None-Match (blob.Replacer): S3
// replaces an object atomically, so a reader gets the old bytes or the
// new ones.
func (s *Store) Replace(ctx context.Context, name string, data []byte) error {
	if err := blob.CheckName(name); err != nil {
		return fmt.Errorf("%s: replace: %w", s.where, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: replace %s: %w", s.where, name, err)
	}
	ctx, end := s.call(ctx)
	defer end()
	if _, err := s.c.PutObject(ctx, s.bucket, s.prefix+name, bytes.NewReader(data), int64(len(data)), s.putOptions()); err != nil {
		return s.mapErr(ctx, "replace", name, err)
	}
	return nil
}

// Get is one GetObject, ranged unless the whole object is asked for.
func (s *Store) Get(ctx context.Context, name string, off, length int64) ([]byte, error) {
	if err := blob.CheckName(name); err != nil {
		return nil, fmt.Errorf("%s: get: %w", s.where, err)
	}
	if err := blob.CheckRange(off, length); err != nil {
		return nil, fmt.Errorf("%s: get %s: %w", s.where, name, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s: get %s: %w", s.where, name, err)
	}
	ctx, end := s.call(ctx)
	defer end()
	if length == 0 || (length < 0 && off > 0) {
		// No empty ranges in HTTP; and a range starting at the end is
		// refused by some servers: check against the size.
		st, err := s.c.StatObject(ctx, s.bucket, s.prefix+name, minio.StatObjectOptions{})
		if err != nil {
			return nil, s.mapErr(ctx, "get", name, err)
		}
		if off > st.Size || (length == 0 && off > st.Size) {
			return nil, fmt.Errorf("%s: get %s: offset %d of a %d-byte object: %w", s.where, name, off, st.Size, blob.ErrRange)
		}
		if length == 0 || off == st.Size {
			return []byte{}, nil
		}
	}
	var opts minio.GetObjectOptions
	if length > 0 {
		if err := opts.SetRange(off, off+length-1); err != nil {
			return nil, fmt.Errorf("%s: get %s: %w", s.where, name, err)
		}
	} else if off > 0 {
		if err := opts.SetRange(off, 0); err != nil {
			return nil, fmt.Errorf("%s: get %s: %w", s.where, name, err)
		}
	}
	obj, err := s.c.GetObject(ctx, s.bucket, s.prefix+name, opts)
	if err != nil {
		return nil, s.mapErr(ctx, "get", name, err)
	}
	defer obj.Close()
	if length > 0 {
		// length comes from the caller (an index entry it bounded), never
		// from the server.
		buf := make([]byte, length)
		n, err := io.ReadFull(obj, buf)
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: get %s: %d bytes at %d, object has %d there: %w", s.where, name, length, off, n, blob.ErrRange)
		}
		if err != nil {
			return nil, s.mapErr(ctx, "get", name, err)
		}
		return buf, nil
	}
	b, err := io.ReadAll(io.LimitReader(obj, blob.MaxWholeRead+1))
	if err != nil {
		return nil, s.mapErr(ctx, "get", name, err)
	}
	if int64(len(b)) > blob.MaxWholeRead {
		return nil, fmt.Errorf("%s: get %s: more than %d bytes: %w", s.where, name, int64(blob.MaxWholeRead), blob.ErrRange)
	}
	return b, nil
}

// List lists the objects under prefix (ListObjectsV2, recursive).
func (s *Store) List(ctx context.Context, prefix string, fn func(blob.Info) error) error {
	return s.ListAfter(ctx, prefix, "", fn)
}

// ListAfter lists the objects under prefix after after (ListObjectsV2
// with StartAfter: the server starts there).
func (s *Store) ListAfter(ctx context.Context, prefix, after string, fn func(blob.Info) error) error {
	if err := blob.CheckPrefix(prefix); err != nil {
		return fmt.Errorf("%s: list: %w", s.where, err)
	}
	lctx, end := s.call(ctx)
	defer end()
	opts := minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}
	if after != "" {
		opts.StartAfter = s.prefix + after
	}
	for oi := range s.c.ListObjects(lctx, s.bucket, opts) {
		if oi.Err != nil {
			return s.mapErr(lctx, "list", prefix, oi.Err)
		}
		name, ok := strings.CutPrefix(oi.Key, s.prefix)
		if !ok || blob.CheckName(name) != nil || name <= after {
			continue // not one of ours (a foreign key under the prefix)
		}
		if err := fn(blob.Info{Name: name, Size: oi.Size, ModTime: oi.LastModified}); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: list %s: %w", s.where, prefix, err)
	}
	return nil
}

// Delete removes name; S3 reports success for a missing key.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := blob.CheckName(name); err != nil {
		return fmt.Errorf("%s: delete: %w", s.where, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: delete %s: %w", s.where, name, err)
	}
	ctx, end := s.call(ctx)
	defer end()
	if err := s.c.RemoveObject(ctx, s.bucket, s.prefix+name, minio.RemoveObjectOptions{}); err != nil {
		err = s.mapErr(ctx, "delete", name, err)
		if errors.Is(err, blob.ErrNotExist) {
			return nil
		}
		return err
	}
	return nil
}

var _ blob.UploadAborter = (*Store)(nil)

// AbortStaleUploads aborts the multipart uploads under the prefix that
// began before before (ListMultipartUploads, then AbortMultipartUpload for
// each of their keys).
func (s *Store) AbortStaleUploads(ctx context.Context, before time.Time) (int, error) {
	lctx, end := s.call(ctx)
	defer end()
	var stale []string
	seen := map[string]bool{}
	for u := range s.c.ListIncompleteUploads(lctx, s.bucket, s.prefix, true) {
		if u.Err != nil {
			return 0, s.mapErr(lctx, "list multipart uploads", "", u.Err)
		}
		if u.Initiated.Before(before) && !seen[u.Key] {
			seen[u.Key] = true
			stale = append(stale, u.Key)
		}
	}
	n := 0
	for _, k := range stale {
		// Aborts every upload of the key: only engram writes under its
		// prefix, and it never uploads in parts.
		kctx, end := s.call(ctx)
		err := s.c.RemoveIncompleteUpload(kctx, s.bucket, k)
		end()
		if err != nil {
			return n, s.mapErr(kctx, "abort multipart upload", k, err)
		}
		n++
	}
	return n, nil
}
