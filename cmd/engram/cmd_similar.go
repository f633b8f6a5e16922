package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	fleetview "github.com/engram-vm/engram/fleet"
	"github.com/engram-vm/engram/sketch"
)

var similarCommand = &cli.Command{
	Name:  "similar",
	Usage: "rank every other engram by estimated shared bytes with this one (from signatures)",
	Description: "Compares 4 KiB signatures: shared bytes, Jaccard similarity and containment both ways, each\n" +
		"± one standard error. --exact re-scores the top N from the manifests. Shared content is not\n" +
		"content at the same guest offset: see restore --thin for what a backing file saves.",
	ArgsUsage: "ID|NAME",
	Flags: []cli.Flag{
		&cli.IntFlag{Name: "top", Aliases: []string{"n"}, Value: 10, Usage: "how many to list"},
		&cli.BoolFlag{Name: "exact", Usage: "re-score the top N exactly from the manifests"},
	},
	Action: func(c *cli.Context) error {
		if c.NArg() != 1 {
			return usagef("similar needs exactly one ID or NAME")
		}
		if c.Int("top") < 1 {
			return usagef("--top %d: want at least 1", c.Int("top"))
		}
		st, id, err := openOne(c)
		if err != nil {
			return err
		}
		defer st.Close()
		// Signatures are scanned where the catalog keeps them; records are
		// read only for the names of the results.
		rels, unsigned, err := fleetview.SimilarInStore(c.Context, st, id, fleetview.SimilarOptions{Top: c.Int("top"), Exact: c.Bool("exact")})
		if err != nil {
			return err
		}
		if c.Bool(jsonFlag.Name) {
			rows := make([]similarRow, len(rels))
			for i, r := range rels {
				rows[i] = similarRow{ID: r.B.ID.String(), Name: r.B.Name, Exact: r.Exact, Shared: r.Shared, Jaccard: r.Jaccard,
					AInB: r.AInB, BInA: r.BInA, Estimate: r.Est}
			}
			return printJSON(c.App.Writer, map[string]any{"engram": id.String(), "similar": rows, "unsigned": unsigned})
		}
		tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tSHARED\tJACCARD\tTHIS IN IT\tIT IN THIS")
		for _, r := range rels {
			if r.Exact {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%.3f\t%.3f\t%.3f\n", r.B.ID.Short(), r.B.Name, bytesStr(r.Shared), r.Jaccard, r.AInB, r.BInA)
				continue
			}
			e := r.Est
			fmt.Fprintf(tw, "%s\t%s\t%s ± %s\t%.3f ± %.3f\t%.3f ± %.3f\t%.3f ± %.3f\n", r.B.ID.Short(), r.B.Name,
				bytesStr(int64(e.Shared)), bytesStr(int64(e.SharedSE)), e.Jaccard, e.JaccardSE, e.AInB, e.AInBSE, e.BInA, e.BInASE)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if n := unsigned; n > 0 && !c.Bool(quietFlag.Name) {
			fmt.Fprintf(c.App.ErrWriter, "engram: %s no signature and %s not compared; run engram sketch --rebuild\n", pluralVerb(n, "engram", "has", "have"), pick(n, "was", "were"))
		}
		return nil
	},
}

// similarRow is one line of `similar --json`.
type similarRow struct {
	ID       string          `json:"id"`
	Name     string          `json:"name,omitempty"`
	Exact    bool            `json:"exact"`
	Shared   int64           `json:"shared_bytes"`
	Jaccard  float64         `json:"jaccard"`
	AInB     float64         `json:"this_in_it"` // part of the query's bytes it holds
	BInA     float64         `json:"it_in_this"` // part of its bytes the query holds
	Estimate sketch.Estimate `json:"estimate"`
}
