package nbd

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// handshake runs fixed newstyle negotiation until the client picks an
// export (OPT_GO or OPT_EXPORT_NAME), whose device is then open.
func (c *conn) handshake() (*Export, Device, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], nbdMagic)
	binary.BigEndian.PutUint64(hello[8:], optMagic)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	c.w.Write(hello[:])
	if err := c.flushW(); err != nil {
		return nil, nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.r, cf[:]); err != nil {
		return nil, nil, err
	}
	flags := be32(cf[:])
	if flags&^(clientFixedNewstyle|clientNoZeroes) != 0 {
		return nil, nil, protof("unknown client flags %#x", flags)
	}
	c.noZeroes = flags&clientNoZeroes != 0
	for {
		var h [16]byte
		if _, err := io.ReadFull(c.r, h[:]); err != nil {
			return nil, nil, err
		}
		if m := be64(h[0:]); m != optMagic {
			return nil, nil, protof("bad option magic %#x", m)
		}
		opt, n := be32(h[8:]), be32(h[12:])
		if n > maxOptionLen {
			// Nothing we understand is this long; read past it (never
			// buffered) and say so, the option framing is intact.
			if err := c.discard(int64(n)); err != nil {
				return nil, nil, err
			}
			if err := c.optReply(opt, repErrTooBig, []byte("option data too long")); err != nil {
				return nil, nil, err
			}
			continue
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.r, data); err != nil {
			return nil, nil, noEOF(err)
		}
		if c.isStopped() {
			if opt == optAbort {
				c.optReply(opt, repAck, nil)
				return nil, nil, errAbort
			}
			if err := c.optReply(opt, repErrShutdown, []byte("server shutting down")); err != nil {
				return nil, nil, err
			}
			continue
		}
		exp, dev, err := c.option(opt, data)
		if err != nil || exp != nil {
			return exp, dev, err
		}
	}
}

// noEOF turns an EOF inside a message into ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// option answers one option; a non-nil export ends the handshake.
func (c *conn) option(opt uint32, data []byte) (*Export, Device, error) {
	switch opt {
	case optExportName:
		return c.exportName(data)
	case optAbort:
		// The client may hang up without reading the ACK; ignore errors.
		c.optReply(opt, repAck, nil)
		return nil, nil, errAbort
	case optList:
		if len(data) != 0 {
			return nil, nil, c.optReply(opt, repErrInvalid, []byte("OPT_LIST takes no data"))
		}
		return nil, nil, c.list()
	case optStructuredReply:
		if len(data) != 0 {
			return nil, nil, c.optReply(opt, repErrInvalid, []byte("OPT_STRUCTURED_REPLY takes no data"))
		}
		if c.structured {
			return nil, nil, c.optReply(opt, repErrInvalid, []byte("structured replies already negotiated"))
		}
		c.structured = true
		return nil, nil, c.optReply(opt, repAck, nil)
	case optInfo, optGo:
		return c.infoGo(opt, data)
	case optListMetaContext, optSetMetaContext:
		return nil, nil, c.metaContext(opt, data)
	default:
		// Unknown, or known and not offered (STARTTLS, EXTENDED_HEADERS):
		// the data was consumed, so the client can carry on.
		return nil, nil, c.optReply(opt, repErrUnsup, nil)
	}
}

func (c *conn) optReply(opt, typ uint32, data []byte) error {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], repMagic)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	c.w.Write(h[:])
	c.w.Write(data)
	return c.flushW()
}

// optReplyNoFlush queues a reply that more replies follow.
func (c *conn) optReplyNoFlush(opt, typ uint32, data []byte) {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], repMagic)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	c.w.Write(h[:])
	c.w.Write(data)
}

func (c *conn) exportName(data []byte) (*Export, Device, error) {
	name := string(data)
	if len(data) > maxString {
		return nil, nil, protof("OPT_EXPORT_NAME: name of %d bytes", len(data))
	}
	exp, ok := c.srv.lookup(name)
	if !ok {
		// No way to report an error here: the spec says terminate.
		return nil, nil, protof("OPT_EXPORT_NAME: no export %q", name)
	}
	dev, err := exp.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("export %q: %w", exp.Name, err)
	}
	b := make([]byte, 10, 10+124)
	binary.BigEndian.PutUint64(b[0:], uint64(exp.Size))
	binary.BigEndian.PutUint16(b[8:], transmissionFlags)
	if !c.noZeroes {
		b = b[:10+124]
	}
	c.w.Write(b)
	if err := c.flushW(); err != nil {
		dev.Close()
		return nil, nil, err
	}
	c.checkMetaExport(exp)
	return exp, dev, nil
}

// checkMetaExport drops a metadata context set for another export: block
// status then answers EINVAL, as for a client that set none.
func (c *conn) checkMetaExport(exp *Export) {
	if !c.metaSet {
		return
	}
	if e, ok := c.srv.lookup(c.metaExport); !ok || (e != exp && (e.ID == "" || e.ID != exp.ID)) {
		c.metaSet = false
	}
}

func (c *conn) list() error {
	seen := map[string]bool{}
	for i := range c.srv.Exports {
		e := &c.srv.Exports[i]
		for _, n := range []string{e.Name, e.ID} {
			if n == "" || seen[n] {
				continue
			}
			seen[n] = true
			desc := e.Description
			if len(desc) > maxString {
				desc = desc[:maxString]
			}
			b := make([]byte, 4, 4+len(n)+len(desc))
			binary.BigEndian.PutUint32(b, uint32(len(n)))
			b = append(append(b, n...), desc...)
			c.optReplyNoFlush(optList, repServer, b)
		}
	}
	return c.optReply(optList, repAck, nil)
}

