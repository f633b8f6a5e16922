package main

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/engram-vm/engram/chunkstore/storeurl"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/qcow2"
	"github.com/engram-vm/engram/restore"
)

var restoreCommand = &cli.Command{
	Name:      "restore",
	Usage:     "write an engram back out as a sparse qcow2 or raw image",
	ArgsUsage: "ID|NAME (--thin: ID|NAME...)",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "output file (- streams raw to stdout)"},
		&cli.StringFlag{Name: "output-format", Aliases: []string{"O"}, Value: "qcow2", Usage: "qcow2 or raw"},
		&cli.StringFlag{Name: "cluster-size", Usage: "qcow2 cluster size, e.g. 64k or 2M (default: the source's)"},
		&cli.BoolFlag{Name: "compress", Aliases: []string{"c"}, Usage: "write compressed (zstd) qcow2 clusters"},
		&cli.BoolFlag{Name: "force", Usage: "overwrite an existing output file"},
		&cli.StringFlag{Name: "backing", Aliases: []string{"b"}, Usage: "write a qcow2 overlay on this image holding only the clusters that differ from it; auto: the best engram whose source is on disk unchanged"},
		&cli.BoolFlag{Name: "chain", Usage: "rebuild the engram's whole backing chain as separate files in the directory -o (base + thin overlays)"},
		&cli.BoolFlag{Name: "thin", Usage: "restore a set of engrams into the directory -o, each a thin overlay on the member it shares most with at the same offsets (or standalone)"},
		&cli.BoolFlag{Name: "dry-run", Usage: "with --thin: print the plan only"},
	},
	Action: func(c *cli.Context) error {
		if c.Bool("thin") {
			return restoreThin(c)
		}
		if c.Bool("dry-run") {
			return usagef("--dry-run goes with --thin")
		}
		if c.NArg() != 1 {
			return usagef("restore needs exactly one ID or NAME")
		}
		format := c.String("output-format")
		if format != "qcow2" && format != "raw" {
			return usagef("-O %q: want qcow2 or raw", format)
		}
		out := c.String("output")
		if out == "" {
			return usagef("restore needs -o OUT")
		}
		if out == "-" && format != "raw" && c.IsSet("output-format") {
			return usagef("-o - streams raw only")
		}
		if (format == "raw" || out == "-") && !c.Bool("chain") && (c.Bool("compress") || c.IsSet("cluster-size")) {
			// As qemu-img convert -O raw -c: a raw image has neither, and
			// ignoring them left the user believing the file compressed.
			return usagef("--compress and --cluster-size shape qcow2 output; a raw restore takes neither")
		}
		if out == "-" && !c.Bool("chain") && term.IsTerminal(int(os.Stdout.Fd())) {
			// As restic dump: a raw disk on a terminal is never meant.
			return usagef("-o - streams the raw image to stdout, which is a terminal: redirect it (-o - > FILE) or pipe it")
		}
		if out != "-" && !c.Bool("chain") {
			if err := checkOutputFile(out); err != nil {
				return err
			}
		} else if out != "-" {
			if err := checkOutputDir("--chain", out); err != nil {
				return err
			}
		}
		if out != "-" {
			if err := checkOutsideStore(c, out); err != nil {
				return err
			}
		}
		st, err := openStore(c, false, false)
		if err != nil {
			return err
		}
		defer st.Close()
		id, err := engram.Resolve(c.Context, st, c.Args().First())
		if err != nil {
			return err
		}
		opts := restore.Options{Format: format, Compress: c.Bool("compress"), Force: c.Bool("force")}
		if cs := c.String("cluster-size"); cs != "" {
			n, err := parseSize(cs)
			if err != nil || n < 512 || n > 2<<20 || n&(n-1) != 0 {
				return usagef("--cluster-size %q: want a power of two from 512 to 2M", cs)
			}
			opts.ClusterSize = int(n)
		} else if e, err := engram.Get(c.Context, st, id); err == nil {
			// The newest record with a qcow2 source decides; extended L2
			// keeps allocation as fine as the source's subclusters.
			for _, r := range e.Records {
				if r.ClusterSize > 0 {
					opts.ClusterSize = r.ClusterSize
					opts.ExtendedL2 = len(r.Chain) > 0 && r.Chain[0].ExtendedL2 && r.ClusterSize >= 16<<10
				}
			}
		}
		if c.Bool("chain") {
			if c.IsSet("backing") || out == "-" {
				return usagef("--chain writes files into the directory -o; it takes no --backing")
			}
			return restoreChain(c, st, id, out, opts)
		}
		if b := c.String("backing"); b != "" {
			if out == "-" || format != "qcow2" {
				return usagef("--backing needs qcow2 output to a file")
			}
			if b == "auto" {
				// "" when no engram on disk saves enough: restore standalone.
				if b, err = autoBacking(c, st, id); err != nil {
					return err
				}
			}
			if b != "" {
				im, err := qcow2.Open(b, qcow2.Options{})
				if err != nil {
					return err
				}
				defer im.Close()
				if opts.Backing, err = backingFor(c, st, im, out); err != nil {
					return err
				}
			}
		}
		if out == "-" {
			w := bufio.NewWriterSize(os.Stdout, 1<<20)
			if err := restore.ToWriter(c.Context, st, id, w, opts); err != nil {
				return err
			}
			return w.Flush()
		}
		if p := progressFor(c, "restore"); p != nil {
			opts.Progress = p
		}
		if err := restore.ToFile(c.Context, st, id, out, opts); err != nil {
			return err
		}
		if c.Bool(jsonFlag.Name) {
			return printJSON(c.App.Writer, map[string]any{"engram": id.String(), "output": out, "format": format})
		}
		if !c.Bool(quietFlag.Name) {
			fmt.Fprintf(c.App.ErrWriter, "restored %s to %s (%s)\n", id.Short(), escapeControl(out), format)
		}
		return nil
	},
}

