package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/chunkstore/storeurl"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/ingest"
	"github.com/engram-vm/engram/qcow2"
	"github.com/engram-vm/engram/restore"
)

// backingFor describes the image at path as the backing of an overlay
// written to out. Its content comes from the catalog when it was ingested
// unchanged (recognised by fingerprint); otherwise it is read and hashed,
// without storing anything. The caller closes the image in Backing.Image.
// outputInChain returns the file of im's chain (an image or its data
// file) that out is, if any.
func outputInChain(im *qcow2.Image, out string) (string, bool) {
	ofi, err := os.Stat(out)
	if err != nil {
		return "", false
	}
	for l := im; l != nil; l = l.Backing() {
		for _, f := range []string{l.Path(), l.Info().DataFile} {
			if fi, err := os.Stat(f); f != "" && err == nil && os.SameFile(ofi, fi) {
				return f, true
			}
		}
	}
	return "", false
}

func backingFor(c *cli.Context, st storeurl.Store, im *qcow2.Image, out string) (*restore.Backing, error) {
	path := im.Path()
	// With --force the overlay would replace a file it reads through: the
	// base itself (lost, and a qcow2 backed by itself, which QEMU loops on)
	// or a file of its chain. os.Stat follows -o's link as the restore does.
	if f, ok := outputInChain(im, out); ok {
		what := "the backing file"
		if f != path {
			what = "a file the backing " + escapeControl(path) + " reads:"
		}
		return nil, usagef("-o %s is %s %s: the overlay would replace its own backing", escapeControl(out), what, escapeControl(f))
	}
	name, err := relativeTo(filepath.Dir(out), path)
	if err != nil {
		return nil, err
	}
	// The overlay lands where a symbolic link -o points (restore.ToFile).
	// QEMU resolves a relative backing name from the name it opened, the
	// link's or the target's: where those directories differ, only an
	// absolute name works from both.
	if t, err := restore.OutputPath(out); err == nil && t != out {
		if tn, err := relativeTo(filepath.Dir(t), path); err == nil && tn != name {
			if name, err = filepath.Abs(path); err != nil {
				return nil, err
			}
		}
	}
	b := &restore.Backing{Name: name, Format: im.Format(), Image: im}
	fp, err := im.Fingerprint()
	if err != nil {
		return nil, err
	}
	if id, ok, err := engram.LookupFingerprint(c.Context, st, fp); err != nil {
		return nil, err
	} else if ok {
		b.Root, err = engram.LoadRoot(c.Context, st, id)
		return b, err
	}
	mem := chunkstore.NewMemory(st.Params())
	res, err := ingest.Run(c.Context, mem, im, ingest.Options{HashOnly: true})
	if err != nil {
		return nil, fmt.Errorf("reading backing %s: %w", path, err)
	}
	b.Root, b.Reader = res.Root, mem
	return b, nil
}

// relativeTo names target relative to dir when both are local paths, so
// the overlay and its backing can move together.
func relativeTo(dir, target string) (string, error) {
	ad, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	at, err := filepath.Abs(target)
	if err != nil {
		return "", err
	}
	if rel, err := filepath.Rel(ad, at); err == nil {
		return rel, nil
	}
	return at, nil
}

// chainLayer is one engram of a chain and the record that describes it.
type chainLayer struct {
	id  engram.ID
	rec *engram.Record
}

// restoreChain writes id and the engrams below it (following the records'
// parent links) into dir as a base image and thin qcow2 overlays whose
// backing names are relative, the shape the source had.
func restoreChain(c *cli.Context, st storeurl.Store, id engram.ID, dir string, opts restore.Options) error {
	var chain []chainLayer
	seen := map[engram.ID]bool{}
	for cur := id; ; {
		if seen[cur] || len(chain) > 64 {
			return fmt.Errorf("engram %s: parent links form a loop", cur.Short())
		}
		seen[cur] = true
		e, err := engram.Get(c.Context, st, cur)
		if err != nil && len(chain) > 0 && errors.Is(err, engram.ErrNotFound) {
			// A parent removed since: every engram is a whole guest
			// view, so the chain ends with the layer above, standalone.
			below := chain[len(chain)-1].id
			if !c.Bool(quietFlag.Name) {
				fmt.Fprintf(c.App.ErrWriter, "engram: --chain: %s's parent %s was removed; writing %s standalone\n", below.Short(), cur.Short(), below.Short())
			}
			break
		}
		if err != nil {
			return err
		}
		// Records come oldest first: the newest one that names a parent
		// wins, else the newest.
		var rec *engram.Record
		for _, r := range e.Records {
			if r.Parent != "" || rec == nil || rec.Parent == "" {
				rec = r
			}
		}
		chain = append(chain, chainLayer{cur, rec})
		if rec == nil || rec.Parent == "" {
			break
		}
		if cur, err = chunkstore.ParseID(rec.Parent); err != nil {
			return err
		}
	}
	_, serr := os.Lstat(dir)
	made := os.IsNotExist(serr)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("output directory %s: %w", dir, err)
	}
	var written []string
	if err := writeChain(c, st, chain, dir, opts, &written); err != nil {
		// No half chain is left that looks restored: the layers this
		// restore wrote go, and the directory if it made it.
		for _, p := range written {
			_ = os.Remove(p)
		}
		if made {
			_ = os.Remove(dir)
		}
		return err
	}
	if c.Bool(jsonFlag.Name) {
		return printJSON(c.App.Writer, map[string]any{"engram": id.String(), "files": written})
	}
	if !c.Bool(quietFlag.Name) {
		fmt.Fprintf(c.App.ErrWriter, "restored %s as a chain of %d: %s\n", id.Short(), len(written), escapeControl(strings.Join(written, " <- ")))
	}
	return nil
}

// writeChain restores chain (newest first) into dir, base first, each
// layer backed by the one before; *written gets each file once it is
// whole.
func writeChain(c *cli.Context, st storeurl.Store, chain []chainLayer, dir string, opts restore.Options, written *[]string) error {
	used := map[string]bool{}
	var prev *restore.Backing
	for i := len(chain) - 1; i >= 0; i-- {
		l := chain[i]
		name := layerFileName(l, used)
		lo := opts
		lo.Format, lo.ClusterSize, lo.ExtendedL2 = "qcow2", 0, false
		if l.rec != nil {
			lo.ClusterSize = l.rec.ClusterSize
			if prev == nil && l.rec.Format == "raw" {
				lo.Format = "raw"
			}
		}
		lo.Backing = prev
		path := filepath.Join(dir, name)
		if p := progressFor(c, name); p != nil {
			lo.Progress = p
		}
		if err := restore.ToFile(c.Context, st, l.id, path, lo); err != nil {
			return err
		}
		root, err := engram.LoadRoot(c.Context, st, l.id)
		if err != nil {
			return err
		}
		im, err := qcow2.Open(path, qcow2.Options{Format: lo.Format})
		if err != nil {
			return err
		}
		defer im.Close()
		prev = &restore.Backing{Name: name, Format: lo.Format, Root: root, Image: im}
		*written = append(*written, path)
	}
	return nil
}

// layerFileName is the source file's base name, made unique in the chain.
func layerFileName(l chainLayer, used map[string]bool) string {
	name := "engram-" + l.id.Short() + ".qcow2"
	if l.rec != nil && l.rec.Source != "" {
		name = filepath.Base(l.rec.Source)
	}
	for n := 2; used[name]; n++ {
		ext := filepath.Ext(name)
		name = fmt.Sprintf("%s-%d%s", strings.TrimSuffix(name, ext), n, ext)
	}
	used[name] = true
	return name
}
