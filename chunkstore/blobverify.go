package chunkstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"

	"golang.org/x/sync/errgroup"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// verifyPackInfo is one pack Verify reads, as the cache lists it.
type verifyPackInfo struct {
	num       uint32
	hash      ID
	condemned bool // by a pending gc list: another host may sweep it any time
}

// verifiedPack is what Verify learned about one pack's frames.
type verifiedPack struct {
	frames map[int64]*scannedFrame
	bad    map[int64]error
	err    error // the pack could not be read
	name   string

	problems []Problem // in the order found
	nframes  int64
	nbytes   int64
	swept    bool // gone, and condemned: not damage
}

// verifyWorkers is how many packs Verify reads and checks at once. Each
// holds a whole pack (up to the pack size, 64 MiB by default) while its
// frames are decoded and hashed, so the count is capped for memory; two
// keep both cores of a small host busy, or a bucket read in flight while
// the other pack is checked.
func verifyWorkers() int { return max(1, min(runtime.GOMAXPROCS(0), 2)) }

// verifyPacks reads and checks every pack, verifyWorkers at a time. The
// problems of each pack are reported in pack order, as a serial scan
// reported them, whatever order the reads finish in.
func (s *BlobStore) verifyPacks(ctx context.Context, packs []verifyPackInfo, recorded map[ID]bool,
	emit func(Problem), st *VerifyStats) (map[uint32]*verifiedPack, error) {
	res := make([]*verifiedPack, len(packs))
	done := make([]chan struct{}, len(packs))
	for i := range done {
		done[i] = make(chan struct{})
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(verifyWorkers())
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		for i, p := range packs {
			if gctx.Err() != nil {
				return
			}
			g.Go(func() error {
				defer close(done[i])
				var err error
				res[i], err = s.verifyPack(gctx, p, recorded)
				return err
			})
		}
	}()
	scanned := map[uint32]*verifiedPack{}
	for i, p := range packs {
		select {
		case <-done[i]:
		case <-gctx.Done():
		}
		if gctx.Err() != nil {
			break
		}
		fd := res[i]
		if fd.swept {
			continue
		}
		st.Packs++
		st.Frames += fd.nframes
		st.Bytes += fd.nbytes
		for _, q := range fd.problems {
			emit(q)
		}
		fd.problems = nil
		scanned[p.num] = fd
	}
	<-fed
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return scanned, nil
}

// verifyPack reads one pack and its index segment and checks the pack's
// hash, every frame and every chunk. Damage goes into the result; the
// error is only for what ends Verify (a failed request, cancellation).
func (s *BlobStore) verifyPack(ctx context.Context, p verifyPackInfo, recorded map[ID]bool) (*verifiedPack, error) {
	name := s.bs.String() + "/" + packObject(p.hash)
	fd := &verifiedPack{frames: map[int64]*scannedFrame{}, bad: map[int64]error{}, name: name}
	emit := func(q Problem) { fd.problems = append(fd.problems, q) }
	if err := s.verifySegment(ctx, p.hash, emit); err != nil {
		return nil, err
	}
	b, err := blob.ReadAll(ctx, s.bs, packObject(p.hash), maxPackObject)
	if errors.Is(err, blob.ErrNotExist) && p.condemned {
		// Swept by a gc on another host since the refresh: none of its
		// chunks is needed (that is what condemned it).
		fd.swept = true
		return fd, nil
	}
	if err != nil {
		if !errors.Is(err, blob.ErrNotExist) && !errors.Is(err, blob.ErrRange) {
			return nil, err
		}
		fd.err = err
		emit(Problem{Pack: name, Err: err})
		return fd, nil
	}
	if got := Sum(b); got != p.hash && !recorded[p.hash] {
		// (Damage repair recorded is not news: the entries of its frames
		// are dropped, and the chunks stored again elsewhere.)
		emit(Problem{Pack: name, Err: fmt.Errorf("pack content hashes to %s, not its name", got.Short())})
	}
	end := int64(len(b))
	if len(b) >= packFooterSize && string(b[len(b)-8:]) == packFooterMagic {
		if so := int64(binary.LittleEndian.Uint64(b[len(b)-16:])); so >= packHeaderSize && so <= end-packFooterSize {
			end = so
		}
	} else {
		emit(Problem{Pack: name, Offset: end, Err: errors.New("pack footer missing")})
	}
	var nonce uint32
	if len(b) >= packHeaderSize {
		nonce = binary.LittleEndian.Uint32(b[12:])
	}
	_, err = scanPack(ctx, bytes.NewReader(b), nonce, end, func(off int64, fr *frame, raw []byte) error {
		fd.nframes++
		fd.nbytes += int64(len(raw))
		sf := &scannedFrame{n: int64(len(raw))}
		block, err := fr.block()
		for i, c := range fr.Chunks {
			var cerr error
			if err != nil {
				cerr = fmt.Errorf("decompressing block: %w", err)
			} else {
				cerr = chunkOK(block, c)
			}
			if cerr != nil {
				if sf.bad == nil {
					sf.bad = map[int]error{}
				}
				sf.bad[i] = cerr
			}
		}
		sf.chunks = slices.Clone(fr.Chunks)
		fd.frames[off] = sf
		return nil
	}, func(off int64, err error) { fd.bad[off] = err })
	if err != nil {
		return nil, err
	}
	return fd, nil
}
