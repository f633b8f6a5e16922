package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/engram"
	fleetview "github.com/engram-vm/engram/fleet"
)

var estimateFlag = &cli.BoolFlag{Name: "estimate", Usage: "decide from signatures alone, without confirming from the manifests"}

var lineageCommand = &cli.Command{
	Name:  "lineage",
	Usage: "the parent of an engram (and its ancestors): from the overlay record, or from content",
	Description: "Where the chain was ingested, the record names the parent. Otherwise the parent is the\n" +
		"engram most contained in this one with clearly asymmetric containment (the template is almost\n" +
		"wholly held by its clone, not the reverse), confirmed from the manifests. Near-ties are\n" +
		"reported as ambiguous, not guessed.",
	ArgsUsage: "ID|NAME",
	Flags:     []cli.Flag{estimateFlag},
	Action: func(c *cli.Context) error {
		if c.NArg() != 1 {
			return usagef("lineage needs exactly one ID or NAME")
		}
		st, id, err := openOne(c)
		if err != nil {
			return err
		}
		defer st.Close()
		f, err := fleetview.Load(c.Context, st)
		if err != nil {
			return err
		}
		opts := fleetview.LineageOptions{Estimate: c.Bool(estimateFlag.Name)}
		var chain []lineageRow
		seen := map[engram.ID]bool{}
		for cur := id; !seen[cur] && len(chain) < 64; {
			seen[cur] = true
			d, err := f.Lineage(c.Context, cur, opts)
			if err != nil {
				return err
			}
			chain = append(chain, rowOf(d))
			if d.Parent == nil {
				break
			}
			cur = d.Parent.ID
		}
		if c.Bool(jsonFlag.Name) {
			return printJSON(c.App.Writer, chain)
		}
		w := c.App.Writer
		for i, r := range chain {
			fmt.Fprintf(w, "%s%s\n", strings.Repeat("  ", i), r.describe())
		}
		return nil
	},
}

var treeCommand = &cli.Command{
	Name:      "tree",
	Usage:     "the whole store as a forest of families (parents from overlay records or content)",
	ArgsUsage: " ",
	Flags:     []cli.Flag{estimateFlag},
	Action: func(c *cli.Context) error {
		if c.NArg() != 0 {
			return usagef("tree takes no arguments")
		}
		st, err := openStore(c, false, false)
		if err != nil {
			return err
		}
		defer st.Close()
		f, err := fleetview.Load(c.Context, st)
		if err != nil {
			return err
		}
		roots, err := f.Tree(c.Context, fleetview.LineageOptions{Estimate: c.Bool(estimateFlag.Name)})
		if err != nil {
			return err
		}
		if c.Bool(jsonFlag.Name) {
			rows := []lineageRow{} // [] for an empty store, not null
			var walk func(l []*fleetview.Node)
			walk = func(l []*fleetview.Node) {
				for _, n := range l {
					rows = append(rows, rowOf(n.Decision))
					walk(n.Children)
				}
			}
			walk(roots)
			return printJSON(c.App.Writer, rows)
		}
		printTree(c.App.Writer, roots, "")
		if n := len(f.Unsigned); n > 0 && !c.Bool(quietFlag.Name) {
			fmt.Fprintf(c.App.ErrWriter, "engram: %s no signature (placed only by overlay records); run engram sketch --rebuild\n", pluralVerb(n, "engram", "has", "have"))
		}
		return nil
	},
}

func printTree(w io.Writer, l []*fleetview.Node, indent string) {
	for _, n := range l {
		r := rowOf(n.Decision)
		fmt.Fprintf(w, "%s%s  %s\n", indent, r.label(), r.how())
		printTree(w, n.Children, indent+"  ")
	}
}

// lineageRow is one decision as `lineage --json` and `tree --json` print it.
type lineageRow struct {
	ID       string     `json:"id"`
	Name     string     `json:"name,omitempty"`
	Parent   *memberRef `json:"parent"`
	Method   string     `json:"method"` // overlay-record, content, ambiguous, none
	Figures  *figures   `json:"figures,omitempty"`
	RunnerUp *figures   `json:"runner_up,omitempty"`
}

type memberRef struct {
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
}

// figures relate the engram to a candidate parent.
type figures struct {
	memberRef
	Exact      bool    `json:"exact"`
	Shared     int64   `json:"shared_bytes"`
	Contained  float64 `json:"contained"`  // part of the candidate's bytes this engram holds
	Containing float64 `json:"containing"` // part of this engram's bytes the candidate holds
}

func figuresOf(r *fleetview.Relation) *figures {
	if r == nil {
		return nil
	}
	return &figures{memberRef{r.B.ID.String(), r.B.Name}, r.Exact, r.Shared, r.BInA, r.AInB}
}

func rowOf(d fleetview.Decision) lineageRow {
	r := lineageRow{ID: d.Child.ID.String(), Name: d.Child.Name, Method: d.Method, Figures: figuresOf(d.Figures), RunnerUp: figuresOf(d.RunnerUp)}
	if d.Parent != nil {
		r.Parent = &memberRef{d.Parent.ID.String(), d.Parent.Name}
	}
	return r
}

func (r lineageRow) label() string {
	if r.Name != "" {
		return r.ID[:12] + " " + r.Name
	}
	return r.ID[:12]
}

func (f *figures) String() string {
	s := f.ID[:12]
	if f.Name != "" {
		s += " " + f.Name
	}
	q := "~"
	if f.Exact {
		q = ""
	}
	return fmt.Sprintf("%s (%s%s shared, %.1f%% of it held here, %.1f%% of this held there)", s, q, bytesStr(f.Shared), 100*f.Contained, 100*f.Containing)
}

func (r lineageRow) how() string {
	switch r.Method {
	case fleetview.ByOverlay:
		return "[overlay record]"
	case fleetview.ByContent:
		s := "[content: " + r.Figures.String()
		if r.RunnerUp != nil {
			s += "; runner-up " + r.RunnerUp.String()
		}
		return s + "]"
	case fleetview.Ambiguous:
		return "[ambiguous: " + r.Figures.String() + " or " + r.RunnerUp.String() + "]"
	}
	return "[root]"
}

func (r lineageRow) describe() string {
	s := r.label() + "  "
	if r.Parent != nil {
		p := r.Parent.ID[:12]
		if r.Parent.Name != "" {
			p += " " + r.Parent.Name
		}
		s += "parent " + p + " "
	}
	return s + r.how()
}
