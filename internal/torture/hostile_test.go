package torture

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/engram-vm/engram/internal/qemutest"
	"github.com/engram-vm/engram/qcow2"
)

// hostileFile is one crafted image: a name saying what was done, and its
// files (the image first; extra files for backing chains).
type hostileFile struct {
	kind, name string
	data       []byte
	extra      map[string][]byte
	link       map[string]string // symlink name -> target
}

type qhdr struct {
	clusterBits             uint32
	size                    uint64
	l1Off, rtOff            uint64
	l1Size, rtClusters      uint32
	hdrLen                  uint32
	backingOff, backingSize uint32
}

func parseQ(b []byte) qhdr {
	be := binary.BigEndian
	return qhdr{
		backingOff: uint32(be.Uint64(b[8:])), backingSize: be.Uint32(b[16:]),
		clusterBits: be.Uint32(b[20:]), size: be.Uint64(b[24:]),
		l1Size: be.Uint32(b[36:]), l1Off: be.Uint64(b[40:]),
		rtOff: be.Uint64(b[48:]), rtClusters: be.Uint32(b[56:]), hdrLen: be.Uint32(b[100:]),
	}
}

func put64(b []byte, off uint64, v uint64) []byte {
	c := bytes.Clone(b)
	if off+8 <= uint64(len(c)) {
		binary.BigEndian.PutUint64(c[off:], v)
	}
	return c
}

func put32(b []byte, off uint64, v uint32) []byte {
	c := bytes.Clone(b)
	binary.BigEndian.PutUint32(c[off:], v)
	return c
}

// withBacking rewrites the backing file name (placed after the header).
func withBacking(b []byte, name string) []byte {
	h := parseQ(b)
	c := bytes.Clone(b)
	off := uint64(h.hdrLen) + 64 // past the header extensions' end marker, inside cluster 0
	if h.backingOff != 0 {
		off = uint64(h.backingOff)
	}
	copy(c[off:], name)
	binary.BigEndian.PutUint64(c[8:], off)
	binary.BigEndian.PutUint32(c[16:], uint32(len(name)))
	return c
}

