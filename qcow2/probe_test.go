package qcow2

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// probeCase is a file holding the bytes one of QEMU's probers checks.
type probeCase struct {
	name, file string
	bytes      func() []byte
	want       string // format named in the refusal; "" = read as raw
	// qemuRaw: what QEMU 7.2 makes of the same bytes (qemu-img info says
	// "file format: raw"). The koly trailer under another name is the one
	// deliberate difference: QEMU probes dmg by the name alone.
	qemuRaw bool
}

func probeCases() []probeCase {
	sector := func(n int) []byte { return make([]byte, n) }
	bochs := func(subtype string, version uint32) func() []byte {
		return func() []byte {
			b := sector(4096)
			copy(b, "Bochs Virtual HD Image")
			copy(b[32:], "Redolog")
			copy(b[48:], subtype)
			binary.LittleEndian.PutUint32(b[64:], version)
			return b
		}
	}
	koly := func(size int, at int) func() []byte {
		return func() []byte {
			b := sector(size)
			copy(b[at:], "koly")
			be.PutUint32(b[at+4:], 4)
			be.PutUint32(b[at+8:], 512)
			return b
		}
	}
	qcow1 := func() []byte {
		b := sector(4096)
		be.PutUint32(b, Magic)
		be.PutUint32(b[4:], 1)
		return b
	}
	return []probeCase{
		{"bochs-v2", "disk.img", bochs("Growing", 0x20000), "bochs", false},
		{"bochs-v1", "disk.img", bochs("Growing", 0x10000), "bochs", false},
		{"bochs-other-subtype", "disk.img", bochs("Growinx", 0x10000), "", true},
		{"cloop", "disk.img", func() []byte {
			return append([]byte("#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"), sector(4096)...)
		}, "cloop", false},
		{"cloop-prefix-only", "disk.img", func() []byte { return []byte("#!/bin/sh\n#V2.0 Format\n") }, "", true},
		{"dmg-trailer", "disk.img", koly(8192, 8192-512), "dmg", true},
		{"dmg-trailer-odd-size", "disk.img", koly(8000, 8000-512), "dmg", true},
		{"dmg-name", "disk.dmg", func() []byte { return sector(8192) }, "dmg", false},
		{"koly-not-a-trailer", "disk.img", func() []byte { b := sector(8192); copy(b[8192-512:], "koly"); return b }, "", true},
		{"qcow-v1", "disk.img", qcow1, "qcow (the legacy version 1 format", false},
		{"qcow-v1-named-qcow2", "disk.qcow2", qcow1, "qcow (the legacy version 1 format", false},
		{"vmdk3", "disk.img", func() []byte { return append([]byte("COWD"), sector(4096)...) }, "vmdk", false},
		{"vmdk-descriptor", "disk.img", func() []byte {
			return append([]byte("# comment\n  \r\nversion=1\ncreateType=\"monolithicFlat\"\n"), sector(512)...)
		}, "vmdk", false},
		{"vpc", "disk.img", func() []byte { return append([]byte("conectix"), sector(4096)...) }, "vpc", false},
	}
}

// Every format QEMU probes is refused by name, from the bytes its prober
// checks; bytes no prober claims are read as raw. qemu-img judges which
// of these QEMU itself would read as raw.
func TestProbeRefusesByName(t *testing.T) {
	qemutest.Require(t)
	for _, c := range probeCases() {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), c.file)
			if err := os.WriteFile(p, c.bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			out, qerr := qemutest.Try("qemu-img", "info", p)
			if gotRaw := qerr == nil && strings.Contains(out, "file format: raw"); gotRaw != c.qemuRaw {
				t.Errorf("qemu-img info: raw=%v, the case expects %v: %s %v", gotRaw, c.qemuRaw, out, qerr)
			}
			im, err := Open(p, Options{})
			if c.want == "" {
				if err != nil {
					t.Fatalf("Open: %v, want raw", err)
				}
				defer im.Close()
				if im.Format() != "raw" {
					t.Fatalf("format %s, want raw", im.Format())
				}
				return
			}
			if err == nil {
				im.Close()
				t.Fatalf("Open read it as %s, want %s refused", im.Format(), c.want)
			}
			if !errors.Is(err, ErrUnsupportedFormat) {
				t.Fatalf("error %v, want ErrUnsupportedFormat", err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, p+": "+c.want) {
				t.Fatalf("message %q does not start with %q", msg, p+": "+c.want)
			}
			// --format raw is the user's way to archive the container bytes.
			im, err = Open(p, Options{Format: "raw"})
			if err != nil {
				t.Fatalf("Open as raw: %v", err)
			}
			im.Close()
		})
	}
}
