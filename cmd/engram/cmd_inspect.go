package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/qcow2"
)

// mapEntry has the shape of one element of `qemu-img map --output=json`.
type mapEntry struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	Offset  *int64 `json:"offset,omitempty"`
}

var inspectCommand = &cli.Command{
	Name:      "inspect",
	Usage:     "show what engram sees in an image before ingesting it",
	ArgsUsage: "IMAGE",
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "map", Usage: "print the extent map, shaped like `qemu-img map --output=json`"},
		formatFlag,
	},
	Action: func(c *cli.Context) error {
		if c.NArg() != 1 {
			return usagef("inspect needs exactly one IMAGE")
		}
		im, err := qcow2.Open(c.Args().First(), qcow2.Options{Format: c.String("format"), Warn: warnFunc(c), Note: noteFunc(c)})
		if err != nil {
			return err
		}
		defer im.Close()
		exts, err := im.Extents(0, im.Size())
		if err != nil {
			return err
		}
		if c.Bool("map") {
			out := make([]mapEntry, 0, len(exts))
			for _, e := range exts {
				m := mapEntry{Start: e.Start, Length: e.Length, Depth: e.Depth, Present: e.Present, Zero: e.Zero, Data: e.Data}
				if e.Offset >= 0 {
					off := e.Offset
					m.Offset = &off
				}
				out = append(out, m)
			}
			return printJSON(c.App.Writer, out)
		}
		var data, zero int64
		for _, e := range exts {
			switch {
			case e.Data && !e.Zero:
				data += e.Length
			case e.Present:
				zero += e.Length
			}
		}
		var chain []qcow2.Info
		for l := im; l != nil; l = l.Backing() {
			chain = append(chain, l.Info())
		}
		if c.Bool(jsonFlag.Name) {
			return printJSON(c.App.Writer, map[string]any{
				"virtual_size": im.Size(), "data_bytes": data, "zero_bytes": zero, "chain": chain,
			})
		}
		w := c.App.Writer
		fmt.Fprintf(w, "image:        %s\n", escapeControl(im.Path()))
		fmt.Fprintf(w, "virtual size: %s (%d bytes)\n", bytesStr(im.Size()), im.Size())
		fmt.Fprintf(w, "data:         %s allocated data, %s allocated as zero, %s unallocated\n",
			bytesStr(data), bytesStr(zero), bytesStr(im.Size()-data-zero))
		for i, in := range chain {
			fmt.Fprintf(w, "layer %d:      %s: %s\n", i, escapeControl(in.Path), describe(in))
		}
		return nil
	},
}

func describe(in qcow2.Info) string {
	if in.Format != "qcow2" {
		return fmt.Sprintf("%s, %s on disk", in.Format, bytesStr(in.FileSize))
	}
	parts := []string{fmt.Sprintf("qcow2 v%d", in.Version), bytesStr(int64(in.ClusterSize)) + " clusters",
		fmt.Sprintf("%d-bit refcounts", in.RefcountBits), "compression type " + qemuCompressionName(in.CompressionType), bytesStr(in.FileSize) + " on disk"}
	if in.ExtendedL2 {
		parts = append(parts, "extended L2")
	}
	if in.DataFile != "" {
		parts = append(parts, "data file "+in.DataFile)
	}
	if in.Dirty {
		parts = append(parts, "dirty")
	}
	if in.CorruptMarked {
		parts = append(parts, "marked corrupt (read read-only, as QEMU does)")
	}
	if in.Snapshots > 0 {
		parts = append(parts, plural(in.Snapshots, "internal snapshot")+" (read past)")
	}
	if in.Bitmaps > 0 {
		parts = append(parts, plural(in.Bitmaps, "bitmap")+" (read past)")
	}
	if in.BackingFile != "" {
		parts = append(parts, fmt.Sprintf("backing %s (%s)", in.BackingFile, in.BackingFormat))
	}
	return strings.Join(parts, ", ")
}

// qemuCompressionName names a compression type the way qemu-img info does.
func qemuCompressionName(t string) string {
	if t == "deflate" {
		return "zlib"
	}
	return t
}
