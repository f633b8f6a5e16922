package main

import (
	"fmt"
	"sort"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/chunkstore/storeurl"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/view"
)

var gcCommand = &cli.Command{
	Name:      "gc",
	Usage:     "reclaim the space of chunks no engram needs",
	ArgsUsage: " ",
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "only say what would be freed"},
		&cli.Float64Flag{Name: "threshold", Value: 0.5, Usage: "rewrite packs whose live fraction falls below this"},
		&cli.DurationFlag{Name: "margin", Value: chunkstore.DefaultGCMargin, Usage: "s3:// stores: how long a pack one gc condemned waits before a later gc deletes it (ingests must finish within it)"},
	},
	Action: func(c *cli.Context) error {
		if c.Duration("margin") <= 0 {
			return usagef("--margin %s: want a positive duration", c.Duration("margin"))
		}
		threshold := c.Float64("threshold")
		if !(threshold >= 0 && threshold <= 1) { // NaN too
			// Above 1 every pack would be rewritten by every gc.
			return usagef("--threshold %g: want a live fraction from 0 to 1", threshold)
		}
		if threshold == 0 {
			// No live fraction is below 0: rewrite nothing (GCOptions'
			// zero value is its default, 0.5, which --threshold 0 got).
			threshold = -1
		}
		// A directory store is locked against ingests for the whole run,
		// so its dead packs go at once; a bucket waits out --margin.
		st, err := openStoreLocked(c, true, false, true)
		if err != nil {
			return err
		}
		defer st.Close()
		live := map[chunkstore.ID]struct{}{}
		if err := engram.LiveChunks(c.Context, st, func(id chunkstore.ID) { live[id] = struct{}{} }); err != nil {
			return fmt.Errorf("gc: cannot list what engrams need, nothing removed: %w", err)
		}
		// Engrams a running mount or serve reads stay, even after rm.
		if err := view.PinnedChunks(c.Context, pinDir(st), st, func(id chunkstore.ID) { live[id] = struct{}{} }); err != nil {
			return fmt.Errorf("gc: cannot list what pinned engrams need, nothing removed: %w", err)
		}
		opts := chunkstore.GCOptions{DryRun: c.Bool("dry-run"), Threshold: threshold, Margin: c.Duration("margin")}
		if p := progressFor(c, "gc"); p != nil {
			started := false
			var last int64
			opts.Progress = func(done, total int64) {
				if !started {
					p.Start(total)
					started = true
				}
				p.Add(done - last)
				last = done
			}
			defer func() {
				if started {
					p.Finish()
				}
			}()
		}
		stats, err := st.GC(c.Context, func(id chunkstore.ID) bool { _, ok := live[id]; return ok }, opts)
		if err != nil {
			return err
		}
		if c.Bool(jsonFlag.Name) {
			if err := printJSON(c.App.Writer, stats); err != nil {
				return err
			}
		} else if !c.Bool(quietFlag.Name) {
			verb := "freed"
			if c.Bool("dry-run") {
				verb = "would free"
			}
			fmt.Fprintf(c.App.Writer, "%d of %s unreferenced (%s stored); %s %s of pack files (%s rewritten, %d deleted, %s moved)\n",
				stats.DeadChunks, plural(stats.Chunks, "chunk"), bytesStr(stats.DeadBytes), verb, bytesStr(stats.BytesFreed),
				plural(stats.PacksRewritten, "pack"), stats.PacksDeleted, plural(stats.ChunksMoved, "chunk"))
		}
		if n := len(stats.Unindexed); n > 0 {
			// gc did its work around the damage, but engrams cannot read
			// those chunks until repair indexes them: like restic prune on
			// an incomplete index, say what to run and exit 1, so a
			// nightly script sees it.
			more := ""
			if n > 1 {
				more = fmt.Sprintf(" and %d more packs", n-1)
			}
			return fmt.Errorf("gc: kept %s%s: its index segment is lost but engrams need its chunks; run engram repair to index it again (until then those engrams cannot be restored)",
				escapeControl(stats.Unindexed[0]), more)
		}
		return nil
	},
}

