// Command blake3 measures the hashing ceiling for `make bench`: BLAKE3-256
// (github.com/zeebo/blake3, the hash engram uses) over the bytes of a file,
// cut in fixed pieces the size of engram's average chunk and hashed by one
// goroutine per core. The file is read into memory first, so only hashing
// is timed. It prints one JSON object on stdout.
//
//	blake3 [-threads N] [-chunk 65536] [-runs 3] FILE
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/zeebo/blake3"
)

type result struct {
	File    string    `json:"file"`
	Bytes   int64     `json:"bytes"`
	Threads int       `json:"threads"`
	Chunk   int       `json:"chunk"`
	Seconds []float64 `json:"seconds"`
	// MBps is bytes / median seconds, in 10^6 bytes per second.
	MBps float64 `json:"mbps"`
}

func main() {
	threads := flag.Int("threads", runtime.NumCPU(), "hashing goroutines")
	chunk := flag.Int("chunk", 64<<10, "bytes per hash")
	runs := flag.Int("runs", 3, "timed passes; the median is reported")
	flag.Parse()
	if flag.NArg() != 1 || *threads < 1 || *chunk < 1 || *runs < 1 {
		fmt.Fprintln(os.Stderr, "usage: blake3 [-threads N] [-chunk BYTES] [-runs N] FILE")
		os.Exit(2)
	}
	data, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "blake3:", err)
		os.Exit(1)
	}
	if len(data) == 0 {
		fmt.Fprintf(os.Stderr, "blake3: %s is empty\n", flag.Arg(0))
		os.Exit(1)
	}
	runtime.GOMAXPROCS(*threads)
	res := result{File: flag.Arg(0), Bytes: int64(len(data)), Threads: *threads, Chunk: *chunk}
	for r := 0; r < *runs; r++ {
		res.Seconds = append(res.Seconds, hashAll(data, *chunk, *threads).Seconds())
	}
	s := append([]float64(nil), res.Seconds...)
	sort.Float64s(s)
	res.MBps = float64(res.Bytes) / s[len(s)/2] / 1e6
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, "blake3:", err)
		os.Exit(1)
	}
}

// hashAll hashes data in chunk-sized pieces handed out round-robin by
// index, so the workers need no channel in the hot loop.
func hashAll(data []byte, chunk, threads int) time.Duration {
	n := (len(data) + chunk - 1) / chunk
	var wg sync.WaitGroup
	sums := make([][32]byte, threads) // keeps the work from being optimized away
	start := time.Now()
	for w := 0; w < threads; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += threads {
				end := min((i+1)*chunk, len(data))
				sum := blake3.Sum256(data[i*chunk : end])
				sums[w][0] ^= sum[0]
			}
		}(w)
	}
	wg.Wait()
	return time.Since(start)
}
