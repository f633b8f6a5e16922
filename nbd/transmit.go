package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
)

// request is one transmission-phase request header.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
}

const knownCmdFlags = cmdFlagFUA | cmdFlagNoHole | cmdFlagDF | cmdFlagReqOne | 1<<4 // FAST_ZERO

// parseRequest decodes a request header; ok is false on a bad magic.
func parseRequest(h []byte) (request, bool) {
	if be32(h) != requestMagic {
		return request{}, false
	}
	return request{flags: be16(h[4:]), typ: be16(h[6:]), cookie: be64(h[8:]), off: be64(h[16:]), length: be32(h[24:])}, true
}

// transmit reads requests until the client disconnects or breaks the
// framing, serving reads and block status on up to MaxInFlight
// goroutines; it returns once every reply is sent.
func (c *conn) transmit(ctx context.Context, exp *Export, dev Device) {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.stopped:
			cancel()
		case <-cctx.Done():
		}
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, c.srv.MaxInFlight)
	// A connection's own share, so one greedy client cannot hold the
	// whole budget.
	mine := semaphore.NewWeighted(max(c.srv.MaxBufferBytes/2, MaxPayload))
	size := uint64(exp.Size)
	for {
		var h [28]byte
		if _, err := io.ReadFull(c.r, h[:]); err != nil {
			c.report("transmission", err)
			return
		}
		req, ok := parseRequest(h[:])
		if !ok {
			c.srv.logf("nbd: %s: bad request magic %#x; disconnected", c.peer, be32(h[:]))
			return
		}
		switch {
		case req.typ == cmdDisc:
			return // wg.Wait: in-flight requests are answered first
		case req.typ == cmdWrite:
			// Consume the payload, never buffered, so the stream stays in
			// step; then refuse: the export is read-only.
			if err := c.discard(int64(req.length)); err != nil {
				c.report("transmission", err)
				return
			}
			c.errorReply(req, errPerm, "read-only export")
			continue
		}
		if errno, msg := c.validate(req, size); errno != 0 {
			c.errorReply(req, errno, msg)
			continue
		}
		switch req.typ {
		case cmdFlush:
			c.simpleReply(req.cookie, 0)
		case cmdRead, cmdBlockStatus:
			var cost int64
			if req.typ == cmdRead {
				cost = bufCost(int(req.length))
				if mine.Acquire(cctx, cost) != nil {
					return
				}
				if c.srv.budget.Acquire(cctx, cost) != nil {
					mine.Release(cost)
					return
				}
			}
			select {
			case slots <- struct{}{}:
			case <-cctx.Done():
				c.release(mine, cost)
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				defer c.release(mine, cost)
				if req.typ == cmdRead {
					c.read(dev, req)
				} else {
					c.blockStatus(dev, req)
				}
			}()
		}
	}
}

func (c *conn) release(mine *semaphore.Weighted, cost int64) {
	if cost > 0 {
		c.srv.budget.Release(cost)
		mine.Release(cost)
	}
}

// validate checks a request against the export; a non-zero errno is
// replied and the connection carries on.
func (c *conn) validate(req request, size uint64) (uint32, string) {
	if req.flags&^knownCmdFlags != 0 {
		return errInval, fmt.Sprintf("unknown command flags %#x", req.flags)
	}
	if req.flags&cmdFlagReqOne != 0 && req.typ != cmdBlockStatus {
		return errInval, "REQ_ONE is only for block status"
	}
	if req.flags&cmdFlagDF != 0 {
		return errInval, "DF was not advertised"
	}
	inRange := req.off <= size && uint64(req.length) <= size-req.off
	switch req.typ {
	case cmdRead:
		if req.length == 0 {
			return errInval, "zero-length read"
		}
		if req.length > MaxPayload {
			return errOverflow, fmt.Sprintf("read of %d bytes exceeds the maximum payload of %d", req.length, MaxPayload)
		}
		if !inRange {
			return errInval, fmt.Sprintf("read of %d bytes at %d is past the end of the export (%d bytes)", req.length, req.off, size)
		}
	case cmdBlockStatus:
		if !c.metaSet {
			return errInval, "no metadata context was negotiated"
		}
		if req.length == 0 {
			return errInval, "zero-length block status"
		}
		if !inRange {
			return errInval, fmt.Sprintf("block status of %d bytes at %d is past the end of the export (%d bytes)", req.length, req.off, size)
		}
	case cmdFlush:
	case cmdTrim, cmdWriteZeroes:
		return errPerm, "read-only export"
	default:
		return errInval, fmt.Sprintf("unknown command %d", req.typ)
	}
	return 0, ""
}

