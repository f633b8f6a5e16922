package chunkstore

import (
	"fmt"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// codec compresses blocks at one zstd setting. One Encoder and one Decoder
// are shared by every store in the process: EncodeAll and DecodeAll are
// safe for concurrent use and keep per-goroutine state internally.
type codec struct {
	enc *zstd.Encoder
}

var (
	codecsMu sync.Mutex
	codecs   = map[string]*codec{}

	decOnce sync.Once
	dec     *zstd.Decoder
	decErr  error
)

// Compressions are the store compression names, cheapest first.
var Compressions = []string{"fastest-noentropy", "fastest", "default", "better", "best"}

// encoderOptions maps a store's compression name to zstd encoder options.
// "fastest-noentropy" is SpeedFastest with literals left raw
// (WithNoEntropyCompression): the frames are ordinary zstd frames, any
// decoder reads them (faster, with no Huffman stage), for ~17% less encode
// CPU and a ~11% bigger store (docs/DESIGN.md, "Compression").
func encoderOptions(name string) ([]zstd.EOption, error) {
	switch name {
	case "fastest-noentropy":
		return []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithNoEntropyCompression(true)}, nil
	case "fastest":
		return []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedFastest)}, nil
	case "default", "":
		return []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedDefault)}, nil
	case "better":
		return []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedBetterCompression)}, nil
	case "best":
		return []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedBestCompression)}, nil
	}
	return nil, fmt.Errorf("unknown compression %q: want %s", name, strings.Join(Compressions, ", "))
}

func getCodec(name string) (*codec, error) {
	opts, err := encoderOptions(name)
	if err != nil {
		return nil, err
	}
	codecsMu.Lock()
	defer codecsMu.Unlock()
	if c := codecs[name]; c != nil {
		return c, nil
	}
	// CRC off: BLAKE3 of every chunk and xxh3 of every frame check content.
	enc, err := zstd.NewWriter(nil, append(opts, zstd.WithEncoderCRC(false), zstd.WithZeroFrames(true))...)
	if err != nil {
		return nil, err
	}
	c := &codec{enc: enc}
	codecs[name] = c
	return c, nil
}

func (c *codec) compress(raw []byte) []byte {
	return c.enc.EncodeAll(raw, make([]byte, 0, len(raw)))
}

// decodeSlack is room past a block's end for the decoder: with less than
// its 16 bytes of spare capacity it decodes a frame's last zstd block with
// bounds-exact copies. With the slack, 64 of the bench clone's 1 MiB
// blocks took 3-7% less CPU (interleaved passes, 4 of 4 runs).
const decodeSlack = 64

// decompress inflates a zstd payload into a buffer of capacity rawLen (and
// decodeSlack); the decoder refuses to grow it, so a lying frame cannot
// allocate more.
func decompress(payload []byte, rawLen int) ([]byte, error) {
	return decompressInto(payload, make([]byte, 0, rawLen+decodeSlack))
}

// decompressInto appends the inflated payload to dst, within its capacity.
func decompressInto(payload, dst []byte) ([]byte, error) {
	decOnce.Do(func() {
		dec, decErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0),
			zstd.WithDecoderMaxMemory(2*maxBlockRaw),
			zstd.WithDecodeAllCapLimit(true),
			zstd.IgnoreChecksum(true))
	})
	if decErr != nil {
		return nil, decErr
	}
	return dec.DecodeAll(payload, dst)
}