// parseName reads a 32-bit length and a string from the front of data.
func parseName(data []byte) (name string, rest []byte, ok bool) {
	if len(data) < 4 {
		return "", nil, false
	}
	n := be32(data)
	if n > maxString || uint64(n) > uint64(len(data)-4) {
		return "", nil, false
	}
	return string(data[4 : 4+n]), data[4+n:], true
}

func (c *conn) infoGo(opt uint32, data []byte) (*Export, Device, error) {
	name, rest, ok := parseName(data)
	if !ok || len(rest) < 2 {
		return nil, nil, c.optReply(opt, repErrInvalid, []byte("malformed name"))
	}
	nreq := int(be16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		return nil, nil, c.optReply(opt, repErrInvalid, []byte("information request count does not match the data"))
	}
	var wantName, wantDesc bool
	for i := 0; i < nreq; i++ {
		switch be16(rest[2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}
	exp, found := c.srv.lookup(name)
	if !found {
		return nil, nil, c.optReply(opt, repErrUnknown, []byte(fmt.Sprintf("no export %q (OPT_LIST shows them)", clip(name))))
	}
	var dev Device
	if opt == optGo {
		var err error
		if dev, err = exp.Open(); err != nil {
			c.srv.logf("nbd: %s: export %q: %v", c.peer, exp.Name, err)
			return nil, nil, c.optReply(opt, repErrUnknown, []byte(clip("cannot open export: "+err.Error())))
		}
	}
	var b [14]byte
	binary.BigEndian.PutUint16(b[0:], infoExport)
	binary.BigEndian.PutUint64(b[2:], uint64(exp.Size))
	binary.BigEndian.PutUint16(b[10:], transmissionFlags)
	c.optReplyNoFlush(opt, repInfo, b[:12])
	// Sent whether asked or not: they are the defaults, so a client that
	// ignores them still obeys them.
	binary.BigEndian.PutUint16(b[0:], infoBlockSize)
	binary.BigEndian.PutUint32(b[2:], MinBlock)
	binary.BigEndian.PutUint32(b[6:], PreferredBlock)
	binary.BigEndian.PutUint32(b[10:], MaxPayload)
	c.optReplyNoFlush(opt, repInfo, b[:14])
	if wantName {
		// The name asked for when it is a full one (so a listing by ID
		// shows the ID), the canonical name for a prefix or "".
		canon := exp.Name
		if name == exp.ID && name != "" {
			canon = name
		}
		c.optReplyNoFlush(opt, repInfo, append([]byte{0, infoName}, canon...))
	}
	if wantDesc && exp.Description != "" {
		c.optReplyNoFlush(opt, repInfo, append([]byte{0, infoDescription}, clip(exp.Description)...))
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		if dev != nil {
			dev.Close()
		}
		return nil, nil, err
	}
	if opt == optInfo {
		return nil, nil, nil
	}
	c.checkMetaExport(exp)
	return exp, dev, nil
}

// clip bounds a string we send to the spec's 4096 bytes.
func clip(s string) string {
	if len(s) > maxString {
		return s[:maxString]
	}
	return s
}

// metaContext answers LIST and SET: base:allocation is the one context.
func (c *conn) metaContext(opt uint32, data []byte) error {
	if opt == optSetMetaContext {
		c.metaSet = false // replaced even when this fails
	}
	if !c.structured {
		return c.optReply(opt, repErrInvalid, []byte("negotiate structured replies first"))
	}
	name, rest, ok := parseName(data)
	if !ok || len(rest) < 4 {
		return c.optReply(opt, repErrInvalid, []byte("malformed request"))
	}
	nq := be32(rest)
	rest = rest[4:]
	if nq > maxQueries {
		return c.optReply(opt, repErrTooBig, []byte("too many queries"))
	}
	var queries []string
	for i := uint32(0); i < nq; i++ {
		var q string
		if q, rest, ok = parseName(rest); !ok {
			return c.optReply(opt, repErrInvalid, []byte("malformed query"))
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		return c.optReply(opt, repErrInvalid, []byte("trailing data after the queries"))
	}
	if _, found := c.srv.lookup(name); !found {
		return c.optReply(opt, repErrUnknown, []byte(fmt.Sprintf("no export %q", clip(name))))
	}
	match := false
	if opt == optListMetaContext && nq == 0 {
		match = true
	}
	for _, q := range queries {
		switch {
		case q == baseAllocation:
			match = true
		case q == "base:" && opt == optListMetaContext:
			match = true // the namespace wildcard, LIST only
		case !strings.Contains(q, ":"):
			return c.optReply(opt, repErrInvalid, []byte("query without a namespace"))
		}
		// other namespaces and leaves are ignored, as the spec requires
	}
	if match {
		var id [4]byte
		if opt == optSetMetaContext {
			binary.BigEndian.PutUint32(id[:], metaContextID)
			c.metaSet, c.metaExport = true, name
		}
		c.optReplyNoFlush(opt, repMetaContext, append(id[:], baseAllocation...))
	}
	return c.optReply(opt, repAck, nil)
}