// corpus builds the hostile files from small qemu-made images.
func corpus(t *testing.T) []hostileFile {
	dir := t.TempDir()
	mk := func(name string, opts []string, cmds ...string) []byte {
		p := filepath.Join(dir, name)
		qemutest.Create(t, "qcow2", p, "8M", opts...)
		qemutest.IO(t, p, "qcow2", cmds...)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	plain := mk("plain.qcow2", []string{"cluster_size=4096"}, "write -P 0x11 0 64k", "write -P 0x22 4M 8k", "write -z 1M 64k")
	ext := mk("ext.qcow2", []string{"cluster_size=65536", "extended_l2=on"}, "write -P 0x33 0 128k", "write -P 0x44 2M 4k")
	v2 := mk("v2.qcow2", []string{"compat=0.10", "cluster_size=4096"}, "write -P 0x55 0 16k")
	// A compressed image: qemu-img convert -c.
	raw := filepath.Join(dir, "c.raw")
	qemutest.Create(t, "raw", raw, "8M")
	qemutest.IO(t, raw, "raw", "write -P 0x66 0 1M")
	cz := filepath.Join(dir, "c.qcow2")
	qemutest.Img(t, "convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", raw, cz)
	comp, err := os.ReadFile(cz)
	if err != nil {
		t.Fatal(err)
	}

	var out []hostileFile
	add := func(kind, name string, b []byte) { out = append(out, hostileFile{kind: kind, name: name, data: b}) }
	step := pick(37, 1) // the short run takes every 37th bit / boundary sample

	for _, base := range []struct {
		name string
		b    []byte
	}{{"plain", plain}, {"ext", ext}, {"v2", v2}, {"comp", comp}} {
		b, h := base.b, parseQ(base.b)
		cs := uint64(1) << h.clusterBits
		// Truncation at every structure boundary, and every 512 bytes.
		cuts := map[uint64]bool{}
		for _, c := range []uint64{0, 3, 4, 8, 20, 24, 32, 36, 40, 48, 56, 64, 72, 100, 104, uint64(h.hdrLen),
			h.l1Off, h.l1Off + 8, h.l1Off + 8*uint64(h.l1Size), h.rtOff, h.rtOff + 8, cs, 2 * cs} {
			cuts[c] = true
		}
		for i := uint32(0); i < h.l1Size; i++ {
			if l2 := binary.BigEndian.Uint64(b[h.l1Off+8*uint64(i):]) & 0x00fffffffffffe00; l2 != 0 {
				cuts[l2], cuts[l2+8], cuts[l2+cs-1] = true, true, true
			}
		}
		for c := uint64(512); c < uint64(len(b)); c += 512 * uint64(step) {
			cuts[c] = true
		}
		var cl []uint64
		for c := range cuts {
			if c < uint64(len(b)) {
				cl = append(cl, c)
			}
		}
		sort.Slice(cl, func(i, j int) bool { return cl[i] < cl[j] })
		for _, c := range cl {
			add("truncated", fmt.Sprintf("%s-cut-%#x", base.name, c), b[:c])
		}
		// Bit flips in every header field (the first 104 bytes).
		for bit := 0; bit < 104*8; bit += step {
			c := bytes.Clone(b)
			c[bit/8] ^= 1 << (bit % 8)
			add("header bit flip", fmt.Sprintf("%s-flip-%d", base.name, bit), c)
		}
		// L1 and L2 entries pointing past EOF, into the header, at the
		// tables themselves, unaligned; reserved bits set.
		l1e := binary.BigEndian.Uint64(b[h.l1Off:])
		l2 := l1e & 0x00fffffffffffe00
		eof := (uint64(len(b)) + cs) &^ (cs - 1)
		for _, v := range []struct {
			n string
			v uint64
		}{{"past-eof", eof | 1<<63}, {"far-past-eof", 1<<55 | 1<<63}, {"header", 0 | 1<<63}, {"into-header", 512 | 1<<63},
			{"self-l1", h.l1Off | 1<<63}, {"refcount-table", h.rtOff | 1<<63}, {"reserved-bits", l1e | 0x7e},
			{"unaligned", (l2 + 8) | 1<<63}} {
			add("L1 entry", base.name+"-l1-"+v.n, put64(b, h.l1Off, v.v))
			if l2 != 0 {
				add("L2 entry", base.name+"-l2-"+v.n, put64(b, l2, v.v))
			}
		}
		if l2 != 0 {
			// Compressed descriptors with huge sizes and offsets.
			xb := 62 - (h.clusterBits - 8)
			for _, v := range []uint64{
				1<<62 | (1<<xb - 1),                                             // offset at the top, one sector
				1<<62 | ((1<<(h.clusterBits-8))-1)<<xb | 512,                    // most sectors
				1<<62 | ((1<<(h.clusterBits-8))-1)<<xb | (uint64(len(b)) - 512), // runs past EOF
				1<<62 | 0,
			} {
				add("compressed descriptor", fmt.Sprintf("%s-cdesc-%#x", base.name, v), put64(b, l2, v))
			}
			// Overlapping tables: every L1 entry at one L2 table over a
			// virtual size that needs them all.
			c := bytes.Clone(b)
			for i := uint32(0); i < h.l1Size; i++ {
				binary.BigEndian.PutUint64(c[h.l1Off+8*uint64(i):], l1e)
			}
			add("overlapping tables", base.name+"-all-l1-one-l2", c)
			add("overlapping tables", base.name+"-l2-is-l1", put64(b, h.l1Off, h.l1Off|1<<63))
			add("overlapping tables", base.name+"-rt-is-l1", put64(b, 48, h.l1Off))
		}
		// Sizes: 2^62, the most QEMU allows, and beyond.
		add("virtual size", base.name+"-size-2^62", put64(b, 24, 1<<62))
		add("virtual size", base.name+"-size-max", put64(b, 24, 1<<63-1))
		add("l1_size", base.name+"-l1size-max", put32(b, 36, 32<<20/8))
		add("l1_size", base.name+"-l1size-u32max", put32(b, 36, 1<<32-1))
		add("l1_size", base.name+"-l1size-max-size", put32(put64(b, 24, (32<<20/8)*(cs/8)*cs), 36, 32<<20/8))
		add("refcount table", base.name+"-rt-huge", put32(b, 56, 1<<31))
		add("header length", base.name+"-hdrlen-huge", put32(b, 100, 1<<31))
	}

	// A zip bomb in a compressed cluster: raw deflate of 64 MiB of zeros in
	// place of the first compressed cluster, the descriptor claiming every
	// sector it can.
	{
		h := parseQ(comp)
		l2 := binary.BigEndian.Uint64(comp[h.l1Off:]) & 0x00fffffffffffe00
		desc := binary.BigEndian.Uint64(comp[l2:])
		xb := 62 - (h.clusterBits - 8)
		off := desc & (1<<xb - 1)
		var zb bytes.Buffer
		w, _ := flate.NewWriter(&zb, flate.BestCompression)
		zero := make([]byte, 1<<20)
		for range 64 {
			w.Write(zero)
		}
		w.Close()
		c := bytes.Clone(comp)
		need := off + uint64(zb.Len())
		if need > uint64(len(c)) {
			c = append(c, make([]byte, need-uint64(len(c)))...)
		}
		copy(c[off:], zb.Bytes())
		sectors := min(uint64(zb.Len())/512+1, 1<<(h.clusterBits-8)-1)
		add("zip bomb", "comp-deflate-bomb", put64(c, l2, 1<<62|sectors<<xb|off))
	}

	// Backing chains: loops, ../ names, protocol names.
	for _, name := range []string{"self.qcow2"} {
		out = append(out, hostileFile{kind: "backing loop", name: "self-loop", data: withBacking(v2, name)})
	}
	out = append(out, hostileFile{kind: "backing loop", name: "a-b-a", data: withBacking(v2, "b.qcow2"),
		extra: map[string][]byte{"b.qcow2": withBacking(v2, "self.qcow2")}})
	out = append(out, hostileFile{kind: "backing loop", name: "symlink-loop", data: withBacking(v2, "link.qcow2"),
		link: map[string]string{"link.qcow2": "self.qcow2"}})
	for _, n := range []string{"../../../../../../nonexistent/x.qcow2", "../missing.qcow2", "a/../../b.qcow2",
		"/dev/zero", "/proc/self/mem", "/dev/stdin", ".", "..", "/"} {
		add("backing name", "backing-"+n, withBacking(v2, n))
	}
	for _, n := range []string{"nbd://evil:10809/x", "nbd:unix:/tmp/s", "json:{\"file\":{\"driver\":\"file\",\"filename\":\"/etc/passwd\"}}",
		"http://example.com/x.qcow2", "https://example.com/x", "ftp://x/y", "ssh://x/y", "iscsi://x/y", "gluster://x/y", "rbd:pool/img", "file:/etc/passwd"} {
		add("protocol name", "protocol-"+n, withBacking(v2, n))
	}
	return out
}

// outcome of reading one hostile file in-process.
type outcome struct {
	err      error
	accepted bool
	dur      time.Duration
	alloc    uint64
	panicked any
}

// readHostile opens path as engram ingest would and reads a bounded part
// of what it maps: at most 4096 extent windows and 32 MiB of data.
func readHostile(path string) (o outcome) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	start := time.Now()
	defer func() {
		o.panicked = recover()
		o.dur = time.Since(start)
		runtime.ReadMemStats(&ms)
		o.alloc = ms.TotalAlloc - before
	}()
	im, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		o.err = err
		return
	}
	defer im.Close()
	const win = 256 << 20
	budget := int64(32 << 20)
	buf := make([]byte, 1<<20)
	for off, n := int64(0), 0; off < im.Size() && n < 4096 && budget > 0; off, n = off+win, n+1 {
		exts, err := im.Extents(off, min(win, im.Size()-off))
		if err != nil {
			o.err = err
			return
		}
		for _, e := range exts {
			if !e.Data || e.Zero {
				continue
			}
			for p := e.Start; p < e.Start+e.Length && budget > 0; p += int64(len(buf)) {
				k := min(int64(len(buf)), e.Start+e.Length-p)
				if _, err := im.ReadAt(buf[:k], p); err != nil {
					o.err = err
					return
				}
				budget -= k
			}
		}
	}
	o.accepted = true
	return
}

