// Command viewread reads an engram through view/ as mount and serve do,
// without FUSE or NBD, to tell the read path's speed from the adapter's:
// viewread -store DIR -id ID|NAME [-bs 128k] [-cache 256M] [-random N].
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"sort"
	"syscall"
	"time"
	"unsafe"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/view"
)

func main() {
	store := flag.String("store", "", "store directory")
	name := flag.String("id", "", "engram ID or name")
	bs := flag.Int("bs", 128<<10, "read size")
	cache := flag.Int64("cache", 256<<20, "cache budget")
	random := flag.Int("random", 0, "do N random reads of -bs at queue depth 1 (then the same again, warm) instead of a sequential pass")
	file := flag.String("file", "", "with -random: read this file (e.g. the engram's file in a mount) with O_DIRECT instead of view/")
	prof := flag.String("cpuprofile", "", "write a CPU profile")
	flag.Parse()
	if *prof != "" {
		f, err := os.Create(*prof)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	ctx := context.Background()
	st, err := chunkstore.Open(ctx, *store, chunkstore.OpenOptions{ReadOnly: true, BlockCacheBytes: view.BlockCacheBytes(*cache)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	id, err := engram.Resolve(ctx, st, *name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	set := view.NewSet(st, view.Options{CacheSize: *cache})
	start := time.Now()
	d, err := set.Open(ctx, id)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	r := d.NewReader()
	buf := make([]byte, *bs)
	if *random > 0 {
		var data []int64
		_ = r.Extents(0, d.Size(), func(off, n int64, isData bool) error {
			for o := off; isData && o+int64(*bs) <= off+n; o += int64(*bs) {
				data = append(data, o)
			}
			return nil
		})
		offs := make([]int64, *random)
		for i := range offs {
			offs[i] = data[rand.IntN(len(data))] / 4096 * 4096
		}
		read := func(off int64) error {
			_, err := r.ReadAt(buf, off)
			if err == io.EOF {
				err = nil
			}
			return err
		}
		if *file != "" {
			f, err := os.OpenFile(*file, os.O_RDONLY|syscall.O_DIRECT, 0)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			// O_DIRECT wants an aligned buffer.
			big := make([]byte, *bs+4096)
			a := int(uintptr(unsafe.Pointer(&big[0])) & 4095)
			buf = big[(4096-a)%4096:][:*bs]
			read = func(off int64) error {
				_, err := f.ReadAt(buf, off)
				if err == io.EOF {
					err = nil
				}
				return err
			}
		}
		for _, pass := range []string{"cold", "warm"} {
			lat := make([]time.Duration, 0, len(offs))
			for _, off := range offs {
				t := time.Now()
				if err := read(off); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				lat = append(lat, time.Since(t))
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			fmt.Printf("%s random %d x %d B: p50 %v p90 %v p99 %v\n", pass, len(lat), *bs, lat[len(lat)/2], lat[len(lat)*9/10], lat[len(lat)*99/100])
		}
		return
	}
	var first time.Duration
	for off := int64(0); off < d.Size(); off += int64(*bs) {
		if _, err := r.ReadAt(buf, off); err != nil && err != io.EOF {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if first == 0 {
			first = time.Since(start)
		}
	}
	el := time.Since(start)
	fmt.Printf("sequential %d MiB in %d B reads: %.2fs, %.0f MB/s, first byte %v, %+v\n", d.Size()>>20, *bs, el.Seconds(), float64(d.Size())/el.Seconds()/1e6, first, set.Stats())
}
