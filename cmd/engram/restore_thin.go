package main

import (
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	fleetview "github.com/engram-vm/engram/fleet"
	"github.com/engram-vm/engram/qcow2"
	"github.com/engram-vm/engram/restore"
)

// thinRow is one file of `restore --thin --json`.
type thinRow struct {
	File      string `json:"file"`
	ID        string `json:"id"`
	Name      string `json:"name,omitempty"`
	Backing   string `json:"backing,omitempty"` // file name in the same directory
	Depth     int    `json:"depth"`
	Bytes     int64  `json:"data_bytes"`      // planned guest data bytes in the file
	FlatBytes int64  `json:"flat_data_bytes"` // as a standalone file
	FileSize  int64  `json:"file_size,omitempty"`
}

// restoreThin plans and writes `restore --thin -o DIR ID|NAME...`.
func restoreThin(c *cli.Context) error {
	if c.NArg() == 0 {
		return usagef("restore --thin needs at least one ID or NAME")
	}
	dir := c.String("output")
	if dir == "" || dir == "-" {
		return usagef("restore --thin needs -o DIR")
	}
	if c.IsSet("backing") || c.Bool("chain") || c.IsSet("output-format") && c.String("output-format") != "qcow2" {
		return usagef("--thin writes qcow2 files; it takes no --backing, --chain or -O raw")
	}
	if err := checkOutputDir("--thin", dir); err != nil {
		return err
	}
	if err := checkOutsideStore(c, dir); err != nil {
		return err
	}
	st, err := openStore(c, false, false)
	if err != nil {
		return err
	}
	defer st.Close()
	var ids []engram.ID
	given := map[engram.ID]string{}
	for _, a := range c.Args().Slice() {
		id, err := engram.Resolve(c.Context, st, a)
		if err != nil {
			return err
		}
		// One engram is one file of the forest: a bad command line, not
		// a failure of the store (it exited 1).
		if prev, dup := given[id]; dup {
			if prev == a {
				return usagef("engram %s given twice: give each once", escapeControl(a))
			}
			return usagef("%s and %s are one engram (%s): give it once", escapeControl(prev), escapeControl(a), id.Short())
		}
		given[id] = a
		ids = append(ids, id)
	}
	f, err := fleetview.Load(c.Context, st)
	if err != nil {
		return err
	}
	// A file is named by the name given, not the engram's newest one: the
	// same content ingested as clone3 and later as flat3 is asked for as
	// clone3 and must not come out as flat3.qcow2.
	for i, a := range c.Args().Slice() {
		if m := f.Member(ids[i]); m != nil {
			for _, r := range m.Records {
				if r.Name == a {
					m.Name = a
				}
			}
		}
	}
	plan, err := f.PlanThin(c.Context, ids, fleetview.ThinOptions{})
	if err != nil {
		return err
	}
	rows := make([]thinRow, len(plan.Entries))
	for i, e := range plan.Entries {
		rows[i] = thinRow{File: e.File, ID: e.Member.ID.String(), Name: e.Member.Name, Depth: e.Depth, Bytes: e.Bytes, FlatBytes: e.FlatBytes}
		if e.Backing != nil {
			rows[i].Backing = e.Backing.File
		}
	}
	js := c.Bool(jsonFlag.Name)
	if !js && !c.Bool(quietFlag.Name) {
		printThinPlan(c, dir, rows, plan)
	}
	if c.Bool("dry-run") {
		if js {
			return printJSON(c.App.Writer, map[string]any{"dir": dir, "files": rows, "data_bytes": plan.Total, "flat_data_bytes": plan.FlatTotal, "dry_run": true})
		}
		return nil
	}
	opts := restore.Options{Compress: c.Bool("compress"), Force: c.Bool("force")}
	_, serr := os.Lstat(dir)
	made := os.IsNotExist(serr)
	written, err := f.WriteThin(c.Context, plan, dir, opts, func(file string) restore.Progress {
		if p := progressFor(c, file); p != nil {
			return p
		}
		return nil
	})
	if err != nil {
		// No half forest is left that looks restored (a failure,
		// Ctrl-C), as for --chain: the files this restore wrote go, and
		// the directory if it made it.
		for _, p := range written {
			_ = os.Remove(p)
		}
		if made {
			_ = os.Remove(dir)
		}
		return err
	}
	var total int64
	for i, p := range written {
		if fi, err := os.Stat(p); err == nil {
			rows[i].FileSize = fi.Size()
			total += fi.Size()
		}
	}
	if js {
		return printJSON(c.App.Writer, map[string]any{"dir": dir, "files": rows, "data_bytes": plan.Total, "flat_data_bytes": plan.FlatTotal, "file_bytes": total})
	}
	if !c.Bool(quietFlag.Name) {
		fmt.Fprintf(c.App.ErrWriter, "restored %s into %s: %s on disk\n", plural(len(written), "engram"), dir, bytesStr(total))
	}
	return nil
}

