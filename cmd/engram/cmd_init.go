package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/chunkstore/storeurl"
)

var initCommand = &cli.Command{
	Name:      "init",
	Usage:     "create a store (ingest creates one with defaults when needed); for s3:// also the bucket",
	ArgsUsage: " ",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "compression", Value: chunkstore.DefaultCompression, Usage: "zstd setting: " + strings.Join(chunkstore.Compressions, ", ") + " (fastest-noentropy: fastest without literal entropy coding)"},
		&cli.StringFlag{Name: "chunking", Value: "64k", Usage: "average chunk size: 32k, 64k or 128k (aligned content-defined, 4 KiB blocks)"},
		&cli.StringFlag{Name: "block-size", Value: "1M", Usage: "raw size of a compressed block of new chunks, up to 8M (1 = one chunk per block; bigger: a smaller store, slower cold random reads of a mount)"},
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
		if !slices.Contains(chunkstore.Compressions, c.String("compression")) {
			return usagef("--compression %q: want %s", c.String("compression"), strings.Join(chunkstore.Compressions, ", "))
		}
		bs, err := parseSize(c.String("block-size"))
		if err != nil || bs < 1 || bs > chunkstore.MaxBlockSize {
			return usagef("--block-size %q: want 1 up to %dM", c.String("block-size"), chunkstore.MaxBlockSize>>20)
		}
		if err := storeurl.Init(c.Context, dir, chunkstore.InitOptions{Compression: c.String("compression"), Chunking: cp, BlockSize: int(bs)}); err != nil {
			return err
		}
		if c.Bool(jsonFlag.Name) {
			return printJSON(c.App.Writer, map[string]any{"store": dir, "compression": c.String("compression"), "chunking": cp, "block_size": bs})
		}
		if !c.Bool(quietFlag.Name) {
			fmt.Fprintf(c.App.Writer, "created store %s (compression %s, blocks %s, chunks avg %d KiB)\n", dir, c.String("compression"), bytesStr(bs), cp.Avg>>10)
		}
		return nil
	},
}
