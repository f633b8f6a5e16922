// Command gen writes the synthetic inputs of make bench's scale rows
// (bench/README.md): deterministic mixed data (~40% random bytes, ~60%
// log-like text, like bench/corpus.sh's mixdata) that never repeats, so
// ingest cost follows the amount of data.
//
//	gen raw -data BYTES -virtual BYTES -seed N OUT        sparse raw image
//	gen clones -template T.qcow2 -n N -diff BYTES -seed S DIR   overlays clone-NN.qcow2
//	gen small -n N -size BYTES -seed S DIR                small raw images img-NNNN.raw
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"github.com/engram-vm/engram/qcow2"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	data := fs.Int64("data", 1<<30, "data bytes")
	virtual := fs.Int64("virtual", 0, "virtual size (default: -data)")
	seed := fs.Uint64("seed", 1, "seed")
	n := fs.Int("n", 64, "how many files")
	diff := fs.Int64("diff", 8<<20, "clone-specific bytes per clone")
	size := fs.Int64("size", 1<<20, "bytes per small image")
	tmpl := fs.String("template", "", "template qcow2 (clones)")
	_ = fs.Parse(os.Args[2:])
	if fs.NArg() != 1 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "raw":
		err = genRaw(fs.Arg(0), *data, max(*virtual, *data), *seed)
	case "clones":
		err = genClones(fs.Arg(0), *tmpl, *n, *diff, *seed)
	case "small":
		err = genSmall(fs.Arg(0), *n, *size, *seed)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: gen raw|clones|small [flags] OUT")
	os.Exit(2)
}

// mixer produces the mixed data, 1 MiB piece by piece.
type mixer struct {
	rng *rand.Rand
	i   int
}

var words = []string{"sshd", "cron", "systemd", "kernel", "nginx", "postgres", "dhclient", "apt"}

func (m *mixer) piece(b []byte) {
	m.i++
	if m.i%5 < 2 {
		for k := 0; k+8 <= len(b); k += 8 {
			v := m.rng.Uint64()
			for j := range 8 {
				b[k+j] = byte(v >> (8 * j))
			}
		}
		return
	}
	out := b[:0]
	for len(out) < len(b) {
		r := m.rng
		line := fmt.Sprintf("2025-05-%02d %02d:%02d:%02d host%d %s[%d]: request %d from 10.%d.%d.%d took %.3f ms status %d\n",
			1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), m.i%97, words[r.IntN(len(words))],
			r.IntN(65535), r.IntN(1e6), r.IntN(255), r.IntN(255), r.IntN(255), r.Float64()*100, 200+r.IntN(4)*100)
		out = append(out, line[:min(len(line), len(b)-len(out))]...)
	}
}

func newMixer(seed uint64) *mixer {
	return &mixer{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// genRaw writes data bytes as 64 MiB extents spread evenly over a sparse
// raw file of the virtual size.
func genRaw(out string, data, virtual int64, seed uint64) error {
	const ext = 64 << 20
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(virtual); err != nil {
		return err
	}
	m := newMixer(seed)
	buf := make([]byte, 1<<20)
	n := (data + ext - 1) / ext
	stride := virtual / n / (1 << 20) * (1 << 20)
	for e := int64(0); e < n; e++ {
		off := e * stride
		for k := int64(0); k < min(ext, data-e*ext); k += int64(len(buf)) {
			m.piece(buf)
			if _, err := f.WriteAt(buf, off+k); err != nil {
				return err
			}
		}
	}
	return f.Close()
}

// genClones writes n overlays on tmpl: each rewrites the same 4 MiB (an
// update all clones share) and diff bytes of its own at its own offsets
// inside the template's first GiB.
func genClones(dir, tmpl string, n int, diff int64, seed uint64) error {
	abs, err := filepath.Abs(tmpl)
	if err != nil {
		return err
	}
	im, err := qcow2.Open(abs, qcow2.Options{})
	if err != nil {
		return err
	}
	size := im.Size()
	im.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// The backing name is relative, between the real paths: the corpus is
	// shared through symbolic links (bench/cache of several checkouts), and
	// an absolute name through one of them breaks once that checkout goes.
	backing, err := relBacking(dir, abs)
	if err != nil {
		return err
	}
	common := make([]byte, 4<<20)
	newMixer(seed).piece(common)
	buf := make([]byte, 1<<20)
	for k := 1; k <= n; k++ {
		w, err := qcow2.Create(filepath.Join(dir, fmt.Sprintf("clone-%02d.qcow2", k)),
			qcow2.WriterOptions{Size: size, BackingFile: backing, BackingFormat: "qcow2"})
		if err != nil {
			return err
		}
		if _, err := w.WriteAt(common, 256<<20); err != nil {
			w.Abort()
			return err
		}
		m := newMixer(seed + uint64(k)*1000)
		r := rand.New(rand.NewPCG(seed, uint64(k)))
		for done := int64(0); done < diff; done += int64(len(buf)) {
			m.piece(buf)
			off := int64(r.IntN(1024)) << 20
			if _, err := w.WriteAt(buf, off); err != nil {
				w.Abort()
				return err
			}
		}
		if err := w.Close(); err != nil {
			return err
		}
	}
	return nil
}

// genSmall writes n small raw images of unique data.
func genSmall(dir string, n int, size int64, seed uint64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	buf := make([]byte, size)
	for k := 0; k < n; k++ {
		m := newMixer(seed + uint64(k))
		m.i = 2 // text, so stores stay small
		m.piece(buf)
		if err := os.WriteFile(filepath.Join(dir, "img-"+strconv.Itoa(10000 + k)[1:]+".raw"), buf, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// relBacking is file's name relative to dir (as QEMU resolves a backing
// name: from the overlay's directory), both with symbolic links resolved.
func relBacking(dir, file string) (string, error) {
	rd, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	rf, err := filepath.EvalSymlinks(file)
	if err != nil {
		return "", err
	}
	return filepath.Rel(rd, rf)
}
