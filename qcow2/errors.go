package qcow2

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by Open, ReadAt, Extents and
// LayerExtents is an *Error naming the file; test the cause with errors.Is.
var (
	// ErrNotQcow2 means the file was expected to be qcow2 (by Options.Format
	// or by its .qcow2 name) but does not start with the qcow2 magic.
	ErrNotQcow2 = errors.New("not a qcow2 image")

	// ErrUnsupportedFormat means the file is a disk image in a format this
	// package does not read (qcow version 1, vmdk, vhdx, vdi, qed, luks, vpc,
	// parallels, bochs, cloop, dmg, an unknown qcow2 version, or an unknown
	// backing format name).
	ErrUnsupportedFormat = errors.New("unsupported image format")

	// ErrEncrypted means the qcow2 image is encrypted (AES or LUKS); its
	// guest data cannot be read without the key, so it is refused.
	ErrEncrypted = errors.New("encrypted image")

	// ErrCorruptBit means the image has the corrupt incompatible feature bit
	// set (QEMU once found its metadata inconsistent) and the caller asked
	// for such images to be refused (Options.RefuseCorrupt).
	ErrCorruptBit = errors.New("image is marked corrupt")

	// ErrUnknownFeature means the image sets incompatible feature bits (or a
	// compression type) that this package does not understand; reading it
	// could return wrong data.
	ErrUnknownFeature = errors.New("unknown incompatible feature")

	// ErrBackingLoop means the backing chain refers back to an image that is
	// already part of it.
	ErrBackingLoop = errors.New("backing chain loops")

	// ErrChainTooDeep means the backing chain has more layers than
	// Options.MaxChainDepth allows.
	ErrChainTooDeep = errors.New("backing chain too deep")

	// ErrBackingMissing means a file the image refers to (backing file or
	// external data file) does not exist.
	ErrBackingMissing = errors.New("backing file missing")
	// ErrInUse means another process holds a file of the image open for
	// writing under QEMU's image locking (CheckWriters).
	ErrInUse = errors.New("image in use")

	// ErrProtocolBacking means the backing file name is a QEMU protocol
	// (nbd:, json:, http: ...) rather than a local file.
	ErrProtocolBacking = errors.New("backing file is a network or protocol name")

	// ErrCorrupt means the image is structurally damaged: a table out of
	// bounds or misaligned, reserved bits set, a truncated file, a compressed
	// cluster that does not decompress to exactly one cluster.
	ErrCorrupt = errors.New("corrupt image")
)

// Error is the error type of this package: the file it concerns, what is
// wrong with it, and the cause (a sentinel above, or an I/O error).
type Error struct {
	Path string
	Msg  string
	Err  error
}

func (e *Error) Error() string {
	if e.Msg == "" && e.Err != nil {
		return e.Path + ": " + e.Err.Error()
	}
	return e.Path + ": " + e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// newErr builds an *Error for path with cause err and a formatted message.
func newErr(path string, err error, format string, args ...any) error {
	return &Error{Path: path, Msg: fmt.Sprintf(format, args...), Err: err}
}

// ioErr wraps an I/O failure while reading what.
func ioErr(path string, err error, what string) error {
	return &Error{Path: path, Msg: fmt.Sprintf("reading %s: %v", what, err), Err: err}
}