func TestHostileImages(t *testing.T) {
	qemutest.Require(t)
	files := corpus(t)
	dir := t.TempDir()
	byKind := map[string][2]int{} // kind -> rejected, accepted
	var maxDur time.Duration
	var maxAlloc uint64
	var slowest string
	for i, f := range files {
		sub := filepath.Join(dir, fmt.Sprint(i))
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(sub, "self.qcow2")
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			t.Fatal(err)
		}
		for n, b := range f.extra {
			os.WriteFile(filepath.Join(sub, n), b, 0o644)
		}
		for n, target := range f.link {
			os.Symlink(target, filepath.Join(sub, n))
		}
		done := make(chan outcome, 1)
		go func() { done <- readHostile(p) }()
		var o outcome
		select {
		case o = <-done:
		case <-time.After(60 * time.Second):
			t.Errorf("%s (%s): no answer after 60 s", f.name, f.kind)
			summary.add("hostile images (error or valid read, no panic/hang / tried)", false)
			continue
		}
		good := o.panicked == nil
		if o.panicked != nil {
			t.Errorf("%s (%s): PANIC: %v", f.name, f.kind, o.panicked)
		}
		if o.err != nil {
			var qe *qcow2.Error
			if !errors.As(o.err, &qe) || !strings.Contains(o.err.Error(), "self.qcow2") && !strings.Contains(o.err.Error(), sub) {
				t.Errorf("%s (%s): error does not name the file as a *qcow2.Error: %v", f.name, f.kind, o.err)
				good = false
			}
		}
		if o.alloc > 256<<20 {
			t.Errorf("%s (%s): allocated %d MiB", f.name, f.kind, o.alloc>>20)
			good = false
		}
		if o.dur > maxDur {
			maxDur, slowest = o.dur, f.name
		}
		maxAlloc = max(maxAlloc, o.alloc)
		k := byKind[f.kind]
		if o.accepted {
			k[1]++
		} else {
			k[0]++
		}
		byKind[f.kind] = k
		summary.add("hostile images (error or valid read, no panic/hang / tried)", good)
	}
	kinds := make([]string, 0, len(byKind))
	for k := range byKind {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	row := "hostile images (error or valid read, no panic/hang / tried)"
	for _, k := range kinds {
		summary.note(row, "%-22s %4d rejected with an error, %4d read as valid images", k, byKind[k][0], byKind[k][1])
	}
	summary.note(row, "slowest %s (%s), most allocated by one file %d MiB (reads capped at 32 MiB of data)", maxDur.Round(time.Millisecond), slowest, maxAlloc>>20)

	// Through the binary: a sample (all under ENGRAM_TORTURE=full).
	store := initStore(t)
	every := pick(len(files)/40+1, 1)
	for i := 0; i < len(files); i += every {
		f := files[i]
		p := filepath.Join(dir, fmt.Sprint(i), "self.qcow2")
		cmd := exec.Command(engramBin, "--store", store, "-q", "ingest", "--format", "qcow2", p)
		var se bytes.Buffer
		cmd.Stderr = &se
		cmd.Start()
		timer := time.AfterFunc(120*time.Second, func() { cmd.Process.Kill() })
		err := cmd.Wait()
		timer.Stop()
		code := cmd.ProcessState.ExitCode()
		msg := se.String()
		good := !strings.Contains(msg, "panic:") && !strings.Contains(msg, "goroutine ") && code >= 0 && code != 2
		if !good {
			t.Errorf("engram ingest %s (%s): exit %d (%v): %s", f.name, f.kind, code, err, msg)
		}
		summary.add("hostile images through `engram ingest` (no panic/hang / tried)", good)
	}
	// Memory is bounded by the in-process figure above: a child's
	// rusage Maxrss includes the RSS this test process had at fork, so it
	// says nothing about the ingest.
	if err := verifyClean(t, store); err != nil {
		t.Error(err)
	}
}
