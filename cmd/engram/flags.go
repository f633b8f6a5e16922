package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/storeurl"
	"github.com/engram-vm/engram/engram"
)

var (
	storeFlag = &cli.StringFlag{
		Name:    "store",
		Usage:   "store directory, or s3://BUCKET[/PREFIX] (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...; ENGRAM_S3_TIMEOUT: idle timeout, default 30s) (default: $XDG_DATA_HOME/engram or ~/.local/share/engram)",
		EnvVars: []string{"ENGRAM_STORE"},
	}
	cacheDirFlag = &cli.StringFlag{
		Name:    "cache-dir",
		Usage:   "where this host keeps a store's index cache, one directory per store (default: $XDG_CACHE_HOME/engram for s3://, DIR/cache for a directory store)",
		EnvVars: []string{"ENGRAM_CACHE_DIR"},
	}
	jsonFlag  = &cli.BoolFlag{Name: "json", Usage: "print results as JSON"}
	quietFlag = &cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only what scripts need (IDs): no progress, plans or notes; warnings and errors still print"}
	lockFlag  = &cli.DurationFlag{Name: "lock-timeout", Value: 10 * time.Minute, Usage: "how long to wait for the store lock (ingests share it, gc and repair take it alone)",
		Action: func(_ *cli.Context, d time.Duration) error {
			if d < 0 {
				return usagef("--lock-timeout %s: a wait cannot be negative (0 means do not wait)", d)
			}
			return nil
		}}

	globalFlags = []cli.Flag{storeFlag, cacheDirFlag, jsonFlag, quietFlag, lockFlag}
)

// storeDir returns the store directory from --store, ENGRAM_STORE or the
// per-user default.
func storeDir(c *cli.Context) (string, error) {
	if d := c.String(storeFlag.Name); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "engram"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no --store given and no home directory: %w", err)
	}
	return filepath.Join(home, ".local", "share", "engram"), nil
}

// openStore opens the store for reading, or for writing (taking the
// writer lock of a directory store). With create, a missing or empty
// directory, or an empty prefix of an existing bucket, becomes a new store
// with default parameters.
func openStore(c *cli.Context, write, create bool) (storeurl.Store, error) {
	return openStoreWith(c, write, create, storeurl.Options{})
}

// openStoreLocked is openStore; exclusive takes a directory store's lock
// exclusively (gc), so that no ingest runs until it is closed.
func openStoreLocked(c *cli.Context, write, create, exclusive bool) (storeurl.Store, error) {
	return openStoreWith(c, write, create, storeurl.Options{Exclusive: exclusive})
}

// openStoreWith is openStore with the options the flags do not set
// (Exclusive, DeferSync) taken from o.
func openStoreWith(c *cli.Context, write, create bool, o storeurl.Options) (storeurl.Store, error) {
	dir, err := storeDir(c)
	if err != nil {
		return nil, err
	}
	if create && storeurl.IsBucket(dir) {
		made, err := storeurl.InitIfEmpty(c.Context, dir)
		if err != nil {
			return nil, bucketHint(dir, err)
		}
		if made && !c.Bool(quietFlag.Name) {
			fmt.Fprintf(c.App.ErrWriter, "engram: created store %s\n", dir)
		}
	} else if create && isEmptyOrMissing(dir) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create store %s: %w", dir, err)
		}
		if err := chunkstore.Init(dir, chunkstore.InitOptions{}); err != nil && !errors.Is(err, chunkstore.ErrStoreExists) {
			return nil, err
		}
		if !c.Bool(quietFlag.Name) {
			fmt.Fprintf(c.App.ErrWriter, "engram: created store %s\n", escapeControl(dir))
		}
	}
	st, err := storeurl.Open(c.Context, dir, storeurl.Options{
		ReadOnly:    !write,
		Exclusive:   o.Exclusive,
		HoldShared:  o.HoldShared,
		DeferSync:   o.DeferSync,
		LockTimeout: lockTimeout(c),
		Command:     strings.Join(os.Args, " "),
		TrustIDs:    true, // every chunk the CLI puts was hashed just before
		CacheRoot:   c.String(cacheDirFlag.Name),
		Warn:        warnFunc(c),
	})
	if err != nil && storeurl.IsBucket(dir) {
		return nil, bucketHint(dir, err)
	}
	return st, err
}

