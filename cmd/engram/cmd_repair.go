package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/chunkstore/storeurl"
	"github.com/engram-vm/engram/engram"
)

// repairResult is what `repair --json` prints.
type repairResult struct {
	Index    chunkstore.RepairReport `json:"index"`
	Problems []string                `json:"problems,omitempty"`
	Catalog  *engram.RecoverReport   `json:"catalog,omitempty"`
	Engrams  int                     `json:"engrams"`
	Lost     []string                `json:"lost,omitempty"` // engrams that cannot be restored, and why
	// Signatures lists the engrams whose signature was rebuilt from the
	// manifest (missing, e.g. after the catalog was recovered).
	Signatures []string `json:"signatures_rebuilt,omitempty"`
}

var repairCommand = &cli.Command{
	Name:  "repair",
	Usage: "rebuild the index from the packs and the catalog from its catalog chunks; say what is lost",
	Description: "Rebuilds index.db from the pack files (every intact frame is indexed, entries of damaged\n" +
		"or missing frames are dropped). When index.db was unreadable, the engram catalog is rebuilt\n" +
		"from the catalog chunk every ingest stores; --catalog does that even on a readable index\n" +
		"(it also brings back engrams removed since the last gc). Engrams that lack chunks afterwards\n" +
		"are listed; re-ingesting their source stores the missing chunks again.",
	ArgsUsage: " ",
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "catalog", Usage: "re-insert every engram found in catalog chunks, even if index.db was readable"},
	},
	Action: func(c *cli.Context) error {
		if c.NArg() != 0 {
			return usagef("repair takes no arguments")
		}
		dir, err := storeDir(c)
		if err != nil {
			return err
		}
		var res repairResult
		var st storeurl.Store
		if storeurl.IsBucket(dir) {
			// Objects are never changed: damage is recorded in the bucket
			// and the catalog lives in its journal, so nothing is lost to
			// rebuild (a host's cache is rebuilt whenever it is missing).
			if st, err = openStore(c, true, false); err != nil {
				return err
			}
			defer st.Close()
			res.Index, err = st.Repair(c.Context)
			for _, p := range res.Index.Problems {
				res.Problems = append(res.Problems, p.String())
			}
			if err != nil {
				return fmt.Errorf("repair %s: %w", dir, err)
			}
		} else {
			opts := chunkstore.OpenOptions{LockTimeout: lockTimeout(c), Command: strings.Join(os.Args, " ")}
			res.Index, err = chunkstore.RepairDir(c.Context, dir, opts)
			for _, p := range res.Index.Problems {
				res.Problems = append(res.Problems, p.String())
			}
			if err != nil {
				return fmt.Errorf("repair %s: %w", dir, err)
			}
			fst, err := chunkstore.Open(c.Context, dir, opts)
			if err != nil {
				return fmt.Errorf("repair %s: reopening after the index rebuild: %w", dir, err)
			}
			defer fst.Close()
			st = fst
		}
		if res.Index.MetadataLost || c.Bool("catalog") {
			cr, err := engram.RecoverCatalog(c.Context, st)
			if err != nil {
				return err
			}
			res.Catalog = &cr
		}
		if d, ok := st.(interface {
			RemoveDamagedJournal(context.Context) ([]chunkstore.Problem, error)
		}); ok && storeurl.IsBucket(dir) {
			// Only now that the catalog holds what they recorded (the
			// bucket's repair left them so that gc sweeps nothing until
			// then; reported above).
			if _, err := d.RemoveDamagedJournal(c.Context); err != nil {
				return fmt.Errorf("repair %s: removing damaged journal entries: %w", dir, err)
			}
		}
		entries, err := engram.List(c.Context, st)
		if err != nil {
			return fmt.Errorf("repair %s: reading the catalog: %w", dir, err)
		}
		res.Engrams = len(entries)
		for _, e := range entries {
			if err := engram.Check(c.Context, st, e.ID, nil); err != nil {
				if c.Context.Err() != nil {
					return c.Context.Err()
				}
				res.Lost = append(res.Lost, fmt.Sprintf("%s%s: %v", e.ID, namesOf(e), err))
				// Its source must be read again on the next ingest.
				if err := engram.ForgetFingerprints(c.Context, st, e.ID); err != nil {
					return err
				}
			}
		}
		// Signatures live in index.db: rebuild the missing ones from the
		// manifests (an engram that lost pages is listed as lost already).
		sr, err := engram.RebuildSketches(c.Context, st, false)
		if err != nil {
			return fmt.Errorf("repair %s: signatures: %w", dir, err)
		}
		res.Signatures = sr.Built
		if c.Bool(jsonFlag.Name) {
			if err := printJSON(c.App.Writer, res); err != nil {
				return err
			}
		} else {
			printRepair(c, dir, &res)
		}
		if len(res.Lost) > 0 {
			return fmt.Errorf("repair: %d of %s cannot be restored (listed above); re-ingest their sources or rm them", len(res.Lost), plural(res.Engrams, "engram"))
		}
		return nil
	},
}

