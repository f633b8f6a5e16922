package qcow2

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// fileRuns calls fn for the data and hole runs of f in [start, end), found
// with SEEK_DATA/SEEK_HOLE. Where the file system cannot tell, everything
// is data.
func fileRuns(f *os.File, start, end int64, fn func(s, e int64, data bool)) error {
	fd := int(f.Fd())
	pos := start
	for pos < end {
		d, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			d = end // only a hole from pos to EOF
		} else if err != nil {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				fn(pos, end, true)
				return nil
			}
			return err
		}
		if d > pos {
			d = min(d, end)
			fn(pos, d, false)
			pos = d
			continue
		}
		h, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				h = end
			} else {
				return err
			}
		}
		if h <= pos { // cannot happen; never loop forever
			h = end
		}
		h = min(h, end)
		fn(pos, h, true)
		pos = h
	}
	return nil
}

// rawExtents maps [off, end) of a raw layer: data runs are data, holes read
// as zero. Like qemu-img map, every byte of a raw file is "present".
func (im *Image) rawExtents(off, end int64, out []Extent) ([]Extent, error) {
	err := fileRuns(im.f, off, end, func(s, e int64, data bool) {
		x := Extent{Start: s, Length: e - s, Present: true, Data: data, Zero: !data, Offset: -1}
		if data {
			x.Offset = s
		}
		out = appendExtent(out, x)
	})
	if err != nil {
		return nil, newErr(im.path, err, "mapping holes: %v", err)
	}
	return out, nil
}
