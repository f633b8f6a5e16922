package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/chunkstore/storeurl"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/ingest"
	"github.com/engram-vm/engram/qcow2"
)

var formatFlag = &cli.StringFlag{Name: "format", Aliases: []string{"f"}, Usage: "input format: qcow2 or raw (default: detect by magic)"}

var ingestCommand = &cli.Command{
	Name:  "ingest",
	Usage: "archive disk images (files, or directories of them); prints each engram ID",
	Description: "An overlay is ingested layer by layer: each layer of its backing chain becomes an engram\n" +
		"linked to the one below. A layer already ingested unchanged is recognised and not read, and an\n" +
		"overlay over a known base costs only its own clusters.",
	ArgsUsage: "IMAGE|DIR...",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "name", Usage: "name for the engram (one image only)"},
		&cli.StringSliceFlag{Name: "label", Usage: "label key=value (repeatable)"},
		&cli.BoolFlag{Name: "reread", Usage: "read every layer again instead of trusting fingerprints"},
		&cli.BoolFlag{Name: "force-share", Aliases: []string{"U"}, Usage: "read an image another process has open for writing (QEMU's write lock held), as qemu-img -U does; what it writes meanwhile may be torn"},
		&cli.BoolFlag{Name: "refuse-corrupt", Usage: "refuse images marked corrupt (QEMU's corrupt bit) instead of reading them read-only as QEMU does"},
		formatFlag,
	},
	Action: func(c *cli.Context) error {
		if c.NArg() == 0 {
			return usagef("ingest needs at least one IMAGE or DIR")
		}
		if f := c.String("format"); f != "" && f != "qcow2" && f != "raw" {
			return usagef("--format %q: want qcow2 or raw", f)
		}
		labels, err := parseLabels(c.StringSlice("label"))
		if err != nil {
			return err
		}
		paths, skipped, err := expandImages(c.Args().Slice())
		for _, sk := range skipped {
			fmt.Fprintf(c.App.ErrWriter, "engram: %s: skipped: %s\n", escapeControl(sk.path), sk.why)
		}
		if err != nil {
			return err
		}
		if c.String("name") != "" && len(paths) > 1 {
			return usagef("--name needs exactly one IMAGE")
		}
		if c.IsSet("name") {
			if err := engram.CheckName(c.String("name")); err != nil {
				return usagef("--name %s: %v", escapeControl(c.String("name")), err)
			}
		}
		// Open every image before touching the store, so a bad argument
		// fails before anything is written.
		var imgs []*qcow2.Image
		defer func() {
			for _, im := range imgs {
				im.Close()
			}
		}()
		for _, path := range paths {
			im, err := qcow2.Open(path, qcow2.Options{Format: c.String("format"), RefuseCorrupt: c.Bool("refuse-corrupt"), Warn: warnFunc(c), Note: noteFunc(c)})
			if err != nil {
				return err
			}
			// As qemu-img: a disk a VM is writing archives torn.
			if !c.Bool("force-share") {
				if err := qcow2.CheckWriters(im); err != nil {
					im.Close()
					return err
				}
			}
			imgs = append(imgs, im)
		}
		// Packs become durable together at each image's commit (its
		// journal object), not one by one: see docs/DESIGN.md
		// "Durability".
		st, err := openStoreWith(c, true, true, storeurl.Options{DeferSync: true})
		if err != nil {
			return err
		}
		defer st.Close()

		var rows []ingestRow
		for i, im := range imgs {
			start := time.Now()
			opts := ingest.ImageOptions{Name: c.String("name"), Labels: labels, Reread: c.Bool("reread")}
			desc := escapeControl(filepath.Base(im.Path()))
			if len(imgs) > 1 {
				desc = fmt.Sprintf("[%d/%d] %s", i+1, len(imgs), desc)
			}
			if p := progressFor(c, desc); p != nil {
				opts.Progress = p
			}
			layers, err := ingest.Image(c.Context, st, im, opts)
			if err != nil {
				if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
					// Close would make this image's staged packs durable;
					// nothing will commit them, and on a full disk they
					// hold the space gc itself needs to run.
					if d, ok := st.(interface{ DiscardStaged() }); ok {
						d.DiscardStaged()
					}
				}
				if errors.Is(err, ingest.ErrStoreChunking) {
					return fmt.Errorf("%s: %w", storeConfigPath(c), err)
				}
				// Name the image once: the error names the layer at fault,
				// which is often the image itself.
				if le := (*ingest.LayerError)(nil); errors.As(err, &le) && le.Path == im.Path() {
					return fmt.Errorf("ingest: %w", err)
				}
				return fmt.Errorf("ingest %s: %w", im.Path(), err)
			}
			top := layers[len(layers)-1]
			row := ingestRow{Image: im.Path(), ID: top.ID.String(), Virtual: im.Size(), Seconds: time.Since(start).Seconds()}
			row.Allocated, _ = ingest.AllocatedBytes(im)
			for _, l := range layers {
				if l.Record != nil {
					row.Read += l.Record.Stats.DataBytes
					row.New += l.Record.Stats.NewBytes
				}
			}
			if top.Record != nil {
				row.CorruptMarked = top.Record.CorruptMarked
			}
			row.How = "full"
			switch {
			case top.Reused:
				row.How = "unchanged"
			case top.Incremental:
				row.How = "overlay"
			}
			rows = append(rows, row)
			if !c.Bool(jsonFlag.Name) {
				fmt.Fprintln(c.App.Writer, top.ID)
			}
		}
		if c.Bool(jsonFlag.Name) {
			if err := printJSON(c.App.Writer, rows); err != nil {
				return err
			}
		} else if !c.Bool(quietFlag.Name) {
			printIngestSummary(c, rows)
		}
		if len(skipped) > 0 {
			// The rest are ingested; a script must still see that
			// something it pointed at was not.
			n := len(skipped)
			return fmt.Errorf("%s named *.qcow2 %s skipped (named above); the other images were ingested", plural(n, "file"), pick(n, "was", "were"))
		}
		return nil
	},
}

