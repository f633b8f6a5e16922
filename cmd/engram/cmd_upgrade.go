package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/chunkstore/storeurl"
	"github.com/engram-vm/engram/engram"
)

// upgradeCommand converts a directory store of format 1 in place. Any
// command that opens a store for writing does the same on its way; this
// one exists for a store only read so far (read-only commands refuse a
// format-1 store and name it).
var upgradeCommand = &cli.Command{
	Name:      "upgrade",
	Usage:     "convert a directory store of format 1 (numbered packs, index.db) to the current format, in place",
	ArgsUsage: " ",
	Description: "Copies every frame the old index points at into pack objects, the catalog into the\n" +
		"journal, then switches config.json and removes the old files. Killed at any point, the old\n" +
		"store or the new one opens and holds everything; running it again finishes the job.",
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "from-packs", Usage: "when index.db is lost or damaged: index every intact frame of the packs instead, and rebuild the catalog from its catalog chunks"},
		&cli.BoolFlag{Name: "drop-unreadable", Usage: "upgrade even when packs lack frames the old index points at (a pack file gone or cut short): those chunks are left out, and verify and repair name the engrams that need them"},
	},
	Action: func(c *cli.Context) error {
		if c.NArg() != 0 {
			return usagef("upgrade takes no arguments")
		}
		dir, err := storeDir(c)
		if err != nil {
			return err
		}
		var rep chunkstore.UpgradeReport
		if !storeurl.IsBucket(dir) {
			rep, err = chunkstore.Upgrade(c.Context, dir, chunkstore.UpgradeOptions{DropUnreadable: c.Bool("drop-unreadable"), FromPacks: c.Bool("from-packs"),
				LockTimeout: lockTimeout(c), Command: strings.Join(os.Args, " ")})
			if err != nil {
				return err
			}
		}
		st, err := openStore(c, true, false) // checks the result (and the bucket) opens
		if err != nil {
			return err
		}
		var cat *engram.RecoverReport
		if rep.CatalogLost {
			// The catalog lived in the lost index.db: its copies in the
			// catalog chunks bring it back.
			cr, err := engram.RecoverCatalog(c.Context, st)
			if err != nil {
				st.Close()
				return fmt.Errorf("upgrade %s: rebuilding the catalog: %w", dir, err)
			}
			cat = &cr
		}
		if err := st.Close(); err != nil {
			return err
		}
		if c.Bool(jsonFlag.Name) {
			return printJSON(c.App.Writer, map[string]any{"store": dir, "upgrade": rep, "catalog": cat})
		}
		if !c.Bool(quietFlag.Name) {
			if rep.Upgraded {
				fmt.Fprintf(c.App.Writer, "upgraded store %s to the current format: %s, %s copied\n", escapeControl(dir), plural(rep.Packs, "pack"), plural(rep.Chunks, "chunk"))
			} else {
				fmt.Fprintf(c.App.Writer, "store %s is in the current format already\n", escapeControl(dir))
			}
		}
		if cat != nil && !c.Bool(quietFlag.Name) {
			fmt.Fprintf(c.App.Writer, "catalog: rebuilt from %s, %s (%s skipped)\n", plural(cat.CatalogChunks, "catalog chunk"), plural(len(cat.Engrams), "engram"), plural(rep.BadFrames, "damaged frame"))
		}
		if rep.Dropped > 0 {
			fmt.Fprintf(c.App.ErrWriter, "engram: %s the old index pointed at %s not in their packs and %s left out; `engram repair` names the engrams that lack them\n", plural(rep.Dropped, "chunk"), pick(rep.Dropped, "was", "were"), pick(rep.Dropped, "was", "were"))
		}
		return nil
	},
}
