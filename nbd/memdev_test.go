package nbd

import (
	"bytes"
	"io"
	"sync"
)

// memDev is an in-memory Device: a 4 KiB block that is all zeros is a
// hole. gate, if set, is called before every ReadAt (tests use it to hold
// one request while others complete).
type memDev struct {
	data []byte
	gate func(off int64)

	mu     sync.Mutex
	closed int
}

func (d *memDev) ReadAt(p []byte, off int64) (int, error) {
	if d.gate != nil {
		d.gate(off)
	}
	if off >= int64(len(d.data)) {
		return 0, io.EOF
	}
	n := copy(p, d.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

var zeroBlock [4096]byte

func (d *memDev) Extents(off, length int64, fn func(off, length int64, data bool) error) error {
	end := min(off+length, int64(len(d.data)))
	for b := off &^ 4095; b < end; b += 4096 {
		be := min(b+4096, int64(len(d.data)))
		data := !bytes.Equal(d.data[b:be], zeroBlock[:be-b])
		s := max(b, off)
		if err := fn(s, min(be, end)-s, data); err != nil {
			return err
		}
	}
	return nil
}

func (d *memDev) Close() error {
	d.mu.Lock()
	d.closed++
	d.mu.Unlock()
	return nil
}
