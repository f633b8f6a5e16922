package chunkstore

import "sync"

// encFrame is an encoded frame and the chunks it holds.
type encFrame struct {
	data   []byte
	chunks []Chunk
	buf    *[]byte // data's buffer, from framePool
}

// framePool recycles the buffers frames are encoded in: a fresh 1 MiB
// buffer per block costs the allocator's zeroing and page faults, and
// the garbage makes the heap limit collect more often.
var framePool sync.Pool

// releaseFrames hands the frames' buffers back once they are written.
func releaseFrames(frames []encFrame) {
	for _, fr := range frames {
		if fr.buf != nil {
			*fr.buf = fr.data[:0]
			framePool.Put(fr.buf)
		}
	}
}

// blockPool recycles the buffers runs of chunks are joined in.
var blockPool = sync.Pool{New: func() any { b := make([]byte, 0, DefaultBlockSize+maxChunkLenHint); return &b }}

// maxChunkLenHint is room for the chunk that takes a block past its size.
const maxChunkLenHint = 256 << 10

// encodeBlocks cuts chunks into runs of about blockSize raw bytes and
// encodes each run as one frame.
func encodeBlocks(chunks []Chunk, blockSize int, c *codec) []encFrame {
	var out []encFrame
	for start := 0; start < len(chunks); {
		end, raw := start, 0
		for end < len(chunks) && end-start < maxBlockChunks && (end == start || raw < blockSize) {
			raw += len(chunks[end].Data)
			end++
		}
		run := chunks[start:end]
		var block []byte
		var scratch *[]byte
		if b, ok := contiguous(run); ok {
			block = b
		} else {
			scratch = blockPool.Get().(*[]byte)
			block = (*scratch)[:0]
			for _, ch := range run {
				block = append(block, ch.Data...)
			}
		}
		fb, _ := framePool.Get().(*[]byte)
		if fb == nil {
			fb = new([]byte)
		}
		out = append(out, encFrame{data: encodeFrame((*fb)[:0], run, block, c), chunks: run, buf: fb})
		if scratch != nil {
			*scratch = block[:0]
			blockPool.Put(scratch)
		}
		start = end
	}
	return out
}

// contiguous returns the run's data as one slice when each chunk follows
// the previous one in the same buffer (new chunks cut from one read
// buffer), so the block needs no join copy.
func contiguous(run []Chunk) ([]byte, bool) {
	b := run[0].Data
	for _, ch := range run[1:] {
		// Within b's capacity, so in the same allocation: slicing b past its
		// length reaches exactly ch's bytes when they start where b ends.
		if len(ch.Data) == 0 || cap(b)-len(b) < len(ch.Data) || &b[:len(b)+1][len(b)] != &ch.Data[0] {
			return nil, false
		}
		b = b[:len(b)+len(ch.Data)]
	}
	return b, true
}

// shares splits a frame's length among its chunks in proportion to their
// raw lengths; the shares add up to frameLen exactly.
func shares(frameLen int64, lens []int) []uint32 {
	out := make([]uint32, len(lens))
	var raw int64
	for _, l := range lens {
		raw += int64(l)
	}
	if raw == 0 {
		out[0] = uint32(frameLen)
		return out
	}
	var cum, prev int64
	for i, l := range lens {
		cum += int64(l)
		next := frameLen * cum / raw
		out[i] = uint32(next - prev)
		prev = next
	}
	return out
}

// indexed is an entry to commit.
type indexed struct {
	id ID
	e  entry
}
