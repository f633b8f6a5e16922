package main

import (
	"encoding/json"
	"path/filepath"
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
