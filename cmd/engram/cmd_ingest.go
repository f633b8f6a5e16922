package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/ingest"
	"github.com/engram-vm/engram/qcow2"
)

var formatFlag = &cli.StringFlag{Name: "format", Aliases: []string{"f"}, Usage: "input format: qcow2 or raw (default: detect by magic)"}

var ingestCommand = &cli.Command{
	Name:      "ingest",
	Usage:     "archive disk images; prints each engram ID",
	ArgsUsage: "IMAGE...",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "name", Usage: "name for the engram (one image only)"},
		&cli.StringSliceFlag{Name: "label", Usage: "label key=value (repeatable)"},
		formatFlag,
	},
	Action: func(c *cli.Context) error {
		if c.NArg() == 0 {
			return usagef("ingest needs at least one IMAGE")
		}
		if c.String("name") != "" && c.NArg() > 1 {
			return usagef("--name needs exactly one IMAGE")
		}
		if f := c.String("format"); f != "" && f != "qcow2" && f != "raw" {
			return usagef("--format %q: want qcow2 or raw", f)
		}
		labels, err := parseLabels(c.StringSlice("label"))
		if err != nil {
			return err
		}
		// Open every image before touching the store, so a bad argument
		// fails before anything is written.
		var imgs []*qcow2.Image
		defer func() {
			for _, im := range imgs {
				im.Close()
			}
		}()
		for _, path := range c.Args().Slice() {
			im, err := qcow2.Open(path, qcow2.Options{Format: c.String("format"), Warn: func(msg string) {
				fmt.Fprintf(c.App.ErrWriter, "engram: %s\n", msg)
			}})
			if err != nil {
				return err
			}
			imgs = append(imgs, im)
		}
		st, err := openStore(c, true, true)
		if err != nil {
			return err
		}
		defer st.Close()

		var results []*engram.Record
		for _, im := range imgs {
			opts := ingest.Options{}
			if p := progressFor(c, filepath.Base(im.Path())); p != nil {
				opts.Progress = p
			}
			res, err := ingest.Run(c.Context, st, im, opts)
			if err != nil {
				return fmt.Errorf("ingest %s: %w", im.Path(), err)
			}
			rec := newRecord(im, c.String("name"), labels, res.Stats)
			if err := engram.Commit(c.Context, st, res.ID, res.Enc, rec); err != nil {
				return fmt.Errorf("ingest %s: commit: %w", im.Path(), err)
			}
			results = append(results, rec)
			if !c.Bool(jsonFlag.Name) {
				fmt.Fprintln(c.App.Writer, res.ID)
			}
			if !c.Bool(quietFlag.Name) && !c.Bool(jsonFlag.Name) {
				s := res.Stats
				fmt.Fprintf(c.App.ErrWriter, "%s: %s virtual, %s data, %s new in %d chunks (%.1fs)\n",
					im.Path(), bytesStr(im.Size()), bytesStr(s.StoredBytes), bytesStr(s.NewBytes), s.NewChunks, s.Duration.Seconds())
			}
		}
		if c.Bool(jsonFlag.Name) {
			return printJSON(c.App.Writer, results)
		}
		return nil
	},
}

// newRecord describes one ingest of im.
func newRecord(im *qcow2.Image, name string, labels map[string]string, s engram.IngestStats) *engram.Record {
	info := im.Info()
	src, err := filepath.Abs(im.Path())
	if err != nil {
		src = im.Path()
	}
	rec := &engram.Record{
		Name:        name,
		Labels:      labels,
		Source:      src,
		Format:      info.Format,
		ClusterSize: info.ClusterSize,
		VirtualSize: im.Size(),
		Created:     time.Now().UTC(),
		Stats:       s,
	}
	for l := im; l != nil; l = l.Backing() {
		li := l.Info()
		p, err := filepath.Abs(l.Path())
		if err != nil {
			p = l.Path()
		}
		fsize := li.FileSize
		if fsize == 0 {
			if fi, err := os.Stat(l.Path()); err == nil {
				fsize = fi.Size()
			}
		}
		rec.Chain = append(rec.Chain, engram.Layer{
			Path: p, Format: li.Format, ClusterSize: li.ClusterSize, Size: li.VirtualSize,
			FileSize: fsize, Compression: li.CompressionType, ExtendedL2: li.ExtendedL2,
		})
	}
	return rec
}
