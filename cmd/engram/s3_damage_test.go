package main

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/s3"
	"github.com/engram-vm/engram/chunkstore/blob/s3/s3test"
	"github.com/engram-vm/engram/internal/qemutest"
)

// TestS3DamagedObjects: one damaged object that every refresh reads (an
// index segment, a catalog journal entry) does not stop the other hosts.
// A fresh host lists, restores, ingests and runs gc with one warning line
// naming the object; gc keeps what the skipped object may need; repair
// fixes it, and verify is clean after, without a warning.
func TestS3DamagedObjects(t *testing.T) {
	qemutest.Require(t)
	s3test.SetEnv(t)
	for _, kind := range []string{"index/", "meta/"} {
		t.Run(strings.TrimSuffix(kind, "/"), func(t *testing.T) {
			dir := t.TempDir()
			bucket := s3test.Bucket(t)
			store := "s3://" + bucket + "/fleet"
			host := func(name string) string { return filepath.Join(dir, "cache-"+name) }
			cfg := s3test.Config(t)
			cfg.Bucket, cfg.Prefix = bucket, "fleet"
			ok(t, store, "init")
			bs, err := s3.Open(context.Background(), cfg, false)
			if err != nil {
				t.Fatal(err)
			}
			defer bs.Close()
			names := func(prefix string) []string {
				var out []string
				if err := bs.List(context.Background(), prefix, func(in blob.Info) error { out = append(out, in.Name); return nil }); err != nil {
					t.Fatal(err)
				}
				return out
			}

			base, _ := qcowWith("64M", nil, pattern...)(t, mkdir(t, dir, "a"))
			other, _ := qcowWith("64M", nil, "write -P 0x77 0 6M", "write -P 0x78 20M 2M")(t, mkdir(t, dir, "b"))
			ok(t, store, "--cache-dir", host("A"), "ingest", "--name", "base", base)
			before := names(kind)
			ok(t, store, "--cache-dir", host("A"), "ingest", "--name", "other", other)
			// Damage what other's ingest added (its packs' segments, or its
			// journal entries): base does not need it.
			var damaged []string
			for _, n := range names(kind) {
				if !slices.Contains(before, n) {
					damaged = append(damaged, n)
				}
			}
			if len(damaged) == 0 {
				t.Fatal("the second ingest added nothing under " + kind)
			}
			for _, n := range damaged {
				b, err := bs.Get(context.Background(), n, 0, -1)
				if err != nil {
					t.Fatal(err)
				}
				b[len(b)/2] ^= 0xff
				if err := bs.Delete(context.Background(), n); err != nil {
					t.Fatal(err)
				}
				if err := bs.Put(context.Background(), n, b); err != nil {
					t.Fatal(err)
				}
			}
			packs := countPacks(t, bucket)

			warned := func(r result) {
				t.Helper()
				if !strings.Contains(r.stderr, damaged[0]) || !strings.Contains(r.stderr, "engram repair") {
					t.Fatalf("no warning naming %s:\n%s", damaged[0], r.stderr)
				}
			}
			r := runEngram(t, store, "--cache-dir", host("B"), "ls")
			if r.code != 0 || !strings.Contains(r.stdout, "base") {
				t.Fatalf("ls on a second host: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			warned(r)
			out := filepath.Join(dir, "base-B.qcow2")
			ok(t, store, "--cache-dir", host("B"), "restore", "-o", out, "base")
			qemutest.Compare(t, base, out)
			if kind == "index/" {
				// other's chunks are unknown here: a reader is told so, and
				// an ingest stores them again.
				r := runEngram(t, store, "--cache-dir", host("B"), "restore", "-o", filepath.Join(dir, "x.qcow2"), "other")
				if r.code == 0 || !strings.Contains(r.stderr, "not found") {
					t.Fatalf("restore of other on the degraded host: exit %d\n%s", r.code, r.stderr)
				}
				// Re-ingest under the same name with --reread: the previous
				// engram's pages are in the skipped packs, so the guided
				// re-read cannot use them; it chunks the image as usual
				// (it failed on the manifest page before).
				r = runEngram(t, store, "--cache-dir", host("B"), "ingest", "--reread", "--name", "other", other)
				if r.code != 0 {
					t.Fatalf("re-ingest of other on the degraded host: exit %d\n%s", r.code, r.stderr)
				}
				warned(r)
				again := filepath.Join(dir, "other-again-B.qcow2")
				ok(t, store, "--cache-dir", host("B"), "restore", "-o", again, "other")
				qemutest.Compare(t, other, again)
				ok(t, store, "--cache-dir", host("B"), "ingest", "--name", "other2", other)
				out := filepath.Join(dir, "other-B.qcow2")
				ok(t, store, "--cache-dir", host("B"), "restore", "-o", out, "other2")
				qemutest.Compare(t, other, out)
				packs = countPacks(t, bucket)
			} else {
				ok(t, store, "--cache-dir", host("B"), "ingest", "--name", "base2", base)
			}
			// gc on the degraded host twice past the margin: nothing of the
			// store goes (the skipped segments' packs are kept; with a
			// skipped journal entry nothing is swept).
			ok(t, store, "--cache-dir", host("B"), "gc", "--margin", "1ns")
			ok(t, store, "--cache-dir", host("B"), "gc", "--margin", "1ns")
			if n := countPacks(t, bucket); n < packs {
				t.Fatalf("gc on the degraded host deleted packs: %d -> %d", packs, n)
			}
			r = runEngram(t, store, "--cache-dir", host("B"), "verify")
			if r.code != 1 || !strings.Contains(r.stdout+r.stderr, damaged[0]) {
				t.Fatalf("verify on the degraded host: exit %d, want 1 naming %s\n%s%s", r.code, damaged[0], r.stdout, r.stderr)
			}

			r = runEngram(t, store, "--cache-dir", host("C"), "repair")
			t.Logf("repair:\n%s%s", r.stdout, r.stderr)
			if r.code != 0 || !strings.Contains(r.stdout, damaged[0]) {
				t.Fatalf("repair: exit %d, want 0 naming %s\n%s%s", r.code, damaged[0], r.stdout, r.stderr)
			}
			for _, h := range []string{"D", "B"} {
				r = runEngram(t, store, "--cache-dir", host(h), "verify")
				if r.code != 0 || strings.Contains(r.stderr, "damaged") {
					t.Fatalf("verify on host %s after repair: exit %d\n%s%s", h, r.code, r.stdout, r.stderr)
				}
			}
			ok(t, store, "--cache-dir", host("D"), "gc", "--margin", "1ns")
			ok(t, store, "--cache-dir", host("D"), "gc", "--margin", "1ns")
			for _, name := range []string{"base", "other"} {
				out := filepath.Join(dir, name+"-D.qcow2")
				ok(t, store, "--cache-dir", host("E"), "restore", "-o", out, name)
				qemutest.Compare(t, map[string]string{"base": base, "other": other}[name], out)
			}
			ok(t, store, "--cache-dir", host("E"), "verify")
		})
	}
}

// TestS3DamagedGCList: with a pending gc list damaged, a second host still
// lists and restores (with a warning), but its ingest is refused rather
// than commit against packs the list may have condemned and a sweep taken,
// and gc refuses; repair replaces the list and both work again.
func TestS3DamagedGCList(t *testing.T) {
	qemutest.Require(t)
	s3test.SetEnv(t)
	dir := t.TempDir()
	bucket := s3test.Bucket(t)
	store := "s3://" + bucket + "/fleet"
	host := func(name string) string { return filepath.Join(dir, "cache-"+name) }
	cfg := s3test.Config(t)
	cfg.Bucket, cfg.Prefix = bucket, "fleet"
	ok(t, store, "init")
	bs, err := s3.Open(context.Background(), cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	base, _ := qcowWith("64M", nil, pattern...)(t, mkdir(t, dir, "a"))
	other, _ := qcowWith("64M", nil, "write -P 0x77 0 6M")(t, mkdir(t, dir, "b"))
	ok(t, store, "--cache-dir", host("A"), "ingest", "--name", "base", base)
	ok(t, store, "--cache-dir", host("A"), "ingest", "--name", "other", other)
	ok(t, store, "--cache-dir", host("A"), "rm", "other")
	ok(t, store, "--cache-dir", host("A"), "gc", "--margin", "1ns") // marks other's packs
	var lists []string
	_ = bs.List(context.Background(), "gc/condemned-", func(in blob.Info) error { lists = append(lists, in.Name); return nil })
	if len(lists) != 1 {
		t.Fatalf("pending lists %v", lists)
	}
	b, err := bs.Get(context.Background(), lists[0], 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	if err := bs.Delete(context.Background(), lists[0]); err != nil {
		t.Fatal(err)
	}
	if err := bs.Put(context.Background(), lists[0], b[:len(b)/2]); err != nil {
		t.Fatal(err)
	}

	r := runEngram(t, store, "--cache-dir", host("B"), "ls")
	if r.code != 0 || !strings.Contains(r.stdout, "base") || !strings.Contains(r.stderr, lists[0]) {
		t.Fatalf("ls with a damaged gc list: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	out := filepath.Join(dir, "base-B.qcow2")
	ok(t, store, "--cache-dir", host("B"), "restore", "-o", out, "base")
	qemutest.Compare(t, base, out)
	// B cannot know other's packs are condemned, so it would deduplicate
	// against them: its commit is refused.
	r = runEngram(t, store, "--cache-dir", host("B"), "ingest", "--name", "other", other)
	if r.code == 0 || !strings.Contains(r.stderr, "whether gc swept what this commit relies on") {
		t.Fatalf("ingest with a damaged gc list: exit %d, want refused naming it\n%s", r.code, r.stderr)
	}
	t.Logf("ingest:\n%s", r.stderr)
	r = runEngram(t, store, "--cache-dir", host("B"), "gc", "--margin", "1ns")
	if r.code == 0 || !strings.Contains(r.stderr, "gc cannot tell what it condemned") {
		t.Fatalf("gc with a damaged gc list: exit %d, want refused\n%s", r.code, r.stderr)
	}
	r = runEngram(t, store, "--cache-dir", host("C"), "repair")
	if r.code != 0 || !strings.Contains(r.stdout, lists[0]) {
		t.Fatalf("repair: exit %d, want 0 naming %s\n%s%s", r.code, lists[0], r.stdout, r.stderr)
	}
	ok(t, store, "--cache-dir", host("B"), "ingest", "--name", "other", other)
	ok(t, store, "--cache-dir", host("D"), "gc", "--margin", "1ns")
	ok(t, store, "--cache-dir", host("D"), "gc", "--margin", "1ns")
	for name, src := range map[string]string{"base": base, "other": other} {
		out := filepath.Join(dir, name+"-E.qcow2")
		ok(t, store, "--cache-dir", host("E"), "restore", "-o", out, name)
		qemutest.Compare(t, src, out)
	}
	if r := runEngram(t, store, "--cache-dir", host("E"), "verify"); r.code != 0 || r.stderr != "" {
		t.Fatalf("verify after repair: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