func printThinPlan(c *cli.Context, dir string, rows []thinRow, plan *fleetview.ThinPlan) {
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tENGRAM\tBACKING\tDATA\tFLAT")
	for _, r := range rows {
		b := "-"
		if r.Backing != "" {
			b = r.Backing
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", filepath.Join(dir, r.File), r.ID[:12], b, bytesStr(r.Bytes), bytesStr(r.FlatBytes))
	}
	saved := 0.0
	if plan.FlatTotal > 0 {
		saved = 100 * float64(plan.FlatTotal-plan.Total) / float64(plan.FlatTotal)
	}
	fmt.Fprintf(tw, "total\t%s\t\t%s\t%s\t(%.1f%% less than all flat)\n", plural(len(rows), "file"), bytesStr(plan.Total), bytesStr(plan.FlatTotal), saved)
	tw.Flush()
}

// autoBacking chooses the backing file for `restore --backing auto`: the
// source of another engram, still on disk unchanged, that leaves the
// fewest bytes to the overlay. It returns "" (restore standalone) when
// none saves enough, and says so.
func autoBacking(c *cli.Context, st chunkstore.Reader, id engram.ID) (string, error) {
	f, err := fleetview.Load(c.Context, st)
	if err != nil {
		return "", err
	}
	out := c.String("output")
	// A candidate that -o would replace (with --force) cannot back it:
	// take the next one rather than refuse.
	skipped := 0
	skip := func(path string) bool {
		im, err := qcow2.Open(path, qcow2.Options{})
		if err != nil {
			return false // backingFor reports it
		}
		defer im.Close()
		f, in := outputInChain(im, out)
		if in && !c.Bool(quietFlag.Name) {
			fmt.Fprintf(c.App.ErrWriter, "engram: --backing auto: skipping %s: -o %s is %s\n", escapeControl(path), escapeControl(out), escapeControl(f))
		}
		if in {
			skipped++
		}
		return in
	}
	ch, err := f.ChooseBacking(c.Context, id, fleetview.ThinOptions{Skip: skip})
	if err != nil {
		return "", err
	}
	if ch == nil && skipped > 0 {
		// Standalone would overwrite (with --force) a file other images
		// read through; nothing can back -o but what it replaces.
		return "", usagef("-o %s: --backing auto found no engram to back it that -o would not replace (its own backing)", escapeControl(out))
	}
	if ch == nil {
		if !c.Bool(quietFlag.Name) {
			fmt.Fprintf(c.App.ErrWriter, "engram: --backing auto: no engram whose source is on disk unchanged saves 10%%; restoring %s standalone\n", id.Short())
		}
		return "", nil
	}
	if !c.Bool(quietFlag.Name) {
		fmt.Fprintf(c.App.ErrWriter, "engram: --backing auto: %s (engram %s): overlay holds %s of %s\n",
			ch.Path, ch.Member.Label(), bytesStr(ch.Bytes), bytesStr(ch.FlatBytes))
	}
	return ch.Path, nil
}
