package qcow2

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// patch applies fn to the bytes of file p.
func patch(t *testing.T, p string, fn func(b []byte)) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	fn(b)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRefusals(t *testing.T) {
	qemutest.Require(t)
	type tc struct {
		name  string
		want  error
		opts  Options
		build func(t *testing.T, dir string) string
		also  string // extra text the message must contain
	}
	secret := []string{"--object", "secret,id=s0,data=x"}
	cases := []tc{
		{"not-qcow2-by-name", ErrNotQcow2, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "junk.qcow2")
			os.WriteFile(p, bytes.Repeat([]byte("junk"), 300), 0o644)
			return p
		}, "magic"},
		// An empty or tiny file is named as such, not as "magic , want ...".
		{"empty-by-name", ErrNotQcow2, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "empty.qcow2")
			os.WriteFile(p, nil, 0o644)
			return p
		}, "empty.qcow2: not a qcow2 image: the file is empty"},
		{"empty-by-option", ErrNotQcow2, Options{Format: "qcow2"}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "empty.img")
			os.WriteFile(p, nil, 0o644)
			return p
		}, "empty.img: not a qcow2 image: the file is empty"},
		{"tiny-by-name", ErrNotQcow2, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "tiny.qcow2")
			os.WriteFile(p, []byte("QF"), 0o644)
			return p
		}, "tiny.qcow2: not a qcow2 image: the file is 2 bytes, too short to be qcow2"},
		{"not-qcow2-by-option", ErrNotQcow2, Options{Format: "qcow2"}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "disk.img")
			qemutest.Create(t, "raw", p, "1M")
			return p
		}, "magic"},
		{"vmdk", ErrUnsupportedFormat, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "d.vmdk")
			qemutest.Create(t, "vmdk", p, "1M")
			return p
		}, "vmdk"},
		{"vmdk-as-backing", ErrUnsupportedFormat, Options{}, func(t *testing.T, dir string) string {
			qemutest.Create(t, "vmdk", filepath.Join(dir, "d.vmdk"), "1M")
			p := filepath.Join(dir, "o.qcow2")
			qemutest.Create(t, "qcow2", p, "1M", "backing_file=d.vmdk", "backing_fmt=vmdk")
			return p
		}, "vmdk"},
		{"vhdx", ErrUnsupportedFormat, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "d.vhdx")
			qemutest.Create(t, "vhdx", p, "1M")
			return p
		}, "vhdx"},
		{"vdi", ErrUnsupportedFormat, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "d.vdi")
			qemutest.Create(t, "vdi", p, "1M")
			return p
		}, "vdi"},
		{"qed", ErrUnsupportedFormat, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "d.qed")
			qemutest.Create(t, "qed", p, "1M")
			return p
		}, "qed"},
		{"qcow", ErrUnsupportedFormat, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "d.qcow")
			qemutest.Create(t, "qcow", p, "1M")
			return p
		}, "qcow (the legacy version 1 format"},
		{"qcow-as-qcow2-backing", ErrUnsupportedFormat, Options{}, func(t *testing.T, dir string) string {
			qemutest.Create(t, "qcow", filepath.Join(dir, "d.qcow"), "1M")
			p := filepath.Join(dir, "o.qcow2")
			qemutest.Create(t, "qcow2", p, "1M", "backing_file=d.qcow", "backing_fmt=qcow")
			qemutest.Img(t, "rebase", "-u", "-f", "qcow2", "-b", "d.qcow", "-F", "qcow2", p)
			return p
		}, "qcow (the legacy version 1 format"},
		{"vpc", ErrUnsupportedFormat, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "d.vhd")
			qemutest.Create(t, "vpc", p, "1M")
			return p
		}, "vpc"},
		{"parallels", ErrUnsupportedFormat, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "d.hds")
			qemutest.Create(t, "parallels", p, "1M")
			return p
		}, "parallels"},
		{"luks", ErrUnsupportedFormat, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "d.luks")
			if !createEncrypted(append(append([]string{"create", "-q", "-f", "luks"}, secret...), "-o", "key-secret=s0", p, "1M")) {
				os.WriteFile(p, append([]byte("LUKS\xba\xbe\x00\x01"), make([]byte, 4096)...), 0o644)
			}
			return p
		}, "luks"},
		{"encrypted", ErrEncrypted, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "enc.qcow2")
			if !createEncrypted(append(append([]string{"create", "-q", "-f", "qcow2"}, secret...), "-o", "encrypt.format=luks,encrypt.key-secret=s0", p, "1M")) {
				qemutest.Create(t, "qcow2", p, "1M")
				patch(t, p, func(b []byte) { be.PutUint32(b[offCryptMethod:], cryptLUKS) })
			}
			return p
		}, "LUKS"},
		{"corrupt-bit-refused", ErrCorruptBit, Options{RefuseCorrupt: true}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "c.qcow2")
			qemutest.Create(t, "qcow2", p, "1M")
			patch(t, p, func(b []byte) { b[offIncompatibleFeatures+7] |= IncompatCorrupt })
			return p
		}, "corrupt"},
		{"unknown-feature", ErrUnknownFeature, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "u.qcow2")
			qemutest.Create(t, "qcow2", p, "1M")
			patch(t, p, func(b []byte) {
				b[offIncompatibleFeatures+6] |= 0x04 // bit 10
				// Rename the table's "dirty bit" entry to describe bit 10.
				i := bytes.Index(b, []byte("dirty bit"))
				if i < 2 || b[i-2] != 0 || b[i-1] != 0 {
					t.Fatalf("feature name table not found")
				}
				b[i-1] = 10
			})
			return p
		}, "bit 10 (dirty bit)"},
		{"backing-loop", ErrBackingLoop, Options{}, func(t *testing.T, dir string) string {
			a, b := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
			qemutest.Create(t, "qcow2", b, "1M")
			qemutest.Create(t, "qcow2", a, "1M", "backing_file=b.qcow2", "backing_fmt=qcow2")
			qemutest.Img(t, "rebase", "-u", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", b)
			return a
		}, "a.qcow2"},
		{"chain-too-deep", ErrChainTooDeep, Options{MaxChainDepth: 1}, func(t *testing.T, dir string) string {
			qemutest.Create(t, "qcow2", filepath.Join(dir, "l0.qcow2"), "1M")
			qemutest.Create(t, "qcow2", filepath.Join(dir, "l1.qcow2"), "1M", "backing_file=l0.qcow2", "backing_fmt=qcow2")
			p := filepath.Join(dir, "l2.qcow2")
			qemutest.Create(t, "qcow2", p, "1M", "backing_file=l1.qcow2", "backing_fmt=qcow2")
			return p
		}, "l0.qcow2"},
		{"backing-missing", ErrBackingMissing, Options{}, func(t *testing.T, dir string) string {
			base := filepath.Join(dir, "gone.qcow2")
			qemutest.Create(t, "qcow2", base, "1M")
			p := filepath.Join(dir, "over.qcow2")
			qemutest.Create(t, "qcow2", p, "1M", "backing_file=gone.qcow2", "backing_fmt=qcow2")
			os.Remove(base)
			return p
		}, "gone.qcow2"},
		{"data-file-missing", ErrBackingMissing, Options{}, func(t *testing.T, dir string) string {
			qemuIn(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=d.raw", "img.qcow2", "1M")
			os.Remove(filepath.Join(dir, "d.raw"))
			return filepath.Join(dir, "img.qcow2")
		}, "d.raw"},
		{"protocol-backing", ErrProtocolBacking, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "n.qcow2")
			qemutest.Create(t, "qcow2", p, "1M")
			qemutest.Img(t, "rebase", "-u", "-f", "qcow2", "-b", "nbd:localhost:1", "-F", "raw", p)
			return p
		}, "nbd:localhost:1"},
		{"json-backing", ErrProtocolBacking, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "j.qcow2")
			qemutest.Create(t, "qcow2", p, "1M")
			qemutest.Img(t, "rebase", "-u", "-f", "qcow2", "-b", `json:{"file":{"driver":"http","url":"http://x/y"}}`, "-F", "raw", p)
			return p
		}, "json:"},
		{"header-length-too-small", ErrCorrupt, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "h.qcow2")
			qemutest.Create(t, "qcow2", p, "1M")
			patch(t, p, func(b []byte) { be.PutUint32(b[offHeaderLength:], 96) })
			return p
		}, "header_length 96"},
		{"l1-too-small", ErrCorrupt, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "l.qcow2")
			qemutest.Create(t, "qcow2", p, "1G")
			patch(t, p, func(b []byte) { be.PutUint64(b[offSize:], 1<<50) })
			return p
		}, "L1 table"},
		{"l1-misaligned", ErrCorrupt, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "l.qcow2")
			qemutest.Create(t, "qcow2", p, "1G")
			patch(t, p, func(b []byte) { be.PutUint64(b[offL1TableOffset:], be.Uint64(b[offL1TableOffset:])+8) })
			return p
		}, "not aligned"},
		{"snapshots-past-eof", ErrCorrupt, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "s.qcow2")
			qemutest.Create(t, "qcow2", p, "1M")
			patch(t, p, func(b []byte) {
				be.PutUint32(b[offNbSnapshots:], 3)
				be.PutUint64(b[offSnapshotsOffset:], 1<<40)
			})
			return p
		}, "snapshot table"},
		{"backing-name-too-long", ErrCorrupt, Options{}, func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "b.qcow2")
			qemutest.Create(t, "qcow2", p, "1M")
			patch(t, p, func(b []byte) {
				be.PutUint64(b[offBackingFileOffset:], 512)
				be.PutUint32(b[offBackingFileSize:], 5000)
			})
			return p
		}, "backing file name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			p := c.build(t, dir)
			im, err := Open(p, c.opts)
			if err == nil {
				im.Close()
				t.Fatalf("Open succeeded, want %v", c.want)
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("error %v, want errors.Is %v", err, c.want)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not *Error", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, filepath.Base(p)) {
				t.Fatalf("message %q does not name %s", msg, filepath.Base(p))
			}
			if !strings.Contains(msg, c.also) {
				t.Fatalf("message %q does not mention %q", msg, c.also)
			}
			t.Log(msg)
		})
	}
}

func TestProbeRawWarns(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	var warns []string
	im, err := Open(p, Options{Warn: func(m string) { warns = append(warns, m) }})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if im.Format() != "raw" || len(warns) != 1 || !strings.Contains(warns[0], "disk.img: no known format magic") {
		t.Fatalf("format %s, warnings %q", im.Format(), warns)
	}
	im2, err := Open(p, Options{Format: "raw", Warn: func(m string) { t.Errorf("unexpected warning %q", m) }})
	if err != nil {
		t.Fatal(err)
	}
	im2.Close()
}

// createEncrypted runs qemu-img create for a LUKS image. QEMU benchmarks
// PBKDF iterations and fails with "Unable to get accurate CPU usage" on a
// loaded machine; retry, and report failure so the caller can build the
// image by hand instead.
func createEncrypted(args []string) bool {
	for i := 0; i < 3; i++ {
		if _, err := qemutest.Try("qemu-img", args...); err == nil {
			return true
		}
	}
	return false
}
