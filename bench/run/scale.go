package main

// How cost grows with work (issue 13): ingest at 1, 4 (and, with -scale16,
// 16) GiB of data; a 1 TiB virtual image holding 1 GiB; 64 clones ingested
// one by one onto the stored template; ls/stats/verify/gc on stores of 100
// and 1,000 engrams; restore on 1 and 2 cores. Inputs come from bench/gen,
// cached beside the corpus. Scale rows run once each (-runs does not apply:
// the 64-clone row is 64 runs by itself) and measure engram, with borg
// beside it at 1 GiB.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// scaleVersion keys the generated inputs: bump it when bench/gen changes.
const scaleVersion = "s1"

const gib = int64(1) << 30

func (b *bench) scaleDir() string { return filepath.Join(b.corpus, "scale-"+scaleVersion) }

// ensureScale generates the scale inputs once.
func (b *bench) ensureScale() error {
	dir := b.scaleDir()
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil && !b.cfg.scale16 {
		return nil
	}
	// Each input is made only if missing: -scale16 adds one to a cache
	// made without it.
	logf("scale: generating missing inputs in %s", dir)
	bin := filepath.Join(b.scratch, "gen")
	build := exec.CommandContext(b.ctx, "go", "build", "-o", bin, "./bench/gen")
	build.Dir, build.Stderr = b.cfg.root, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build ./bench/gen: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	gen := func(args ...string) error {
		cmd := exec.CommandContext(b.ctx, bin, args...)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("bench/gen %v: %w", args, err)
		}
		return nil
	}
	sizes := []int64{1, 4}
	if b.cfg.scale16 {
		sizes = append(sizes, 16)
	}
	for _, g := range sizes {
		out := filepath.Join(dir, fmt.Sprintf("data-%dg.raw", g))
		if _, err := os.Stat(out); err == nil {
			continue
		}
		if err := gen("raw", "-data", strconv.FormatInt(g*gib, 10), "-virtual", strconv.FormatInt(2*g*gib, 10), "-seed", strconv.FormatInt(g, 10), out); err != nil {
			return err
		}
	}
	steps := [][]string{
		{"raw", "-data", strconv.FormatInt(gib, 10), "-virtual", strconv.FormatInt(1024*gib, 10), "-seed", "99", filepath.Join(dir, "sparse-1t.raw")},
		{"clones", "-template", b.f("template.qcow2"), "-n", "64", "-diff", strconv.Itoa(8 << 20), "-seed", "7", filepath.Join(dir, "clones64")},
		{"small", "-n", "100", "-size", strconv.Itoa(256 << 10), "-seed", "1", filepath.Join(dir, "small100")},
		{"small", "-n", "1000", "-size", strconv.Itoa(256 << 10), "-seed", "1", filepath.Join(dir, "small1000")},
	}
	for _, s := range steps {
		if _, err := os.Stat(s[len(s)-1]); err == nil {
			continue
		}
		if err := gen(s...); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "done"), nil, 0o644)
}

