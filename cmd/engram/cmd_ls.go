package main

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
)

var lsCommand = &cli.Command{
	Name:      "ls",
	Usage:     "list the engrams in the store",
	ArgsUsage: " ",
	Action: func(c *cli.Context) error {
		st, err := openStore(c, false, false)
		if err != nil {
			return err
		}
		defer st.Close()
		entries, err := engram.List(c.Context, st)
		if err != nil {
			return err
		}
		// The names that select each engram now: a record keeps the name
		// it was ingested under after the name moved to a newer ingest.
		names, err := engram.Names(c.Context, st)
		if err != nil {
			return err
		}
		if c.Bool(jsonFlag.Name) {
			out := []map[string]any{}
			for _, e := range entries {
				out = append(out, map[string]any{"id": e.ID.String(), "names": nonNil(names[e.ID]), "virtual_size": e.Size, "records": e.Records})
			}
			return printJSON(c.App.Writer, out)
		}
		if c.Bool(quietFlag.Name) {
			for _, e := range entries {
				fmt.Fprintln(c.App.Writer, e.ID)
			}
			return nil
		}
		tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tVIRTUAL\tDATA\tCREATED\tSOURCE")
		for _, e := range entries {
			var data int64
			created, source := "-", "-"
			for _, r := range e.Records {
				// The engram's data, not the last ingest's reading of it:
				// a re-ingest recognised unchanged reads (and records) none.
				data = max(data, r.Stats.StoredBytes)
				created = r.Created.Local().Format("2006-01-02 15:04")
				source = r.Source
			}
			name := strings.Join(names[e.ID], ",")
			if name == "" {
				name = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.ID.Short(), escapeControl(name), bytesStr(e.Size), bytesStr(data), created, escapeControl(source))
		}
		return tw.Flush()
	},
}

var showCommand = &cli.Command{
	Name:      "show",
	Usage:     "show an engram: metadata, source chain, sizes",
	ArgsUsage: "ID|NAME",
	Action: func(c *cli.Context) error {
		if c.NArg() != 1 {
			return usagef("show needs exactly one ID or NAME")
		}
		st, id, err := openOne(c)
		if err != nil {
			return err
		}
		defer st.Close()
		e, err := engram.Get(c.Context, st, id)
		if err != nil {
			return err
		}
		root, err := engram.LoadRoot(c.Context, st, id)
		if err != nil {
			return err
		}
		var chunks, data int64
		err = engram.ForEachChunk(c.Context, st, root, func(r engram.ChunkRef) error {
			chunks++
			data += int64(r.Length)
			return nil
		})
		if err != nil {
			return err
		}
		names, err := engram.Names(c.Context, st)
		if err != nil {
			return err
		}
		if c.Bool(jsonFlag.Name) {
			return printJSON(c.App.Writer, map[string]any{
				"id": id.String(), "names": nonNil(names[id]), "virtual_size": root.Size, "pages": len(root.Pages),
				"chunks": chunks, "data_bytes": data, "records": e.Records,
			})
		}
		w := c.App.Writer
		fmt.Fprintf(w, "engram:       %s\n", id)
		if ns := names[id]; len(ns) > 0 {
			fmt.Fprintf(w, "names:        %s\n", escapeControl(strings.Join(ns, ", ")))
		}
		fmt.Fprintf(w, "virtual size: %s (%d bytes)\n", bytesStr(root.Size), root.Size)
		fmt.Fprintf(w, "data:         %s in %s, %s\n", bytesStr(data), plural(chunks, "chunk"), plural(len(root.Pages), "manifest page"))
		for _, r := range e.Records {
			fmt.Fprintf(w, "\ningested %s", r.Created.Local().Format("2006-01-02 15:04:05"))
			if r.Name != "" {
				fmt.Fprintf(w, " as %q", r.Name)
			}
			fmt.Fprintf(w, " from %s (%s", escapeControl(r.Source), r.Format)
			if r.ClusterSize > 0 {
				fmt.Fprintf(w, ", %s clusters", bytesStr(int64(r.ClusterSize)))
			}
			fmt.Fprintf(w, ")\n")
			if r.Parent != "" {
				fmt.Fprintf(w, "  overlay on engram %s\n", r.Parent)
			}
			if r.Reused {
				fmt.Fprintf(w, "  recognised unchanged by its fingerprint; nothing read\n")
			}
			if r.CorruptMarked {
				fmt.Fprintf(w, "  marked corrupt: the source had QEMU's corrupt bit set; read read-only as QEMU does\n")
			}
			for k, v := range r.Labels {
				fmt.Fprintf(w, "  label %s=%s\n", k, v)
			}
			for i, l := range r.Chain {
				mark := ""
				if l.CorruptMarked {
					mark = ", marked corrupt"
				}
				fmt.Fprintf(w, "  %*s%s (%s, %s on disk%s)\n", 2*i, "", escapeControl(l.Path), l.Format, bytesStr(l.FileSize), mark)
			}
			s := r.Stats
			fmt.Fprintf(w, "  read %s, stored %s new in %s, %.1fs\n", bytesStr(s.DataBytes), bytesStr(s.NewBytes), plural(s.NewChunks, "chunk"), s.Duration.Seconds())
		}
		return nil
	},
}

