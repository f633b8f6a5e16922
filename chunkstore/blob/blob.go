package blob

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Store is a flat namespace of immutable objects: a directory, an S3
// bucket (under a prefix), or memory. Everything the chunk store keeps in
// a bucket goes through it.
//
// The contract every implementation keeps (package blobtest checks it):
//
//   - Names are 1..512 bytes of [A-Za-z0-9._-] and "/", neither starting
//     nor ending with "/", with no empty, "." or ".." element. Anything
//     else is refused with ErrBadName before any I/O.
//   - Put creates an object and never replaces one: if name exists, Put
//     fails with ErrExist and the object keeps its bytes. Put is atomic:
//     a reader sees the whole object or none of it, never a prefix, even
//     if the writer is killed. When Put returns nil the object is durable
//     (fsynced, or acknowledged by the server). A Put whose reply was
//     lost may be retried by the implementation and then report ErrExist
//     for the object it wrote itself; callers name objects by their
//     content (or otherwise uniquely) so that ErrExist is harmless.
//   - Get(name, off, length) returns exactly length bytes starting at off
//     (length < 0: from off to the end). A missing object is ErrNotExist;
//     a range the object does not cover is ErrRange. Get never allocates
//     more than length bytes up front, whatever the server claims: a
//     whole-object read grows as the bytes arrive and fails (ErrRange)
//     past MaxWholeRead.
//   - After a Put returns, Get of that name finds it (read-after-write).
//     List may miss objects written shortly before (S3 lists are only
//     eventually consistent on some servers) and may still show objects
//     deleted shortly before; callers that need an object they know of
//     Get it by name.
//   - List calls fn for every object whose name starts with prefix, in
//     no particular order, with its size and modification time; an error
//     from fn stops the listing and is returned.
//   - ListAfter is List of the names that sort after after (bytewise):
//     S3's StartAfter, so that listing what is new under a prefix of
//     time-ordered names costs what is new, not what is there. after ""
//     is List.
//   - Delete removes an object; deleting a missing object is not an
//     error (S3 semantics).
//   - Every method takes the context first and returns ctx.Err() (wrapped)
//     once it is cancelled. Errors are one line and name the store; they
//     match one of the sentinel errors below where one applies.
//   - A Store is safe for concurrent use by many goroutines and by many
//     processes (and hosts, for S3).
type Store interface {
	Put(ctx context.Context, name string, data []byte) error
	Get(ctx context.Context, name string, off, length int64) ([]byte, error)
	List(ctx context.Context, prefix string, fn func(Info) error) error
	ListAfter(ctx context.Context, prefix, after string, fn func(Info) error) error
	Delete(ctx context.Context, name string) error
	// String names the store in messages ("/srv/x", "s3://b/p"); STRING + "/"
	// + an object name is how messages name the object.
	String() string
	Close() error
}

// IntoGetter is implemented by stores that can read a range into the
// caller's buffer (a directory store): a reader that reuses its buffers
// then spares an allocation, and its zeroing, per read.
type IntoGetter interface {
	// GetInto reads len(p) bytes at off of name into p. Errors are Get's.
	GetInto(ctx context.Context, name string, off int64, p []byte) error
}

// Replacer is implemented by stores that can put an object in place of
// an existing one in one atomic step (S3: a PUT without If-None-Match; a
// directory: a rename over the name): a reader finds the old bytes or the
// new, never no object. Only repair uses it, to put back a damaged
// object's known bytes (an index segment from its pack's copy): with
// Delete, then Put, a host listing in between would miss the object.
// Replace keeps Put's other promises (atomic, durable on return).
type Replacer interface {
	Replace(ctx context.Context, name string, data []byte) error
}

// Replace puts data under name, whether or not name exists: with
// s.Replace when s is a Replacer, else by Delete, then Put (the object is
// missing in between).
func Replace(ctx context.Context, s Store, name string, data []byte) error {
	if r, ok := s.(Replacer); ok {
		return r.Replace(ctx, name, data)
	}
	if err := s.Delete(ctx, name); err != nil {
		return err
	}
	if err := s.Put(ctx, name, data); err != nil && !errors.Is(err, ErrExist) {
		return err
	}
	return nil
}

// StrayLister is implemented by stores where something that is not an
// object can sit at an object's name (a directory store: a directory, a
// symbolic link or a device where a file belongs). List skips such
// entries, so whoever must know that a name it expects is unreadable
// (verify) asks for them.
type StrayLister interface {
	// ListStrays calls fn for every name under prefix that holds
	// something other than an object, with what it is ("a directory"),
	// in no particular order.
	ListStrays(ctx context.Context, prefix string, fn func(name, what string) error) error
}

// UploadAborter is implemented by stores that can hold unfinished
// multipart uploads (S3). engram never starts one (Put is one request),
// but another tool, or a copy into the bucket that was interrupted, can
// leave them, and the server keeps charging for their parts until they
// are aborted. gc calls it.
type UploadAborter interface {
	// AbortStaleUploads aborts every unfinished upload under the store's
	// prefix that began before before, and says how many it aborted.
	AbortStaleUploads(ctx context.Context, before time.Time) (int, error)
}

// Info describes one object.
type Info struct {
	Name    string
	Size    int64
	ModTime time.Time
}

// Sentinel errors. Implementations wrap them with the store and object
// concerned; test with errors.Is.
var (
	ErrNotExist = errors.New("object does not exist")
	ErrExist    = errors.New("object already exists")
	ErrRange    = errors.New("range not inside the object")
	ErrBadName  = errors.New("invalid object name")
	// Errors of remote stores, each meant to be the whole explanation a
	// user needs.
	ErrNoBucket     = errors.New("no such bucket")
	ErrAccessDenied = errors.New("access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN)")
	ErrUnreachable  = errors.New("endpoint unreachable")
	ErrClockSkew    = errors.New("request time too skewed from the server's clock (check this host's clock)")
)

// MaxNameLen bounds object names.
const MaxNameLen = 512

// MaxWholeRead bounds a Get with length < 0.
const MaxWholeRead = 1 << 30

// CheckName reports whether name is a valid object name (see Store).
func CheckName(name string) error {
	bad := func(why string) error { return fmt.Errorf("%q: %s: %w", name, why, ErrBadName) }
	if name == "" {
		return bad("empty")
	}
	if len(name) > MaxNameLen {
		return bad("too long")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/') {
			return bad(fmt.Sprintf("byte 0x%02x", c))
		}
	}
	for _, el := range strings.Split(name, "/") {
		if el == "" || el == "." || el == ".." {
			return bad("empty, . or .. path element")
		}
	}
	return nil
}

// CheckPrefix reports whether prefix is usable for List: "" or a valid
// name, optionally ending in "/".
func CheckPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	return CheckName(strings.TrimSuffix(prefix, "/"))
}

// CheckRange validates the arguments of Get.
func CheckRange(off, length int64) error {
	if off < 0 {
		return fmt.Errorf("offset %d: %w", off, ErrRange)
	}
	return nil
}

// ReadAll reads the whole object name, refusing objects over max bytes
// (without allocating them).
func ReadAll(ctx context.Context, s Store, name string, max int64) ([]byte, error) {
	b, err := s.Get(ctx, name, 0, -1)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: %s is %d bytes, more than the %d expected", s, name, len(b), max)
	}
	return b, nil
}
