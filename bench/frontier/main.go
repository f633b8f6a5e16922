// Command frontier compresses the blocks an ingest really made again with
// each candidate codec, to place the codecs on the CPU/size frontier
// without the noise of a whole ingest. Dump the blocks of a store first
// (chunkstore's TestDumpBlocks), e.g. of one holding the template and of
// one holding the overlay fleet:
//
//	ENGRAM_DUMP_BLOCKS=STORE:tmpl.blocks go test ./chunkstore -run TestDumpBlocks
//	go run ./bench/frontier [-codecs zstd-fastest-noentropy,s2,...] [-merge 1,4] tmpl.blocks fleet.blocks
//
// CPU seconds are the thread's (getrusage RUSAGE_THREAD on one locked
// thread) to encode, and to decode, every block of the first file: the
// minimum over -rounds rounds, the codecs alternated within each round so
// that a busy machine weighs on all of them alike. Sizes are the sum of
// min(compressed, raw) per block (the store keeps a block raw when it does
// not shrink), for every file. -merge k joins k consecutive blocks, to see
// what bigger blocks would save.
//
// -hist prints, for the first codec, how each file's blocks spread over
// compression ratios: blocks, raw and stored MB and encode CPU per ratio
// bucket, to see what storing poorly compressible blocks raw could save.
// In every file after the first, the blocks the first file holds too (a
// fleet store's template blocks) are left out, so its rows are what the
// other images added. Per-block CPU is CLOCK_THREAD_CPUTIME_ID, the mean
// over -rounds: getrusage's thread times come from tick samples and are
// not precise over one block's few milliseconds.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

type codec struct {
	enc func(dst, src []byte) []byte
	dec func(dst, src []byte) ([]byte, error)
}

func zstdCodec(opts ...zstd.EOption) codec {
	// As chunkstore makes its encoder: no CRC, one encoder per goroutine.
	e, err := zstd.NewWriter(nil, append(opts, zstd.WithEncoderCRC(false), zstd.WithZeroFrames(true), zstd.WithEncoderConcurrency(1))...)
	if err != nil {
		panic(err)
	}
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.IgnoreChecksum(true))
	if err != nil {
		panic(err)
	}
	return codec{
		enc: func(dst, src []byte) []byte { return e.EncodeAll(src, dst[:0]) },
		dec: func(dst, src []byte) ([]byte, error) { return d.DecodeAll(src, dst[:0]) },
	}
}

var codecs = map[string]func() codec{
	"zstd-fastest-noentropy": func() codec {
		return zstdCodec(zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithNoEntropyCompression(true))
	},
	"zstd-fastest": func() codec { return zstdCodec(zstd.WithEncoderLevel(zstd.SpeedFastest)) },
	"zstd-default-noentropy": func() codec {
		return zstdCodec(zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithNoEntropyCompression(true))
	},
	"zstd-default": func() codec { return zstdCodec(zstd.WithEncoderLevel(zstd.SpeedDefault)) },
	"zstd-better":  func() codec { return zstdCodec(zstd.WithEncoderLevel(zstd.SpeedBetterCompression)) },
	"s2": func() codec {
		return codec{enc: func(dst, src []byte) []byte { return s2.Encode(dst[:cap(dst)], src) }, dec: s2.Decode}
	},
	"s2-better": func() codec {
		return codec{enc: func(dst, src []byte) []byte { return s2.EncodeBetter(dst[:cap(dst)], src) }, dec: s2.Decode}
	},
}

func main() {
	names := flag.String("codecs", "zstd-fastest-noentropy,zstd-fastest,zstd-default-noentropy,s2,s2-better", "codecs to compare")
	merges := flag.String("merge", "1", "join this many consecutive blocks (comma-separated list)")
	rounds := flag.Int("rounds", 3, "rounds; CPU is the minimum")
	hist := flag.Bool("hist", false, "per-block ratio histogram of the first codec instead of the comparison")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: frontier [-codecs C,...] [-merge K,...] [-rounds N] BLOCKS...")
		os.Exit(2)
	}
	runtime.LockOSThread()
	if *hist {
		var files [][][]byte
		for _, p := range flag.Args() {
			blks, err := load(p, 1)
			if err != nil {
				fatal(err)
			}
			files = append(files, blks)
		}
		mk := codecs[strings.Split(*names, ",")[0]]
		if mk == nil {
			fatal(fmt.Errorf("unknown codec %q", *names))
		}
		histogram(mk(), flag.Args(), files, *rounds)
		return
	}
	fmt.Printf("%-24s %5s %10s %10s", "codec", "merge", "enc CPU-s", "dec CPU-s")
	for _, p := range flag.Args() {
		fmt.Printf(" %14s", trim(p)+" MB")
	}
	fmt.Println()
	for _, m := range strings.Split(*merges, ",") {
		k, err := strconv.Atoi(m)
		if err != nil || k < 1 {
			fatal(fmt.Errorf("bad -merge %q", m))
		}
		var files [][][]byte
		for _, p := range flag.Args() {
			blks, err := load(p, k)
			if err != nil {
				fatal(err)
			}
			files = append(files, blks)
		}
		run(strings.Split(*names, ","), k, files, *rounds)
	}
}

