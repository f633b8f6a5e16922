package qcow2

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Format probing, after QEMU's block/*.c probe functions: every format QEMU
// recognises by its content is either read (qcow2) or refused by name, so
// a container is never archived as if it were a raw disk. Raw is what is
// left when no prober claims the file.

// probeBufSize is QEMU's BLOCK_PROBE_BUF_SIZE: probers see the first 2 KiB,
// zero-padded past the end of a short file.
const probeBufSize = 2048

// Magics and fields the probers check.
var (
	bochsMagic     = []byte("Bochs Virtual HD Image") // NUL-terminated in a 32-byte field
	bochsRedolog   = []byte("Redolog")                // type, 16-byte field at 32
	bochsGrowing   = []byte("Growing")                // subtype, 16-byte field at 48
	cloopMagic     = []byte("#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n")
	dmgTrailer     = []byte("koly") // UDIF trailer, the file's last 512 bytes
	vmdkDescHeader = []byte("# Disk DescriptorFile")
)

const (
	bochsVersion1 = 0x00010000
	bochsVersion2 = 0x00020000
	qcowVersion1  = 1          // the legacy "qcow" format shares qcow2's magic
	vdiSignature  = 0xbeda107f // little-endian at 0x40
	dmgTrailerLen = 512
)

// detect guesses the format of f from its content (and, for dmg, its
// name, as QEMU does). Known formats other than qcow2 are refused with
// ErrUnsupportedFormat naming them; a file no prober claims is raw.
func detect(path string, f *os.File, fileSize int64, warn func(string)) (string, error) {
	var b [probeBufSize]byte
	n, err := f.ReadAt(b[:], 0)
	if err != nil && err != io.EOF {
		return "", ioErr(path, err, "magic")
	}
	name := probeContent(b[:])
	if name == "" {
		if name, err = probeDMG(path, f, fileSize); err != nil {
			return "", err
		}
	}
	switch name {
	case "qcow2":
		return "qcow2", nil
	case "":
	default:
		return "", newErr(path, ErrUnsupportedFormat, "%s image; only qcow2 and raw are read (convert it with qemu-img convert -O qcow2)", name)
	}
	if strings.EqualFold(filepath.Ext(path), ".qcow2") {
		m := b[:min(n, 4)]
		return "", badMagic(path, m)
	}
	if warn != nil {
		warn(path + ": no known format magic, reading as raw (use --format raw to silence)")
	}
	return "raw", nil
}

// probeContent names the format the first probeBufSize bytes of a file
// (zero-padded) belong to, or "" when none claims them. Where QEMU's
// prober is stricter than a magic (parallels and luks check a version,
// a vmdk descriptor needs its version line), a file with the magic is
// still named: refusing it is safer than archiving a container as raw.
func probeContent(b []byte) string {
	le := binary.LittleEndian
	switch {
	case be.Uint32(b) == Magic:
		if be.Uint32(b[offVersion:]) == qcowVersion1 {
			return "qcow (the legacy version 1 format, not qcow2)"
		}
		return "qcow2" // parseHeader refuses versions other than 2 and 3
	case bytes.HasPrefix(b, []byte("KDMV")), bytes.HasPrefix(b, []byte("COWD")),
		bytes.HasPrefix(b, vmdkDescHeader), vmdkDescriptor(b):
		return "vmdk"
	case bytes.HasPrefix(b, []byte("vhdxfile")):
		return "vhdx"
	case le.Uint32(b[0x40:]) == vdiSignature:
		return "vdi"
	case bytes.HasPrefix(b, []byte("QED\x00")):
		return "qed"
	case bytes.HasPrefix(b, []byte("LUKS\xba\xbe")):
		return "luks"
	case bytes.HasPrefix(b, []byte("conectix")):
		return "vpc (vhd)"
	case bytes.HasPrefix(b, []byte("WithoutFreeSpace")), bytes.HasPrefix(b, []byte("WithouFreSpacExt")):
		return "parallels"
	case cString(b[0:32], bochsMagic) && cString(b[32:48], bochsRedolog) && cString(b[48:64], bochsGrowing) &&
		(le.Uint32(b[64:]) == bochsVersion1 || le.Uint32(b[64:]) == bochsVersion2):
		return "bochs"
	case bytes.HasPrefix(b, cloopMagic):
		return "cloop"
	}
	return ""
}

// cString reports whether the fixed-size field holds s followed by a NUL,
// which is what QEMU's strcmp on the field tests.
func cString(field, s []byte) bool {
	return len(field) > len(s) && bytes.HasPrefix(field, s) && field[len(s)] == 0
}

// vmdkDescriptor is QEMU's text probe for a VMDK descriptor file: comment
// lines and blank lines, then "version=1", "=2" or "=3".
func vmdkDescriptor(b []byte) bool {
	p := b
	for len(p) > 0 {
		switch p[0] {
		case '#':
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				return false
			}
			p = p[i+1:]
			continue
		case ' ':
			p = bytes.TrimLeft(p, " ")
			p = bytes.TrimPrefix(p, []byte("\r"))
			if len(p) == 0 || p[0] != '\n' {
				return false
			}
			p = p[1:]
			continue
		}
		for _, v := range []string{"1", "2", "3"} {
			if bytes.HasPrefix(p, []byte("version="+v+"\n")) || bytes.HasPrefix(p, []byte("version="+v+"\r\n")) {
				return true
			}
		}
		return false
	}
	return false
}

// probeDMG names a dmg (UDIF) image: QEMU probes it by the ".dmg" name
// alone; we also recognise its "koly" trailer (a 512-byte header size
// field after the magic), wherever the file is called. The trailer is
// searched where QEMU's dmg driver looks for it: the 515 bytes ending 508
// bytes before the end, which tolerates sizes that are not whole sectors.
func probeDMG(path string, f *os.File, fileSize int64) (string, error) {
	if len(path) > 4 && strings.HasSuffix(path, ".dmg") {
		return "dmg", nil
	}
	if fileSize < dmgTrailerLen {
		return "", nil
	}
	start := max(0, fileSize-dmgTrailerLen-511)
	var b [dmgTrailerLen + 511]byte
	n, err := f.ReadAt(b[:min(int64(len(b)), fileSize-start)], start)
	if err != nil && err != io.EOF {
		return "", ioErr(path, err, "dmg trailer")
	}
	w := b[:n]
	window := w[:min(len(w), 515)]
	for i := 0; i+len(dmgTrailer) <= len(window); i++ {
		if bytes.HasPrefix(window[i:], dmgTrailer) && i+12 <= len(w) && be.Uint32(w[i+8:]) == dmgTrailerLen {
			return "dmg", nil
		}
	}
	return "", nil
}

// badMagic is the ErrNotQcow2 of a file that does not start with the qcow2
// magic; m is what it starts with (up to 4 bytes). An empty or tiny file is
// named as such: "magic , want 514649fb" says nothing to a user.
func badMagic(path string, m []byte) error {
	switch len(m) {
	case 0:
		return newErr(path, ErrNotQcow2, "not a qcow2 image: the file is empty")
	case 1:
		return newErr(path, ErrNotQcow2, "not a qcow2 image: the file is 1 byte, too short to be qcow2")
	case 2, 3:
		return newErr(path, ErrNotQcow2, "not a qcow2 image: the file is %d bytes, too short to be qcow2", len(m))
	}
	return newErr(path, ErrNotQcow2, "not a qcow2 image: magic %x, want %x", m, be.AppendUint32(nil, Magic))
}