var rmCommand = &cli.Command{
	Name:      "rm",
	Usage:     "remove engrams (run gc afterwards to reclaim their chunks)",
	ArgsUsage: "ID|NAME...",
	Action: func(c *cli.Context) error {
		if c.NArg() == 0 {
			return usagef("rm needs at least one ID or NAME")
		}
		st, err := openStore(c, true, false)
		if err != nil {
			return err
		}
		defer st.Close()
		ids, err := resolveAll(c.Context, st, c.Args().Slice())
		if err != nil {
			return err
		}
		if err := checkOtherNames(c, st, c.Args().Slice(), ids); err != nil {
			return err
		}
		// Two arguments for one engram (its name and its ID, two names)
		// remove it once: the second Remove would fail on it as missing.
		seen := map[engram.ID]bool{}
		ids = slices.DeleteFunc(ids, func(id engram.ID) bool { dup := seen[id]; seen[id] = true; return dup })
		for _, id := range ids {
			if err := engram.Remove(c.Context, st, id); err != nil {
				return err
			}
			if !c.Bool(jsonFlag.Name) {
				fmt.Fprintf(c.App.Writer, "removed %s\n", id)
			}
		}
		if c.Bool(jsonFlag.Name) {
			var out []string
			for _, id := range ids {
				out = append(out, id.String())
			}
			return printJSON(c.App.Writer, map[string]any{"removed": out})
		}
		if !c.Bool(quietFlag.Name) {
			fmt.Fprintln(c.App.ErrWriter, "run `engram gc` to reclaim the space of chunks no engram needs any more")
		}
		return nil
	},
}

// checkOtherNames refuses an rm by name of an engram that has other names
// the command line does not give: the same content ingested twice under
// two names is one engram, and `rm scratch` would also remove web-01.
// Giving the ID, or every name, says the whole engram is meant.
func checkOtherNames(c *cli.Context, st chunkstore.Reader, args []string, ids []engram.ID) error {
	given := map[engram.ID]map[string]bool{}
	byID := map[engram.ID]bool{}
	for i, id := range ids {
		if given[id] == nil {
			given[id] = map[string]bool{}
		}
		given[id][args[i]] = true
	}
	for id, names := range given {
		e, err := engram.Get(c.Context, st, id)
		if err != nil {
			return err
		}
		var own, others []string
		seen := map[string]bool{}
		for _, r := range e.Records {
			if r.Name == "" || seen[r.Name] {
				continue
			}
			seen[r.Name] = true
			// A name that moved on to another engram is not this one's.
			if cur, err := engram.Resolve(c.Context, st, r.Name); err != nil || cur != id {
				continue
			}
			own = append(own, r.Name)
			if !names[r.Name] {
				others = append(others, r.Name)
			}
		}
		for a := range names {
			if !slices.Contains(own, a) {
				byID[id] = true // an ID or a prefix: the whole engram
			}
		}
		if len(others) > 0 && !byID[id] {
			sort.Strings(others)
			for i, n := range others {
				others[i] = escapeControl(n)
			}
			return usagef("engram %s is also named %s: rm removes the engram with every name; give its ID or every name to remove it", id.Short(), strings.Join(others, ", "))
		}
	}
	return nil
}

// nonNil makes an empty list print as [] in JSON, not null.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
