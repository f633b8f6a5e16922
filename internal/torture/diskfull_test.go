package torture

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// mountTmpfs mounts a tmpfs of sizeMiB at a fresh directory and unmounts it
// in t.Cleanup. Outside CI it skips when mounting is impossible (not root,
// no CAP_SYS_ADMIN); under CI=true it fails.
func mountTmpfs(t *testing.T, sizeMiB int) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm", sizeMiB), "tmpfs", dir).CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("cannot mount a tmpfs for the disk-full test (needs root): %v %s", err, strings.TrimSpace(string(out)))
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// fill writes a file that leaves about leave bytes free on the file system
// of dir.
func fill(t *testing.T, dir string, leave int64) string {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for n := free - leave; n > 0; {
		w := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:w]); err != nil {
			break // full already
		}
		n -= w
	}
	return p
}

func TestDiskFull(t *testing.T) {
	qemutest.Require(t)
	work := t.TempDir()
	base := image(t, work, 5000, 64, 4)
	big := image(t, work, 5001, 64, 24) // ~18 MiB stored: does not fit what is left
	// Free space left at the start of the big ingest: none, a little, most
	// of a block, several blocks.
	leaves := []int64{0, 64 << 10, 900 << 10, 6 << 20, 10 << 20} // 10 MiB: a pack staged, the next one fails
	if full {
		leaves = append(leaves, 4<<10, 300<<10, 2<<20, 12<<20)
	}
	for _, leave := range leaves {
		t.Run(fmt.Sprintf("leave-%dk", leave>>10), func(t *testing.T) {
			mnt := mountTmpfs(t, 48)
			store := filepath.Join(mnt, "store")
			ok(t, store, "init")
			idBase := ingest(t, store, base)
			segsBefore, _ := filepath.Glob(filepath.Join(store, "index", "*"))
			filler := fill(t, mnt, leave)
			r := engram(t, engramBin, store, "-q", "ingest", big)
			err := func() error {
				if r.code == 0 {
					return fmt.Errorf("ingest into a full store succeeded (left %d bytes)", leave)
				}
				msg := strings.TrimSpace(r.stderr)
				if !strings.Contains(msg, "no space left on device") || strings.Contains(msg, "panic") {
					return fmt.Errorf("ingest on a full disk: exit %d, want a clear \"no space\" error, got %q", r.code, msg)
				}
				t.Logf("full disk: exit %d: %s", r.code, msg)
				// The failed ingest's packs are not left behind: nothing
				// names them, and they would hold the space gc needs.
				if segs, _ := filepath.Glob(filepath.Join(store, "index", "*")); len(segs) != len(segsBefore) {
					return fmt.Errorf("the failed ingest left %d packs in the store", len(segs)-len(segsBefore))
				}
				// No partial engram: ls shows only the base.
				ls := engram(t, engramBin, store, "--json", "ls")
				if ls.code != 0 {
					return fmt.Errorf("ls on a full disk: exit %d: %s", ls.code, ls.stderr)
				}
				if n := strings.Count(ls.stdout, `"id"`); n > 1 || !strings.Contains(ls.stdout, idBase) {
					return fmt.Errorf("ls after a failed ingest lists %d engrams: %s", n, ls.stdout)
				}
				if err := verifyClean(t, store); err != nil {
					return fmt.Errorf("still full: %w", err)
				}
				if err := restoresIdentical(t, store, idBase, base); err != nil {
					return err
				}
				// Free the space: the same ingest now succeeds.
				if err := os.Remove(filler); err != nil {
					return err
				}
				id := ingest(t, store, big)
				if err := verifyClean(t, store); err != nil {
					return err
				}
				if err := restoresIdentical(t, store, id, big); err != nil {
					return err
				}
				return restoresIdentical(t, store, idBase, base)
			}()
			summary.add("disk full (clean error, nothing lost / tried)", err == nil)
			if err != nil {
				t.Error(err)
			}
		})
	}
}