func printRepair(c *cli.Context, dir string, res *repairResult) {
	w := c.App.Writer
	ix := res.Index
	for _, p := range res.Problems {
		fmt.Fprintln(w, "damaged:", p)
	}
	if !c.Bool(quietFlag.Name) {
		fmt.Fprintf(w, "index: %s, %s, %s indexed (%d new to the index, %d dropped), %s\n",
			plural(ix.Packs, "pack"), plural(ix.Frames, "intact frame"), plural(ix.Chunks, "chunk"), ix.Added, ix.Dropped, plural(ix.BadFrames, "damaged frame"))
	}
	if ix.MetadataLost {
		fmt.Fprintf(w, "catalog: %s holds chunks but its catalog journal (meta/) is lost or damaged; rebuilding the catalog from catalog chunks\n", dir)
	}
	if cr := res.Catalog; cr != nil {
		for _, u := range cr.Unreadable {
			fmt.Fprintln(w, "catalog chunk unreadable:", u)
		}
		for _, e := range cr.Engrams {
			fmt.Fprintf(w, "recovered engram %s", e.ID)
			if len(e.Names) > 0 {
				fmt.Fprintf(w, " (%s)", strings.Join(e.Names, ", "))
			}
			fmt.Fprintf(w, ": %s\n", plural(e.Records, "record"))
		}
		if !c.Bool(quietFlag.Name) {
			fmt.Fprintf(w, "catalog: %s found, %s re-inserted\n", plural(cr.CatalogChunks, "catalog chunk"), plural(len(cr.Engrams), "engram"))
		}
		if ix.MetadataLost && cr.CatalogChunks == 0 {
			fmt.Fprintln(w, "catalog: no catalog chunks found; engrams ingested before catalog chunks existed are lost (their data chunks stay until gc)")
		}
	}
	for _, l := range res.Lost {
		fmt.Fprintln(w, "lost engram:", l)
	}
	if n := len(res.Signatures); n > 0 && !c.Bool(quietFlag.Name) {
		fmt.Fprintf(w, "signatures: %d rebuilt from manifests\n", n)
	}
	if len(res.Lost) == 0 && !c.Bool(quietFlag.Name) {
		fmt.Fprintf(w, "ok: %s complete\n", plural(res.Engrams, "engram"))
	}
}

// namesOf formats an entry's names for messages: " (web, db)" or "".
func namesOf(e *engram.Entry) string {
	var names []string
	seen := map[string]bool{}
	for _, r := range e.Records {
		if r.Name != "" && !seen[r.Name] {
			seen[r.Name] = true
			names = append(names, r.Name)
		}
	}
	if len(names) == 0 {
		return ""
	}
	return " (" + strings.Join(names, ", ") + ")"
}
