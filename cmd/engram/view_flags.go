package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/debug"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/chunkstore/storeurl"
	"github.com/engram-vm/engram/view"
)

// viewCacheFlag is the memory budget of the in-place readers (mount, serve).
var viewCacheFlag = &cli.StringFlag{
	Name:  "cache-size",
	Value: "256M",
	Usage: "memory for decoded blocks and manifest pages (peak RSS stays within it + 64 MiB)",
}

// viewOverhead is what the process needs beside the caches: runtime,
// request buffers, chunks in flight. The Go heap limit is set to the
// budget plus this, so garbage never lets the heap grow past it.
const viewOverhead = 40 << 20

// openedView is a store opened for in-place reading, with its pins.
type openedView struct {
	loc   string // the store as given
	dir   string // where the pin files live
	store storeurl.Store
	pins  *view.Pins
	set   *view.Set
}

// openView opens the store read-only under the --cache-size budget, sets
// the heap limit to match, and prepares this process's pin file.
func openView(c *cli.Context, what string) (*openedView, error) {
	size, err := parseSize(c.String(viewCacheFlag.Name))
	if err != nil || size < view.MinCacheSize || size > 1<<40 {
		return nil, usagef("--cache-size %q: want a size from %dM to 1T, e.g. 256M or 2G", c.String(viewCacheFlag.Name), view.MinCacheSize>>20)
	}
	loc, err := storeDir(c)
	if err != nil {
		return nil, err
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(size + viewOverhead)
	}
	st, err := storeurl.Open(c.Context, loc, storeurl.Options{
		ReadOnly:        true,
		LockTimeout:     lockTimeout(c),
		CacheRoot:       c.String(cacheDirFlag.Name),
		BlockCacheBytes: view.BlockCacheBytes(size),
	})
	if err != nil {
		return nil, err
	}
	dir := pinDir(st)
	pins, err := view.NewPins(dir, "engram "+what)
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
		// Whoever may not write the store cannot pin; whoever may can
		// also gc, so say what that means and serve anyway.
		fmt.Fprintf(c.App.ErrWriter, "engram: warning: %s; an engram removed while in use here may lose its chunks to gc\n", errorLine(err))
		pins, err = nil, nil
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	return &openedView{
		loc: loc, dir: dir, store: st, pins: pins,
		set: view.NewSet(st, view.Options{CacheSize: size, Pins: pins}),
	}, nil
}

func (v *openedView) close() {
	v.set.Close()
	if v.pins != nil {
		v.pins.Close()
	}
	v.store.Close()
}
