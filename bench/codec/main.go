// Command codec chooses the store's compression by measurement: it ingests
// the same images into one scratch store per zstd level and block size,
// in-process, and prints for each the store's bytes on disk, the CPU
// seconds (user+sys, getrusage) the ingests took, and the latency of cold
// random chunk reads (a Get whose block is not cached: one pread of the
// frame, decompression of the whole block, BLAKE3 of the chunk; the pack
// was just written, so the pread is served from the page cache and the
// latency is the block's decode, which is what grows with the block size).
//
//	go run ./bench/codec [-levels fastest-noentropy,fastest,default,better] [-blocks 1,2,4,8] IMAGE...
//
// The first image's CPU seconds are printed on their own: on the bench
// corpus that is template.qcow2, the "CPU-s per GB ingested" case.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/ingest"
	"github.com/engram-vm/engram/qcow2"
)

type result struct {
	Level        string  `json:"level"`
	BlockMiB     int     `json:"block_mib"`
	StoreBytes   int64   `json:"store_bytes"`
	FirstCPU     float64 `json:"first_image_cpu_s"`
	FirstBytes   int64   `json:"first_image_data_bytes"`
	TotalCPU     float64 `json:"total_cpu_s"`
	ReadP50Micro float64 `json:"cold_read_p50_us"`
	ReadP90Micro float64 `json:"cold_read_p90_us"`
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func main() {
	levels := flag.String("levels", "fastest-noentropy,fastest,default,better", "zstd settings (chunkstore.Compressions names)")
	blocks := flag.String("blocks", "1,2,4,8", "block sizes in MiB")
	reads := flag.Int("reads", 400, "cold random chunk reads per store")
	jsonOut := flag.String("json", "", "also write the results as JSON here")
	md := flag.Bool("md", false, "print a Markdown table (make bench appends it to results.md)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: codec [-levels L,...] [-blocks MiB,...] IMAGE...")
		os.Exit(2)
	}
	var out []result
	if *md {
		fmt.Println("| level | block | store MB (du) | first image CPU-s | first image MB per CPU-s | all images CPU-s | cold random chunk read p50 / p90 |")
		fmt.Println("|---|---|---|---|---|---|---|")
	} else {
		fmt.Printf("%-8s %5s %12s %10s %12s %10s %10s\n", "level", "block", "store MB", "first CPU", "first MB/CPU-s", "total CPU", "read p50")
	}
	for _, lvl := range strings.Split(*levels, ",") {
		for _, b := range strings.Split(*blocks, ",") {
			mib, err := strconv.Atoi(b)
			if err != nil {
				fatal(err)
			}
			r, err := measure(lvl, mib, flag.Args(), *reads)
			if err != nil {
				fatal(err)
			}
			out = append(out, r)
			if *md {
				fmt.Printf("| %s | %d MiB | %.1f | %.2f | %.0f | %.2f | %.2f / %.2f ms |\n", r.Level, r.BlockMiB, float64(r.StoreBytes)/1e6,
					r.FirstCPU, float64(r.FirstBytes)/1e6/r.FirstCPU, r.TotalCPU, r.ReadP50Micro/1e3, r.ReadP90Micro/1e3)
				continue
			}
			fmt.Printf("%-8s %4dM %12.1f %9.2fs %12.0f %9.2fs %8.0fµs\n", r.Level, r.BlockMiB, float64(r.StoreBytes)/1e6,
				r.FirstCPU, float64(r.FirstBytes)/1e6/r.FirstCPU, r.TotalCPU, r.ReadP50Micro)
		}
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(out, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			fatal(err)
		}
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "codec:", err)
	os.Exit(1)
}

func measure(level string, mib int, images []string, reads int) (result, error) {
	r := result{Level: level, BlockMiB: mib}
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "engram-codec-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	if err := chunkstore.Init(dir, chunkstore.InitOptions{Compression: level, BlockSize: mib << 20}); err != nil {
		return r, err
	}
	st, err := chunkstore.Open(ctx, dir, chunkstore.OpenOptions{TrustIDs: true})
	if err != nil {
		return r, err
	}
	defer st.Close()
	runtime.GC()
	c0 := cpuSeconds()
	for i, path := range images {
		im, err := qcow2.Open(path, qcow2.Options{})
		if err != nil {
			return r, err
		}
		res, err := ingest.Run(ctx, st, im, ingest.Options{})
		im.Close()
		if err != nil {
			return r, fmt.Errorf("ingest %s: %w", path, err)
		}
		if i == 0 {
			r.FirstCPU = cpuSeconds() - c0
			r.FirstBytes = res.Stats.DataBytes
		}
	}
	r.TotalCPU = cpuSeconds() - c0
	// The whole store, as make bench's du counts it: packs, index
	// segments, catalog and cache.
	r.StoreBytes, err = duBytes(dir)
	if err != nil {
		return r, err
	}
	var ids []chunkstore.ID
	if err := st.ForEach(ctx, func(e chunkstore.Entry) error { ids = append(ids, e.ID); return nil }); err != nil {
		return r, err
	}
	// Random picks among hundreds of blocks rarely hit the small block
	// cache, so these are (nearly all) cold reads.
	rng := rand.New(rand.NewPCG(1, uint64(mib)))
	lat := make([]float64, 0, reads)
	for range reads {
		id := ids[rng.IntN(len(ids))]
		t0 := time.Now()
		if _, err := st.Get(ctx, id); err != nil {
			return r, err
		}
		lat = append(lat, float64(time.Since(t0).Microseconds()))
	}
	sort.Float64s(lat)
	r.ReadP50Micro, r.ReadP90Micro = lat[len(lat)/2], lat[len(lat)*9/10]
	return r, nil
}

// duBytes is the disk space the files under dir occupy.
func duBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		} else {
			n += fi.Size()
		}
		return nil
	})
	return n, err
}
