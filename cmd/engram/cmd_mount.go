package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/fuse"
)

var mountCommand = &cli.Command{
	Name:      "mount",
	Usage:     "mount every engram as a read-only raw file (DIR/by-id/ID.raw, DIR/by-name/NAME.raw) until Ctrl-C",
	ArgsUsage: "DIR",
	Flags: []cli.Flag{
		viewCacheFlag,
		&cli.BoolFlag{Name: "allow-other", Usage: "let other users read the mount (non-root needs user_allow_other in /etc/fuse.conf)"},
		&cli.BoolFlag{Name: "nonempty", Usage: "mount over a directory that is not empty, hiding its files until the unmount"},
	},
	Action: func(c *cli.Context) error {
		if c.NArg() != 1 {
			return usagef("mount takes one argument, the mount point DIR")
		}
		dir := c.Args().First()
		if err := fuse.Check(); err != nil {
			return err
		}
		if err := fuse.CheckMountpoint(dir); err != nil {
			return err
		}
		sigs := make(chan os.Signal, 2)
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(sigs)

		v, err := openView(c, "mount "+dir)
		if err != nil {
			return err
		}
		defer v.close()
		// After openView: a bad command line is exit 2 whatever DIR holds.
		if !c.Bool("nonempty") {
			if err := fuse.CheckEmpty(dir); err != nil {
				return err
			}
		}
		srv, err := fuse.Mount(dir, v.store, v.set, fuse.Options{
			AllowOther: c.Bool("allow-other"),
			NonEmpty:   c.Bool("nonempty"),
			FsName:     "engram:" + v.loc,
			Errorf: func(format string, args ...any) {
				fmt.Fprintf(c.App.ErrWriter, "engram: %s\n", oneLine(fmt.Sprintf(format, args...)))
			},
		})
		if err != nil {
			return err
		}
		if !c.Bool(quietFlag.Name) {
			fmt.Fprintf(c.App.ErrWriter, "engram: mounted %s at %s (by-id/, by-name/); Ctrl-C unmounts\n", escapeControl(v.loc), escapeControl(dir))
		}
		for {
			select {
			case <-srv.Done():
				if !c.Bool(quietFlag.Name) {
					fmt.Fprintf(c.App.ErrWriter, "engram: %s was unmounted\n", escapeControl(dir))
				}
				return nil
			case <-sigs:
				err := srv.Unmount()
				if err == nil {
					return nil
				}
				if errors.Is(err, syscall.EBUSY) || strings.Contains(err.Error(), "busy") {
					fmt.Fprintf(c.App.ErrWriter, "engram: %s is busy (files or a loop device open in it); still mounted: close them and press Ctrl-C again\n", escapeControl(dir))
					continue
				}
				fmt.Fprintf(c.App.ErrWriter, "engram: %s; still mounted\n", errorLine(err))
			}
		}
	},
}

// oneLine keeps a message to one printable line: control bytes (a name
// or path can carry them) are escaped as \xNN, line breaks become "; ".
// Every error run prints goes through it.
func oneLine(s string) string {
	return escapeControl(strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "; ")) // errors.Join's lines
}
