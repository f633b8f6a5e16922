package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/chunkstore"
)

var initCommand = &cli.Command{
	Name:      "init",
	Usage:     "create a store (ingest creates one with defaults when needed)",
	ArgsUsage: " ",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "compression", Value: chunkstore.DefaultCompression, Usage: "zstd level: fastest, default, better or best"},
		&cli.StringFlag{Name: "block-size", Value: "1M", Usage: "raw size of the compressed blocks of consecutive new chunks: 1M..8M (bigger: a smaller store, slower cold random reads)"},
		&cli.StringFlag{Name: "chunking", Value: "64k", Usage: "average chunk size: 32k, 64k or 128k (aligned content-defined, 4 KiB blocks)"},
	},
	Action: func(c *cli.Context) error {
		if c.NArg() != 0 {
			return usagef("init takes no arguments")
		}
		dir, err := storeDir(c)
		if err != nil {
			return err
		}
		cp := chunkstore.DefaultChunkParams
		switch c.String("chunking") {
		case "32k":
			cp.Min, cp.Avg, cp.Max = 8<<10, 32<<10, 128<<10
		case "64k":
		case "128k":
			cp.Min, cp.Avg, cp.Max = 32<<10, 128<<10, 512<<10
		default:
			return usagef("--chunking %q: want 32k, 64k or 128k", c.String("chunking"))
		}
		switch c.String("compression") {
		case "fastest", "default", "better", "best":
		default:
			return usagef("--compression %q: want fastest, default, better or best", c.String("compression"))
		}
		var bs int
		switch c.String("block-size") {
		case "1M":
			bs = 1 << 20
		case "2M":
			bs = 2 << 20
		case "4M":
			bs = 4 << 20
		case "8M":
			bs = 8 << 20
		default:
			return usagef("--block-size %q: want 1M, 2M, 4M or 8M", c.String("block-size"))
		}
		if err := chunkstore.Init(dir, chunkstore.InitOptions{Compression: c.String("compression"), Chunking: cp, BlockSize: bs}); err != nil {
			return err
		}
		if c.Bool(jsonFlag.Name) {
			return printJSON(c.App.Writer, map[string]any{"store": dir, "compression": c.String("compression"), "block_size": bs, "chunking": cp})
		}
		if !c.Bool(quietFlag.Name) {
			fmt.Fprintf(c.App.Writer, "created store %s (compression %s, blocks %d MiB, chunks avg %d KiB)\n", dir, c.String("compression"), bs>>20, cp.Avg>>10)
		}
		return nil
	},
}
