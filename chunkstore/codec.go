package chunkstore

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// codec compresses blocks at one zstd level. One Encoder and one Decoder
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

func compressionLevel(name string) (zstd.EncoderLevel, error) {
	switch name {
	case "fastest":
		return zstd.SpeedFastest, nil
	case "default", "":
		return zstd.SpeedDefault, nil
	case "better":
		return zstd.SpeedBetterCompression, nil
	case "best":
		return zstd.SpeedBestCompression, nil
	}
	return 0, fmt.Errorf("unknown compression %q: want fastest, default, better or best", name)
}

func getCodec(name string) (*codec, error) {
	lvl, err := compressionLevel(name)
	if err != nil {
		return nil, err
	}
	codecsMu.Lock()
	defer codecsMu.Unlock()
	if c := codecs[name]; c != nil {
		return c, nil
	}
	// CRC off: BLAKE3 of every chunk and xxh3 of every frame check content.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(lvl), zstd.WithEncoderCRC(false), zstd.WithZeroFrames(true))
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

// decompress inflates a zstd payload into a buffer of capacity rawLen; the
// decoder refuses to grow it, so a lying frame cannot allocate more.
func decompress(payload []byte, rawLen int) ([]byte, error) {
	return decompressInto(payload, make([]byte, 0, rawLen))
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
