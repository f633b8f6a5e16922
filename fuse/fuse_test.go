package fuse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/ingest"
	"github.com/engram-vm/engram/internal/qemutest"
	"github.com/engram-vm/engram/qcow2"
	"github.com/engram-vm/engram/view"
)

// env is a store, a view of it and a mount, all in this process.
type env struct {
	dir string // scratch directory
	st  *chunkstore.BlobStore
	set *view.Set
	mnt string
	srv *Server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	qemutest.Require(t)
	qemutest.RequireFUSE(t)
	e := &env{dir: t.TempDir()}
	e.st = chunkstore.NewTestStore(t, chunkstore.InitOptions{PackSize: 4 << 20})
	pins, err := view.NewPins(e.st.Dir(), "test "+t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pins.Close() })
	e.set = view.NewSet(e.st, view.Options{CacheSize: 64 << 20, Pins: pins})
	t.Cleanup(func() { e.set.Close() })
	return e
}

// mount mounts the store; the cleanup unmounts it even if the test fails.
func (e *env) mount(t *testing.T) {
	t.Helper()
	e.mnt = filepath.Join(e.dir, "mnt")
	if err := os.Mkdir(e.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(e.mnt, e.st, e.set, Options{Errorf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			_ = exec.Command("fusermount3", "-u", "-z", e.mnt).Run()
		}
	})
}

