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

// filledStore makes a closed store holding chunks, in several packs.
func filledStore(t *testing.T) (string, []Chunk) {
	t.Helper()
	dir := t.TempDir()
	if err := initFileStore(dir, InitOptions{PackSize: 128 << 10, BlockSize: 32 << 10}); err != nil {
		t.Fatal(err)
	}
	s, err := openFileStore(context.Background(), dir, OpenOptions{})
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

func openT(t *testing.T, dir string) *FileStore {
	t.Helper()
	s, err := openFileStore(context.Background(), dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// entryOf returns where chunk id lives.
func entryOf(t *testing.T, s *FileStore, id ID) entry {
	t.Helper()
	e, ok, err := s.lookup(context.Background(), id)
	if err != nil || !ok {
		t.Fatalf("lookup %s: %v %v", id.Short(), ok, err)
	}
	return e
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
	e := entryOf(t, s, victim.ID)
	// The whole block the victim shares a frame with is lost with it.
	lost := map[ID]bool{}
	for _, c := range cs {
		if x := entryOf(t, s, c.ID); x.Pack == e.Pack && x.FrameOff == e.FrameOff {
			lost[c.ID] = true
		}
	}
	path := s.packs.path(e.Pack)
	b, _ := os.ReadFile(path)
	b[e.FrameOff+int64(e.FrameLen)-20] ^= 0x40 // inside the payload
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := s.Get(ctx, victim.ID)
	var ce *CorruptChunkError
	if !errors.Is(err, ErrCorruptChunk) || !errors.As(err, &ce) || ce.ID != victim.ID || ce.Pack != path || ce.Offset != e.FrameOff {
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
	// Regression: the rotten frame used to stay in the pack (GC leaves
	// damaged packs alone), so Verify failed forever after a repair.
	// Repair reported it and rewrote the pack without it.
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
}

func TestBitRotTruncatedPack(t *testing.T) {
	ctx := context.Background()
	dir, cs := filledStore(t)
	s := openT(t, dir)
	last := cs[len(cs)-1]
	e := entryOf(t, s, last.ID)
	path := s.packs.path(e.Pack)
	if err := os.Truncate(path, e.FrameOff+10); err != nil {
		t.Fatal(err)
	}
	_, err := s.Get(ctx, last.ID)
	var ce *CorruptChunkError
	if !errors.As(err, &ce) || ce.ID != last.ID || !strings.Contains(err.Error(), "pack ends at") {
		t.Fatalf("Get from a truncated pack = %v", err)
	}
	ps := problems(t, s)
	if len(ps) == 0 || !strings.Contains(ps[0].Err.Error(), "truncated") {
		t.Fatalf("Verify: %v", ps)
	}
	t.Log(ps[0])
}

func TestBitRotDeletedPack(t *testing.T) {
	ctx := context.Background()
	dir, cs := filledStore(t)
	s := openT(t, dir)
	e := entryOf(t, s, cs[0].ID)
	if err := os.Remove(s.packs.path(e.Pack)); err != nil {
		t.Fatal(err)
	}
	_, err := s.Get(ctx, cs[0].ID)
	if !errors.Is(err, ErrCorruptChunk) || !strings.Contains(err.Error(), cs[0].ID.String()) {
		t.Fatalf("Get from a deleted pack = %v", err)
	}
	ps := problems(t, s)
	named := 0
	for _, p := range ps {
		if p.ID == cs[0].ID && strings.Contains(p.Err.Error(), "missing") {
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

func TestDamagedIndex(t *testing.T) {
	ctx := context.Background()
	for _, damage := range []string{"garbage", "missing", "empty"} {
		t.Run(damage, func(t *testing.T) {
			dir, cs := filledStore(t)
			idx := filepath.Join(dir, indexName)
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
			_, err := openFileStore(ctx, dir, OpenOptions{})
			if !errors.Is(err, ErrIndexDamaged) || !strings.Contains(err.Error(), idx) {
				t.Fatalf("Open = %v", err)
			}
			t.Log(err)
			if _, err := openFileStore(ctx, dir, OpenOptions{ReadOnly: true}); err == nil {
				t.Fatal("read-only Open of a damaged index succeeded")
			}
			rep, err := repairFileStoreDir(ctx, dir, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Chunks != int64(len(cs)) || !rep.MetadataLost {
				t.Fatalf("repair: %+v", rep)
			}
			s := openT(t, dir)
			verifyClean(t, s)
			for _, c := range cs {
				if got, err := s.Get(ctx, c.ID); err != nil || !bytes.Equal(got, c.Data) {
					t.Fatalf("Get %s after repair: %v", c.ID.Short(), err)
				}
			}
		})
	}
}

func TestNotStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	_, err := openFileStore(ctx, dir, OpenOptions{})
	if !errors.Is(err, ErrNotStore) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), configName) {
		t.Fatalf("openFileStore(empty dir) = %v", err)
	}
	if _, err := openFileStore(ctx, filepath.Join(dir, "nope"), OpenOptions{}); !errors.Is(err, ErrNotStore) {
		t.Fatalf("openFileStore(missing dir) = %v", err)
	}
	if err := initFileStore(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := initFileStore(dir, InitOptions{}); !errors.Is(err, ErrStoreExists) {
		t.Fatalf("Init twice = %v", err)
	}
	if err := initFileStore(t.TempDir(), InitOptions{Compression: "extreme"}); err == nil {
		t.Fatal("Init with a bad compression succeeded")
	}
	cfg := filepath.Join(dir, configName)
	b, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, bytes.Replace(b, []byte(`"version": 1`), []byte(`"version": 9`), 1), 0o644)
	if _, err := openFileStore(ctx, dir, OpenOptions{}); !errors.Is(err, ErrFormatVersion) {
		t.Fatalf("openFileStore(newer format) = %v", err)
	}
	os.WriteFile(cfg, []byte("{"), 0o644)
	if _, err := openFileStore(ctx, dir, OpenOptions{}); !errors.Is(err, ErrNotStore) || !strings.Contains(err.Error(), cfg) {
		t.Fatalf("openFileStore(bad config) = %v", err)
	}
}

func TestReopenAppendsAndTrims(t *testing.T) {
	ctx := context.Background()
	dir, cs := filledStore(t)
	s := openT(t, dir)
	e := entryOf(t, s, cs[len(cs)-1].ID)
	path := s.packs.path(e.Pack)
	s.Close()
	// A crash mid-append leaves garbage past the committed end, and a pack
	// whose first commit never happened.
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.Write(bytes.Repeat([]byte("EGFRjunk"), 100))
	f.Close()
	orphan := filepath.Join(dir, packsDir, packName(999))
	os.WriteFile(orphan, packHeader(999), 0o644)
	s = openT(t, dir)
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("orphan pack not removed: %v", err)
	}
	if fi, _ := os.Stat(path); fi.Size() != e.FrameOff+int64(e.FrameLen) {
		t.Fatalf("tail not trimmed: size %d", fi.Size())
	}
	more := mkChunks(5000, 10, 5000)
	if _, err := s.PutMany(ctx, more); err != nil {
		t.Fatal(err)
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

// Regression: a flipped bit in a pack's version field made Verify and
// Repair stop with ErrFormatVersion for the whole store.
func TestPackVersionFlipIsDamage(t *testing.T) {
	ctx := context.Background()
	dir, cs := filledStore(t)
	p := filepath.Join(dir, packsDir, packName(1))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[11] ^= 0x80 // pack format version, high byte
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	s := openT(t, dir)
	ps := problems(t, s)
	if len(ps) != 1 || ps[0].Pack != p || !errors.Is(ps[0].Err, ErrFormatVersion) {
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
