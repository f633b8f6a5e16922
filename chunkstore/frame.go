package chunkstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/zeebo/xxh3"
)

// Limits. Readers check every length read from disk against them before
// allocating, so a damaged pack cannot make us allocate gigabytes.
const (
	// MaxChunkSize is the largest chunk Put accepts (data chunks are at most
	// 256 KiB, manifest pages at most 1 MiB; the rest is headroom).
	MaxChunkSize = 4 << 20
	// MaxBlockSize is the largest block target InitOptions.BlockSize may set.
	MaxBlockSize = 8 << 20
	// maxBlockRaw bounds a frame's raw length: a block closes once it
	// reaches the target, so it is below MaxBlockSize+MaxChunkSize.
	maxBlockRaw = 16 << 20
	// maxBlockChunks bounds the chunk list of one frame; writers start a new
	// block when it is reached.
	maxBlockChunks = 4096
)

// Pack file header: magic, format version, pack number.
const (
	packMagic      = "EGRMPACK"
	packVersion    = 1
	packHeaderSize = 16
)

// Frame layout constants; see doc.go for the byte-by-byte description.
const (
	frameMagic    = "EGFR"
	frameVersion  = 1
	frameFixed    = 20 // magic, version, codec, reserved, n, raw, stored
	frameEntry    = 40 // ID, offset in block, length
	frameTrailer  = 8  // xxh3-64
	codecRaw      = 0
	codecZstd     = 1
	maxFrameBytes = frameFixed + maxBlockChunks*frameEntry + maxBlockRaw + frameTrailer
)

// frameChunk is one entry of a frame's chunk list.
type frameChunk struct {
	ID  ID
	Off uint32 // offset in the uncompressed block
	Len uint32
}

// frame is a decoded frame. Payload aliases the buffer it was decoded from.
type frame struct {
	Codec   byte
	RawLen  uint32
	Chunks  []frameChunk
	Payload []byte
	buf     []byte // the pooled buffer Payload lies in (readFrame), or nil
}

// frameHeader is the fixed part of a frame, enough to know its length.
type frameHeader struct {
	Codec     byte
	N         uint32
	RawLen    uint32
	StoredLen uint32
}

// Len is the total length of the frame on disk.
func (h frameHeader) Len() int64 {
	return frameFixed + int64(h.N)*frameEntry + int64(h.StoredLen) + frameTrailer
}

var errShortFrame = errors.New("frame truncated")

// parseFrameHeader checks the fixed part of a frame (b must hold at least
// frameFixed bytes) and its lengths against the limits.
func parseFrameHeader(b []byte) (frameHeader, error) {
	var h frameHeader
	if len(b) < frameFixed {
		return h, errShortFrame
	}
	if string(b[0:4]) != frameMagic {
		return h, fmt.Errorf("bad frame magic %q", b[0:4])
	}
	if b[4] != frameVersion {
		if b[4] > frameVersion {
			return h, fmt.Errorf("frame version %d: %w", b[4], ErrFormatVersion)
		}
		return h, fmt.Errorf("bad frame version %d", b[4])
	}
	h.Codec = b[5]
	if h.Codec != codecRaw && h.Codec != codecZstd {
		return h, fmt.Errorf("unknown frame codec %d", h.Codec)
	}
	if b[6] != 0 || b[7] != 0 {
		return h, fmt.Errorf("reserved frame bytes are 0x%02x%02x, want 0", b[6], b[7])
	}
	h.N = binary.LittleEndian.Uint32(b[8:])
	h.RawLen = binary.LittleEndian.Uint32(b[12:])
	h.StoredLen = binary.LittleEndian.Uint32(b[16:])
	switch {
	case h.N == 0 || h.N > maxBlockChunks:
		return h, fmt.Errorf("frame lists %d chunks, want 1..%d", h.N, maxBlockChunks)
	case h.RawLen > maxBlockRaw:
		return h, fmt.Errorf("frame raw length %d exceeds %d", h.RawLen, maxBlockRaw)
	case h.Codec == codecRaw && h.StoredLen != h.RawLen:
		return h, fmt.Errorf("raw frame stores %d bytes of a %d-byte block", h.StoredLen, h.RawLen)
	case h.StoredLen > h.RawLen:
		// Writers store raw whenever zstd does not shrink a block.
		return h, fmt.Errorf("frame stored length %d exceeds raw length %d", h.StoredLen, h.RawLen)
	}
	return h, nil
}