// runScale appends the scale rows.
func (b *bench) runScale(rep *Report, restoreStore, restoreID string) error {
	if err := b.ensureScale(); err != nil {
		return err
	}
	dir := b.scaleDir()
	runs := b.cfg.runs
	b.cfg.runs = 1
	defer func() { b.cfg.runs = runs }()

	perGiB := func(data int64) func(string, *sample, bool) error {
		return func(d string, s *sample, _ bool) error {
			recs, err := parseIngest(s.stdout)
			if err != nil {
				return err
			}
			s.extra = map[string]float64{"read_bytes": float64(*recs[0].ReadBytes), "new_bytes": float64(recs[0].NewBytes),
				"wall_s_per_gib_data": s.wall * float64(gib) / float64(data), "cpu_s_per_gib_data": s.cpu * float64(gib) / float64(data)}
			return nil
		}
	}
	sizes := []int64{1, 4}
	if b.cfg.scale16 {
		sizes = append(sizes, 16)
	}
	var cases []tcase
	for _, g := range sizes {
		file := filepath.Join(dir, fmt.Sprintf("data-%dg.raw", g))
		name := fmt.Sprintf("scale: ingest of %d GiB of data", g)
		cases = append(cases, tcase{test: name, tool: "engram", setup: b.seed("engram-empty", b.engramInit),
			cmds:  func(d string) [][]string { return [][]string{b.engramIngestRaw(d, file)} },
			size:  sizeOf("store"),
			check: perGiB(g * gib)})
		if g == 1 {
			cases = append(cases, tcase{test: name, tool: "borg", setup: b.seed("borg-empty", b.borgInit),
				cmds: func(d string) [][]string { return [][]string{b.borgCreate(d, "s", file)} },
				size: sizeOf("repo")})
		}
	}
	sparse := filepath.Join(dir, "sparse-1t.raw")
	cases = append(cases, tcase{test: "scale: 1 TiB virtual with 1 GiB of data", tool: "engram", setup: b.seed("engram-empty", b.engramInit),
		cmds:  func(d string) [][]string { return [][]string{b.engramIngestRaw(d, sparse)} },
		size:  sizeOf("store"),
		check: perGiB(gib)})
	for _, n := range []int{100, 1000} {
		src := filepath.Join(dir, fmt.Sprintf("small%d", n))
		seed := b.seed(fmt.Sprintf("engram-%d-engrams", n), func(d string) error {
			if err := b.engramInit(d); err != nil {
				return err
			}
			_, err := b.exec(d, []string{b.cfg.engram, "--store", filepath.Join(d, "store"), "-q", "ingest", "--format", "raw", src})
			return err
		})
		for _, op := range [][]string{{"ls"}, {"stats"}, {"verify"}, {"gc"}} {
			cases = append(cases, tcase{test: fmt.Sprintf("store of %d engrams: %s", n, op[0]), tool: "engram", setup: seed,
				cmds: func(d string) [][]string {
					return [][]string{append([]string{b.cfg.engram, "--store", filepath.Join(d, "store")}, op...)}
				}})
		}
	}
	for _, c := range []struct {
		name string
		pre  []string
	}{{"restore of one clone on 1 core", []string{"taskset", "-c", "0"}}, {"restore of one clone on 2 cores", nil}} {
		pre := c.pre
		cases = append(cases, tcase{test: c.name, tool: "engram",
			cmds: func(d string) [][]string {
				return [][]string{append(append([]string(nil), pre...), b.cfg.engram, "--store", restoreStore, "-q", "restore", restoreID, "-o", filepath.Join(d, "out.qcow2"))}
			},
			size: sizeOf("out.qcow2")})
	}
	for _, tc := range cases {
		if _, err := b.runCase(tc); err != nil {
			return err
		}
	}
	return b.runClones64()
}

// engramIngestRaw ingests a raw image without the "raw by default" note.
func (b *bench) engramIngestRaw(dir, file string) []string {
	return []string{b.cfg.engram, "--store", filepath.Join(dir, "store"), "--json", "ingest", "--format", "raw", file}
}

// clones64Name is the 64-clone row.
const clones64Name = "64 clones one by one onto the stored template"