// bucketHint adds to a missing bucket or refused credentials the endpoint
// asked (AWS_ENDPOINT_URL, or AWS's): a wrong endpoint is the usual cause
// of both, and the error names only the bucket.
func bucketHint(loc string, err error) error {
	ep := os.Getenv("AWS_ENDPOINT_URL")
	if ep == "" {
		ep = "https://s3.amazonaws.com (AWS_ENDPOINT_URL unset)"
	}
	switch {
	case errors.Is(err, blob.ErrNoBucket):
		bucket, _, _ := strings.Cut(strings.TrimPrefix(loc, "s3://"), "/")
		return fmt.Errorf("%w at %s (engram init s3://%s creates it)", err, escapeControl(ep), escapeControl(bucket))
	case errors.Is(err, blob.ErrAccessDenied):
		return fmt.Errorf("%w, at %s", err, escapeControl(ep))
	}
	return err
}

// openOne opens the store for reading and resolves the command's one
// ID|NAME argument (the caller has checked there is one).
func openOne(c *cli.Context) (storeurl.Store, engram.ID, error) {
	st, err := openStore(c, false, false)
	if err != nil {
		return nil, engram.ID{}, err
	}
	id, err := engram.Resolve(c.Context, st, c.Args().First())
	if err != nil {
		st.Close()
		return nil, engram.ID{}, err
	}
	return st, id, nil
}

// pinDir is where the pin files of in-place readers live: the store
// directory, or for a bucket store this host's cache directory (pins are
// per host there; gc on another host is held off by its margin instead).
func pinDir(st storeurl.Store) string {
	if s, ok := st.(*chunkstore.BlobStore); ok {
		if d := s.Dir(); d != "" {
			return d
		}
		return s.CacheDir()
	}
	return ""
}

func isEmptyOrMissing(dir string) bool {
	ents, err := os.ReadDir(dir)
	return errors.Is(err, fs.ErrNotExist) || (err == nil && len(ents) == 0)
}

// resolveAll resolves every argument, failing on the first that matches
// nothing (before anything is changed).
func resolveAll(ctx context.Context, st chunkstore.Reader, args []string) ([]engram.ID, error) {
	ids := make([]engram.ID, 0, len(args))
	for _, a := range args {
		id, err := engram.Resolve(ctx, st, a)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// uniqueIDs drops repeats, keeping the first of each: a name and its ID
// (or one argument twice) are one engram, verified or listed once.
func uniqueIDs(ids []engram.ID) []engram.ID {
	seen := map[engram.ID]bool{}
	return slices.DeleteFunc(ids, func(id engram.ID) bool { dup := seen[id]; seen[id] = true; return dup })
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// bytesStr formats a byte count like qemu-img: 1.5 GiB.
func bytesStr(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// parseLabels reads the --label k=v flags. A key given twice with two
// values is refused: keeping either silently would store a label the user
// did not mean.
func parseLabels(ss []string) (map[string]string, error) {
	if len(ss) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, s := range ss {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return nil, usagef("--label %q: want key=value", s)
		}
		if old, dup := m[k]; dup && old != v {
			return nil, usagef("--label %q given twice (%q and %q): give each key once", k, k+"="+old, k+"="+v)
		}
		m[k] = v
	}
	return m, nil
}

// lockTimeout is --lock-timeout for chunkstore: there 0 means its default
// wait and a negative one no wait; on the command line 0 means no wait, as
// for flock -w 0.
func lockTimeout(c *cli.Context) time.Duration {
	if d := c.Duration(lockFlag.Name); d > 0 {
		return d
	}
	return -1
}