// simpleReply sends a reply without payload (allowed for every command
// but READ even when structured replies are on).
func (c *conn) simpleReply(cookie uint64, errno uint32) {
	var h [16]byte
	binary.BigEndian.PutUint32(h[0:], simpleMagic)
	binary.BigEndian.PutUint32(h[4:], errno)
	binary.BigEndian.PutUint64(h[8:], cookie)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.w.Write(h[:])
	c.flushLocked()
}

// errorReply answers req with an error: a structured error chunk with a
// message when structured replies are on, else a simple reply.
func (c *conn) errorReply(req request, errno uint32, msg string) {
	if !c.structured {
		c.simpleReply(req.cookie, errno)
		return
	}
	msg = clip(msg)
	p := make([]byte, 6, 6+len(msg))
	binary.BigEndian.PutUint32(p[0:], errno)
	binary.BigEndian.PutUint16(p[4:], uint16(len(msg)))
	p = append(p, msg...)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.chunkHeader(req.cookie, replyFlagDone, replyTypeError, len(p))
	c.w.Write(p)
	c.flushLocked()
}

func (c *conn) chunkHeader(cookie uint64, flags, typ uint16, n int) {
	var h [20]byte
	binary.BigEndian.PutUint32(h[0:], structuredMagic)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], typ)
	binary.BigEndian.PutUint64(h[8:], cookie)
	binary.BigEndian.PutUint32(h[16:], uint32(n))
	c.w.Write(h[:])
}

// flushLocked sends what is buffered; on failure the connection is beyond
// saving, so it is closed, which also ends the reader loop.
func (c *conn) flushLocked() {
	if err := c.flushW(); err != nil {
		c.stopOnceLog(err)
		c.nc.Close()
	}
}

func (c *conn) stopOnceLog(err error) {
	if !c.isStopped() {
		c.srv.logf("nbd: %s: sending a reply: %v; disconnected", c.peer, err)
	}
	c.stop()
}

// extent is a range of a read reply: data or a hole.
type extent struct {
	off, n int64
	data   bool
}

// maxReadChunks bounds the chunks of one read reply; past it the rest of
// the request is sent as data (reads as zeros either way).
const maxReadChunks = 4096

var errEnough = errors.New("enough extents")