var verifyCommand = &cli.Command{
	Name:      "verify",
	Usage:     "re-read and re-hash the store and check that engrams are complete",
	ArgsUsage: "[ID|NAME...]",
	Action: func(c *cli.Context) error {
		// A whole-store verify reads every pack: it holds a directory
		// store's lock shared, as an ingest does, so a gc waits for it
		// (as restic's check and prune exclude each other) instead of
		// deleting packs under it that it would then call damaged.
		st, err := openStoreWith(c, false, false, storeurl.Options{HoldShared: c.NArg() == 0})
		if err != nil {
			return err
		}
		defer st.Close()
		ids, err := resolveAll(c.Context, st, c.Args().Slice())
		if err != nil {
			return err
		}
		ids = uniqueIDs(ids)
		bad := map[chunkstore.ID]bool{}
		problems := []string{} // --json: [] when clean, not null
		objects := 0           // problems of a pack or segment as a whole, not of a chunk
		if len(ids) == 0 {
			_, err := st.Verify(c.Context, func(p chunkstore.Problem) {
				bad[p.ID] = true
				problems = append(problems, p.String())
				if p.ID.IsZero() {
					objects++
				}
			})
			if err != nil {
				return err
			}
			entries, err := engram.List(c.Context, st)
			if err != nil {
				return err
			}
			for _, e := range entries {
				ids = append(ids, e.ID)
			}
		}
		damaged := []string{}
		for _, id := range ids {
			if err := engram.Check(c.Context, st, id, func(x chunkstore.ID) bool { return bad[x] }); err != nil {
				name := ""
				if e, err := engram.Get(c.Context, st, id); err == nil {
					for _, r := range e.Records {
						if r.Name != "" {
							name = " (" + r.Name + ")"
						}
					}
				}
				damaged = append(damaged, fmt.Sprintf("%s%s: %v", id, name, err))
			}
		}
		if c.Bool(jsonFlag.Name) {
			if err := printJSON(c.App.Writer, map[string]any{"engrams": len(ids), "chunk_problems": problems, "damaged_engrams": damaged}); err != nil {
				return err
			}
		} else {
			for _, p := range problems {
				fmt.Fprintln(c.App.Writer, "damaged:", p)
			}
			for _, d := range damaged {
				fmt.Fprintln(c.App.Writer, "damaged engram:", d)
			}
		}
		if len(problems)+len(damaged) > 0 {
			what := ""
			if objects > 0 {
				// Packs, segments, journal entries, lists, or what
				// stands in their place.
				what = fmt.Sprintf(", %s", plural(objects, "damaged object"))
			}
			return fmt.Errorf("verify: %s%s, %d of %s damaged", plural(len(problems)-objects, "damaged chunk"), what, len(damaged), plural(len(ids), "engram"))
		}
		if !c.Bool(quietFlag.Name) && !c.Bool(jsonFlag.Name) {
			fmt.Fprintf(c.App.Writer, "ok: %s verified\n", plural(len(ids), "engram"))
		}
		return nil
	},
}

var statsCommand = &cli.Command{
	Name:      "stats",
	Usage:     "store totals and what each engram costs",
	ArgsUsage: " ",
	Action: func(c *cli.Context) error {
		st, err := openStore(c, false, false)
		if err != nil {
			return err
		}
		defer st.Close()
		s, err := st.Stats(c.Context)
		if err != nil {
			return err
		}
		us, err := engram.Usages(c.Context, st)
		if err != nil {
			return err
		}
		sort.Slice(us, func(i, j int) bool { return us[i].UniqueBytes > us[j].UniqueBytes })
		var virt, data int64
		for _, u := range us {
			virt += u.VirtualSize
			data += u.DataBytes
		}
		dedup, comp := ratio(data, s.RawBytes), ratio(s.RawBytes, s.StoredBytes)
		if c.Bool(jsonFlag.Name) {
			return printJSON(c.App.Writer, map[string]any{
				"engrams": len(us), "virtual_bytes": virt, "data_bytes": data, "store": s,
				"dedup_ratio": dedup, "compression_ratio": comp, "per_engram": us,
			})
		}
		w := c.App.Writer
		fmt.Fprintf(w, "engrams:     %d\n", len(us))
		fmt.Fprintf(w, "logical:     %s virtual, %s data\n", bytesStr(virt), bytesStr(data))
		// A ratio of nothing to nothing is shown as "-", not 0.00x.
		times := func(r float64, den int64) string {
			if den == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2fx", r)
		}
		fmt.Fprintf(w, "unique data: %s in %s (dedup %s)\n", bytesStr(s.RawBytes), plural(s.Chunks, "chunk"), times(dedup, s.RawBytes))
		fmt.Fprintf(w, "stored:      %s (compression %s), %s in %s on disk\n", bytesStr(s.StoredBytes), times(comp, s.StoredBytes), bytesStr(s.PackBytes), plural(s.Packs, "pack"))
		if len(us) > 0 {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "\nID\tNAME\tVIRTUAL\tDATA\tUNIQUE\tSHARED")
			for _, u := range us {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", u.ID.Short(), u.Name, bytesStr(u.VirtualSize), bytesStr(u.DataBytes), bytesStr(u.UniqueBytes), bytesStr(u.SharedBytes))
			}
			return tw.Flush()
		}
		return nil
	},
}

func ratio(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