// decodeFrame decodes and checksums the frame at the start of b, which
// must hold the whole frame. It returns the frame and its length.
func decodeFrame(b []byte) (*frame, int64, error) {
	h, err := parseFrameHeader(b)
	if err != nil {
		return nil, 0, err
	}
	n := h.Len()
	if int64(len(b)) < n {
		return nil, 0, fmt.Errorf("%w: frame is %d bytes, have %d", errShortFrame, n, len(b))
	}
	sum := binary.LittleEndian.Uint64(b[n-frameTrailer:])
	if got := xxh3.Hash(b[:n-frameTrailer]); got != sum {
		return nil, 0, fmt.Errorf("frame checksum mismatch: stored %016x, computed %016x", sum, got)
	}
	f := &frame{Codec: h.Codec, RawLen: h.RawLen, Chunks: make([]frameChunk, h.N)}
	var off uint32
	for i := range f.Chunks {
		e := b[frameFixed+i*frameEntry:]
		c := &f.Chunks[i]
		copy(c.ID[:], e[:32])
		c.Off = binary.LittleEndian.Uint32(e[32:])
		c.Len = binary.LittleEndian.Uint32(e[36:])
		if c.Off != off || c.Len > MaxChunkSize || uint64(c.Off)+uint64(c.Len) > uint64(h.RawLen) {
			return nil, 0, fmt.Errorf("frame chunk %d (%s) at %d+%d does not follow the previous one in a %d-byte block", i, c.ID.Short(), c.Off, c.Len, h.RawLen)
		}
		off += c.Len
	}
	if off != h.RawLen {
		return nil, 0, fmt.Errorf("frame chunks cover %d bytes of a %d-byte block", off, h.RawLen)
	}
	p := frameFixed + int64(h.N)*frameEntry
	f.Payload = b[p : p+int64(h.StoredLen)]
	return f, n, nil
}

// block returns the frame's uncompressed block.
func (f *frame) block() ([]byte, error) {
	if f.Codec == codecRaw {
		return f.Payload, nil
	}
	out, err := decompress(f.Payload, int(f.RawLen))
	if err != nil {
		return nil, err
	}
	if len(out) != int(f.RawLen) {
		return nil, fmt.Errorf("block decompressed to %d bytes, frame says %d", len(out), f.RawLen)
	}
	return out, nil
}

// find returns the index of id in the frame's chunk list, or -1.
func (f *frame) find(id ID, off uint32) int {
	for i, c := range f.Chunks {
		if c.ID == id && c.Off == off {
			return i
		}
	}
	return -1
}

// encodeFrame appends a frame holding chunks (consecutive in raw) to dst.
// It compresses raw with enc unless that does not shrink it.
func encodeFrame(dst []byte, chunks []Chunk, raw []byte, c *codec) []byte {
	start := len(dst)
	hdrLen := frameFixed + frameEntry*len(chunks)
	dst = slices.Grow(dst, hdrLen+len(raw)+frameTrailer)
	dst = dst[:start+hdrLen]
	hdr := dst[start:]
	copy(hdr, frameMagic)
	hdr[4] = frameVersion
	hdr[5] = codecRaw
	clear(hdr[6:8])
	binary.LittleEndian.PutUint32(hdr[8:], uint32(len(chunks)))
	binary.LittleEndian.PutUint32(hdr[12:], uint32(len(raw)))
	var off uint32
	for i, ch := range chunks {
		e := hdr[frameFixed+frameEntry*i:]
		copy(e[:32], ch.ID[:])
		binary.LittleEndian.PutUint32(e[32:], off)
		binary.LittleEndian.PutUint32(e[36:], uint32(len(ch.Data)))
		off += uint32(len(ch.Data))
	}
	// Compress straight behind the header; keep it only if it shrank.
	if c != nil {
		dst = c.enc.EncodeAll(raw, dst)
		if len(dst)-start-hdrLen < len(raw) {
			dst[start+5] = codecZstd
		} else {
			dst = dst[:start+hdrLen]
		}
	}
	if dst[start+5] == codecRaw {
		dst = append(dst, raw...)
	}
	binary.LittleEndian.PutUint32(dst[start+16:], uint32(len(dst)-start-hdrLen))
	return binary.LittleEndian.AppendUint64(dst, xxh3.Hash(dst[start:]))
}

// packHeader returns the header of pack number num.
func packHeader(num uint32) []byte {
	b := make([]byte, packHeaderSize)
	copy(b, packMagic)
	binary.LittleEndian.PutUint32(b[8:], packVersion)
	binary.LittleEndian.PutUint32(b[12:], num)
	return b
}

// checkPackHeader validates a pack header read from disk.
func checkPackHeader(b []byte, num uint32) error {
	if len(b) < packHeaderSize {
		return fmt.Errorf("pack header truncated (%d bytes)", len(b))
	}
	if string(b[:8]) != packMagic {
		return fmt.Errorf("bad pack magic %q", b[:8])
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != packVersion {
		if v > packVersion {
			return fmt.Errorf("pack version %d: %w", v, ErrFormatVersion)
		}
		return fmt.Errorf("bad pack version %d", v)
	}
	if got := binary.LittleEndian.Uint32(b[12:]); got != num {
		return fmt.Errorf("pack header says pack %d, file name says %d", got, num)
	}
	return nil
}
