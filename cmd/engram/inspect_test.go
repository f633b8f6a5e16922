package main

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// inspect --map has the shape and, offsets aside, the content of
// `qemu-img map --output=json`.
func TestInspectMap(t *testing.T) {
	qemutest.Require(t)
	for _, v := range variants {
		if v.name != "chain3-on-raw" && v.name != "extended-l2" && v.name != "zstd" {
			continue
		}
		t.Run(v.name, func(t *testing.T) {
			dir := t.TempDir()
			src, _ := v.make(t, dir)
			var got []qemutest.MapEntry
			out := ok(t, filepath.Join(dir, "unused-store"), "inspect", "--map", src)
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("inspect --map: %v\n%s", err, out)
			}
			want := qemutest.Map(t, src)
			norm := func(m []qemutest.MapEntry) []qemutest.MapEntry {
				var out []qemutest.MapEntry
				for _, e := range m {
					e.Offset = nil
					if n := len(out); n > 0 && out[n-1].Start+out[n-1].Length == e.Start &&
						out[n-1].Depth == e.Depth && out[n-1].Data == e.Data && out[n-1].Zero == e.Zero && out[n-1].Present == e.Present {
						out[n-1].Length += e.Length
						continue
					}
					out = append(out, e)
				}
				return out
			}
			g, w := norm(got), norm(want)
			if len(g) != len(w) {
				t.Fatalf("inspect --map has %d extents, qemu-img map %d:\n%+v\n%+v", len(g), len(w), g, w)
			}
			for i := range g {
				if g[i] != w[i] {
					t.Errorf("extent %d: engram %+v, qemu-img %+v", i, g[i], w[i])
				}
			}
			if human := ok(t, filepath.Join(dir, "unused-store"), "inspect", src); len(human) == 0 {
				t.Error("inspect printed nothing")
			}
		})
	}
}

// TestInspectMapDataFileRaw: on a data_file_raw image, whose zero writes
// keep their host clusters, inspect --map is qemu-img map's JSON, offsets
// of the zero extents included (they were left out).
func TestInspectMapDataFileRaw(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "x.qcow2")
	qemutest.Create(t, "qcow2", src, "4M", "data_file="+filepath.Join(dir, "x.data"), "data_file_raw=on")
	qemutest.IO(t, src, "qcow2", "write -P 0x11 0 1M", "write -z 1M 1M", "write -P 0x22 3M 64k", "write -z 3M 64k")
	var got, want []map[string]any
	if err := json.Unmarshal([]byte(ok(t, filepath.Join(dir, "unused-store"), "inspect", "--map", src)), &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(qemutest.Img(t, "map", "--output=json", src)), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("inspect --map:\n%v\nqemu-img map:\n%v", got, want)
	}
}
