package chunkstore

import "sync"

// frameError says why a frame could not be read; each chunk that wanted the
// frame turns it into its own CorruptChunkError.
type frameError struct {
	reason string
	err    error
}

func (e *frameError) Error() string { return e.reason + ": " + e.err.Error() }

// readFramePool holds the buffers compressed frames are read into: once the
// block is decompressed the frame is garbage, and a reader with a full
// cache (view/) would otherwise collect one per block read.
var readFramePool = sync.Pool{New: func() any { return new([]byte) }}

// releaseFrame returns f's buffer to readFramePool; f and its payload must not
// be used after. A raw frame's payload is the block itself, so it is kept.
func releaseFrame(f *frame, buf []byte) {
	if f.Codec != codecRaw && buf != nil {
		readFramePool.Put(&buf)
	}
}
