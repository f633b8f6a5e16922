package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// filledStore makes a closed directory store holding chunks, in several
// packs, and a metadata key.
func filledStore(t *testing.T) (string, []Chunk) {
	t.Helper()
	dir := t.TempDir()
	if err := Init(dir, InitOptions{PackSize: 128 << 10, BlockSize: 32 << 10}); err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cs := mkChunks(50, 60, 9000)
	if _, err := s.PutMany(context.Background(), cs); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(context.Background(), func(tx MetaTx) error {
		return tx.Put([]byte("names"), []byte("web-01"), []byte("x"))
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	return dir, cs
}

// openT opens dir exclusively (as gc and repair do), closed at cleanup.
func openT(t *testing.T, dir string) *BlobStore {
	t.Helper()
	s, err := Open(context.Background(), dir, OpenOptions{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// entryOf returns where chunk id lives: its entry and its pack's file.
func entryOf(t *testing.T, s *BlobStore, id ID) (entry, string) {
	t.Helper()
	e, h, ok, err := s.lookup(context.Background(), id)
	if err != nil || !ok {
		t.Fatalf("lookup %s: %v %v", id.Short(), ok, err)
	}
	return e, filepath.Join(s.Dir(), filepath.FromSlash(packObject(h)))
}

func problems(t *testing.T, s Maintainer) []Problem {
	t.Helper()
	var ps []Problem
	if _, err := s.Verify(context.Background(), func(p Problem) { ps = append(ps, p) }); err != nil {
		t.Fatal(err)
	}
	return ps
}

func TestBitRotFlippedByte(t *testing.T) {
	ctx := context.Background()
	dir, cs := filledStore(t)
	s := openT(t, dir)
	victim := cs[10]
	e, path := entryOf(t, s, victim.ID)
	// The whole block the victim shares a frame with is lost with it.
	lost := map[ID]bool{}
	for _, c := range cs {
		if x, p := entryOf(t, s, c.ID); p == path && x.FrameOff == e.FrameOff {
			lost[c.ID] = true
		}
	}
	b, _ := os.ReadFile(path)
	b[e.FrameOff+int64(e.FrameLen)-20] ^= 0x40 // inside the payload
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := s.Get(ctx, victim.ID)
	var ce *CorruptChunkError
	if !errors.Is(err, ErrCorruptChunk) || !errors.As(err, &ce) || ce.ID != victim.ID || !strings.HasSuffix(ce.Pack, filepath.Base(path)) || ce.Offset != e.FrameOff {
		t.Fatalf("Get of a rotten chunk = %v", err)
	}
	t.Log(err)
	ps := problems(t, s)
	found := false
	for _, p := range ps {
		found = found || p.ID == victim.ID
	}
	if !found {
		t.Fatalf("Verify did not name %s: %v", victim.ID.Short(), ps)
	}
	rep, err := s.Repair(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Dropped != int64(len(lost)) || rep.BadFrames != 1 || rep.MetadataLost || rep.Salvaged != 1 {
		t.Fatalf("repair: %+v", rep)
	}
	// A directory store held exclusively is salvaged, not only recorded:
	// the damaged pack is replaced by one without the rotten frame, so
	// verify is clean after repair.
	if ps := problems(t, s); len(ps) != 0 {
		t.Fatalf("after repair: %v", ps)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("damaged pack %s still there after repair: %v", path, err)
	}
	if _, err := s.Get(ctx, victim.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after repair = %v", err)
	}
	for _, c := range cs {
		if lost[c.ID] {
			if added, err := s.Put(ctx, c.ID, c.Data); err != nil || !added {
				t.Fatalf("re-Put = %v %v", added, err)
			}
		}
	}
	for _, c := range cs {
		if got, err := s.Get(ctx, c.ID); err != nil || !bytes.Equal(got, c.Data) {
			t.Fatalf("Get %s after repair: %v", c.ID.Short(), err)
		}
	}
	_ = s.View(ctx, func(tx MetaTx) error {
		if tx.Get([]byte("names"), []byte("web-01")) == nil {
			t.Error("repair lost the metadata")
		}
		return nil
	})
	verifyClean(t, s)
}

func TestBitRotTruncatedPack(t *testing.T) {
	ctx := context.Background()
	dir, cs := filledStore(t)
	s := openT(t, dir)
	last := cs[len(cs)-1]
	e, path := entryOf(t, s, last.ID)
	if err := os.Truncate(path, e.FrameOff+10); err != nil {
		t.Fatal(err)
	}
	_, err := s.Get(ctx, last.ID)
	var ce *CorruptChunkError
	if !errors.As(err, &ce) || ce.ID != last.ID || !strings.Contains(err.Error(), filepath.Base(path)) {
		t.Fatalf("Get from a truncated pack = %v", err)
	}
	t.Log(err)
	named := false
	for _, p := range problems(t, s) {
		named = named || p.ID == last.ID
	}
	if !named {
		t.Fatalf("Verify does not name %s", last.ID.Short())
	}
	if _, err := s.Repair(ctx); err != nil {
		t.Fatal(err)
	}
	verifyClean(t, s)
}

func TestBitRotDeletedPack(t *testing.T) {
	ctx := context.Background()
	dir, cs := filledStore(t)
	s := openT(t, dir)
	_, path := entryOf(t, s, cs[0].ID)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err := s.Get(ctx, cs[0].ID)
	if !errors.Is(err, ErrCorruptChunk) || !strings.Contains(err.Error(), cs[0].ID.String()) {
		t.Fatalf("Get from a deleted pack = %v", err)
	}
	ps := problems(t, s)
	named := 0
	for _, p := range ps {
		if p.ID == cs[0].ID && strings.Contains(p.Err.Error(), "does not exist") {
			named++
		}
	}
	if named != 1 {
		t.Fatalf("Verify: %v", ps)
	}
	rep, err := s.Repair(ctx)
	if err != nil || rep.Dropped == 0 {
		t.Fatalf("repair: %+v %v", rep, err)
	}
	verifyClean(t, s)
}

// TestDamagedCache: index.db of a directory store is a cache; damaged or
// gone, it is rebuilt from the store's objects by the next open, with
// every chunk and the metadata.
func TestDamagedCache(t *testing.T) {
	ctx := context.Background()
	for _, damage := range []string{"garbage", "missing", "empty"} {
		for _, ro := range []bool{false, true} {
			t.Run(damage, func(t *testing.T) {
				dir, cs := filledStore(t)
				idx := filepath.Join(dir, dirCacheName, indexName)
				switch damage {
				case "garbage":
					b, _ := os.ReadFile(idx)
					for i := range 8192 {
						b[i] = byte(i * 7)
					}
					os.WriteFile(idx, b, 0o644)
				case "missing":
					os.Remove(idx)
				case "empty":
					os.WriteFile(idx, nil, 0o644)
				}
				s, err := Open(ctx, dir, OpenOptions{ReadOnly: ro})
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				verifyClean(t, s)
				for _, c := range cs {
					if got, err := s.Get(ctx, c.ID); err != nil || !bytes.Equal(got, c.Data) {
						t.Fatalf("Get %s after the rebuild: %v", c.ID.Short(), err)
					}
				}
				if err := s.View(ctx, func(tx MetaTx) error {
					if tx.Get([]byte("names"), []byte("web-01")) == nil {
						return errors.New("metadata lost with the cache")
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

func TestNotStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	_, err := Open(ctx, dir, OpenOptions{})
	if !errors.Is(err, ErrNotStore) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), configName) {
		t.Fatalf("Open(empty dir) = %v", err)
	}
	if _, err := Open(ctx, filepath.Join(dir, "nope"), OpenOptions{}); !errors.Is(err, ErrNotStore) {
		t.Fatalf("Open(missing dir) = %v", err)
	}
	if err := Init(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Init(dir, InitOptions{}); !errors.Is(err, ErrStoreExists) {
		t.Fatalf("Init twice = %v", err)
	}
	if err := Init(t.TempDir(), InitOptions{Compression: "extreme"}); err == nil {
		t.Fatal("Init with a bad compression succeeded")
	}
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "notes.txt"), []byte("mine"), 0o644)
	if err := Init(other, InitOptions{}); !errors.Is(err, ErrNotStore) || !strings.Contains(err.Error(), "notes.txt") {
		t.Fatalf("Init in a directory holding something else = %v", err)
	}
	cfg := filepath.Join(dir, configName)
	b, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, bytes.Replace(b, []byte(`"version": 2`), []byte(`"version": 9`), 1), 0o644)
	if _, err := Open(ctx, dir, OpenOptions{}); !errors.Is(err, ErrFormatVersion) {
		t.Fatalf("Open(newer format) = %v", err)
	}
	os.WriteFile(cfg, []byte("{"), 0o644)
	if _, err := Open(ctx, dir, OpenOptions{}); !errors.Is(err, ErrNotStore) || !strings.Contains(err.Error(), cfg) {
		t.Fatalf("Open(bad config) = %v", err)
	}
}

// TestCrashLeftovers: a writer killed mid-put leaves a temporary file and
// a pack object without its segment; the store opens, verifies, takes new
// chunks, and gc (exclusive) removes the orphan at once.
func TestCrashLeftovers(t *testing.T) {
	ctx := context.Background()
	dir, cs := filledStore(t)
	os.WriteFile(filepath.Join(dir, ".tmp", "0123456789abcdef"), []byte("half a pack"), 0o644)
	orphan := append(packHeader(7), []byte("frames of a writer killed before its segment")...)
	h := Sum(orphan)
	op := filepath.Join(dir, filepath.FromSlash(packObject(h)))
	os.MkdirAll(filepath.Dir(op), 0o755)
	if err := os.WriteFile(op, orphan, 0o644); err != nil {
		t.Fatal(err)
	}
	s := openT(t, dir)
	verifyClean(t, s)
	more := mkChunks(5000, 10, 5000)
	if _, err := s.PutMany(ctx, more); err != nil {
		t.Fatal(err)
	}
	live := map[ID]bool{}
	for _, c := range append(cs, more...) {
		live[c.ID] = true
	}
	st, err := s.GC(ctx, func(id ID) bool { return live[id] }, GCOptions{})
	if err != nil || st.PacksDeleted != 1 {
		t.Fatalf("gc: %+v %v", st, err)
	}
	if _, err := os.Stat(op); !os.IsNotExist(err) {
		t.Fatalf("orphan pack still there after gc: %v", err)
	}
	verifyClean(t, s)
}

func TestMemStoreCorrupt(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(Params{})
	c := mkChunk(1, 1000)
	m.Put(ctx, c.ID, c.Data)
	m.Corrupt(c.ID)
	if _, err := m.Get(ctx, c.ID); !errors.Is(err, ErrCorruptChunk) {
		t.Fatalf("Get = %v", err)
	}
	if ps := problems(t, m); len(ps) != 1 || ps[0].ID != c.ID {
		t.Fatalf("Verify: %v", ps)
	}
}

// A flipped bit in a pack's header (its version field) is damage to that
// pack, named by verify; repair of a directory store replaces the pack
// with its intact frames, losing no chunk.
func TestPackVersionFlipIsDamage(t *testing.T) {
	ctx := context.Background()
	dir, cs := filledStore(t)
	s := openT(t, dir)
	_, p := entryOf(t, s, cs[0].ID)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[11] ^= 0x80 // pack format version, high byte
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	ps := problems(t, s)
	if len(ps) != 1 || !strings.HasSuffix(ps[0].Pack, filepath.Base(p)) || !ps[0].ID.IsZero() {
		t.Fatalf("verify: %v", ps)
	}
	rep, err := s.Repair(ctx)
	if err != nil || rep.Dropped != 0 || rep.Salvaged != 1 {
		t.Fatalf("repair: %+v, %v", rep, err)
	}
	if ps := problems(t, s); len(ps) != 0 {
		t.Fatalf("after repair: %v", ps)
	}
	for _, c := range cs {
		if got, err := s.Get(ctx, c.ID); err != nil || !bytes.Equal(got, c.Data) {
			t.Fatalf("Get %s after repair: %v", c.ID.Short(), err)
		}
	}
}
