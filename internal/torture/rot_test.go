package torture

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/engram-vm/engram/chunkstore"
	eng "github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/internal/qemutest"
)

// rotFixture is a store of four engrams in several small packs, made once
// and copied for every damage case.
type rotFixture struct {
	store   string
	engrams []committed
	catalog bool // the store holds catalog chunks (engram.Commit writes them)
}

var (
	rotOnce sync.Once
	rotFix  *rotFixture
	rotErr  error
)

func rotStore(t *testing.T) *rotFixture {
	t.Helper()
	qemutest.Require(t)
	rotOnce.Do(func() {
		dir, err := os.MkdirTemp("", "engram-rot-")
		if err != nil {
			rotErr = err
			return
		}
		f := &rotFixture{store: filepath.Join(dir, "store")}
		if err := os.MkdirAll(f.store, 0o755); err != nil {
			rotErr = err
			return
		}
		// Small packs, so damage to one leaves the others whole.
		if err := chunkstore.Init(f.store, chunkstore.InitOptions{PackSize: 3 << 20}); err != nil {
			rotErr = err
			return
		}
		for i := range 4 {
			img := image(t, dir, uint64(6000+i), 64, 6)
			f.engrams = append(f.engrams, committed{ingest(t, f.store, img), img})
		}
		f.catalog = hasCatalogChunks(t, f.store)
		rotFix = f
	})
	if rotErr != nil {
		t.Fatal(rotErr)
	}
	if rotFix == nil {
		t.Fatal("rot fixture failed earlier")
	}
	return rotFix
}

