package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/qcow2"
)

// Backing is the image a restored qcow2 overlay sits on.
type Backing struct {
	Name   string            // backing file name written into the header (relative to the output's directory, or absolute)
	Format string            // "qcow2" or "raw"
	Root   engram.Root       // the backing file's guest content
	Reader chunkstore.Reader // where Root's pages are; nil: the store being restored from
	// Image reads the backing file itself. Chunk boundaries are coarser
	// than clusters, so a cluster the manifests cannot tell apart is
	// compared byte for byte and left out when equal.
	Image io.ReaderAt
}

// writeOverlay writes only the clusters where root differs from the
// backing content, each whole: data where root has any, the zero flag where
// root reads as zero over backing data.
func writeOverlay(ctx context.Context, r chunkstore.Reader, root engram.Root, w *qcow2.Writer, cluster int64, b *Backing, prog Progress) error {
	br := b.Reader
	if br == nil {
		br = r
	}
	cur := engram.NewCursor(ctx, r, root)
	buf := make([]byte, cluster)
	bbuf := make([]byte, cluster)
	var chunk []byte
	var chunkRef engram.ChunkRef
	next := int64(0) // first cluster not yet written
	if prog != nil {
		prog.Start(root.Size)
		defer prog.Finish()
	}
	return engram.Diff(ctx, br, b.Root, r, root, func(s, e int64) error {
		for c := max(s/cluster*cluster, next); c < e && c < root.Size; c += cluster {
			if err := ctx.Err(); err != nil {
				return err
			}
			end := min(c+cluster, root.Size)
			clear(buf)
			for {
				ref, ok, err := cur.SkipTo(c)
				if err != nil {
					return err
				}
				if !ok || ref.Offset >= end {
					break
				}
				if ref != chunkRef {
					if chunk, err = r.Get(ctx, ref.ID); err != nil {
						return fmt.Errorf("chunk at guest %#x: %w", ref.Offset, err)
					}
					if len(chunk) != int(ref.Length) {
						return fmt.Errorf("chunk %s at guest %#x: %d bytes, manifest says %d", ref.ID.Short(), ref.Offset, len(chunk), ref.Length)
					}
					chunkRef = ref
				}
				lo, hi := max(ref.Offset, c), min(ref.End(), end)
				copy(buf[lo-c:hi-c], chunk[lo-ref.Offset:hi-ref.Offset])
				if ref.End() > end {
					break // continues into the next cluster
				}
				cur.Pop()
			}
			data := buf[:end-c]
			if b.Image != nil {
				old := bbuf[:end-c]
				n, err := b.Image.ReadAt(old, c)
				if err != nil && !errors.Is(err, io.EOF) {
					return fmt.Errorf("read backing %s at %#x: %w", b.Name, c, err)
				}
				clear(old[n:]) // past the backing's end reads as zero
				if bytes.Equal(old, data) {
					next = c + cluster
					continue
				}
			}
			var err error
			if bytes.Count(data, []byte{0}) == len(data) {
				err = w.WriteZeroes(c, end-c)
			} else {
				_, err = w.WriteAt(data, c)
			}
			if err != nil {
				return fmt.Errorf("write guest %#x: %w", c, err)
			}
			if prog != nil {
				prog.Add(end - c)
			}
			next = c + cluster
		}
		return nil
	})
}