// extents lists [off, off+n) as consecutive data/hole ranges, merged, at
// most limit of them. With fill (reads), what the device leaves uncovered
// or describes inconsistently counts as data, which is always correct to
// send; without (block status), the answer may be short, as the spec
// allows, but never empty.
func extents(dev Device, off, n int64, limit int, reqOne, fill bool) ([]extent, error) {
	var out []extent
	cur, end := off, off+n
	err := dev.Extents(off, n, func(o, l int64, data bool) error {
		if l <= 0 || o+l <= cur {
			return nil
		}
		if o > cur { // a gap: not what the device promised
			return errEnough
		}
		e := min(o+l, end)
		if k := len(out); k > 0 && out[k-1].data == data {
			out[k-1].n = e - out[k-1].off
		} else {
			if len(out) == limit || (reqOne && len(out) == 1) {
				return errEnough
			}
			out = append(out, extent{cur, e - cur, data})
		}
		cur = e
		if cur >= end {
			return errEnough
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		return nil, err
	}
	if cur < end && fill {
		if k := len(out); k > 0 && out[k-1].data {
			out[k-1].n = end - out[k-1].off
		} else if len(out) < limit {
			out = append(out, extent{cur, end - cur, true})
		} else {
			// the limit is reached on a hole: send it as data
			out[len(out)-1].n = end - out[len(out)-1].off
			out[len(out)-1].data = true
		}
	}
	if len(out) == 0 {
		out = append(out, extent{off, n, true})
	}
	return out, nil
}

// readFull fills p from dev at off; a short read is an error.
func readFull(dev Device, p []byte, off int64) error {
	n, err := dev.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func (c *conn) read(dev Device, req request) {
	off, n := int64(req.off), int(req.length)
	if sd, ok := dev.(SliceDevice); ok && c.structured {
		c.readSlices(sd, req)
		return
	}
	bp := getBuf(n)
	defer putBuf(bp)
	buf := (*bp)[:n]
	if !c.structured {
		if err := readFull(dev, buf, off); err != nil {
			c.srv.logf("nbd: %s: read of %d bytes at %d: %v", c.peer, n, off, err)
			c.simpleReply(req.cookie, errIO)
			return
		}
		var h [16]byte
		binary.BigEndian.PutUint32(h[0:], simpleMagic)
		binary.BigEndian.PutUint64(h[8:], req.cookie)
		c.wmu.Lock()
		defer c.wmu.Unlock()
		c.w.Write(h[:])
		c.w.Write(buf)
		c.flushLocked()
		return
	}
	exts, err := extents(dev, off, int64(n), maxReadChunks, false, true)
	if err == nil {
		// One ReadAt over the span of the data, so the device fetches
		// its chunks in parallel; holes inside it are never sent.
		first, last := -1, -1
		for i, e := range exts {
			if e.data {
				if first < 0 {
					first = i
				}
				last = i
			}
		}
		if first >= 0 {
			s, e := exts[first].off, exts[last].off+exts[last].n
			err = readFull(dev, buf[s-off:e-off], s)
		}
	}
	if err != nil {
		c.srv.logf("nbd: %s: read of %d bytes at %d: %v", c.peer, n, off, err)
		c.errorReply(req, errIO, "read failed")
		return
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for i, e := range exts {
		var flags uint16
		if i == len(exts)-1 {
			flags = replyFlagDone // everything was read: no error can follow
		}
		var p [12]byte
		binary.BigEndian.PutUint64(p[0:], uint64(e.off))
		if e.data {
			c.chunkHeader(req.cookie, flags, replyTypeOffsetData, 8+int(e.n))
			c.w.Write(p[:8])
			c.w.Write(buf[e.off-off : e.off-off+e.n])
		} else {
			binary.BigEndian.PutUint32(p[8:], uint32(e.n))
			c.chunkHeader(req.cookie, flags, replyTypeOffsetHole, 12)
			c.w.Write(p[:])
		}
	}
	c.flushLocked()
}

// readSlices answers a structured read from a SliceDevice: the data goes
// from the device's slices to the socket in one writev, with no copy into
// a reply buffer (the sequential-read path: that copy cost as much CPU as
// the socket).
func (c *conn) readSlices(dev SliceDevice, req request) {
	off, n := int64(req.off), int64(req.length)
	exts, err := extents(dev, off, n, maxReadChunks, false, true)
	var data [][]byte
	first, last := -1, -1
	if err == nil {
		// One read over the span of the data, so the device fetches its
		// chunks in parallel; holes inside it are skipped below.
		for i, e := range exts {
			if e.data {
				if first < 0 {
					first = i
				}
				last = i
			}
		}
		if first >= 0 {
			s, e := exts[first].off, exts[last].off+exts[last].n
			data, err = dev.ReadSlices(s, int(e-s))
			if err == io.EOF {
				err = nil
			}
			var got int64
			for _, b := range data {
				got += int64(len(b))
			}
			if err == nil && got != e-s {
				err = io.ErrUnexpectedEOF
			}
		}
	}
	if err != nil {
		c.srv.logf("nbd: %s: read of %d bytes at %d: %v", c.peer, n, off, err)
		c.errorReply(req, errIO, "read failed")
		return
	}
	hdr := make([]byte, 0, 32*len(exts)) // never grows: bufs point into it
	bufs := make(net.Buffers, 0, 2*len(exts)+len(data))
	for i, e := range exts {
		var flags uint16
		if i == len(exts)-1 {
			flags = replyFlagDone
		}
		h := len(hdr)
		hdr = binary.BigEndian.AppendUint32(hdr, structuredMagic)
		hdr = binary.BigEndian.AppendUint16(hdr, flags)
		if e.data {
			hdr = binary.BigEndian.AppendUint16(hdr, replyTypeOffsetData)
			hdr = binary.BigEndian.AppendUint64(hdr, req.cookie)
			hdr = binary.BigEndian.AppendUint32(hdr, uint32(8+e.n))
			hdr = binary.BigEndian.AppendUint64(hdr, uint64(e.off))
		} else {
			hdr = binary.BigEndian.AppendUint16(hdr, replyTypeOffsetHole)
			hdr = binary.BigEndian.AppendUint64(hdr, req.cookie)
			hdr = binary.BigEndian.AppendUint32(hdr, 12)
			hdr = binary.BigEndian.AppendUint64(hdr, uint64(e.off))
			hdr = binary.BigEndian.AppendUint32(hdr, uint32(e.n))
		}
		bufs = append(bufs, hdr[h:])
		// Take e.n bytes off the data slices when e lies in their span;
		// a hole's bytes (zeros) are dropped, a data extent's sent.
		if i < first || i > last {
			continue
		}
		for k := e.n; k > 0 && len(data) > 0; {
			b := data[0]
			if int64(len(b)) > k {
				b, data[0] = b[:k], b[k:]
			} else {
				data = data[1:]
			}
			k -= int64(len(b))
			if e.data {
				bufs = append(bufs, b)
			}
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.w.Buffered() > 0 {
		c.flushLocked()
	}
	c.nc.SetWriteDeadline(time.Now().Add(c.srv.WriteTimeout))
	if _, err := bufs.WriteTo(c.nc); err != nil {
		c.stopOnceLog(err)
		c.nc.Close()
	}
}

func (c *conn) blockStatus(dev Device, req request) {
	reqOne := req.flags&cmdFlagReqOne != 0
	exts, err := extents(dev, int64(req.off), int64(req.length), maxExtents, reqOne, false)
	if err != nil {
		c.srv.logf("nbd: %s: block status at %d: %v", c.peer, req.off, err)
		c.errorReply(req, errIO, "block status failed")
		return
	}
	p := make([]byte, 4, 4+8*len(exts))
	binary.BigEndian.PutUint32(p, metaContextID)
	for _, e := range exts {
		var flags uint32
		if !e.data {
			flags = stateHole | stateZero
		}
		p = binary.BigEndian.AppendUint32(p, uint32(e.n))
		p = binary.BigEndian.AppendUint32(p, flags)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.chunkHeader(req.cookie, replyFlagDone, replyTypeBlockStatus, len(p))
	c.w.Write(p)
	c.flushLocked()
}

// Read buffers come in power-of-two classes from 4 KiB to MaxPayload.
const minBufShift = 12

const maxBufShift = 25 // MaxPayload

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// bufCost is what a read of n bytes takes from the buffer budget.
func bufCost(n int) int64 { return 1 << (bufClass(n) + minBufShift) }

func getBuf(n int) *[]byte {
	k := bufClass(n)
	if p, ok := bufPools[k].Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, 1<<(k+minBufShift))
	return &b
}

func putBuf(p *[]byte) { bufPools[bufClass(cap(*p))].Put(p) }
