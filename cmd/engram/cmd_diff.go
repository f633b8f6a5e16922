package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/restore"
)

var diffCommand = &cli.Command{
	Name:      "diff",
	Usage:     "guest ranges where two engrams differ, and how many bytes differ",
	ArgsUsage: "ID1|NAME1 ID2|NAME2",
	Action: func(c *cli.Context) error {
		if c.NArg() != 2 {
			return usagef("diff needs two IDs or NAMEs")
		}
		st, err := openStore(c, false, false)
		if err != nil {
			return err
		}
		defer st.Close()
		var ids [2]engram.ID
		var roots [2]engram.Root
		for i := range ids {
			if ids[i], err = engram.Resolve(c.Context, st, c.Args().Get(i)); err != nil {
				return err
			}
			if roots[i], err = engram.LoadRoot(c.Context, st, ids[i]); err != nil {
				return err
			}
		}
		type rangeDiff struct {
			Start     int64 `json:"start"`
			Length    int64 `json:"length"`
			DiffBytes int64 `json:"differing_bytes"`
		}
		out := []rangeDiff{} // [] when nothing differs, not null
		var total int64
		var bufA, bufB []byte
		err = engram.Diff(c.Context, st, roots[0], st, roots[1], func(s, e int64) error {
			// Chunk boundaries differ more often than bytes: count the bytes.
			n := e - s
			if int64(cap(bufA)) < n {
				bufA, bufB = make([]byte, n), make([]byte, n)
			}
			a, b := bufA[:n], bufB[:n]
			if err := restore.ReadRange(c.Context, st, roots[0], a, s); err != nil {
				return err
			}
			if err := restore.ReadRange(c.Context, st, roots[1], b, s); err != nil {
				return err
			}
			var d int64
			for i := range a {
				if a[i] != b[i] {
					d++
				}
			}
			if d > 0 {
				out = append(out, rangeDiff{s, n, d})
				total += d
			}
			return nil
		})
		if err != nil {
			return err
		}
		if c.Bool(jsonFlag.Name) {
			return printJSON(c.App.Writer, map[string]any{
				"a": ids[0].String(), "b": ids[1].String(), "a_size": roots[0].Size, "b_size": roots[1].Size,
				"ranges": out, "differing_bytes": total,
			})
		}
		w := c.App.Writer
		if roots[0].Size != roots[1].Size {
			fmt.Fprintf(w, "virtual size: %d vs %d bytes\n", roots[0].Size, roots[1].Size)
		}
		for _, r := range out {
			fmt.Fprintf(w, "%#012x-%#012x  %10s  %s\n", r.Start, r.Start+r.Length, bytesStr(r.Length), pluralVerb(r.DiffBytes, "byte", "differs", "differ"))
		}
		if !c.Bool(quietFlag.Name) {
			fmt.Fprintf(w, "%s, %s differ\n", plural(len(out), "range"), bytesStr(total))
		}
		return nil
	},
}