// ingestRow is one line of the ingest summary.
type ingestRow struct {
	Image     string  `json:"image"`
	ID        string  `json:"id"`
	Virtual   int64   `json:"virtual_bytes"`
	Allocated int64   `json:"allocated_bytes"`
	Read      int64   `json:"read_bytes"`
	New       int64   `json:"new_bytes"`
	How       string  `json:"how"` // full, overlay (only its own clusters read) or unchanged (recognised, not read)
	Seconds   float64 `json:"seconds"`
	// CorruptMarked: a file of the chain had QEMU's corrupt bit set.
	CorruptMarked bool `json:"corrupt_marked,omitempty"`
}

func printIngestSummary(c *cli.Context, rows []ingestRow) {
	tw := tabwriter.NewWriter(c.App.ErrWriter, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tID\tVIRTUAL\tALLOCATED\tREAD\tNEW\tHOW\tTIME")
	var alloc, read, newB int64
	var secs float64
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1fs\n", escapeControl(r.Image), r.ID[:12], bytesStr(r.Virtual), bytesStr(r.Allocated),
			bytesStr(r.Read), bytesStr(r.New), r.How, r.Seconds)
		alloc += r.Allocated
		read += r.Read
		newB += r.New
		secs += r.Seconds
	}
	if len(rows) > 1 {
		fmt.Fprintf(tw, "total (%d images)\t\t\t%s\t%s\t%s\t\t%.1fs\n", len(rows), bytesStr(alloc), bytesStr(read), bytesStr(newB), secs)
	}
	tw.Flush()
}

// expandImages replaces each directory argument by the image files in it
// (qcow2 by magic, or named *.raw / *.img), sorted; files pass as they are.
func expandImages(args []string) (paths []string, skipped []skippedFile, err error) {
	for _, a := range args {
		fi, err := os.Stat(a)
		if err != nil {
			// The *fs.PathError names a already: "a: stat a: ..." otherwise.
			if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
				err = pe.Err
			}
			return nil, skipped, fmt.Errorf("%s: %w", a, err)
		}
		if !fi.IsDir() {
			paths = append(paths, a)
			continue
		}
		ents, err := os.ReadDir(a)
		if err != nil {
			return nil, skipped, err
		}
		var found []string
		for _, e := range ents {
			p := filepath.Join(a, e.Name())
			regular := e.Type().IsRegular()
			if e.Type()&fs.ModeSymlink != 0 {
				// An image directory often links to the images (libvirt
				// pools, a "current" set): follow a link to a file, as
				// naming the link itself as an argument does.
				fi, err := os.Stat(p)
				regular = err == nil && fi.Mode().IsRegular()
				if err != nil && strings.HasSuffix(e.Name(), ".qcow2") {
					skipped = append(skipped, skippedFile{p, "a symbolic link to nothing"})
				}
			}
			if !regular {
				continue
			}
			isQ, why := qcow2Magic(p)
			switch {
			case isQ || strings.HasSuffix(e.Name(), ".raw") || strings.HasSuffix(e.Name(), ".img"):
				found = append(found, p)
			case strings.HasSuffix(e.Name(), ".qcow2"):
				// Its name says it is an image: skipping it unsaid would
				// leave a backup the user believes was made.
				skipped = append(skipped, skippedFile{p, why})
			}
		}
		if len(found) == 0 {
			return nil, skipped, fmt.Errorf("%s: no images in directory (qcow2, *.raw, *.img)", a)
		}
		sort.Strings(found)
		paths = append(paths, found...)
	}
	return paths, skipped, nil
}

// skippedFile is a directory entry named like an image that is not one.
type skippedFile struct{ path, why string }

// qcow2Magic reports whether path starts with the qcow2 magic, and if not
// why, for the message naming a skipped *.qcow2.
func qcow2Magic(path string) (bool, string) {
	f, err := os.Open(path)
	if err != nil {
		if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
			err = pe.Err
		}
		return false, err.Error()
	}
	defer f.Close()
	var m [4]byte
	if _, err := f.ReadAt(m[:], 0); err != nil {
		return false, "not a qcow2 image (shorter than its 4-byte magic)"
	}
	if string(m[:]) != "QFI\xfb" {
		return false, fmt.Sprintf("not a qcow2 image (magic %x, want 514649fb)", m[:])
	}
	return true, ""
}

// storeConfigPath names the store's config.json for messages.
func storeConfigPath(c *cli.Context) string {
	dir, _ := storeDir(c)
	if storeurl.IsBucket(dir) {
		return strings.TrimSuffix(dir, "/") + "/config.json"
	}
	return escapeControl(filepath.Join(dir, "config.json"))
}