// ingest stores the image at path (qcow2 chain or raw) as an engram.
func (e *env) ingest(t *testing.T, path, format, name string) engram.ID {
	t.Helper()
	im, err := qcow2.Open(path, qcow2.Options{Format: format})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	layers, err := ingest.Image(context.Background(), e.st, im, ingest.ImageOptions{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return layers[len(layers)-1].ID
}

func (e *env) file(id engram.ID) string {
	return filepath.Join(e.mnt, "by-id", id.String()+".raw")
}

// qcow makes a qcow2 image at name in e.dir with qemu-io writes.
func (e *env) qcow(t *testing.T, name, size string, opts []string, cmds ...string) string {
	t.Helper()
	p := filepath.Join(e.dir, name)
	qemutest.Create(t, "qcow2", p, size, opts...)
	if len(cmds) > 0 {
		qemutest.IO(t, p, "qcow2", cmds...)
	}
	return p
}

// images makes the three fixtures: a flat image with data, zero clusters
// and holes; a 3-deep chain; a compressed image.
func (e *env) images(t *testing.T) map[string]string {
	flat := e.qcow(t, "flat.qcow2", "96M", nil,
		"write -P 0xa1 0 1M", "write -P 0xb2 5M 300k", "write -z 8M 1M", "write -P 0xc3 40M 64k", "write -P 0xd4 95M 1M")
	base := e.qcow(t, "base.qcow2", "64M", nil, "write -P 0x11 0 8M", "write -P 0x12 30M 2M")
	mid := e.qcow(t, "mid.qcow2", "64M", []string{"backing_file=base.qcow2", "backing_fmt=qcow2"},
		"write -P 0x21 4M 1M", "write -z 31M 512k")
	top := e.qcow(t, "top.qcow2", "64M", []string{"backing_file=mid.qcow2", "backing_fmt=qcow2"},
		"write -P 0x31 7M 2M", "write -P 0x32 63M 1M")
	_ = base
	_ = mid
	src := e.qcow(t, "src.qcow2", "48M", nil, "write -P 0x41 0 4M", "write -P 0x42 20M 3M")
	comp := filepath.Join(e.dir, "comp.qcow2")
	qemutest.Img(t, "convert", "-c", "-O", "qcow2", src, comp)
	return map[string]string{"flat": flat, "chain": top, "compressed": comp}
}

// TestQemuCompare: qemu-img compare says the source and the FUSE file are
// identical, and qemu-img map's data ranges (from SEEK_DATA/SEEK_HOLE)
// are the engram's extents.
func TestQemuCompare(t *testing.T) {
	e := newEnv(t)
	imgs := e.images(t)
	ids := map[string]engram.ID{}
	for name, p := range imgs {
		ids[name] = e.ingest(t, p, "", name)
	}
	e.mount(t)
	for name, p := range imgs {
		t.Run(name, func(t *testing.T) {
			f := e.file(ids[name])
			qemutest.Compare(t, p, f, "-F", "raw")
			qemutest.Compare(t, p, filepath.Join(e.mnt, "by-name", name+".raw"), "-F", "raw")
			var want [][2]int64
			d, err := e.set.Open(context.Background(), ids[name])
			if err != nil {
				t.Fatal(err)
			}
			err = d.NewReader().Extents(0, d.Size(), func(off, n int64, data bool) error {
				if data {
					want = append(want, [2]int64{off, n})
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var got [][2]int64
			for _, m := range qemutest.Map(t, f, "-f", "raw") {
				if m.Data {
					if k := len(got) - 1; k >= 0 && got[k][0]+got[k][1] == m.Start {
						got[k][1] += m.Length
					} else {
						got = append(got, [2]int64{m.Start, m.Length})
					}
				}
			}
			if len(got) != len(want) {
				t.Fatalf("qemu-img map: %d data ranges %v, engram has %d %v", len(got), got, len(want), want)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("qemu-img map range %d = %v, engram %v", i, got[i], want[i])
				}
			}
		})
	}
}

// TestFileSemantics covers what tools see: SEEK_DATA/SEEK_HOLE from Go,
// cp --sparse=always, du, EROFS, the by-name link and new engrams.
func TestFileSemantics(t *testing.T) {
	e := newEnv(t)
	src := e.qcow(t, "a.qcow2", "64M", nil, "write -P 0x5a 1M 2M", "write -P 0x6b 10M 64k", "write -P 0x7c 20M 1M")
	id := e.ingest(t, src, "", "web")
	raw := filepath.Join(e.dir, "a.raw")
	qemutest.ToRaw(t, src, raw)
	e.mount(t)
	f := e.file(id)
	d, err := e.set.Open(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("seek", func(t *testing.T) {
		fd, err := unix.Open(f, unix.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		var got [][2]int64
		for off := int64(0); ; {
			data, err := unix.Seek(fd, off, unix.SEEK_DATA)
			if errors.Is(err, syscall.ENXIO) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, [2]int64{data, hole - data})
			off = hole
		}
		want := [][2]int64{{1 << 20, 2 << 20}, {10 << 20, 64 << 10}, {20 << 20, 1 << 20}}
		if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
			t.Fatalf("SEEK_DATA/SEEK_HOLE walk = %v, want %v", got, want)
		}
		if _, err := unix.Seek(fd, 21<<20, unix.SEEK_DATA); !errors.Is(err, syscall.ENXIO) {
			t.Fatalf("SEEK_DATA past the last data: %v, want ENXIO", err)
		}
		if h, err := unix.Seek(fd, 0, unix.SEEK_HOLE); err != nil || h != 0 {
			t.Fatalf("SEEK_HOLE at 0 = %d, %v", h, err)
		}
	})

	t.Run("cp-sparse", func(t *testing.T) {
		out := filepath.Join(e.dir, "copy.raw")
		qemutest.Run(t, "cp", "--sparse=always", f, out)
		qemutest.Run(t, "cmp", raw, out)
		var st syscall.Stat_t
		if err := syscall.Stat(out, &st); err != nil {
			t.Fatal(err)
		}
		if alloc := st.Blocks * 512; alloc > 2*d.DataBytes() {
			t.Fatalf("cp --sparse=always allocated %d bytes for %d of data", alloc, d.DataBytes())
		}
	})

	t.Run("du", func(t *testing.T) {
		out := strings.Fields(qemutest.Run(t, "du", "-B1", f))
		n, err := strconv.ParseInt(out[0], 10, 64)
		if err != nil || n != (d.DataBytes()+511)/512*512 || n != 3<<20+64<<10 {
			t.Fatalf("du = %v, data bytes %d", out, d.DataBytes())
		}
		out = strings.Fields(qemutest.Run(t, "du", "-B1", "--apparent-size", f))
		if out[0] != "67108864" {
			t.Fatalf("du --apparent-size = %v", out)
		}
	})

	t.Run("erofs", func(t *testing.T) {
		for _, flag := range []int{os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC} {
			if fh, err := os.OpenFile(f, flag, 0); !errors.Is(err, syscall.EROFS) {
				if fh != nil {
					fh.Close()
				}
				t.Fatalf("open flags %#x: %v, want EROFS", flag, err)
			}
		}
		if err := os.WriteFile(filepath.Join(e.mnt, "by-id", "new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
			t.Fatalf("create: %v, want EROFS", err)
		}
		if err := os.Truncate(f, 0); !errors.Is(err, syscall.EROFS) {
			t.Fatalf("truncate: %v, want EROFS", err)
		}
		fi, err := os.Stat(f)
		if err != nil || fi.Mode() != 0o444 || fi.Size() != 64<<20 {
			t.Fatalf("stat = %v, %v", fi, err)
		}
	})

	t.Run("by-name", func(t *testing.T) {
		target, err := os.Readlink(filepath.Join(e.mnt, "by-name", "web.raw"))
		if err != nil || target != "../by-id/"+id.String()+".raw" {
			t.Fatalf("readlink = %q, %v", target, err)
		}
		if _, err := os.Stat(filepath.Join(e.mnt, "by-name", "nosuch.raw")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stat of a missing name: %v", err)
		}
	})

	t.Run("new-engram-appears", func(t *testing.T) {
		src2 := e.qcow(t, "b.qcow2", "16M", nil, "write -P 0x99 0 1M")
		id2 := e.ingest(t, src2, "", "db")
		ents, err := os.ReadDir(filepath.Join(e.mnt, "by-id"))
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, de := range ents {
			found = found || de.Name() == id2.String()+".raw"
		}
		if !found || len(ents) != 2 {
			t.Fatalf("by-id after a new ingest: %v", ents)
		}
		names, err := os.ReadDir(filepath.Join(e.mnt, "by-name"))
		if err != nil || len(names) != 2 || names[0].Name() != "db.raw" || names[1].Name() != "web.raw" {
			t.Fatalf("by-name = %v, %v", names, err)
		}
		qemutest.Compare(t, src2, filepath.Join(e.mnt, "by-name", "db.raw"), "-F", "raw")
	})
}

// TestRmGCWhileMounted: an engram read through the mount stays readable,
// byte for byte, after rm and a gc that rewrites its packs.
func TestRmGCWhileMounted(t *testing.T) {
	e := newEnv(t)
	src := e.qcow(t, "a.qcow2", "64M", nil, "write -P 0x5a 0 6M", "write -P 0x6b 30M 4M")
	other := e.qcow(t, "b.qcow2", "64M", nil, "write -P 0x77 0 8M")
	id := e.ingest(t, src, "", "victim")
	e.ingest(t, other, "", "other")
	raw := filepath.Join(e.dir, "a.raw")
	qemutest.ToRaw(t, src, raw)
	want, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	e.mount(t)
	fh, err := os.Open(e.file(id))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	half := make([]byte, 3<<20)
	if _, err := fh.ReadAt(half, 0); err != nil || !bytes.Equal(half, want[:len(half)]) {
		t.Fatalf("first read: %v", err)
	}
	ctx := context.Background()
	if err := engram.Remove(ctx, e.st, id); err != nil {
		t.Fatal(err)
	}
	live := map[chunkstore.ID]bool{}
	if err := engram.LiveChunks(ctx, e.st, func(c chunkstore.ID) { live[c] = true }); err != nil {
		t.Fatal(err)
	}
	if err := view.PinnedChunks(ctx, e.st.Dir(), e.st, func(c chunkstore.ID) { live[c] = true }); err != nil {
		t.Fatal(err)
	}
	gs, err := e.st.GC(ctx, func(c chunkstore.ID) bool { return live[c] }, chunkstore.GCOptions{Threshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	if gs.PacksRewritten+gs.PacksDeleted == 0 {
		t.Logf("gc rewrote no packs: %+v", gs)
	}
	got, err := os.ReadFile(e.file(id))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("content after rm + gc differs")
	}
	if _, err := os.Stat(filepath.Join(e.mnt, "by-name", "victim.raw")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("by-name of a removed engram: %v", err)
	}
}

// TestLoopMountExt4: an ext4 image made from a directory, ingested, and
// mounted from the FUSE file through a loop device: a file in it reads
// back the same.
func TestLoopMountExt4(t *testing.T) {
	e := newEnv(t)
	if _, err := exec.LookPath("mkfs.ext4"); err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root and mkfs.ext4 (e2fsprogs)")
		}
		t.Skip("needs root and mkfs.ext4")
	}
	tree := filepath.Join(e.dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("engram loop mount test\n"), 50000)
	if err := os.WriteFile(filepath.Join(tree, "etc", "big.txt"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(e.dir, "fs.raw")
	qemutest.Run(t, "mkfs.ext4", "-q", "-F", "-d", tree, img, "64M")
	id := e.ingest(t, img, "raw", "fs")
	e.mount(t)
	mp := filepath.Join(e.dir, "loop")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	qemutest.Run(t, "mount", "-o", "loop,ro,noload", e.file(id), mp)
	// Registered after the FUSE unmount, so it runs before it.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mp).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", mp, err, out)
		}
	})
	got, err := os.ReadFile(filepath.Join(mp, "etc", "big.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, content) {
		t.Fatal("file read through loop + FUSE differs")
	}
}

// TestMountpointChecks: a missing or already mounted mount point is a
// one-line error naming it.
func TestMountpointChecks(t *testing.T) {
	e := newEnv(t)
	missing := filepath.Join(e.dir, "nope")
	if err := CheckMountpoint(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing mount point: %v", err)
	}
	e.mount(t)
	if _, err := Mount(e.mnt, e.st, e.set, Options{}); err == nil || !strings.Contains(err.Error(), "already mounted") {
		t.Fatalf("mounting twice: %v", err)
	}
}

// TestFailuresLoggedOnce: six failed reads of one file (one dd over a
// damaged chunk) log one line, and the unmount one count; every read
// still gets EIO.
func TestFailuresLoggedOnce(t *testing.T) {
	var lines []string
	f := &fsys{errorf: func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }, failed: map[string]int{}}
	bad := errors.New("chunk 1234: hash mismatch")
	for i := 0; i < 6; i++ {
		if e := f.failFile("by-id/ab.raw", fmt.Sprintf("by-id/ab.raw: read at %#x", i<<17), bad); e != syscall.EIO {
			t.Fatalf("read %d: %v, want EIO", i, e)
		}
	}
	f.failFile("by-id/cd.raw", "by-id/cd.raw: read at 0x0", bad)
	if len(lines) != 2 || !strings.Contains(lines[0], "by-id/ab.raw: read at 0x0: chunk 1234") || !strings.Contains(lines[1], "by-id/cd.raw") {
		t.Fatalf("logged while failing: %q", lines)
	}
	f.summarize()
	if len(lines) != 3 || lines[2] != "by-id/ab.raw: 6 requests failed in all" {
		t.Fatalf("summary: %q", lines)
	}
}
