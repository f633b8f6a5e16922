package sketch

import "encoding/binary"

// Builder accumulates the distinct chunks of a set. Add in any order, with
// any duplicates: the result depends only on the set. To weigh each chunk
// once it keeps the first 128 bits of every distinct chunk ID (17–35 bytes
// a chunk as the map fills: ~5 MB for 10 GiB of 64 KiB chunks, ~0.5 GB for
// 1 TiB); IDs are content hashes, so chunks that agree there are the same.
// A Builder is not safe for concurrent use.
type Builder struct {
	seen   map[[2]uint64]struct{}
	weight uint64
	min    [Bins]uint64 // smallest hash per bin + 1; 0 = empty
}

// NewBuilder returns an empty builder.
func NewBuilder() *Builder { return &Builder{seen: map[[2]uint64]struct{}{}} }

// mix64 is the splitmix64 finalizer: a bijection that scatters every input
// bit over the output.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// elementHash hashes element (chunk id, block j).
func elementHash(id *[32]byte, j uint64) uint64 {
	a := binary.LittleEndian.Uint64(id[0:])
	b := binary.LittleEndian.Uint64(id[8:])
	return mix64(a ^ mix64(b^(j+0x9e3779b97f4a7c15)))
}

// binOf maps a hash to a bin by its top 32 bits (multiply-shift, no bias
// beyond 1 in 2^32/Bins).
func binOf(h uint64) int { return int(((h >> 32) * Bins) >> 32) }

// fingerprint is the 8-bit code stored for a bin minimum: 1..255.
func fingerprint(h uint64) uint8 { return uint8(mix64(h)%255) + 1 }

// Add adds a chunk of length bytes with the given ID. Zero-length chunks
// are ignored. The same ID must always come with the same length (IDs are
// content hashes); a repeat is ignored.
func (b *Builder) Add(id [32]byte, length uint32) {
	if length == 0 {
		return
	}
	key := [2]uint64{binary.LittleEndian.Uint64(id[0:]), binary.LittleEndian.Uint64(id[8:])}
	if _, ok := b.seen[key]; ok {
		return
	}
	b.seen[key] = struct{}{}
	units := (uint64(length) + Unit - 1) >> UnitShift
	b.weight += units
	for j := uint64(0); j < units; j++ {
		h := elementHash(&id, j)
		// Bins keep h+1 so that 0 means empty; h = 2^64-1 wraps to 0 and
		// is simply never a minimum (probability 2^-64).
		k := binOf(h)
		if v := h + 1; v != 0 && (b.min[k] == 0 || v < b.min[k]) {
			b.min[k] = v
		}
	}
}

// Chunks is the number of distinct chunks added so far.
func (b *Builder) Chunks() int { return len(b.seen) }

// Sketch returns the signature of what was added so far.
func (b *Builder) Sketch() *Sketch {
	s := &Sketch{Weight: b.weight, Chunks: uint64(len(b.seen))}
	for i, v := range b.min {
		if v != 0 {
			s.Fp[i] = fingerprint(v - 1)
		}
	}
	return s
}
