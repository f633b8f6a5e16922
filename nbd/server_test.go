package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// testImage is 1 MiB: data at 0..8K, a hole, data at 64K..72K, zeros
// (holes) to the end but for the last 4 KiB.
func testImage() []byte {
	b := make([]byte, 1<<20)
	for i := range 8192 {
		b[i] = byte(i%251 + 1)
	}
	for i := 65536; i < 65536+8192; i++ {
		b[i] = 0xab
	}
	for i := len(b) - 4096; i < len(b); i++ {
		b[i] = 0xcd
	}
	return b
}

type logBuf struct {
	mu    sync.Mutex
	lines []string
}

func (l *logBuf) logf(format string, args ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// startServer serves exports on a unix socket until the test ends.
func startServer(t *testing.T, devs map[string]*memDev) (dial func() net.Conn, logs *logBuf) {
	t.Helper()
	logs = &logBuf{}
	srv := &Server{Logf: logs.logf}
	for _, name := range []string{"disk", "other"} {
		d, ok := devs[name]
		if !ok {
			continue
		}
		srv.Exports = append(srv.Exports, Export{
			Name: name, ID: fmt.Sprintf("%x", name) + "00ff", Description: "test " + name,
			Size: int64(len(d.data)), Open: func() (Device, error) { return d, nil },
		})
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return func() net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}, logs
}

// client speaks the protocol byte by byte, failing the test on surprises.
type client struct {
	t *testing.T
	c net.Conn
}

func (c *client) write(b []byte) {
	c.t.Helper()
	if _, err := c.c.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) readN(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.c, b); err != nil {
		c.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// greet reads the server's greeting and sends client flags.
func greet(t *testing.T, conn net.Conn, flags uint32) *client {
	t.Helper()
	c := &client{t, conn}
	h := c.readN(18)
	if be64(h) != nbdMagic || be64(h[8:]) != optMagic {
		t.Fatalf("greeting % x", h)
	}
	if f := be16(h[16:]); f != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x", f)
	}
	c.write(binary.BigEndian.AppendUint32(nil, flags))
	return c
}

func (c *client) opt(opt uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optRep struct {
	opt, typ uint32
	data     []byte
}

func (c *client) reply() optRep {
	c.t.Helper()
	h := c.readN(20)
	if be64(h) != repMagic {
		c.t.Fatalf("option reply magic % x", h[:8])
	}
	n := be32(h[16:])
	if n > 1<<20 {
		c.t.Fatalf("option reply of %d bytes", n)
	}
	return optRep{be32(h[8:]), be32(h[12:]), c.readN(int(n))}
}

// replies reads option replies up to and including a final one (ACK or
// an error).
func (c *client) replies() []optRep {
	c.t.Helper()
	var out []optRep
	for {
		r := c.reply()
		out = append(out, r)
		if r.typ == repAck || r.typ&(1<<31) != 0 {
			return out
		}
	}
}

func nameData(name string, rest ...byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	return append(append(b, name...), rest...)
}

func goData(name string, infos ...uint16) []byte {
	b := nameData(name)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func metaData(name string, queries ...string) []byte {
	b := nameData(name)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = append(b, nameData(q)...)
	}
	return b
}

// goExport sends OPT_GO and expects success.
func (c *client) goExport(name string) (size uint64, flags uint16) {
	c.t.Helper()
	c.opt(optGo, goData(name, infoBlockSize))
	var sawBlock bool
	for _, r := range c.replies() {
		switch r.typ {
		case repInfo:
			switch be16(r.data) {
			case infoExport:
				size, flags = be64(r.data[2:]), be16(r.data[10:])
			case infoBlockSize:
				sawBlock = true
				if be32(r.data[2:]) != 1 || be32(r.data[6:]) != 4096 || be32(r.data[10:]) != 32<<20 {
					c.t.Errorf("block sizes % x", r.data)
				}
			}
		case repAck:
		default:
			c.t.Fatalf("OPT_GO %q: reply %#x %q", name, r.typ, r.data)
		}
	}
	if !sawBlock {
		c.t.Errorf("no NBD_INFO_BLOCK_SIZE")
	}
	return size, flags
}

// setup greets with NO_ZEROES and goes to "disk", with structured replies
// and base:allocation when asked.
func setup(t *testing.T, conn net.Conn, structured bool) *client {
	c := greet(t, conn, clientFixedNewstyle|clientNoZeroes)
	if structured {
		c.opt(optStructuredReply, nil)
		if r := c.reply(); r.typ != repAck {
			t.Fatalf("STRUCTURED_REPLY: %#x", r.typ)
		}
		c.opt(optSetMetaContext, metaData("disk", "base:allocation"))
		rs := c.replies()
		if len(rs) != 2 || rs[0].typ != repMetaContext || string(rs[0].data[4:]) != "base:allocation" || rs[1].typ != repAck {
			t.Fatalf("SET_META_CONTEXT: %+v", rs)
		}
	}
	size, flags := c.goExport("disk")
	if size != 1<<20 || flags != transmissionFlags {
		t.Fatalf("export size %d flags %#x", size, flags)
	}
	return c
}

func (c *client) req(flags, typ uint16, cookie, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint32(nil, requestMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	c.write(append(b, payload...))
}

// simple reads a simple reply header: error and cookie.
func (c *client) simple() (errno uint32, cookie uint64) {
	c.t.Helper()
	h := c.readN(16)
	if be32(h) != simpleMagic {
		c.t.Fatalf("want a simple reply, got magic %#x", be32(h))
	}
	return be32(h[4:]), be64(h[8:])
}

type chunk struct {
	flags, typ uint16
	cookie     uint64
	payload    []byte
}

func (c *client) chunk() chunk {
	c.t.Helper()
	h := c.readN(20)
	if be32(h) != structuredMagic {
		c.t.Fatalf("want a structured reply, got magic %#x", be32(h))
	}
	n := be32(h[16:])
	if n > 33<<20 {
		c.t.Fatalf("chunk of %d bytes", n)
	}
	return chunk{be16(h[4:]), be16(h[6:]), be64(h[8:]), c.readN(int(n))}
}

// structuredRead collects one structured READ reply into a buffer,
// checking the chunks tile [off, off+n) without overlap.
func (c *client) structuredRead(cookie, off uint64, n int) (data []byte, holes int) {
	c.t.Helper()
	c.req(0, cmdRead, cookie, off, uint32(n), nil)
	return c.structuredReply(cookie, off, n)
}

// structuredReply reads the reply to a READ already sent.
func (c *client) structuredReply(cookie, off uint64, n int) (data []byte, holes int) {
	c.t.Helper()
	data = make([]byte, n)
	covered := make([]bool, n)
	mark := func(o uint64, l int) {
		if o < off || o+uint64(l) > off+uint64(n) {
			c.t.Fatalf("chunk [%d,+%d) outside the request [%d,+%d)", o, l, off, n)
		}
		for i := range l {
			if covered[int(o-off)+i] {
				c.t.Fatalf("chunks overlap at %d", o+uint64(i))
			}
			covered[int(o-off)+i] = true
		}
	}
	for {
		ch := c.chunk()
		if ch.cookie != cookie {
			c.t.Fatalf("cookie %d, want %d", ch.cookie, cookie)
		}
		switch ch.typ {
		case replyTypeOffsetData:
			o := be64(ch.payload)
			mark(o, len(ch.payload)-8)
			copy(data[o-off:], ch.payload[8:])
		case replyTypeOffsetHole:
			o, l := be64(ch.payload), be32(ch.payload[8:])
			mark(o, int(l))
			holes++
		case replyTypeNone:
		default:
			c.t.Fatalf("unexpected chunk type %#x: %q", ch.typ, ch.payload)
		}
		if ch.flags&replyFlagDone != 0 {
			break
		}
	}
	for i, ok := range covered {
		if !ok {
			c.t.Fatalf("byte %d of the read not covered", i)
		}
	}
	return data, holes
}

// errorChunk reads one error chunk and returns its errno.
func (c *client) errorChunk(cookie uint64) uint32 {
	c.t.Helper()
	ch := c.chunk()
	if ch.typ != replyTypeError || ch.cookie != cookie || ch.flags&replyFlagDone == 0 {
		c.t.Fatalf("want a final error chunk for %d, got %+v", cookie, ch)
	}
	return be32(ch.payload)
}

func TestNoZeroes(t *testing.T) {
	dial, _ := startServer(t, map[string]*memDev{"disk": {data: testImage()}})
	for _, noZeroes := range []bool{true, false} {
		flags := uint32(clientFixedNewstyle)
		if noZeroes {
			flags |= clientNoZeroes
		}
		c := greet(t, dial(), flags)
		c.opt(optExportName, []byte("disk"))
		h := c.readN(10)
		if be64(h) != 1<<20 || be16(h[8:]) != transmissionFlags {
			t.Fatalf("export reply % x", h)
		}
		if !noZeroes {
			if z := c.readN(124); !bytes.Equal(z, make([]byte, 124)) {
				t.Fatalf("padding % x", z)
			}
		}
		// The next bytes must be the reply to this read: no padding left.
		c.req(0, cmdRead, 7, 0, 512, nil)
		if errno, cookie := c.simple(); errno != 0 || cookie != 7 {
			t.Fatalf("read: errno %d cookie %d", errno, cookie)
		}
		if got := c.readN(512); !bytes.Equal(got, testImage()[:512]) {
			t.Fatal("read returned the wrong bytes")
		}
		c.req(0, cmdDisc, 8, 0, 0, nil)
	}
}

func TestExportNameFallbackByIDAndPrefix(t *testing.T) {
	dial, _ := startServer(t, map[string]*memDev{"disk": {data: testImage()}, "other": {data: make([]byte, 4096)}})
	for _, name := range []string{"disk", fmt.Sprintf("%x", "disk") + "00ff", fmt.Sprintf("%x", "di")} {
		c := greet(t, dial(), clientFixedNewstyle|clientNoZeroes)
		c.opt(optExportName, []byte(name))
		if h := c.readN(10); be64(h) != 1<<20 {
			t.Fatalf("%q: size %d", name, be64(h))
		}
	}
	// An unknown name after EXPORT_NAME can only end the session.
	c := greet(t, dial(), clientFixedNewstyle|clientNoZeroes)
	c.opt(optExportName, []byte("nope"))
	if _, err := io.ReadFull(c.c, make([]byte, 1)); err != io.EOF {
		t.Fatalf("after an unknown EXPORT_NAME: %v, want EOF", err)
	}
}

func TestUnknownOptionThenValid(t *testing.T) {
	dial, _ := startServer(t, map[string]*memDev{"disk": {data: testImage()}})
	c := greet(t, dial(), clientFixedNewstyle|clientNoZeroes)
	for _, o := range []struct {
		opt  uint32
		data []byte
		want uint32
	}{
		{99, []byte("some data the server must skip"), repErrUnsup},
		{optStartTLS, nil, repErrUnsup},
		{11, nil, repErrUnsup}, // EXTENDED_HEADERS
		{optList, []byte("x"), repErrInvalid},
		{optGo, []byte{0, 0, 0, 9, 'a'}, repErrInvalid},       // name longer than the data
		{optGo, goData("missing"), repErrUnknown},             // no such export
		{optInfo, append(goData("disk"), 0), repErrInvalid},   // odd info list
		{optListMetaContext, metaData("disk"), repErrInvalid}, // before STRUCTURED_REPLY
		{1 << 20, make([]byte, maxOptionLen+1), repErrTooBig}, // too long: read past
	} {
		c.opt(o.opt, o.data)
		r := c.reply()
		if r.opt != o.opt || r.typ != o.want {
			t.Fatalf("option %d: reply opt %d type %#x, want %#x", o.opt, r.opt, r.typ, o.want)
		}
	}
	c.opt(optInfo, goData("disk", infoName, infoDescription))
	var name, desc string
	for _, r := range c.replies() {
		if r.typ == repInfo && be16(r.data) == infoName {
			name = string(r.data[2:])
		}
		if r.typ == repInfo && be16(r.data) == infoDescription {
			desc = string(r.data[2:])
		}
	}
	if name != "disk" || desc != "test disk" {
		t.Fatalf("INFO name %q description %q", name, desc)
	}
	c.goExport("disk")
	c.req(0, cmdRead, 1, 4096, 4096, nil)
	if errno, _ := c.simple(); errno != 0 {
		t.Fatalf("read after options: errno %d", errno)
	}
	c.readN(4096)
}

func TestList(t *testing.T) {
	dial, _ := startServer(t, map[string]*memDev{"disk": {data: testImage()}, "other": {data: make([]byte, 4096)}})
	c := greet(t, dial(), clientFixedNewstyle|clientNoZeroes)
	c.opt(optList, nil)
	var names []string
	for _, r := range c.replies() {
		if r.typ == repServer {
			n := be32(r.data)
			names = append(names, string(r.data[4:4+n]))
		}
	}
	want := []string{"disk", fmt.Sprintf("%x", "disk") + "00ff", "other", fmt.Sprintf("%x", "other") + "00ff"}
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Fatalf("OPT_LIST: %q, want %q", names, want)
	}
	c.opt(optAbort, nil)
	if r := c.reply(); r.typ != repAck {
		t.Fatalf("ABORT: %#x", r.typ)
	}
	if _, err := io.ReadFull(c.c, make([]byte, 1)); err != io.EOF {
		t.Fatalf("after ABORT: %v", err)
	}
}

func TestMetaContext(t *testing.T) {
	dial, _ := startServer(t, map[string]*memDev{"disk": {data: testImage()}, "other": {data: make([]byte, 4096)}})
	c := greet(t, dial(), clientFixedNewstyle|clientNoZeroes)
	// SET_META_CONTEXT before STRUCTURED_REPLY is invalid and selects nothing.
	c.opt(optSetMetaContext, metaData("disk", "base:allocation"))
	if r := c.reply(); r.typ != repErrInvalid {
		t.Fatalf("SET before STRUCTURED_REPLY: %#x", r.typ)
	}
	c.opt(optStructuredReply, nil)
	c.reply()
	for _, q := range [][]string{nil, {"base:"}, {"base:allocation", "x-other:thing"}} {
		c.opt(optListMetaContext, metaData("disk", q...))
		rs := c.replies()
		if len(rs) != 2 || rs[0].typ != repMetaContext || string(rs[0].data[4:]) != "base:allocation" {
			t.Fatalf("LIST %q: %+v", q, rs)
		}
	}
	c.opt(optListMetaContext, metaData("disk", "qemu:dirty-bitmap:x"))
	if rs := c.replies(); len(rs) != 1 || rs[0].typ != repAck {
		t.Fatalf("LIST of an unknown namespace: %+v", rs)
	}
	c.opt(optSetMetaContext, metaData("nope", "base:allocation"))
	if r := c.reply(); r.typ != repErrUnknown {
		t.Fatalf("SET for an unknown export: %#x", r.typ)
	}
	// "base:" selects nothing in SET, so block status stays refused.
	c.opt(optSetMetaContext, metaData("disk", "base:"))
	if rs := c.replies(); len(rs) != 1 || rs[0].typ != repAck {
		t.Fatalf("SET base: %+v", rs)
	}
	c.goExport("disk")
	c.req(0, cmdBlockStatus, 3, 0, 4096, nil)
	if e := c.errorChunk(3); e != errInval {
		t.Fatalf("BLOCK_STATUS without a context: errno %d", e)
	}
	// A context set for another export does not carry over.
	c2 := greet(t, dial(), clientFixedNewstyle|clientNoZeroes)
	c2.opt(optStructuredReply, nil)
	c2.reply()
	c2.opt(optSetMetaContext, metaData("other", "base:allocation"))
	c2.replies()
	c2.goExport("disk")
	c2.req(0, cmdBlockStatus, 4, 0, 4096, nil)
	if e := c2.errorChunk(4); e != errInval {
		t.Fatalf("BLOCK_STATUS with another export's context: errno %d", e)
	}
}

type desc struct{ n, flags uint32 }

func (c *client) blockStatus(cookie uint64, flags uint16, off uint64, n uint32) []desc {
	c.t.Helper()
	c.req(flags, cmdBlockStatus, cookie, off, n, nil)
	ch := c.chunk()
	if ch.typ != replyTypeBlockStatus || ch.flags&replyFlagDone == 0 || ch.cookie != cookie {
		c.t.Fatalf("block status reply %+v", ch)
	}
	if be32(ch.payload) != metaContextID || len(ch.payload)%8 != 4 || len(ch.payload) < 12 {
		c.t.Fatalf("block status payload % x", ch.payload)
	}
	var out []desc
	for p := ch.payload[4:]; len(p) > 0; p = p[8:] {
		out = append(out, desc{be32(p), be32(p[4:])})
	}
	return out
}

func TestBlockStatus(t *testing.T) {
	dial, _ := startServer(t, map[string]*memDev{"disk": {data: testImage()}})
	c := setup(t, dial(), true)
	const hz = stateHole | stateZero
	got := c.blockStatus(1, 0, 0, 1<<20)
	want := []desc{{8192, 0}, {65536 - 8192, hz}, {8192, 0}, {1<<20 - 4096 - 73728, hz}, {4096, 0}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("block status %v, want %v", got, want)
	}
	// REQ_ONE: exactly one descriptor, never longer than asked.
	for _, tc := range []struct {
		off  uint64
		n    uint32
		want desc
	}{
		{0, 1 << 20, desc{8192, 0}},
		{0, 100, desc{100, 0}},
		{8192, 1<<20 - 8192, desc{65536 - 8192, hz}},
		{4097, 10000, desc{8192 - 4097, 0}},
	} {
		got := c.blockStatus(2, cmdFlagReqOne, tc.off, tc.n)
		if len(got) != 1 || got[0] != tc.want {
			t.Fatalf("REQ_ONE at %d+%d: %v, want %v", tc.off, tc.n, got, tc.want)
		}
	}
	c.req(0, cmdBlockStatus, 5, 1<<20-4096, 8192, nil)
	if e := c.errorChunk(5); e != errInval {
		t.Fatalf("block status past the end: errno %d", e)
	}
}

func TestReadStructuredAndOutOfRange(t *testing.T) {
	img := testImage()
	dial, logs := startServer(t, map[string]*memDev{"disk": {data: img}})
	c := setup(t, dial(), true)
	data, holes := c.structuredRead(1, 0, 1<<20)
	if !bytes.Equal(data, img) || holes != 2 {
		t.Fatalf("structured read: equal %v, %d holes", bytes.Equal(data, img), holes)
	}
	data, _ = c.structuredRead(2, 5000, 70000)
	if !bytes.Equal(data, img[5000:75000]) {
		t.Fatal("unaligned structured read")
	}
	for i, r := range []struct {
		off  uint64
		n    uint32
		want uint32
	}{
		{1<<20 - 512, 1024, errInval},
		{1 << 40, 512, errInval},
		{^uint64(0) - 100, 512, errInval}, // offset + length overflows
		{0, 32<<20 + 1, errOverflow},
		{0, 0, errInval},
	} {
		cookie := uint64(10 + i)
		c.req(0, cmdRead, cookie, r.off, r.n, nil)
		if e := c.errorChunk(cookie); e != r.want {
			t.Fatalf("read %d+%d: errno %d, want %d", r.off, r.n, e, r.want)
		}
	}
	c.req(0, cmdFlush, 20, 0, 0, nil)
	if e, ck := c.simple(); e != 0 || ck != 20 {
		t.Fatalf("flush: %d %d", e, ck)
	}
	for i, typ := range []uint16{cmdTrim, cmdWriteZeroes, 42} {
		cookie := uint64(30 + i)
		c.req(0, typ, cookie, 0, 4096, nil)
		want := uint32(errPerm)
		if typ == 42 {
			want = errInval
		}
		if e := c.errorChunk(cookie); e != want {
			t.Fatalf("command %d: errno %d, want %d", typ, e, want)
		}
	}
	// Still serving.
	data, _ = c.structuredRead(40, 65536, 4096)
	if !bytes.Equal(data, img[65536:65536+4096]) {
		t.Fatal("read after errors")
	}
	if logs.String() != "" {
		t.Errorf("errors a client caused by asking are not server problems: %s", logs)
	}
}

func TestSimpleReadErrors(t *testing.T) {
	dial, _ := startServer(t, map[string]*memDev{"disk": {data: testImage()}})
	c := setup(t, dial(), false)
	c.req(0, cmdRead, 1, 1<<20-512, 1024, nil)
	if e, ck := c.simple(); e != errInval || ck != 1 {
		t.Fatalf("out-of-range simple read: errno %d cookie %d", e, ck)
	}
	// No payload followed the error: the next reply is in step.
	c.req(0, cmdBlockStatus, 2, 0, 512, nil)
	if e, _ := c.simple(); e != errInval {
		t.Fatalf("block status without structured replies: errno %d", e)
	}
}

func TestWritePayloadConsumed(t *testing.T) {
	img := testImage()
	dial, _ := startServer(t, map[string]*memDev{"disk": {data: img}})
	for _, structured := range []bool{false, true} {
		c := setup(t, dial(), structured)
		// A payload that looks like request headers must not be parsed.
		var payload []byte
		for range 100 {
			payload = append(payload, 0x25, 0x60, 0x95, 0x13, 0, 0, 0, 2)
		}
		c.req(0, cmdWrite, 1, 0, uint32(len(payload)), payload)
		c.req(cmdFlagFUA, cmdWrite, 2, 1<<19, 4096, make([]byte, 4096))
		for _, ck := range []uint64{1, 2} {
			var e uint32
			if structured {
				e = c.errorChunk(ck)
			} else {
				var got uint64
				e, got = c.simple()
				if got != ck {
					t.Fatalf("cookie %d, want %d", got, ck)
				}
			}
			if e != errPerm {
				t.Fatalf("write: errno %d, want EPERM", e)
			}
		}
		var got []byte
		if structured {
			got, _ = c.structuredRead(3, 0, 4096)
		} else {
			c.req(0, cmdRead, 3, 0, 4096, nil)
			c.simple()
			got = c.readN(4096)
		}
		if !bytes.Equal(got, img[:4096]) {
			t.Fatal("read after a refused write: wrong bytes (the image must not change)")
		}
	}
}

func TestConcurrentOutOfOrder(t *testing.T) {
	img := testImage()
	release := make(chan struct{})
	held := make(chan struct{})
	dev := &memDev{data: img, gate: func(off int64) {
		if off == 0 {
			close(held)
			<-release
		}
	}}
	dial, _ := startServer(t, map[string]*memDev{"disk": dev})
	c := setup(t, dial(), true)
	c.req(0, cmdRead, 100, 0, 4096, nil) // blocks in the device
	<-held
	c.req(0, cmdRead, 200, 65536, 4096, nil)
	c.req(0, cmdBlockStatus, 300, 0, 4096, nil)
	// Both later requests are answered while the first is still held.
	seen := map[uint64]bool{}
	for range 2 {
		ch := c.chunk()
		seen[ch.cookie] = true
		if ch.flags&replyFlagDone == 0 {
			t.Fatalf("expected single-chunk replies, got %+v", ch)
		}
	}
	if !seen[200] || !seen[300] {
		t.Fatalf("replies %v before the held read", seen)
	}
	// A second connection is not held up by the first either.
	c2 := setup(t, dial(), true)
	if d, _ := c2.structuredRead(0, 65536, 4096); !bytes.Equal(d, img[65536:65536+4096]) {
		t.Fatal("second connection")
	}
	close(release)
	if d, _ := c.structuredReply(100, 0, 4096); !bytes.Equal(d, img[:4096]) {
		t.Fatal("held read")
	}
	c.req(0, cmdDisc, 0, 0, 0, nil)
	if _, err := io.ReadFull(c.c, make([]byte, 1)); err != io.EOF {
		t.Fatalf("after DISC: %v", err)
	}
}

func TestGarbageDisconnectsOnlyThatClient(t *testing.T) {
	img := testImage()
	dial, logs := startServer(t, map[string]*memDev{"disk": {data: img}})
	good := setup(t, dial(), true)
	bad := setup(t, dial(), true)
	bad.write([]byte("GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"))
	if _, err := io.ReadAll(bad.c); err != nil {
		t.Fatalf("garbage: %v", err)
	}
	// In the handshake too: bad client flags and a bad option magic.
	h := greet(t, dial(), 1<<7)
	if _, err := io.ReadFull(h.c, make([]byte, 1)); err != io.EOF {
		t.Fatalf("after unknown client flags: %v", err)
	}
	h = greet(t, dial(), clientFixedNewstyle)
	h.write(make([]byte, 16))
	if _, err := io.ReadFull(h.c, make([]byte, 1)); err != io.EOF {
		t.Fatalf("after a bad option magic: %v", err)
	}
	if d, _ := good.structuredRead(1, 0, 4096); !bytes.Equal(d, img[:4096]) {
		t.Fatal("the good client was affected")
	}
	for _, want := range []string{"bad request magic", "unknown client flags", "bad option magic"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log %q does not mention %q", logs, want)
		}
	}
}

func TestLogEscapesNames(t *testing.T) {
	dial, logs := startServer(t, map[string]*memDev{"disk": {data: testImage()}})
	c := greet(t, dial(), clientFixedNewstyle)
	c.opt(optExportName, []byte("evil\x1b[2J\n"))
	io.ReadAll(c.c)
	l := logs.String()
	if strings.ContainsAny(l, "\x1b\n") || !strings.Contains(l, `\x1b[2J\n`) {
		t.Fatalf("log not escaped: %q", l)
	}
}

func TestMaxConns(t *testing.T) {
	d := &memDev{data: testImage()}
	logs := &logBuf{}
	srv := &Server{MaxConns: 1, Logf: logs.logf, Exports: []Export{{Name: "disk", Size: int64(len(d.data)), Open: func() (Device, error) { return d, nil }}}}
	a1, a2 := net.Pipe()
	b1, b2 := net.Pipe()
	done := make(chan struct{})
	go func() { srv.ServeConn(context.Background(), a2); close(done) }()
	c := greet(t, a1, clientFixedNewstyle)  // the first is being served
	srv.ServeConn(context.Background(), b2) // the second is refused at once
	if _, err := b1.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("second connection: %v", err)
	}
	c.opt(optAbort, nil)
	c.reply()
	<-done
	if !strings.Contains(logs.String(), "refused") {
		t.Fatalf("log %q", logs)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	d := &memDev{data: testImage()}
	logs := &logBuf{}
	srv := &Server{HandshakeTimeout: 1, Logf: logs.logf, Exports: []Export{{Name: "disk", Size: int64(len(d.data)), Open: func() (Device, error) { return d, nil }}}}
	a, b := net.Pipe()
	defer a.Close()
	go srv.ServeConn(context.Background(), b)
	// A client that never finishes the handshake is dropped, whenever
	// the deadline strikes (even before the greeting is read).
	io.ReadAll(a)
}

func TestLookup(t *testing.T) {
	srv := &Server{Exports: []Export{{Name: "web", ID: "abcd01"}, {Name: "web-alias", ID: "abcd01"}, {Name: "db", ID: "abce02"}, {Name: "abcd", ID: "ffff03"}}}
	for _, tc := range []struct{ name, want string }{
		{"web", "web"}, {"abcd01", "web"}, {"abcd0", "web"}, // a prefix of one ID named twice
		{"abc", ""},      // ambiguous
		{"abcd", "abcd"}, // a name wins over a prefix
		{"abce", "db"}, {"", ""}, {"zz", ""},
		{"ff", ""}, {"fff", ""}, {"ffff", "abcd"}, // a prefix needs 4 digits
	} {
		e, ok := srv.lookup(tc.name)
		got := ""
		if ok {
			got = e.Name
		}
		if got != tc.want {
			t.Errorf("lookup(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
}
