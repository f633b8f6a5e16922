package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/chunkstore/storeurl"
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
	Action: func(c *cli.Context) error {
		if c.NArg() != 0 {
			return usagef("upgrade takes no arguments")
		}
		dir, err := storeDir(c)
		if err != nil {
			return err
		}
		need := false
		if !storeurl.IsBucket(dir) {
			if need, err = chunkstore.NeedsUpgrade(dir); err != nil {
				return err
			}
		}
		st, err := openStore(c, true, false) // a writable open upgrades
		if err != nil {
			return err
		}
		if err := st.Close(); err != nil {
			return err
		}
		if c.Bool(jsonFlag.Name) {
			return printJSON(c.App.Writer, map[string]any{"store": dir, "upgraded": need})
		}
		if !c.Bool(quietFlag.Name) {
			if need {
				fmt.Fprintf(c.App.Writer, "upgraded store %s to the current format\n", escapeControl(dir))
			} else {
				fmt.Fprintf(c.App.Writer, "store %s is in the current format already\n", escapeControl(dir))
			}
		}
		return nil
	},
}