func run(names []string, k int, files [][][]byte, rounds int) {
	cs := make([]codec, len(names))
	for i, n := range names {
		mk := codecs[n]
		if mk == nil {
			fatal(fmt.Errorf("unknown codec %q", n))
		}
		cs[i] = mk()
	}
	maxRaw := 0
	for _, b := range files[0] {
		maxRaw = max(maxRaw, len(b))
	}
	buf := make([]byte, 0, s2.MaxEncodedLen(maxRaw)+1<<10)
	out := make([]byte, 0, maxRaw)
	enc := make([]float64, len(cs))
	dec := make([]float64, len(cs))
	for r := range rounds {
		for i, c := range cs {
			// Encoded once outside the timing, to time decoding alone.
			frames := make([][]byte, len(files[0]))
			for j, b := range files[0] {
				frames[j] = append([]byte(nil), c.enc(buf, b)...)
			}
			t0 := threadCPU()
			for _, b := range files[0] {
				c.enc(buf, b)
			}
			t1 := threadCPU()
			for _, f := range frames {
				if _, err := c.dec(out[:0:cap(out)], f); err != nil {
					fatal(fmt.Errorf("%s: %w", names[i], err))
				}
			}
			t2 := threadCPU()
			if r == 0 || t1-t0 < enc[i] {
				enc[i] = t1 - t0
			}
			if r == 0 || t2-t1 < dec[i] {
				dec[i] = t2 - t1
			}
		}
	}
	for i, c := range cs {
		fmt.Printf("%-24s %5d %10.3f %10.3f", names[i], k, enc[i], dec[i])
		for _, blks := range files {
			var n int64
			for _, b := range blks {
				n += int64(min(len(c.enc(buf, b)), len(b)))
			}
			fmt.Printf(" %14.1f", float64(n)/1e6)
		}
		fmt.Println()
	}
}

// histEdges are the upper bounds of the ratio buckets (raw / stored).
var histEdges = []float64{1.02, 1.05, 1.1, 1.15, 1.2, 1.3, 1.6, 2, 3, 5, math.Inf(1)}

func histogram(c codec, paths []string, files [][][]byte, rounds int) {
	maxRaw := 0
	for _, blks := range files {
		for _, b := range blks {
			maxRaw = max(maxRaw, len(b))
		}
	}
	buf := make([]byte, 0, s2.MaxEncodedLen(maxRaw)+1<<10)
	first := map[xxh3.Uint128]bool{}
	for _, b := range files[0] {
		first[xxh3.Hash128(b)] = true
	}
	for fi, blks := range files {
		if fi > 0 {
			var added [][]byte
			for _, b := range blks {
				if !first[xxh3.Hash128(b)] {
					added = append(added, b)
				}
			}
			blks = added
		}
		type bucket struct {
			n             int
			raw, st, secs float64
		}
		bs := make([]bucket, len(histEdges))
		var all bucket
		for _, b := range blks {
			var secs float64
			var st int
			for range rounds {
				t0 := threadClock()
				st = min(len(c.enc(buf, b)), len(b))
				secs += threadClock() - t0
			}
			secs /= float64(rounds)
			k := 0
			for float64(len(b)) >= histEdges[k]*float64(st) {
				k++
			}
			for _, x := range []*bucket{&bs[k], &all} {
				x.n++
				x.raw += float64(len(b)) / 1e6
				x.st += float64(st) / 1e6
				x.secs += secs
			}
		}
		what := "all blocks"
		if fi > 0 {
			what = "blocks not in " + trim(paths[0])
		}
		fmt.Printf("%s, %s\n%-10s %6s %9s %9s %9s %8s\n", trim(paths[fi]), what, "ratio <", "blocks", "raw MB", "stored MB", "enc CPU-s", "MB/s")
		for k, x := range bs {
			fmt.Printf("%-10.2f %6d %9.1f %9.1f %9.3f %8.0f\n", histEdges[k], x.n, x.raw, x.st, x.secs, x.raw/max(x.secs, 1e-9))
		}
		fmt.Printf("%-10s %6d %9.1f %9.1f %9.3f %8.0f\n", "all", all.n, all.raw, all.st, all.secs, all.raw/max(all.secs, 1e-9))
	}
}

// load reads a TestDumpBlocks file, joining every k blocks into one.
func load(path string, k int) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	var cur []byte
	n := 0
	for len(b) > 0 {
		if len(b) < 4 || int64(binary.LittleEndian.Uint32(b)) > int64(len(b)-4) {
			return nil, fmt.Errorf("%s: truncated block", path)
		}
		l := binary.LittleEndian.Uint32(b)
		blk := b[4 : 4+l]
		b = b[4+l:]
		if k == 1 {
			out = append(out, blk)
			continue
		}
		cur = append(cur, blk...)
		if n++; n == k {
			out, cur, n = append(out, cur), nil, 0
		}
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out, nil
}

func trim(p string) string {
	p = p[strings.LastIndex(p, "/")+1:]
	return strings.TrimSuffix(p, ".blocks")
}

func threadCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_THREAD, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// threadClock is the thread's CPU time, precise to the nanosecond.
func threadClock() float64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return float64(ts.Nano()) / 1e9
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "frontier:", err)
	os.Exit(1)
}
