package chunkstore

import (
	"errors"
	"fmt"
)

var (
	// ErrNotFound means the store does not hold the chunk. Get returns a
	// *NotFoundError that matches it.
	ErrNotFound = errors.New("chunk not found")
	// ErrCorruptChunk means stored bytes failed a check (frame checksum,
	// decompression, BLAKE3). Get and Verify return a *CorruptChunkError
	// that matches it.
	ErrCorruptChunk = errors.New("corrupt chunk")
	// ErrNotStore means a directory is not a chunk store (or is missing a
	// part of one); the error names the directory and what is missing.
	ErrNotStore = errors.New("not a chunk store")
	// ErrStoreExists is returned by Init on a directory that already holds
	// a store.
	ErrStoreExists = errors.New("chunk store already exists")
	// ErrLocked means another process held the writer lock for longer than
	// the lock timeout. The error is a *LockedError naming the holder.
	ErrLocked = errors.New("chunk store is locked")
	// ErrReadOnly is returned by writing methods of a store opened read-only.
	ErrReadOnly = errors.New("chunk store is opened read-only")
	// ErrTooLarge is returned by Put and PutMany for a chunk longer than
	// MaxChunkSize.
	ErrTooLarge = errors.New("chunk too large")
	// ErrFormatVersion means the store (or one of its files) was written by
	// a newer version of the format than this code understands.
	ErrFormatVersion = errors.New("unsupported chunk store format version")
	// ErrIndexDamaged means index.db cannot be opened or read; Repair (or
	// RepairDir when the store cannot be opened) rebuilds it from the packs.
	ErrIndexDamaged = errors.New("chunk store index is damaged")
	// ErrJournalDamaged means a catalog journal entry (meta/) does not
	// match the hash in its name or cannot be read; RepairDir (on a
	// bucket: Repair, then RemoveDamagedJournal) removes it and the
	// catalog is rebuilt from catalog chunks (engram repair).
	ErrJournalDamaged = errors.New("catalog journal entry is damaged")
	// ErrListDamaged means a gc list (gc/) or a damage list (damaged/)
	// cannot be read; RepairDir removes it (a directory store's gc needs
	// none, and verify finds damage again); Repair of a bucket replaces a
	// gc list by a done marker. A commit check that meets one is refused.
	ErrListDamaged = errors.New("gc or damage list is damaged")
	// ErrClosed is returned by methods of a closed store.
	ErrClosed = errors.New("chunk store is closed")
)

// NotFoundError names a chunk the store does not hold.
type NotFoundError struct{ ID ID }

func (e *NotFoundError) Error() string { return "chunk " + e.ID.String() + ": not found" }

// Unwrap makes errors.Is(err, ErrNotFound) true.
func (e *NotFoundError) Unwrap() error { return ErrNotFound }

// CorruptChunkError names a chunk whose stored bytes are damaged, and where
// they are.
type CorruptChunkError struct {
	ID     ID
	Pack   string // pack file path ("" for MemStore)
	Offset int64  // frame offset in the pack
	Reason string
	Err    error // underlying error, if any
}

func (e *CorruptChunkError) Error() string {
	s := "chunk " + e.ID.String() + ": corrupt"
	if e.Pack != "" {
		s += fmt.Sprintf(" (pack %s, frame at 0x%x)", e.Pack, e.Offset)
	}
	s += ": " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is makes errors.Is(err, ErrCorruptChunk) true.
func (e *CorruptChunkError) Is(target error) bool { return target == ErrCorruptChunk }

// Unwrap returns the underlying error.
func (e *CorruptChunkError) Unwrap() error { return e.Err }

// LockedError says who holds the writer lock of a store.
type LockedError struct {
	Dir    string
	Holder string // the lock file's content: pid, host, time, command
	Waited string
	// Queued says a shared locker found the lock free of exclusive
	// holders but waited behind an exclusive command (gc, repair) that
	// was waiting for it first.
	Queued bool
}

func (e *LockedError) Error() string {
	h := e.Holder
	if h == "" {
		h = "an unknown process"
	}
	if e.Queued {
		return fmt.Sprintf("chunk store %s is locked by %s, and a gc or repair waiting for it goes first (waited %s)", e.Dir, h, e.Waited)
	}
	return fmt.Sprintf("chunk store %s is locked by %s (waited %s)", e.Dir, h, e.Waited)
}

// Unwrap makes errors.Is(err, ErrLocked) true.
func (e *LockedError) Unwrap() error { return ErrLocked }

// TooLargeError names a chunk that exceeds MaxChunkSize.
type TooLargeError struct {
	ID  ID
	Len int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("chunk %s: %d bytes exceeds the limit of %d bytes", e.ID, e.Len, MaxChunkSize)
}

// Unwrap makes errors.Is(err, ErrTooLarge) true.
func (e *TooLargeError) Unwrap() error { return ErrTooLarge }
