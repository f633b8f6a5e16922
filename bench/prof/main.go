// Command prof ingests images into a scratch store in-process under the CPU
// profiler, to see which phase of ingest dominates (read, chunk, hash,
// compress, index). It is the profiling companion of `make bench`:
//
//	go run ./bench/prof -o cpu.pprof [-reingest] IMAGE...
//	go tool pprof -top cpu.pprof
//	go run ./bench/prof -memprofile mem.pprof IMAGE && go tool pprof -sample_index=alloc_space -top mem.pprof
//
// Images are ingested as `engram ingest --reread` does (ingest.Image): with
// -reingest once unprofiled and then profiled a second time (known data
// only, each layer cut where its first engram's chunks lie). With -restore STORE the arguments are
// engram IDs or names in STORE, each restored under the profiler to a
// scratch qcow2.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"time"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/ingest"
	"github.com/engram-vm/engram/qcow2"
	"github.com/engram-vm/engram/restore"
)

func main() {
	out := flag.String("o", "cpu.pprof", "CPU profile output")
	reingest := flag.Bool("reingest", false, "profile a second ingest of the same images")
	memOut := flag.String("memprofile", "", "also write a heap profile (alloc_space shows the big allocators)")
	flag.StringVar(&traceOut, "trace", "", "also write an execution trace of the profiled pass (go tool trace -pprof=sync FILE shows where goroutines wait)")
	restoreFrom := flag.String("restore", "", "profile restores of the given IDs from this store instead of ingest")
	flag.StringVar(&initOpts.Compression, "compression", "", "store compression (init --compression; default: the store default)")
	flag.IntVar(&initOpts.BlockSize, "block-size", 0, "store block size in bytes (default: the store default)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: prof [-o cpu.pprof] [-reingest] IMAGE...")
		os.Exit(2)
	}
	run := run
	if *restoreFrom != "" {
		run = func(out, memOut string, _ bool, ids []string) error { return runRestore(*restoreFrom, out, ids) }
	}
	if err := run(*out, *memOut, *reingest, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "prof:", err)
		os.Exit(1)
	}
}

var (
	initOpts chunkstore.InitOptions
	traceOut string
)

func run(out, memOut string, reingest bool, images []string) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "engram-prof-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	store := filepath.Join(dir, "store")
	if err := chunkstore.Init(store, initOpts); err != nil {
		return err
	}
	st, err := chunkstore.Open(ctx, store, chunkstore.OpenOptions{TrustIDs: true})
	if err != nil {
		return err
	}
	defer st.Close()
	pass := func() error {
		for _, path := range images {
			im, err := qcow2.Open(path, qcow2.Options{})
			if err != nil {
				return err
			}
			t0 := time.Now()
			// Through ingest.Image, as the CLI does: a second pass is then
			// what `ingest --reread` does with a known layer.
			lrs, err := ingest.Image(ctx, st, im, ingest.ImageOptions{Reread: true})
			im.Close()
			if err != nil {
				return fmt.Errorf("ingest %s: %w", path, err)
			}
			s := lrs[len(lrs)-1].Record.Stats
			fmt.Fprintf(os.Stderr, "%s: %d data bytes, %d new, %.2fs (%.0f MB/s)\n", path, s.DataBytes, s.NewBytes,
				time.Since(t0).Seconds(), float64(s.DataBytes)/time.Since(t0).Seconds()/1e6)
		}
		return nil
	}
	if reingest {
		if err := pass(); err != nil {
			return err
		}
	}
	if memOut != "" {
		runtime.MemProfileRate = 64 << 10
	}
	stop, err := startProfile(out)
	if err != nil {
		return err
	}
	err = pass()
	stop()
	if err != nil || memOut == "" {
		return err
	}
	mf, err := os.Create(memOut)
	if err != nil {
		return err
	}
	defer mf.Close()
	return pprof.Lookup("allocs").WriteTo(mf, 0)
}

func runRestore(store, out string, ids []string) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "engram-prof-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	stop, err := startProfile(out)
	if err != nil {
		return err
	}
	defer stop()
	// The store is opened under the profiler: its open and the manifest
	// load are part of what a restore command costs.
	t0 := time.Now()
	st, err := chunkstore.Open(ctx, store, chunkstore.OpenOptions{TrustIDs: true, ReadOnly: true})
	if err != nil {
		return err
	}
	defer st.Close()
	fmt.Fprintf(os.Stderr, "store opened in %.3fs\n", time.Since(t0).Seconds())
	for i, arg := range ids {
		t0 := time.Now()
		id, err := engram.Resolve(ctx, st, arg)
		if err != nil {
			return err
		}
		if err := restore.ToFile(ctx, st, id, filepath.Join(dir, fmt.Sprintf("out-%d.qcow2", i)), restore.Options{}); err != nil {
			return fmt.Errorf("restore %s: %w", arg, err)
		}
		fmt.Fprintf(os.Stderr, "%s: restored in %.2fs\n", arg, time.Since(t0).Seconds())
	}
	return nil
}

// startProfile starts the CPU profile into out and, with -trace, the
// execution trace; stop ends both and closes their files.
func startProfile(out string) (stop func(), err error) {
	f, err := os.Create(out)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	cpu := func() { pprof.StopCPUProfile(); f.Close() }
	if traceOut == "" {
		return cpu, nil
	}
	tf, err := os.Create(traceOut)
	if err == nil {
		err = trace.Start(tf)
	}
	if err != nil {
		cpu()
		return nil, err
	}
	return func() { trace.Stop(); tf.Close(); cpu() }, nil
}
