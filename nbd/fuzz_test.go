package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// fakeConn feeds a fixed client stream to the server and drops replies.
type fakeConn struct {
	r io.Reader
}

func (f *fakeConn) Read(p []byte) (int, error)       { return f.r.Read(p) }
func (f *fakeConn) Write(p []byte) (int, error)      { return len(p), nil }
func (f *fakeConn) Close() error                     { return nil }
func (f *fakeConn) LocalAddr() net.Addr              { return nil }
func (f *fakeConn) RemoteAddr() net.Addr             { return nil }
func (f *fakeConn) SetDeadline(time.Time) error      { return nil }
func (f *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (f *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// clientStream builds a client's side of a session: flags, options, then
// requests.
func clientStream(flags uint32, opts [][2][]byte, reqs [][]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, flags)
	for _, o := range opts {
		b = binary.BigEndian.AppendUint64(b, optMagic)
		b = append(b, o[0]...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(o[1])))
		b = append(b, o[1]...)
	}
	for _, r := range reqs {
		b = append(b, r...)
	}
	return b
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func reqBytes(flags, typ uint16, off uint64, n uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, requestMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, 1)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, n)
	return append(b, payload...)
}

// FuzzServe runs whole sessions from arbitrary client bytes: the option
// and request parsers must never panic, allocate from a hostile length,
// or hang once the stream ends.
func FuzzServe(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	img := testImage()
	f.Fuzz(func(t *testing.T, in []byte) {
		srv := &Server{Exports: []Export{{
			Name: "disk", ID: "abcdef", Size: int64(len(img)),
			Open: func() (Device, error) { return &memDev{data: img}, nil },
		}}}
		// Returns once the stream ends and every reply is written.
		srv.ServeConn(context.Background(), &fakeConn{r: bytes.NewReader(in)})
	})
}

func fuzzSeeds() [][]byte {
	var seeds [][]byte
	full := clientStream(clientFixedNewstyle|clientNoZeroes, [][2][]byte{
		{u32(99), []byte("junk")},
		{u32(optList), nil},
		{u32(optStructuredReply), nil},
		{u32(optListMetaContext), metaData("disk")},
		{u32(optSetMetaContext), metaData("disk", "base:allocation", "x-y:z")},
		{u32(optInfo), goData("disk", infoName, infoDescription, infoBlockSize)},
		{u32(optGo), goData("disk", infoBlockSize)},
	}, [][]byte{
		reqBytes(0, cmdRead, 0, 65536, nil),
		reqBytes(0, cmdRead, 4000, 100000, nil),
		reqBytes(cmdFlagReqOne, cmdBlockStatus, 0, 1<<20, nil),
		reqBytes(0, cmdBlockStatus, 4096, 1<<19, nil),
		reqBytes(0, cmdWrite, 0, 16, make([]byte, 16)),
		reqBytes(0, cmdRead, 1<<20-1, 2, nil),
		reqBytes(0, cmdFlush, 0, 0, nil),
		reqBytes(0, cmdTrim, 0, 4096, nil),
		reqBytes(0, cmdDisc, 0, 0, nil),
	})
	seeds = append(seeds, full)
	seeds = append(seeds, clientStream(clientFixedNewstyle, [][2][]byte{{u32(optExportName), []byte("disk")}},
		[][]byte{reqBytes(0, cmdRead, 0, 4096, nil), reqBytes(0, cmdBlockStatus, 0, 4096, nil)}))
	seeds = append(seeds, clientStream(clientFixedNewstyle, [][2][]byte{{u32(optGo), []byte{0xff, 0xff, 0xff, 0xff}}, {u32(optAbort), nil}}, nil))
	seeds = append(seeds, clientStream(clientFixedNewstyle, [][2][]byte{{u32(optSetMetaContext), append(nameData("disk"), 0xff, 0xff, 0xff, 0xff)}}, nil))
	return seeds
}
