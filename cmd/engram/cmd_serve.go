package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/nbd"
	"github.com/engram-vm/engram/view"
)

var serveCommand = &cli.Command{
	Name:      "serve",
	Usage:     "serve engrams read-only over NBD (every engram when none is named) until Ctrl-C",
	ArgsUsage: "[ID|NAME...]",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "listen", Value: "127.0.0.1:10809", Usage: "TCP address to listen on (no authentication: keep it on loopback)"},
		&cli.StringFlag{Name: "socket", Usage: "listen on this unix socket instead of TCP"},
		viewCacheFlag,
	},
	Action: func(c *cli.Context) error {
		sock := c.String("socket")
		if sock != "" && c.IsSet("listen") {
			return usagef("serve takes --listen or --socket, not both")
		}
		if c.IsSet("socket") && sock == "" {
			return usagef("--socket needs a path")
		}
		if len(sock) > maxSocketPath {
			// bind(2) says only "invalid argument".
			return usagef("--socket %s: a unix socket path is at most %d bytes, this one has %d", escapeControl(sock), maxSocketPath, len(sock))
		}
		v, err := openView(c, "serve")
		if err != nil {
			return err
		}
		defer v.close()
		exports, err := serveExports(c, v)
		if err != nil {
			return err
		}
		var l net.Listener
		if sock != "" {
			l, err = listenUnix(sock)
		} else {
			l, err = net.Listen("tcp", c.String("listen"))
		}
		if err != nil {
			return err
		}
		w := c.App.ErrWriter
		if sock == "" && !isLoopback(l.Addr()) {
			fmt.Fprintf(w, "engram: warning: serving on %s: NBD has no authentication, anyone who can reach this address can read these disks\n", l.Addr())
		}
		srv := &nbd.Server{
			Exports: exports,
			// Request buffers are part of the overhead beside the
			// caches (viewOverhead): one 32 MiB read, or many small.
			MaxBufferBytes: nbd.MaxPayload,
			Logf: func(format string, args ...any) {
				fmt.Fprintf(w, "engram: %s\n", oneLine(fmt.Sprintf(format, args...)))
			},
		}
		if !c.Bool(quietFlag.Name) {
			url := "nbd://" + l.Addr().String() + "/NAME"
			if sock != "" {
				url = "nbd+unix:///NAME?socket=" + sock
			}
			fmt.Fprintf(w, "engram: serving %s read-only at %s; Ctrl-C stops\n", plural(countIDs(exports), "engram"), escapeControl(url))
		}
		return srv.Serve(c.Context, l)
	},
}

// serveExports opens (and so pins) the engrams to serve: those named, or
// all. Each is exported under every name that still points at it, and
// under its full ID.
func serveExports(c *cli.Context, v *openedView) ([]nbd.Export, error) {
	ctx := c.Context
	var entries []*engram.Entry
	if c.NArg() == 0 {
		var err error
		if entries, err = engram.List(ctx, v.store); err != nil {
			return nil, err
		}
		if len(entries) == 0 {
			return nil, fmt.Errorf("%w: the store %s has no engrams to serve", engram.ErrNotFound, escapeControl(v.loc))
		}
	} else {
		ids, err := resolveAll(ctx, v.store, c.Args().Slice())
		if err != nil {
			return nil, err
		}
		seen := map[engram.ID]bool{}
		for _, id := range ids {
			if seen[id] {
				continue
			}
			seen[id] = true
			e, err := engram.Get(ctx, v.store, id)
			if err != nil {
				return nil, err
			}
			entries = append(entries, e)
		}
	}
	var exports []nbd.Export
	for _, e := range entries {
		d, err := v.set.OpenEntry(ctx, e)
		if err != nil {
			return nil, err
		}
		var names []string
		for _, r := range e.Records {
			// A name moves to its newest record; list it only where it
			// still resolves.
			if r.Name == "" || contains(names, r.Name) {
				continue
			}
			if id, err := engram.Resolve(ctx, v.store, r.Name); err == nil && id == e.ID {
				names = append(names, r.Name)
			}
		}
		if len(names) == 0 {
			names = []string{e.ID.String()}
		}
		for _, n := range names {
			exports = append(exports, diskExport(d, n))
		}
	}
	return exports, nil
}

func diskExport(d *view.Disk, name string) nbd.Export {
	return nbd.Export{
		Name:        name,
		ID:          d.ID().String(),
		Size:        d.Size(),
		Description: fmt.Sprintf("engram %s, %s", d.ID().Short(), bytesStr(d.Size())),
		Open:        func() (nbd.Device, error) { return d.NewReader(), nil },
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func countIDs(exports []nbd.Export) int {
	ids := map[string]bool{}
	for _, e := range exports {
		ids[e.ID] = true
	}
	return len(ids)
}

// listenUnix listens on a unix socket, replacing a stale socket file that
// nobody listens on (a server killed with -9 leaves one) but never a live
// one or another kind of file.
// maxSocketPath is the longest path a unix socket can be bound to on
// Linux: sun_path holds 108 bytes with the NUL.
const maxSocketPath = 107

func listenUnix(path string) (net.Listener, error) {
	l, err := net.Listen("unix", path)
	if err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		return l, err
	}
	if fi, serr := os.Lstat(path); serr != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("--socket %s: exists and is not a socket", escapeControl(path))
	}
	if c, derr := net.Dial("unix", path); derr == nil {
		c.Close()
		return nil, fmt.Errorf("--socket %s: another server is listening on it", escapeControl(path))
	}
	if err := os.Remove(path); err != nil {
		return nil, err
	}
	return net.Listen("unix", path)
}

// isLoopback reports whether a listener only accepts local connections.
func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return true
	}
	return ta.IP.IsLoopback()
}
