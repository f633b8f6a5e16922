package qcow2

import (
	"encoding/binary"
	"os"
	"syscall"

	"github.com/zeebo/blake3"
)

// Fingerprint identifies the guest view of this image and its whole
// backing chain, cheaply: for each layer, the file's identity and change
// times (device, inode, size, mtime, ctime; also of an external data file)
// and the BLAKE3 of its metadata (the header cluster and the L1 table; the
// first 64 KiB of a raw file). Any write through QEMU changes mtime and
// ctime, and ctime cannot be set back by users, so a changed layer is never
// mistaken for the old one. Equal fingerprints mean the same guest content.
func (im *Image) Fingerprint() ([32]byte, error) {
	h := blake3.New()
	for l := im; l != nil; l = l.backing {
		if err := l.fingerprintLayer(h); err != nil {
			return [32]byte{}, err
		}
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out, nil
}

func (im *Image) fingerprintLayer(h *blake3.Hasher) error {
	var b [8]byte
	put := func(v uint64) { binary.LittleEndian.PutUint64(b[:], v); h.Write(b[:]) }
	stat := func(f *os.File) error {
		fi, err := f.Stat()
		if err != nil {
			return newErr(im.path, err, "stat: %v", err)
		}
		put(uint64(fi.Size()))
		put(uint64(fi.ModTime().UnixNano()))
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			put(uint64(st.Dev))
			put(st.Ino)
			put(uint64(st.Ctim.Sec)*1e9 + uint64(st.Ctim.Nsec))
		}
		return nil
	}
	h.Write([]byte(im.format))
	put(uint64(im.size))
	if err := stat(im.f); err != nil {
		return err
	}
	head := 64 << 10
	if im.q != nil {
		head = int(im.q.clusterSize)
		if im.q.external {
			if err := stat(im.q.data); err != nil {
				return err
			}
		}
		for _, e := range im.q.l1 {
			put(e)
		}
	}
	buf := make([]byte, head)
	n, _ := im.f.ReadAt(buf, 0)
	h.Write(buf[:n])
	return nil
}
