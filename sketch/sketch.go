package sketch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

const (
	// Bins is the number of MinHash bins of a version 1 signature.
	Bins = 4000
	// UnitShift is log2 of the unit of weight: 4 KiB.
	UnitShift = 12
	// Unit is the size of one element: a 4 KiB block of a chunk.
	Unit = 1 << UnitShift
	// Version is the encoding version this package writes.
	Version = 1
	// HeaderLen is the length of the encoded header.
	HeaderLen = 32
	// EncodedLen is the length of an encoded signature.
	EncodedLen = HeaderLen + Bins

	magic = "ENGS"
	// maxUnitsPerChunk bounds the weight one chunk adds: ceil(2^32/4096).
	maxUnitsPerChunk = 1 << (32 - UnitShift)
)

// ErrBadSignature is returned when bytes do not decode as a signature:
// wrong length or magic, reserved fields set, or counts that contradict
// each other.
var ErrBadSignature = errors.New("bad signature")

// ErrVersion is returned for a signature of a version this package does
// not read; recompute it from the manifest.
var ErrVersion = errors.New("unknown signature version")

// Sketch is a decoded signature. Fp[i] is the fingerprint (1..255) of bin
// i's minimum, 0 when the bin is empty.
type Sketch struct {
	Weight uint64 // Σ ceil(len/4096) over distinct chunks
	Chunks uint64 // distinct chunks
	Fp     [Bins]uint8
}

// Bytes is the approximate content size the signature stands for.
func (s *Sketch) Bytes() uint64 { return s.Weight * Unit }

// Filled is the number of non-empty bins.
func (s *Sketch) Filled() int {
	empty := 0
	for i := 0; i < Bins; i += 8 {
		empty += bits.OnesCount64(zeroBytes(binary.LittleEndian.Uint64(s.Fp[i:])))
	}
	return Bins - empty
}

// Encode returns the version 1 encoding (EncodedLen bytes):
//
//	0  "ENGS"
//	4  u16 version (1)
//	6  u16 bins (4000)
//	8  u8  fingerprint bits (8)
//	9  u8  unit shift (12)
//	10 u16 reserved (0)
//	12 u32 reserved (0)
//	16 u64 weight
//	24 u64 distinct chunks
//	32 4000 × u8 fingerprints, 0 = empty bin
func (s *Sketch) Encode() []byte {
	b := make([]byte, EncodedLen)
	copy(b, magic)
	binary.LittleEndian.PutUint16(b[4:], Version)
	binary.LittleEndian.PutUint16(b[6:], Bins)
	b[8] = 8
	b[9] = UnitShift
	binary.LittleEndian.PutUint64(b[16:], s.Weight)
	binary.LittleEndian.PutUint64(b[24:], s.Chunks)
	copy(b[HeaderLen:], s.Fp[:])
	return b
}

func badf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadSignature, fmt.Sprintf(format, args...))
}

// Decode parses and checks an encoded signature. An unknown version gives
// ErrVersion (so the caller can tell "recompute" from "damaged").
func Decode(b []byte) (*Sketch, error) {
	s := new(Sketch)
	if err := DecodeInto(s, b); err != nil {
		return nil, err
	}
	return s, nil
}

// DecodeInto is Decode into s, which it overwrites (for decoding many
// signatures into one allocation). On error s holds garbage.
func DecodeInto(s *Sketch, b []byte) error {
	if len(b) < 6 || string(b[:4]) != magic {
		return badf("bad magic or short (%d bytes)", len(b))
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != Version {
		return fmt.Errorf("%w %d (this engram reads %d)", ErrVersion, v, Version)
	}
	if len(b) != EncodedLen {
		return badf("%d bytes, version 1 has %d", len(b), EncodedLen)
	}
	if n := binary.LittleEndian.Uint16(b[6:]); n != Bins {
		return badf("%d bins, version 1 has %d", n, Bins)
	}
	if b[8] != 8 || b[9] != UnitShift {
		return badf("fingerprint bits %d, unit shift %d; version 1 has 8 and %d", b[8], b[9], UnitShift)
	}
	if binary.LittleEndian.Uint16(b[10:]) != 0 || binary.LittleEndian.Uint32(b[12:]) != 0 {
		return badf("reserved header fields are not zero")
	}
	s.Weight, s.Chunks = binary.LittleEndian.Uint64(b[16:]), binary.LittleEndian.Uint64(b[24:])
	copy(s.Fp[:], b[HeaderLen:])
	filled := uint64(s.Filled())
	switch {
	case s.Chunks > s.Weight:
		return badf("%d chunks but weight %d (each chunk weighs at least 1)", s.Chunks, s.Weight)
	case s.Chunks > 0 && s.Weight/s.Chunks > maxUnitsPerChunk:
		return badf("weight %d too large for %d chunks", s.Weight, s.Chunks)
	case filled > s.Weight:
		return badf("%d filled bins but weight %d", filled, s.Weight)
	case s.Weight > 0 && filled == 0:
		return badf("weight %d but every bin is empty", s.Weight)
	}
	return nil
}