// runClones64 ingests the 64 generated overlays one command each into a
// store holding the template and records every clone's wall, CPU and the
// store's growth.
func (b *bench) runClones64() error {
	d := filepath.Join(b.scratch, "clones64")
	if err := os.RemoveAll(d); err != nil {
		return err
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(d)
	if err := b.engramInit(d); err != nil {
		return err
	}
	if _, err := b.exec(d, b.engramIngest(d, b.f("template.qcow2"))); err != nil {
		return err
	}
	prev, err := duSize(filepath.Join(d, "store"))
	if err != nil {
		return err
	}
	row := &Row{Test: clones64Name, Tool: "engram", Runs: 64, Extra: map[string]float64{}, Series: map[string][]float64{}}
	var walls, cpus []float64
	var maxRSS int64
	var total int64
	for k := 1; k <= 64; k++ {
		file := filepath.Join(b.scaleDir(), "clones64", fmt.Sprintf("clone-%02d.qcow2", k))
		argv := b.engramIngest(d, file)
		s, err := b.exec(d, argv)
		if err != nil {
			return fmt.Errorf("%s: %w", clones64Name, err)
		}
		row.Command = b.short(argv)
		recs, err := parseIngest(s.stdout)
		if err != nil {
			return err
		}
		size, err := duSize(filepath.Join(d, "store"))
		if err != nil {
			return err
		}
		walls, cpus = append(walls, s.wall), append(cpus, s.cpu)
		maxRSS = max(maxRSS, s.rssKiB)
		row.Series["wall_s"] = append(row.Series["wall_s"], round(s.wall, 3))
		row.Series["cpu_s"] = append(row.Series["cpu_s"], round(s.cpu, 3))
		row.Series["store_growth_bytes"] = append(row.Series["store_growth_bytes"], float64(size-prev))
		row.Series["new_bytes"] = append(row.Series["new_bytes"], float64(recs[0].NewBytes))
		row.Series["read_bytes"] = append(row.Series["read_bytes"], float64(*recs[0].ReadBytes))
		total += size - prev
		prev = size
	}
	mean := func(v []float64) float64 {
		var s float64
		for _, x := range v {
			s += x
		}
		return s / float64(len(v))
	}
	row.WallS, row.CPUS, row.PeakRSSMiB, row.SizeBytes = median(walls), median(cpus), float64(maxRSS)/1024, total
	row.WallAll = row.Series["wall_s"]
	row.Extra["wall_first8_mean_s"] = round(mean(walls[:8]), 3)
	row.Extra["wall_last8_mean_s"] = round(mean(walls[56:]), 3)
	row.Extra["growth_first8_mean_bytes"] = mean(row.Series["store_growth_bytes"][:8])
	row.Extra["growth_last8_mean_bytes"] = mean(row.Series["store_growth_bytes"][56:])
	row.Extra["new_mean_bytes"] = mean(row.Series["new_bytes"])
	b.rows = append(b.rows, row)
	logf("%-34s %-26s %7.2fs per clone (first 8 %.2fs, last 8 %.2fs), %s in all", clones64Name, "engram", row.WallS,
		row.Extra["wall_first8_mean_s"], row.Extra["wall_last8_mean_s"], mb(total))
	return nil
}

// scaleTargets adds the issue 13 growth targets.
func (b *bench) scaleTargets(add func(goal string, met bool, format string, args ...any)) {
	one := b.row("scale: ingest of 1 GiB of data", "engram")
	four := b.row("scale: ingest of 4 GiB of data", "engram")
	tib := b.row("scale: 1 TiB virtual with 1 GiB of data", "engram")
	if one == nil || four == nil || tib == nil {
		return
	}
	r := four.WallS / 4 / one.WallS
	add("scale: ingest time grows with data (4 GiB per GiB within 1.3x of 1 GiB)", r <= 1.3,
		"%.2f s/GiB at 4 GiB vs %.2f at 1 GiB (%.2fx); CPU %.2f vs %.2f s/GiB", four.WallS/4, one.WallS, r, four.CPUS/4, one.CPUS)
	r = tib.WallS / one.WallS
	add("scale: 1 TiB virtual with 1 GiB of data within 1.3x of a 2 GiB image with 1 GiB", r <= 1.3,
		"%.2f s vs %.2f s (%.2fx)", tib.WallS, one.WallS, r)
	if c := b.row(clones64Name, "engram"); c != nil {
		f, l := c.Extra["wall_first8_mean_s"], c.Extra["wall_last8_mean_s"]
		add("64 clones: time per clone flat (last 8 within 1.5x of first 8)", l <= 1.5*f,
			"first 8 %.2f s, last 8 %.2f s per clone; store growth %.1f / %.1f MB per clone for %.1f MB new each",
			f, l, c.Extra["growth_first8_mean_bytes"]/1e6, c.Extra["growth_last8_mean_bytes"]/1e6, c.Extra["new_mean_bytes"]/1e6)
	}
	for _, op := range []string{"ls", "stats", "verify", "gc"} {
		s, l := b.row("store of 100 engrams: "+op, "engram"), b.row("store of 1000 engrams: "+op, "engram")
		if s == nil || l == nil {
			continue
		}
		add(fmt.Sprintf("1,000 engrams: %s grows at most linearly (10x engrams, at most 10x time)", op), l.WallS <= 10*s.WallS+0.05,
			"%.2f s at 100, %.2f s at 1,000", s.WallS, l.WallS)
	}
}
