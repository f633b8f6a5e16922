package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/engram"
)

var sketchCommand = &cli.Command{
	Name:  "sketch",
	Usage: "show engram signatures; --rebuild computes missing ones (stores made before signatures)",
	Description: "Every ingest stores a 4 KiB signature beside the engram. Stores made before that, or\n" +
		"signatures of an older version, need --rebuild once: it reads each manifest (not the data).\n" +
		"--force recomputes every signature. The engram IDs do not change.",
	ArgsUsage: "[ID|NAME...]",
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "rebuild", Usage: "compute the signature of every engram that has none (or an old version, or a damaged one)"},
		&cli.BoolFlag{Name: "force", Usage: "with --rebuild: recompute every signature"},
	},
	Action: func(c *cli.Context) error {
		if c.Bool("force") && !c.Bool("rebuild") {
			return usagef("--force goes with --rebuild")
		}
		if c.Bool("rebuild") {
			if c.NArg() != 0 {
				return usagef("sketch --rebuild takes no arguments (it covers every engram)")
			}
			st, err := openStore(c, true, false)
			if err != nil {
				return err
			}
			defer st.Close()
			rep, err := engram.RebuildSketches(c.Context, st, c.Bool("force"))
			if err != nil {
				return err
			}
			if c.Bool(jsonFlag.Name) {
				if err := printJSON(c.App.Writer, rep); err != nil {
					return err
				}
			} else {
				for _, f := range rep.Failed {
					fmt.Fprintln(c.App.Writer, "failed:", f)
				}
				if !c.Bool(quietFlag.Name) {
					fmt.Fprintf(c.App.Writer, "signatures: %d computed, %s in the store\n", len(rep.Built), plural(rep.Engrams, "engram"))
				}
			}
			if len(rep.Failed) > 0 {
				return fmt.Errorf("sketch --rebuild: %s could not be read (listed above); run engram repair", plural(len(rep.Failed), "engram"))
			}
			return nil
		}
		st, err := openStore(c, false, false)
		if err != nil {
			return err
		}
		defer st.Close()
		var ids []engram.ID
		if c.NArg() == 0 {
			entries, err := engram.List(c.Context, st)
			if err != nil {
				return err
			}
			for _, e := range entries {
				ids = append(ids, e.ID)
			}
		}
		for _, a := range c.Args().Slice() {
			id, err := engram.Resolve(c.Context, st, a)
			if err != nil {
				return err
			}
			ids = append(ids, id)
		}
		ids = uniqueIDs(ids)
		type row struct {
			ID      string `json:"id"`
			Version int    `json:"version,omitempty"`
			Bytes   int    `json:"encoded_bytes,omitempty"`
			Weight  uint64 `json:"weight_units"`
			Chunks  uint64 `json:"chunks"`
			Filled  int    `json:"filled_bins"`
			Missing string `json:"missing,omitempty"`
		}
		rows := []row{} // --json: [] for an empty store, not null
		missing := 0
		for _, id := range ids {
			s, err := engram.LoadSketch(c.Context, st, id)
			if err != nil {
				rows = append(rows, row{ID: id.String(), Missing: err.Error()})
				missing++
				continue
			}
			rows = append(rows, row{ID: id.String(), Version: 1, Bytes: len(s.Encode()), Weight: s.Weight, Chunks: s.Chunks, Filled: s.Filled()})
		}
		if c.Bool(jsonFlag.Name) {
			return printJSON(c.App.Writer, rows)
		}
		tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tBYTES\tCONTENT\tCHUNKS\tBINS FILLED")
		for _, r := range rows {
			if r.Missing != "" {
				fmt.Fprintf(tw, "%s\t-\t%s\n", r.ID[:12], r.Missing)
				continue
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\n", r.ID[:12], r.Bytes, bytesStr(int64(r.Weight)*4096), r.Chunks, r.Filled)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if missing > 0 && !c.Bool(quietFlag.Name) {
			fmt.Fprintf(c.App.ErrWriter, "engram: %s no signature; run engram sketch --rebuild\n", pluralVerb(missing, "engram", "has", "have"))
		}
		return nil
	},
}