// hasCatalogChunks reports whether the store holds a catalog chunk for its
// engrams (it does once engram.Commit stores them).
func hasCatalogChunks(t *testing.T, store string) bool {
	ctx := context.Background()
	st, err := chunkstore.Open(ctx, store, chunkstore.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var ids []chunkstore.ID
	if err := eng.CatalogChunkIDs(ctx, st, func(id chunkstore.ID) { ids = append(ids, id) }); err != nil {
		t.Fatal(err)
	}
	have, err := st.HasMany(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range have {
		if h {
			return true
		}
	}
	return false
}

// packs lists the pack objects of a directory store (packs/HH/HASH).
func packs(t *testing.T, store string) []string {
	m, err := filepath.Glob(filepath.Join(store, "packs", "*", "*"))
	if err != nil || len(m) == 0 {
		t.Fatalf("no packs in %s: %v", store, err)
	}
	sort.Strings(m)
	return m
}

// damage is one bit-rot case: it harms the store copy in dir.
type damage struct {
	name string
	do   func(t *testing.T, r *rand.Rand, store string)
}

func flipBytes(n int, header bool) func(*testing.T, *rand.Rand, string) {
	return func(t *testing.T, r *rand.Rand, store string) {
		for range n {
			ps := packs(t, store)
			p := ps[r.IntN(len(ps))]
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			off := 16 + r.IntN(len(b)-16)
			if header {
				off = r.IntN(16)
			}
			b[off] ^= byte(1 + r.IntN(255))
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func damages() []damage {
	var ds []damage
	for i := range pick(3, 12) {
		ds = append(ds, damage{fmt.Sprintf("flip-byte-%d", i), flipBytes(1, false)})
	}
	ds = append(ds, damage{"flip-pack-header", flipBytes(1, true)})
	for i := range pick(1, 4) {
		ds = append(ds, damage{fmt.Sprintf("flip-8-bytes-%d", i), flipBytes(8, false)})
	}
	for i := range pick(2, 6) {
		ds = append(ds, damage{fmt.Sprintf("truncate-pack-%d", i), func(t *testing.T, r *rand.Rand, store string) {
			ps := packs(t, store)
			p := ps[r.IntN(len(ps))]
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(p, r.Int64N(fi.Size())); err != nil {
				t.Fatal(err)
			}
		}})
	}
	for i := range pick(1, 3) {
		ds = append(ds, damage{fmt.Sprintf("delete-pack-%d", i), func(t *testing.T, r *rand.Rand, store string) {
			ps := packs(t, store)
			if err := os.Remove(ps[r.IntN(len(ps))]); err != nil {
				t.Fatal(err)
			}
		}})
	}
	return ds
}

// repair runs `engram repair`, or, while the command is not registered in
// this build, the same steps through the library. It returns the IDs it
// says are lost.
func repair(t *testing.T, store string) (lost []string, out string) {
	t.Helper()
	if r := engram(t, engramBin, store, "repair", "--help"); r.code == 0 && strings.Contains(r.stdout, "catalog") {
		r := engram(t, engramBin, store, "repair")
		if r.code != 0 && r.code != 1 {
			t.Fatalf("repair: exit %d: %s", r.code, r.stderr)
		}
		for _, l := range strings.Split(r.stdout, "\n") {
			if rest, ok := strings.CutPrefix(l, "lost engram: "); ok {
				lost = append(lost, rest[:64])
			}
		}
		if (r.code == 1) != (len(lost) > 0) {
			t.Fatalf("repair: exit %d with %d lost engrams listed:\n%s%s", r.code, len(lost), r.stdout, r.stderr)
		}
		return lost, r.stdout + r.stderr
	}
	summary.count("bit rot: repair", "repair run through the library: `engram repair` is not registered in this build")
	ctx := context.Background()
	rep, err := chunkstore.RepairDir(ctx, store, chunkstore.OpenOptions{})
	if err != nil {
		t.Fatalf("repair: %v", err)
	}
	st, err := chunkstore.Open(ctx, store, chunkstore.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if rep.MetadataLost {
		if _, err := eng.RecoverCatalog(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	es, err := eng.List(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if err := eng.Check(ctx, st, e.ID, nil); err != nil {
			lost = append(lost, e.ID.String())
			out += err.Error() + "\n"
		}
	}
	return lost, out
}

func TestBitRot(t *testing.T) {
	fx := rotStore(t)
	r := rand.New(rand.NewPCG(9, 10))
	for _, d := range damages() {
		t.Run(d.name, func(t *testing.T) {
			store := filepath.Join(t.TempDir(), "store")
			copyDir(t, fx.store, store)
			d.do(t, r, store)
			err := checkRot(t, fx, store)
			summary.add("bit rot: pack damage (detected, nothing else lost / tried)", err == nil)
			if err != nil {
				t.Error(err)
			}
		})
	}
}

// checkRot judges one damaged store: restore tells which engrams are
// affected; verify must name exactly those, their restores must fail with
// one clear line and no output, the others must restore identical; repair
// must name the same engrams as lost, and re-ingesting their sources must
// make the store whole.
func checkRot(t *testing.T, fx *rotFixture, store string) error {
	affected := map[string]bool{}
	for _, c := range fx.engrams {
		outDir := t.TempDir()
		out := filepath.Join(outDir, "out.qcow2")
		r := engram(t, engramBin, store, "-q", "restore", c.id, "-o", out)
		if r.code == 0 {
			if _, err := qemutest.Try("qemu-img", "compare", c.src, out); err != nil {
				return fmt.Errorf("SILENT CORRUPTION: restore of %s succeeded but differs: %v", c.id[:12], err)
			}
			continue
		}
		affected[c.id] = true
		msg := strings.TrimSpace(r.stderr)
		if strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "engram: ") || strings.Contains(msg, "panic") {
			return fmt.Errorf("restore of damaged %s: want one clear line, got %q", c.id[:12], msg)
		}
		if ents, _ := os.ReadDir(outDir); len(ents) != 0 {
			return fmt.Errorf("restore of damaged %s left %d files in the output directory", c.id[:12], len(ents))
		}
	}
	v := engram(t, engramBin, store, "verify")
	var named []string
	for _, l := range strings.Split(v.stdout, "\n") {
		if rest, ok := strings.CutPrefix(l, "damaged engram: "); ok && len(rest) >= 64 {
			named = append(named, rest[:64])
		}
	}
	if v.code == 0 && len(affected) > 0 {
		return fmt.Errorf("verify is clean but %d engrams do not restore", len(affected))
	}
	if v.code != 0 && strings.Count(v.stdout, "damaged") == 0 {
		return fmt.Errorf("verify failed without naming damage: %s %s", v.stdout, v.stderr)
	}
	if err := sameSet("verify", named, affected); err != nil {
		return err
	}
	if len(affected) == 0 && v.code != 0 {
		summary.count("bit rot: pack damage (detected, nothing else lost / tried)", "damage verify found that no engram needed")
	}
	lost, out := repair(t, store)
	if err := sameSet("repair", lost, affected); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	for _, c := range fx.engrams {
		if affected[c.id] {
			if id := ingest(t, store, c.src); id != c.id {
				return fmt.Errorf("re-ingest of %s gave engram %s", c.id[:12], id)
			}
		}
	}
	if err := verifyClean(t, store); err != nil {
		return fmt.Errorf("after repair and re-ingest: %w", err)
	}
	for _, c := range fx.engrams {
		if err := restoresIdentical(t, store, c.id, c.src); err != nil {
			return fmt.Errorf("after repair and re-ingest: %w", err)
		}
	}
	return nil
}

func sameSet(who string, got []string, want map[string]bool) error {
	seen := map[string]bool{}
	for _, g := range got {
		if !want[g] {
			return fmt.Errorf("%s names %s, which restores fine", who, g[:12])
		}
		seen[g] = true
	}
	for w := range want {
		if !seen[w] {
			return fmt.Errorf("%s does not name %s, which does not restore", who, w[:12])
		}
	}
	return nil
}

// TestDamagedIndex damages the cache of a directory store (index.db, a
// cache since the store became a bucket layout in a directory): every
// command rebuilds it from the store's objects, so nothing is lost and
// verify is clean. Losing the catalog's journal (meta/) as well is what
// repair answers, from the catalog chunks.
func TestDamagedIndex(t *testing.T) {
	fx := rotStore(t)
	cases := map[string]func(string) error{
		"garbage": func(p string) error {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for i := range min(len(b), 16384) {
				b[i] = byte(i * 13)
			}
			return os.WriteFile(p, b, 0o644)
		},
		"missing":   os.Remove,
		"truncated": func(p string) error { return os.Truncate(p, 4096) },
	}
	for name, harm := range cases {
		t.Run(name, func(t *testing.T) {
			store := filepath.Join(t.TempDir(), "store")
			copyDir(t, fx.store, store)
			if err := harm(filepath.Join(store, "cache", "index.db")); err != nil {
				t.Fatal(err)
			}
			err := verifyClean(t, store)
			for _, c := range fx.engrams {
				if err == nil {
					err = restoresIdentical(t, store, c.id, c.src)
				}
			}
			summary.add("bit rot: cache (index.db) damage (rebuilt, nothing lost / tried)", err == nil)
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("journal-lost", func(t *testing.T) {
		store := filepath.Join(t.TempDir(), "store")
		copyDir(t, fx.store, store)
		for _, d := range []string{"meta", "cache"} {
			if err := os.RemoveAll(filepath.Join(store, d)); err != nil {
				t.Fatal(err)
			}
		}
		lost, out := repair(t, store)
		ls := engram(t, engramBin, store, "--json", "ls")
		recovered := 0
		for _, c := range fx.engrams {
			if strings.Contains(ls.stdout, c.id) && restoresIdentical(t, store, c.id, c.src) == nil {
				recovered++
			}
		}
		row := "bit rot: catalog journal lost (catalog rebuilt by repair / tried)"
		var err error
		if recovered != len(fx.engrams) || len(lost) != 0 {
			err = fmt.Errorf("after repair %d of %d engrams restore, %d listed lost:\n%s", recovered, len(fx.engrams), len(lost), out)
		} else if verr := verifyClean(t, store); verr != nil {
			err = verr
		}
		summary.add(row, err == nil)
		if err != nil {
			t.Error(err)
		}
	})
}

func TestKilledLockHolder(t *testing.T) {
	fx := rotStore(t)
	for i := range pick(1, 3) {
		store := filepath.Join(t.TempDir(), "store")
		copyDir(t, fx.store, store)
		img := image(t, t.TempDir(), uint64(7000+i), 64, 16)
		cmd := startEngram(t, engramBin, store, "ingest", img)
		// Wait until it holds the lock (the lock file names it), then kill.
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			b, _ := os.ReadFile(filepath.Join(store, "lock"))
			if strings.Contains(string(b), fmt.Sprintf("pid %d ", cmd.Process.Pid)) {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		err := func() error {
			// The next writer must not wait for the dead holder.
			r := engram(t, engramBin, store, "-q", "ingest", img)
			if r.code != 0 {
				return fmt.Errorf("ingest after the lock holder was killed: exit %d: %s", r.code, r.stderr)
			}
			all := append([]committed{{strings.TrimSpace(r.stdout), img}}, fx.engrams...)
			return afterKill(t, store, all)
		}()
		summary.add("bit rot: lock holder killed (store usable / tried)", err == nil)
		if err != nil {
			t.Error(err)
		}
	}
}