// checkOutputFile refuses an -o that exists and is not a regular file
// before the store is opened (restore.ToFile refuses it too, but only
// after loading the engram), with a hint at what to do instead.
func checkOutputFile(out string) error {
	var ne *restore.NotRegularError
	if !errors.As(restore.CheckOutput(out), &ne) {
		return nil
	}
	hint := ""
	switch {
	case ne.Mode&os.ModeDevice != 0:
		hint = " (to write a device, stream raw: -o - > DEVICE)"
	case ne.Mode&(os.ModeNamedPipe|os.ModeSocket) != 0:
		hint = " (to feed a pipe, stream raw: -o -)"
	}
	return usagef("-o %s is %s, not a regular file: a restore would replace it with the file it writes%s", escapeControl(out), ne.Kind(), hint)
}

// checkOutsideStore refuses an -o in a directory store (or the store
// itself): with --force, `-o STORE/config.json` replaced the store's
// config and every later command said "not a chunk store"; a pack or
// index segment would go the same way.
func checkOutsideStore(c *cli.Context, out string) error {
	dir, err := storeDir(c)
	if err != nil || storeurl.IsBucket(dir) {
		return nil
	}
	store, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil // no store there: openStore says so
	}
	if store, err = filepath.Abs(store); err != nil {
		return nil
	}
	target := resolvePath(out)
	if rel, err := filepath.Rel(store, target); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
		return usagef("-o %s is inside the store %s: a restore there could replace the store's own files; restore elsewhere", escapeControl(out), escapeControl(dir))
	}
	return nil
}

// resolvePath is p made absolute with its symbolic links followed as far
// as they exist (a restore writes through a link to its target).
func resolvePath(p string) string {
	abs, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	rest := ""
	for cur := abs; ; {
		if r, err := filepath.EvalSymlinks(cur); err == nil {
			return filepath.Join(r, rest)
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return abs
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}

// checkOutputDir refuses an -o for --chain or --thin (mode) that exists
// and is not a directory: they write one file per engram into it.
func checkOutputDir(mode, out string) error {
	if fi, err := os.Stat(out); err == nil && !fi.IsDir() {
		return usagef("-o %s is not a directory: %s writes one file per engram into the directory -o", escapeControl(out), mode)
	}
	return nil
}

// parseSize reads 512, 64k, 2M, 1G, 1T (binary units). A size too big for
// an int64 is an error: wrapped, 18014398509481985k read as 1024.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.ToLower(strings.TrimSuffix(strings.ToLower(s), "b"))
	if t != "" {
		switch t[len(t)-1] {
		case 'k':
			mult, t = 1<<10, t[:len(t)-1]
		case 'm':
			mult, t = 1<<20, t[:len(t)-1]
		case 'g':
			mult, t = 1<<30, t[:len(t)-1]
		case 't':
			mult, t = 1<<40, t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}
