package main

import (
	"context"
	"errors"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/qcow2"
	"github.com/engram-vm/engram/restore"
)

// Exit codes, documented in README.md.
const (
	exitOK          = 0
	exitFailure     = 1   // anything not listed below: I/O errors, a damaged store
	exitUsage       = 2   // bad command line
	exitNotFound    = 3   // no engram matches the ID or name, or a prefix is ambiguous
	exitBadImage    = 4   // the input image is corrupt, unsupported or refused
	exitLocked      = 5   // another process holds the store's write lock
	exitExists      = 6   // the restore target exists (use --force)
	exitInterrupted = 130 // Ctrl-C or SIGTERM
)

func exitCode(ctx context.Context, err error) int {
	var ue usageError
	switch {
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.As(err, &ue), errors.Is(err, restore.ErrNotRegular):
		return exitUsage
	case errors.Is(err, engram.ErrNotFound), errors.Is(err, engram.ErrAmbiguous):
		return exitNotFound
	case errors.Is(err, chunkstore.ErrLocked):
		return exitLocked
	case errors.Is(err, restore.ErrExists):
		return exitExists
	case errors.Is(err, qcow2.ErrCorrupt), errors.Is(err, qcow2.ErrNotQcow2),
		errors.Is(err, qcow2.ErrUnsupportedFormat), errors.Is(err, qcow2.ErrEncrypted),
		errors.Is(err, qcow2.ErrCorruptBit), errors.Is(err, qcow2.ErrUnknownFeature),
		errors.Is(err, qcow2.ErrBackingLoop), errors.Is(err, qcow2.ErrChainTooDeep),
		errors.Is(err, qcow2.ErrBackingMissing), errors.Is(err, qcow2.ErrProtocolBacking),
		errors.Is(err, qcow2.ErrInUse):
		return exitBadImage
	}
	return exitFailure
}
