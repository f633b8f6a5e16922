// Command run is `make bench`: engram measured side by side with qemu-img,
// restic and borg on the same inputs, in one run. See bench/README.md.
//
// It builds (or reuses) the corpus with bench/corpus.sh, runs every case
// -runs times in a fresh scratch directory, keeps the median of each figure
// and writes bench/out/results.{md,json}. Any failing command stops the run
// with its stderr.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// corpusVersion keys the cache per mode: bump it whenever bench/corpus.sh
// changes what that mode builds.
var corpusVersion = map[string]string{"full": "c1", "quick": "q2"}

// password is the same fixed secret for restic and borg (borg runs
// unencrypted; restic 0.14 has no --insecure-no-password).
const password = "engram-bench"

type config struct {
	mode, root, cache, out, engram, engramRev, compression string
	clones, runs                                           int
	keepScratch, scale, scale16                            bool
}

func main() {
	var c config
	flag.StringVar(&c.mode, "mode", "full", "full (Debian fleet) or quick (synthetic, under a minute)")
	flag.IntVar(&c.clones, "clones", 0, "clones in the fleet (default 8 full, 3 quick)")
	flag.IntVar(&c.runs, "runs", 3, "runs per figure; the median is reported")
	flag.StringVar(&c.root, "root", ".", "repository root")
	flag.StringVar(&c.engram, "engram", "bin/engram", "engram binary")
	flag.StringVar(&c.engramRev, "engram-rev", "", "what -engram was built from, for the report (default: git describe of the work tree)")
	flag.StringVar(&c.compression, "compression", "", "engram store compression (init --compression; default: the store default)")
	flag.BoolVar(&c.keepScratch, "keep", false, "keep the scratch stores in bench/out/scratch")
	flag.BoolVar(&c.scale, "scale", true, "also run the scale rows (full mode only; bench/run/scale.go)")
	flag.BoolVar(&c.scale16, "scale16", false, "include the 16 GiB ingest in the scale rows (~10 GiB of disk, minutes)")
	flag.Parse()
	if c.mode != "full" && c.mode != "quick" {
		fatalf("-mode %q: want full or quick", c.mode)
	}
	if c.clones == 0 {
		c.clones = map[string]int{"full": 8, "quick": 3}[c.mode]
	}
	if c.clones < 1 || c.runs < 1 {
		fatalf("-clones and -runs must be at least 1")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, &c); err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// Row is one tool on one test: medians over the runs and the ratios to
// engram's medians on the same test (tool / engram; >1 means engram is
// faster or smaller).
type Row struct {
	Test       string             `json:"test"`
	Tool       string             `json:"tool"`
	Command    string             `json:"command"`
	Runs       int                `json:"runs"`
	WallS      float64            `json:"wall_s"`
	CPUS       float64            `json:"cpu_s"`
	PeakRSSMiB float64            `json:"peak_rss_mib"`
	SizeBytes  int64              `json:"size_bytes,omitempty"`
	TimeRatio  float64            `json:"time_ratio_to_engram,omitempty"`
	SizeRatio  float64            `json:"size_ratio_to_engram,omitempty"`
	WallAll    []float64          `json:"wall_all_s"`
	Extra      map[string]float64 `json:"extra,omitempty"`
	// Series holds per-step figures of a row made of many steps (the 64
	// clones: wall_s, cpu_s, store_growth_bytes per clone), for plotting.
	Series map[string][]float64 `json:"series,omitempty"`
}

// Target is one goal of issue 6 and where this run stands.
type Target struct {
	Goal   string `json:"goal"`
	Actual string `json:"actual"`
	Met    bool   `json:"met"`
}

// Report is results.json.
type Report struct {
	Date    string            `json:"date"`
	Mode    string            `json:"mode"`
	Machine map[string]string `json:"machine"`
	Corpus  map[string]int64  `json:"corpus_bytes"`
	Notes   []string          `json:"notes"`
	Rows    []*Row            `json:"rows"`
	BLAKE3  map[string]any    `json:"blake3"`
	Targets []Target          `json:"targets"`
}

// sample is one run of one case.
type sample struct {
	wall, cpu float64
	rssKiB    int64
	size      int64
	stdout    []byte
	extra     map[string]float64
}

// tcase is one tool on one test. setup runs untimed in a fresh scratch
// directory; cmds run timed, one after the other; size measures what the
// run left (a store or an output file); check reads the output and, after
// the last run, validates the result (restore + qemu-img compare), untimed.
type tcase struct {
	test, tool string
	setup      func(dir string) error
	cmds       func(dir string) [][]string
	size       func(dir string) (int64, error)
	check      func(dir string, s *sample, last bool) error
	keep       bool // keep the last run's scratch for a later case
	minRuns    int  // at least this many runs (short, close comparisons)
}

type bench struct {
	cfg     *config
	ctx     context.Context
	corpus  string
	scratch string
	env     []string
	rows    []*Row
	kept    map[string]string // test/tool -> scratch dir of its last run
	seeds   map[string]string // seed name -> its directory
	samples map[string][]sample
}

func run(ctx context.Context, cfg *config) error {
	root, err := filepath.Abs(cfg.root)
	if err != nil {
		return err
	}
	cfg.root = root
	cfg.cache = filepath.Join(root, "bench", "cache")
	cfg.out = filepath.Join(root, "bench", "out")
	if !filepath.IsAbs(cfg.engram) {
		cfg.engram = filepath.Join(root, cfg.engram)
	}
	for _, tool := range []string{cfg.engram, "/usr/bin/time", "qemu-img", "restic", "borg", "zstd", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (scripts/bench.sh installs the tools): %w", tool, err)
		}
	}
	b := &bench{cfg: cfg, ctx: ctx, kept: map[string]string{}, seeds: map[string]string{}, samples: map[string][]sample{}}
	b.scratch = filepath.Join(cfg.out, "scratch")
	if err := os.RemoveAll(b.scratch); err != nil {
		return err
	}
	if err := os.MkdirAll(b.scratch, 0o755); err != nil {
		return err
	}
	b.env = append(os.Environ(),
		"RESTIC_PASSWORD="+password, "BORG_PASSPHRASE="+password,
		"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK=yes",
		"ENGRAM_STORE=", "GOGC=", "GOMAXPROCS=")
	if b.corpus, err = b.ensureCorpus(); err != nil {
		return err
	}
	rep := &Report{Date: time.Now().UTC().Format(time.RFC3339), Mode: cfg.mode, Machine: machine(ctx, cfg)}
	rep.Notes = []string{
		"Warm page cache: inputs are read once before measuring and caches are not dropped between runs.",
		fmt.Sprintf("Each figure is the median of %d runs (the restore rows: at least %d), each in a fresh scratch store, the tools of one row taking turns run by run; time is wall clock, RSS is the peak from /usr/bin/time -v (the largest over a case's commands).", cfg.runs, restoreRuns),
		"Sizes are bytes allocated on disk (du) of the store, repository or output file.",
		"restic 0.14 has no --insecure-no-password: restic runs with a fixed password (encrypted, compression auto); borg runs with --encryption=none.",
		"The machine may be shared with other work: figures are noisy.",
	}
	if rep.Corpus, err = b.corpusSizes(); err != nil {
		return err
	}
	b.warm()
	start := time.Now()
	if err := b.runAll(rep); err != nil {
		return err
	}
	logf("measured in %s", time.Since(start).Round(time.Second))
	b.ratios()
	rep.Rows = b.rows
	b.targets(rep)
	if !cfg.keepScratch {
		if err := os.RemoveAll(b.scratch); err != nil {
			return err
		}
	}
	return b.write(rep)
}

func (b *bench) ensureCorpus() (string, error) {
	key := fmt.Sprintf("%s-%s-n%d", b.cfg.mode, corpusVersion[b.cfg.mode], b.cfg.clones)
	dir := filepath.Join(b.cfg.cache, key)
	if _, err := os.Stat(filepath.Join(dir, "manifest.txt")); err == nil {
		logf("corpus: cached in %s", dir)
		return dir, nil
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	logf("corpus: building %s (cached for later runs)", dir)
	cmd := exec.CommandContext(b.ctx, filepath.Join(b.cfg.root, "bench", "corpus.sh"), b.cfg.mode, strconv.Itoa(b.cfg.clones), tmp)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("bench/corpus.sh %s: %w", b.cfg.mode, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	return dir, os.Rename(tmp, dir)
}

func (b *bench) f(name string) string { return filepath.Join(b.corpus, name) }

func (b *bench) clone(k int) string { return b.f(fmt.Sprintf("clone-%d.qcow2", k)) }
func (b *bench) flat(k int) string  { return b.f(fmt.Sprintf("flat-%d.qcow2", k)) }

func (b *bench) overlays() []string {
	var s []string
	for k := 1; k <= b.cfg.clones; k++ {
		s = append(s, b.clone(k))
	}
	return s
}

func (b *bench) flats() []string {
	var s []string
	for k := 1; k <= b.cfg.clones; k++ {
		s = append(s, b.flat(k))
	}
	return s
}

func (b *bench) corpusSizes() (map[string]int64, error) {
	m := map[string]int64{}
	add := func(key string, files ...string) error {
		for _, f := range files {
			fi, err := os.Stat(f)
			if err != nil {
				return fmt.Errorf("corpus: %w", err)
			}
			m[key] += fi.Size()
		}
		return nil
	}
	if err := add("template_qcow2", b.f("template.qcow2")); err != nil {
		return nil, err
	}
	if err := add("template_zstd_qcow2", b.f("template.zstd.qcow2")); err != nil {
		return nil, err
	}
	if err := add("overlays", b.overlays()...); err != nil {
		return nil, err
	}
	if err := add("flattened", b.flats()...); err != nil {
		return nil, err
	}
	// What the overlays themselves cost compressed: zstd -3 of each file.
	for _, o := range b.overlays() {
		out, err := exec.CommandContext(b.ctx, "zstd", "-3", "-c", "-q", o).Output()
		if err != nil {
			return nil, fmt.Errorf("zstd -3 %s: %w", o, err)
		}
		m["overlays_zstd3"] += int64(len(out))
	}
	out, err := exec.CommandContext(b.ctx, "qemu-img", "info", "--output=json", b.f("template.qcow2")).Output()
	if err != nil {
		return nil, fmt.Errorf("qemu-img info template.qcow2: %w", err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("qemu-img info template.qcow2: %w", err)
	}
	m["template_virtual"] = info.VirtualSize
	return m, nil
}

// warm reads every input once so that every tool meets a warm page cache.
func (b *bench) warm() {
	entries, _ := os.ReadDir(b.corpus)
	buf := make([]byte, 1<<20)
	for _, e := range entries {
		f, err := os.Open(filepath.Join(b.corpus, e.Name()))
		if err != nil {
			continue
		}
		for {
			if _, err := f.Read(buf); err != nil {
				break
			}
		}
		f.Close()
	}
}

// exec runs argv under /usr/bin/time -v in dir's environment and returns
// its measurements; a non-zero exit is an error carrying stderr.
func (b *bench) exec(dir string, argv []string) (sample, error) {
	tf := filepath.Join(dir, ".time")
	cmd := exec.CommandContext(b.ctx, "/usr/bin/time", append([]string{"-v", "-o", tf}, argv...)...)
	cmd.Dir = dir
	cmd.Env = append(append([]string(nil), b.env...),
		"RESTIC_CACHE_DIR="+filepath.Join(dir, ".restic-cache"), "BORG_BASE_DIR="+filepath.Join(dir, ".borg"),
		"TMPDIR="+dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0).Seconds()
	if err != nil {
		return sample{}, fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, tail(stderr.String(), 2000))
	}
	s := sample{wall: wall, stdout: stdout.Bytes()}
	tb, err := os.ReadFile(tf)
	if err != nil {
		return sample{}, err
	}
	for _, line := range strings.Split(string(tb), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok {
			continue
		}
		switch k {
		case "User time (seconds)", "System time (seconds)":
			x, _ := strconv.ParseFloat(v, 64)
			s.cpu += x
		case "Maximum resident set size (kbytes)":
			s.rssKiB, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if s.rssKiB == 0 {
		return sample{}, fmt.Errorf("%s: no peak RSS in /usr/bin/time -v output:\n%s", strings.Join(argv, " "), tb)
	}
	return s, os.Remove(tf)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// runCase runs one case cfg.runs times and appends its row.
func (b *bench) runCase(tc tcase) (*Row, error) {
	rows, err := b.runCases([]tcase{tc})
	if err != nil {
		return nil, err
	}
	return rows[0], nil
}

// runCases runs the tools of one comparison in alternating rounds (each
// tool once per round), so that a change in the machine's load during the
// comparison falls on every tool alike rather than on whichever ran then.
// Every case gets the most runs any of them asks for.
func (b *bench) runCases(tcs []tcase) ([]*Row, error) {
	runs := b.cfg.runs
	for _, tc := range tcs {
		runs = max(runs, tc.minRuns)
	}
	ss := make([][]sample, len(tcs))
	cmdlines := make([]string, len(tcs))
	for r := 0; r < runs; r++ {
		for k, tc := range tcs {
			s, cmdline, err := b.runOnce(tc, r, r == runs-1)
			if err != nil {
				return nil, err
			}
			ss[k] = append(ss[k], s)
			cmdlines[k] = cmdline
		}
	}
	rows := make([]*Row, len(tcs))
	for k, tc := range tcs {
		rows[k] = b.addRow(tc, cmdlines[k], ss[k])
	}
	return rows, nil
}

// runOnce is run r of case tc, in a fresh scratch directory.
func (b *bench) runOnce(tc tcase, r int, last bool) (sample, string, error) {
	var total sample
	if err := b.ctx.Err(); err != nil {
		return total, "", err
	}
	slug := strings.NewReplacer(" ", "-", "/", "-", "(", "", ")", "", "+", "").Replace(tc.test + "-" + tc.tool)
	dir := filepath.Join(b.scratch, fmt.Sprintf("%s-%d", slug, r))
	if err := os.RemoveAll(dir); err != nil {
		return total, "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return total, "", err
	}
	if tc.setup != nil {
		if err := tc.setup(dir); err != nil {
			return total, "", fmt.Errorf("%s / %s: setup: %w", tc.test, tc.tool, err)
		}
	}
	var cmds []string
	for _, argv := range tc.cmds(dir) {
		s, err := b.exec(dir, argv)
		if err != nil {
			return total, "", fmt.Errorf("%s / %s: %w", tc.test, tc.tool, err)
		}
		total.wall += s.wall
		total.cpu += s.cpu
		total.rssKiB = max(total.rssKiB, s.rssKiB)
		total.stdout = append(total.stdout, s.stdout...)
		cmds = append(cmds, b.short(argv))
	}
	if tc.size != nil {
		n, err := tc.size(dir)
		if err != nil {
			return total, "", fmt.Errorf("%s / %s: size: %w", tc.test, tc.tool, err)
		}
		total.size = n
	}
	if tc.check != nil {
		if err := tc.check(dir, &total, last); err != nil {
			return total, "", fmt.Errorf("%s / %s: check: %w", tc.test, tc.tool, err)
		}
	}
	if tc.keep && last {
		b.kept[tc.test+"/"+tc.tool] = dir
	} else if err := os.RemoveAll(dir); err != nil {
		return total, "", err
	}
	return total, strings.Join(cmds, " && "), nil
}

// addRow records the medians of a case's samples.
func (b *bench) addRow(tc tcase, cmdline string, ss []sample) *Row {
	row := &Row{Test: tc.test, Tool: tc.tool, Command: cmdline, Runs: len(ss), Extra: map[string]float64{}}
	pick := func(f func(sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		return median(v)
	}
	row.WallS = pick(func(s sample) float64 { return s.wall })
	row.CPUS = pick(func(s sample) float64 { return s.cpu })
	row.PeakRSSMiB = pick(func(s sample) float64 { return float64(s.rssKiB) / 1024 })
	row.SizeBytes = int64(pick(func(s sample) float64 { return float64(s.size) }))
	for _, s := range ss {
		row.WallAll = append(row.WallAll, round(s.wall, 3))
	}
	for k := range ss[0].extra {
		row.Extra[k] = pick(func(s sample) float64 { return s.extra[k] })
	}
	b.rows = append(b.rows, row)
	b.samples[tc.test+"/"+tc.tool] = ss
	logf("%-34s %-26s %7.2fs  %6.0f MiB RSS  %s", tc.test, tc.tool, row.WallS, row.PeakRSSMiB, mb(row.SizeBytes))
	return row
}

// runGroups runs cases, each run of consecutive cases of one test as one
// alternating comparison (runCases).
func (b *bench) runGroups(cases []tcase) error {
	for i := 0; i < len(cases); {
		j := i + 1
		for j < len(cases) && cases[j].test == cases[i].test {
			j++
		}
		if _, err := b.runCases(cases[i:j]); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// short shows a command with the corpus and scratch paths cut, for the table.
func (b *bench) short(argv []string) string {
	s := make([]string, len(argv))
	for i, a := range argv {
		a = strings.ReplaceAll(a, b.corpus+"/", "")
		a = strings.ReplaceAll(a, b.cfg.engram, "engram")
		if strings.HasPrefix(a, b.scratch) {
			a = filepath.Base(a)
		}
		s[i] = a
	}
	return strings.Join(s, " ")
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func round(x float64, d int) float64 {
	p := math.Pow(10, float64(d))
	return math.Round(x*p) / p
}

func mb(n int64) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}

// duSize is what a file or directory tree occupies on disk.
func duSize(path string) (int64, error) {
	var total int64
	err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			total += st.Blocks * 512
		}
		return nil
	})
	return total, err
}

func sizeOf(rel string) func(string) (int64, error) {
	return func(dir string) (int64, error) { return duSize(filepath.Join(dir, rel)) }
}

// seed returns a setup that copies a directory built once by build: a
// fresh repository, or one that already holds the template. Every run
// starts from the same bytes, and the untimed setup is paid once.
func (b *bench) seed(name string, build func(dir string) error) func(string) error {
	return func(dir string) error {
		src, ok := b.seeds[name]
		if !ok {
			src = filepath.Join(b.scratch, "seed-"+name)
			if err := os.RemoveAll(src); err != nil {
				return err
			}
			if err := os.MkdirAll(src, 0o755); err != nil {
				return err
			}
			if err := build(src); err != nil {
				return fmt.Errorf("seed %s: %w", name, err)
			}
			b.seeds[name] = src
		}
		if out, err := exec.CommandContext(b.ctx, "cp", "-a", "--reflink=auto", src+"/.", dir).CombinedOutput(); err != nil {
			return fmt.Errorf("cp -a %s %s: %w: %s", src, dir, err, out)
		}
		return nil
	}
}

// reingestName is the test measured against the hashing ceiling.
const reingestName = "re-ingest (duplicate data)"

// freshFlatName is the extra clone, flattened, ingested into an empty store.
const freshFlatName = "one clone flattened into an empty store"

// engramHas reports whether `engram CMD --help` mentions flag.
func (b *bench) engramHas(cmd, flag string) bool {
	out, _ := exec.CommandContext(b.ctx, b.cfg.engram, cmd, "--help").CombinedOutput()
	return bytes.Contains(out, []byte(flag))
}

// The tools, each as setup/commands on a scratch dir.

func (b *bench) engramInit(dir string) error {
	args := []string{b.cfg.engram, "--store", filepath.Join(dir, "store"), "-q", "init"}
	if b.cfg.compression != "" {
		args = append(args, "--compression", b.cfg.compression)
	}
	_, err := b.exec(dir, args)
	return err
}

func (b *bench) engramIngest(dir string, files ...string) []string {
	return append([]string{b.cfg.engram, "--store", filepath.Join(dir, "store"), "--json", "ingest"}, files...)
}

func (b *bench) resticInit(dir string) error {
	_, err := b.exec(dir, []string{"restic", "-q", "-r", filepath.Join(dir, "repo"), "init"})
	return err
}

func (b *bench) resticBackup(dir string, files ...string) []string {
	return append([]string{"restic", "-q", "-r", filepath.Join(dir, "repo"), "backup"}, files...)
}

func (b *bench) borgInit(dir string) error {
	_, err := b.exec(dir, []string{"borg", "init", "--encryption=none", filepath.Join(dir, "repo")})
	return err
}

func (b *bench) borgCreate(dir, archive string, files ...string) []string {
	return append([]string{"borg", "create", "--compression", "zstd,3", filepath.Join(dir, "repo") + "::" + archive}, files...)
}

// ingestRecord is one image in `engram --json ingest` output. Two shapes
// are accepted: the summary (id, read_bytes, new_bytes, how) and the older
// catalog record (engram, stats.data_bytes, stats.new_bytes).
type ingestRecord struct {
	ID             string `json:"id"`
	Engram         string `json:"engram"`
	AllocatedBytes int64  `json:"allocated_bytes"`
	ReadBytes      *int64 `json:"read_bytes"`
	NewBytes       int64  `json:"new_bytes"`
	How            string `json:"how"`
	Stats          *struct {
		DataBytes int64 `json:"data_bytes"`
		NewBytes  int64 `json:"new_bytes"`
	} `json:"stats"`
}

// normalize fills ID, ReadBytes and NewBytes from the older shape.
func (r *ingestRecord) normalize() {
	if r.ID == "" {
		r.ID = r.Engram
	}
	if r.Stats != nil {
		if r.ReadBytes == nil {
			r.ReadBytes = &r.Stats.DataBytes
		}
		r.NewBytes = r.Stats.NewBytes
	}
	if r.ReadBytes == nil {
		r.ReadBytes = new(int64)
	}
}

func parseIngest(out []byte) ([]ingestRecord, error) {
	var recs []ingestRecord
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var batch []ingestRecord
		if err := dec.Decode(&batch); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("engram --json ingest output: %w", err)
		}
		recs = append(recs, batch...)
	}
	if len(recs) == 0 {
		return nil, errors.New("engram --json ingest printed no records")
	}
	for i := range recs {
		recs[i].normalize()
		if recs[i].ID == "" {
			return nil, fmt.Errorf("engram --json ingest: record %d has no ID", i)
		}
	}
	return recs, nil
}

// engramCheck records what engram ingested and restores the first image
// of the last run to check it with qemu-img compare.
func (b *bench) engramCheck(want int, first string) func(string, *sample, bool) error {
	return func(dir string, s *sample, last bool) error {
		recs, err := parseIngest(s.stdout)
		if err != nil {
			return err
		}
		if len(recs) != want {
			return fmt.Errorf("engram ingest printed %d records, want %d", len(recs), want)
		}
		s.extra = map[string]float64{}
		for _, r := range recs {
			s.extra["read_bytes"] += float64(*r.ReadBytes)
			s.extra["new_bytes"] += float64(r.NewBytes)
		}
		if !last {
			return nil
		}
		out := filepath.Join(dir, "check.qcow2")
		if _, err := b.exec(dir, []string{b.cfg.engram, "--store", filepath.Join(dir, "store"), "-q", "restore", recs[0].ID, "-o", out}); err != nil {
			return err
		}
		if _, err := b.exec(dir, []string{"qemu-img", "compare", "-q", first, out}); err != nil {
			return fmt.Errorf("restored %s differs: %w", filepath.Base(first), err)
		}
		return os.Remove(out)
	}
}

func (b *bench) runAll(rep *Report) error {
	N := b.cfg.clones
	tmpl := b.f("template.qcow2")
	fleet := append([]string{tmpl}, b.overlays()...)
	extra := N + 1
	fleetName := fmt.Sprintf("fleet of overlays (template + %d)", N)
	flatName := fmt.Sprintf("fleet of flattened clones (%d)", N)
	engramTmpl := b.seed("engram-template", func(d string) error {
		if err := b.engramInit(d); err != nil {
			return err
		}
		_, err := b.exec(d, b.engramIngest(d, tmpl))
		return err
	})
	cases := []tcase{
		// 1. First ingest of the template.
		{test: "template ingest", tool: "engram", setup: b.seed("engram-empty", b.engramInit),
			cmds:  func(d string) [][]string { return [][]string{b.engramIngest(d, tmpl)} },
			size:  sizeOf("store"),
			check: b.engramCheck(1, tmpl)},
		{test: "template ingest", tool: "restic", setup: b.seed("restic-empty", b.resticInit),
			cmds: func(d string) [][]string { return [][]string{b.resticBackup(d, tmpl)} },
			size: sizeOf("repo")},
		{test: "template ingest", tool: "borg", setup: b.seed("borg-empty", b.borgInit),
			cmds: func(d string) [][]string { return [][]string{b.borgCreate(d, "t", tmpl)} },
			size: sizeOf("repo")},
		{test: "template ingest", tool: "qemu-img convert -c",
			cmds: func(d string) [][]string {
				return [][]string{{"qemu-img", "convert", "-c", "-O", "qcow2", tmpl, filepath.Join(d, "out.qcow2")}}
			},
			size: sizeOf("out.qcow2")},
		{test: "template ingest", tool: "qemu-img convert (copy floor)",
			cmds: func(d string) [][]string {
				return [][]string{{"qemu-img", "convert", "-O", "qcow2", tmpl, filepath.Join(d, "out.qcow2")}}
			},
			size: sizeOf("out.qcow2")},

		// 2. The whole fleet: overlays, then flattened clones.
		{test: fleetName, tool: "engram", setup: b.seed("engram-empty", b.engramInit),
			cmds:  func(d string) [][]string { return [][]string{b.engramIngest(d, fleet...)} },
			size:  sizeOf("store"),
			check: b.engramCheck(len(fleet), tmpl)},
		{test: fleetName, tool: "restic", setup: b.seed("restic-empty", b.resticInit),
			cmds: func(d string) [][]string { return [][]string{b.resticBackup(d, fleet...)} },
			size: sizeOf("repo")},
		{test: fleetName, tool: "borg", setup: b.seed("borg-empty", b.borgInit),
			cmds: func(d string) [][]string { return [][]string{b.borgCreate(d, "fleet", fleet...)} },
			size: sizeOf("repo")},
		{test: flatName, tool: "engram", setup: b.seed("engram-empty", b.engramInit), keep: true,
			cmds:  func(d string) [][]string { return [][]string{b.engramIngest(d, b.flats()...)} },
			size:  sizeOf("store"),
			check: b.engramCheck(N, b.flat(1))},
		{test: flatName, tool: "restic", setup: b.seed("restic-empty", b.resticInit), keep: true,
			cmds: func(d string) [][]string { return [][]string{b.resticBackup(d, b.flats()...)} },
			size: sizeOf("repo")},
		{test: flatName, tool: "borg", setup: b.seed("borg-empty", b.borgInit), keep: true,
			cmds: func(d string) [][]string { return [][]string{b.borgCreate(d, "flat", b.flats()...)} },
			size: sizeOf("repo")},
	}
	// The same clone flattened into an empty store: what the overlay path
	// saves over reading the whole disk (the fleet issue's 10x target).
	{
		file := b.flat(extra)
		cases = append(cases, tcase{test: freshFlatName, tool: "engram",
			setup: b.seed("engram-empty", b.engramInit),
			cmds:  func(d string) [][]string { return [][]string{b.engramIngest(d, file)} },
			size:  sizeOf("store"),
			check: b.engramCheck(1, file)})
	}
	// 3. One more clone into a store that holds the template: as an overlay
	// and as a flattened file.
	for _, inc := range []struct{ name, file string }{
		{"one more clone (overlay)", b.clone(extra)},
		{"one more clone (flattened)", b.flat(extra)},
	} {
		file := inc.file
		cases = append(cases,
			tcase{test: inc.name, tool: "engram",
				setup: engramTmpl,
				cmds:  func(d string) [][]string { return [][]string{b.engramIngest(d, file)} },
				size:  sizeOf("store"),
				check: b.engramCheck(1, file)},
			tcase{test: inc.name, tool: "restic",
				setup: b.seed("restic-template", func(d string) error {
					if err := b.resticInit(d); err != nil {
						return err
					}
					_, err := b.exec(d, b.resticBackup(d, tmpl))
					return err
				}),
				cmds: func(d string) [][]string { return [][]string{b.resticBackup(d, file)} },
				size: sizeOf("repo")},
			tcase{test: inc.name, tool: "borg",
				setup: b.seed("borg-template", func(d string) error {
					if err := b.borgInit(d); err != nil {
						return err
					}
					_, err := b.exec(d, b.borgCreate(d, "t", tmpl))
					return err
				}),
				cmds: func(d string) [][]string { return [][]string{b.borgCreate(d, "c", file)} },
				size: sizeOf("repo")},
		)
	}
	// 4. Re-ingest of known data (the template again): every byte read and
	// hashed (--reread when engram has fingerprints), and, when it has them,
	// the default that recognises an unchanged image without reading it.
	reread := b.engramHas("ingest", "--reread")
	reingest := func(name string, flags ...string) tcase {
		return tcase{test: name, tool: "engram", setup: engramTmpl,
			cmds: func(d string) [][]string {
				argv := b.engramIngest(d, tmpl)
				return [][]string{append(argv[:len(argv)-1], append(flags, tmpl)...)}
			},
			check: func(d string, s *sample, _ bool) error {
				recs, err := parseIngest(s.stdout)
				if err != nil {
					return err
				}
				if recs[0].NewBytes != 0 {
					return fmt.Errorf("re-ingest added %d new bytes, want 0", recs[0].NewBytes)
				}
				s.extra = map[string]float64{
					"read_bytes": float64(*recs[0].ReadBytes),
					"mbps":       float64(*recs[0].ReadBytes) / s.wall / 1e6,
				}
				return nil
			}}
	}
	if reread {
		cases = append(cases, reingest(reingestName, "--reread"), reingest("re-ingest (unchanged image, fingerprint)"))
	} else {
		cases = append(cases, reingest(reingestName))
	}
	if err := b.runGroups(cases); err != nil {
		return err
	}
	// The hashing ceiling on the template's bytes, right after the re-ingest
	// cases so both meet the same load on a shared machine.
	bin := filepath.Join(b.scratch, "blake3")
	build := exec.CommandContext(b.ctx, "go", "build", "-o", bin, "./bench/blake3")
	build.Dir, build.Stderr = b.cfg.root, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build ./bench/blake3: %w", err)
	}
	rep.BLAKE3 = map[string]any{}
	for _, th := range []int{runtime.NumCPU(), 2, 1} {
		key := fmt.Sprintf("threads_%d", th)
		if _, ok := rep.BLAKE3[key]; ok {
			continue
		}
		out, err := exec.CommandContext(b.ctx, bin, "-threads", strconv.Itoa(th), "-runs", strconv.Itoa(max(7, b.cfg.runs)), tmpl).Output()
		if err != nil {
			return fmt.Errorf("bench/blake3: %w", err)
		}
		var r struct {
			MBps float64 `json:"mbps"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			return fmt.Errorf("bench/blake3 output: %w", err)
		}
		rep.BLAKE3[key] = round(r.MBps, 1)
	}

	// 5. Restore of clone 1 (from the flattened fleet's stores).
	target := b.flat(1)
	engramStore := filepath.Join(b.kept[flatName+"/engram"], "store")
	flatSamples := b.samples[flatName+"/engram"]
	recs, err := parseIngest(flatSamples[len(flatSamples)-1].stdout)
	if err != nil {
		return err
	}
	id := recs[0].ID
	compareOut := func(rel string) func(string, *sample, bool) error {
		return func(d string, _ *sample, last bool) error {
			if !last {
				return nil
			}
			_, err := b.exec(d, []string{"qemu-img", "compare", "-q", target, filepath.Join(d, rel)})
			if err != nil {
				return fmt.Errorf("restored clone differs from flat-1.qcow2: %w", err)
			}
			return nil
		}
	}
	restoreName := "restore of one clone"
	rel := strings.TrimPrefix(target, "/")
	restores := []tcase{
		{test: restoreName, tool: "engram",
			cmds: func(d string) [][]string {
				return [][]string{{b.cfg.engram, "--store", engramStore, "-q", "restore", id, "-o", filepath.Join(d, "out.qcow2")}}
			},
			size: sizeOf("out.qcow2"), check: compareOut("out.qcow2")},
		{test: restoreName, tool: "restic",
			cmds: func(d string) [][]string {
				return [][]string{{"restic", "-q", "-r", filepath.Join(b.kept[flatName+"/restic"], "repo"), "restore", "latest",
					"--target", filepath.Join(d, "out"), "--include", target}}
			},
			size: sizeOf("out"), check: compareOut(filepath.Join("out", rel))},
		{test: restoreName, tool: "borg",
			cmds: func(d string) [][]string {
				return [][]string{{"borg", "extract", filepath.Join(b.kept[flatName+"/borg"], "repo") + "::flat", rel}}
			},
			size: sizeOf(strings.Split(rel, "/")[0]), check: compareOut(rel)},
		{test: restoreName, tool: "qemu-img convert from zstd qcow2",
			cmds: func(d string) [][]string {
				return [][]string{{"qemu-img", "convert", "-O", "qcow2", b.f("clone-1.zstd.qcow2"), filepath.Join(d, "out.qcow2")}}
			},
			size: sizeOf("out.qcow2"), check: compareOut("out.qcow2")},
		{test: restoreName, tool: "qemu-img convert from zstd qcow2 + sync",
			cmds: func(d string) [][]string {
				out := filepath.Join(d, "out.qcow2")
				return [][]string{{"qemu-img", "convert", "-O", "qcow2", b.f("clone-1.zstd.qcow2"), out}, {"sync", out}}
			},
			size: sizeOf("out.qcow2"), check: compareOut("out.qcow2")},
		{test: restoreName, tool: "qemu-img convert (copy floor)",
			cmds: func(d string) [][]string {
				return [][]string{{"qemu-img", "convert", "-O", "qcow2", target, filepath.Join(d, "out.qcow2")}}
			},
			size: sizeOf("out.qcow2"), check: compareOut("out.qcow2")},
	}
	// Sequential read of the same clone through engram mount, against
	// streaming it out with restore (both read every guest byte).
	if _, err := os.Stat("/dev/fuse"); err == nil {
		mountDD := fmt.Sprintf(`m=$PWD/mnt; mkdir -p "$m"; %q --store %q -q mount "$m" & p=$!
for i in $(seq 2000); do [ -e "$m/by-id/%s.raw" ] && break; sleep 0.01; done
dd if="$m/by-id/%s.raw" of=/dev/null bs=1M status=none; s=$?; kill -INT $p; wait $p; exit $s`, b.cfg.engram, engramStore, id, id)
		restores = append(restores,
			tcase{test: seqReadName, tool: "engram",
				cmds: func(d string) [][]string {
					return [][]string{{"sh", "-c", fmt.Sprintf("%q --store %q -q restore %s -O raw -o - >/dev/null", b.cfg.engram, engramStore, id)}}
				}},
			tcase{test: seqReadName, tool: mountTool,
				cmds: func(d string) [][]string { return [][]string{{"sh", "-c", mountDD}} }})
	}
	for i := range restores {
		restores[i].minRuns = restoreRuns
	}
	if err := b.runGroups(restores); err != nil {
		return err
	}
	if b.cfg.scale && b.cfg.mode == "full" {
		return b.runScale(rep, engramStore, id)
	}
	return nil
}

func (b *bench) row(test, tool string) *Row {
	for _, r := range b.rows {
		if r.Test == test && r.Tool == tool {
			return r
		}
	}
	return nil
}

func (b *bench) ratios() {
	for _, r := range b.rows {
		e := b.row(r.Test, "engram")
		if e == nil {
			continue
		}
		if e.WallS > 0 {
			r.TimeRatio = round(r.WallS/e.WallS, 2)
		}
		if e.SizeBytes > 0 && r.SizeBytes > 0 {
			r.SizeRatio = round(float64(r.SizeBytes)/float64(e.SizeBytes), 2)
		}
		r.WallS, r.CPUS, r.PeakRSSMiB = round(r.WallS, 3), round(r.CPUS, 2), round(r.PeakRSSMiB, 1)
	}
}

// restoreRuns is the least number of runs of the restore rows: each takes
// 0.5-2 s, so a run's noise (0.1-0.2 s on a shared 2-core machine) moves
// their ratios by 10-30%; five alternated rounds cost ~20 s more than three.
const restoreRuns = 5

// The sequential-read rows: restore streamed to /dev/null is the
// reference ("engram"); the mount row reads the clone's file with dd.
const (
	seqReadName = "sequential read of one clone"
	mountTool   = "engram mount + dd bs=1M"
)

func (b *bench) targets(rep *Report) {
	N := b.cfg.clones
	fleetName := fmt.Sprintf("fleet of overlays (template + %d)", N)
	flatName := fmt.Sprintf("fleet of flattened clones (%d)", N)
	add := func(goal string, met bool, format string, args ...any) {
		rep.Targets = append(rep.Targets, Target{Goal: goal, Actual: fmt.Sprintf(format, args...), Met: met})
	}
	speed := func(test, tool string, want float64) {
		r := b.row(test, tool)
		add(fmt.Sprintf("%s: at least %gx faster than %s", test, want, tool), r.TimeRatio >= want,
			"%.2fx (%s %.1fs, engram %.1fs)", r.TimeRatio, tool, r.WallS, b.row(test, "engram").WallS)
	}
	smaller := func(test, tool string) {
		r := b.row(test, tool)
		add(fmt.Sprintf("%s: store no larger than %s's", test, tool), r.SizeRatio >= 1,
			"engram %s, %s %s (%.2fx)", mb(b.row(test, "engram").SizeBytes), tool, mb(r.SizeBytes), r.SizeRatio)
	}
	speed("template ingest", "restic", 2)
	speed("template ingest", "borg", 2)
	{
		e, bo := b.row("template ingest", "engram"), b.row("template ingest", "borg")
		add("template ingest: engram's CPU seconds at most 0.6x borg's", e.CPUS <= 0.6*bo.CPUS,
			"engram %.2f CPU-s, borg %.2f (%.2fx)", e.CPUS, bo.CPUS, e.CPUS/bo.CPUS)
	}
	smaller("template ingest", "restic")
	smaller("template ingest", "borg")
	speed(fleetName, "borg", 3)
	speed(fleetName, "restic", 5)
	smaller(flatName, "restic")
	smaller(flatName, "borg")
	for _, t := range []string{fleetName, flatName} {
		e, bo := b.row(t, "engram"), b.row(t, "borg")
		add(t+": store at most 0.97x borg's", float64(e.SizeBytes) <= 0.97*float64(bo.SizeBytes),
			"engram %s, borg %s (%.3fx)", mb(e.SizeBytes), mb(bo.SizeBytes), float64(e.SizeBytes)/float64(bo.SizeBytes))
	}
	bound := b.row("template ingest", "engram").SizeBytes + rep.Corpus["overlays_zstd3"]
	fs := b.row(fleetName, "engram").SizeBytes
	add(fmt.Sprintf("%s: store no larger than the template's store + zstd -3 of the overlays", fleetName), fs <= bound,
		"engram %s, bound %s", mb(fs), mb(bound))
	ov, ff := b.row("one more clone (overlay)", "engram"), b.row(freshFlatName, "engram")
	add("one more clone as an overlay on a stored template: at least 10x faster than the clone flattened into an empty store",
		ov.WallS*10 <= ff.WallS, "%.1fx (overlay %.2fs, flattened into an empty store %.2fs)", ff.WallS/ov.WallS, ov.WallS, ff.WallS)
	rs := "restore of one clone"
	e := b.row(rs, "engram")
	q := b.row(rs, "qemu-img convert from zstd qcow2")
	add(rs+": no slower than qemu-img convert from its zstd qcow2", e.WallS <= q.WallS,
		"engram %.2fs, qemu-img %.2fs (%.2fx)", e.WallS, q.WallS, q.TimeRatio)
	add(rs+": at most 0.7x the wall time of qemu-img convert from its zstd qcow2", e.WallS <= 0.7*q.WallS,
		"engram %.2fs (fsynced), qemu-img %.2fs without sync (%.2fx)", e.WallS, q.WallS, e.WallS/q.WallS)
	if qs := b.row(rs, "qemu-img convert from zstd qcow2 + sync"); qs != nil {
		add(rs+": at most 0.7x qemu-img convert from zstd followed by sync", e.WallS <= 0.7*qs.WallS,
			"engram %.2fs, qemu-img + sync %.2fs (%.2fx)", e.WallS, qs.WallS, e.WallS/qs.WallS)
	}
	speed(rs, "restic", 3)
	speed(rs, "borg", 3)
	ri := b.row(reingestName, "engram")
	ceiling, _ := rep.BLAKE3["threads_2"].(float64)
	frac := ri.Extra["mbps"] / ceiling
	ri.Extra["fraction_of_blake3_2core"] = round(frac, 3)
	add("re-ingest: at least 60% of 2-core BLAKE3 throughput", frac >= 0.6,
		"%.0f MB/s = %.0f%% of %.0f MB/s", ri.Extra["mbps"], frac*100, ceiling)
	if m := b.row(seqReadName, mountTool); m != nil {
		e := b.row(seqReadName, "engram")
		add(seqReadName+": engram mount (dd bs=1M) at least 0.9x the throughput of engram restore -o -", m.WallS*0.9 <= e.WallS,
			"%.2fx (mount %.2fs, restore %.2fs)", e.WallS/m.WallS, m.WallS, e.WallS)
		add(seqReadName+": engram mount CPU no higher than restore -o -", m.CPUS <= e.CPUS,
			"mount %.2fs, restore %.2fs of CPU", m.CPUS, e.CPUS)
	}
	var worst *Row
	for _, r := range b.rows {
		if r.Tool == "engram" && r.Test != rs && r.Test != seqReadName && (worst == nil || r.PeakRSSMiB > worst.PeakRSSMiB) {
			worst = r
		}
	}
	add("peak RSS of engram ingest under 256 MiB", worst.PeakRSSMiB < 256,
		"max %.0f MiB (%s)", worst.PeakRSSMiB, worst.Test)
	b.scaleTargets(add)
}

func machine(ctx context.Context, cfg *config) map[string]string {
	m := map[string]string{"cores": strconv.Itoa(runtime.NumCPU()), "os": runtime.GOOS + "/" + runtime.GOARCH}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m["cpu"] = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				m["memory"] = fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m["loadavg_at_start"] = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	ver := func(key string, argv ...string) {
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output(); err == nil {
			m[key] = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
		}
	}
	if cfg.engramRev != "" {
		m["engram"] = cfg.engramRev
	} else {
		ver("engram", "git", "-C", cfg.root, "describe", "--always", "--dirty")
	}
	ver("qemu-img", "qemu-img", "--version")
	ver("restic", "restic", "version")
	ver("borg", "borg", "--version")
	ver("kernel", "uname", "-r")
	return m
}

func (b *bench) write(rep *Report) error {
	if err := os.MkdirAll(b.cfg.out, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	md := markdown(rep)
	stamp := time.Now().UTC().Format("20060102T150405Z")
	for name, data := range map[string][]byte{
		"results.json": append(js, '\n'), "results.md": []byte(md),
		"results-" + rep.Mode + "-" + stamp + ".json": append(js, '\n'),
		"results-" + rep.Mode + "-" + stamp + ".md":   []byte(md),
	} {
		if err := os.WriteFile(filepath.Join(b.cfg.out, name), data, 0o644); err != nil {
			return err
		}
	}
	fmt.Print(md)
	logf("wrote %s and results.json", filepath.Join(b.cfg.out, "results.md"))
	return nil
}

func markdown(rep *Report) string {
	var w strings.Builder
	m := rep.Machine
	fmt.Fprintf(&w, "## engram bench (%s corpus), %s\n\n", rep.Mode, rep.Date[:10])
	fmt.Fprintf(&w, "Machine: %s cores, %s, %s RAM, load at start %s; engram %s, %s, %s, %s.\n\n",
		m["cores"], m["cpu"], m["memory"], m["loadavg_at_start"], m["engram"], m["qemu-img"], m["restic"], m["borg"])
	c := rep.Corpus
	fmt.Fprintf(&w, "Corpus: template %s virtual, template.qcow2 %s (zstd copy %s); overlays %s in all (zstd -3: %s); flattened clones %s in all.\n\n",
		mb(c["template_virtual"]), mb(c["template_qcow2"]), mb(c["template_zstd_qcow2"]), mb(c["overlays"]), mb(c["overlays_zstd3"]), mb(c["flattened"]))
	fmt.Fprintln(&w, "| test | tool | time (s) | time ×engram | size on disk | size ×engram | peak RSS (MiB) | CPU (s) |")
	fmt.Fprintln(&w, "|---|---|---:|---:|---:|---:|---:|---:|")
	ratio := func(x float64) string {
		if x == 0 {
			return ""
		}
		return fmt.Sprintf("%.2f", x)
	}
	for _, r := range rep.Rows {
		fmt.Fprintf(&w, "| %s | %s | %.2f | %s | %s | %s | %.0f | %.1f |\n",
			r.Test, r.Tool, r.WallS, ratio(r.TimeRatio), mb(r.SizeBytes), ratio(r.SizeRatio), r.PeakRSSMiB, r.CPUS)
	}
	var reads []string
	for _, r := range rep.Rows {
		if r.Tool == "engram" && r.Extra["read_bytes"] > 0 {
			reads = append(reads, fmt.Sprintf("%s %s", r.Test, mb(int64(r.Extra["read_bytes"]))))
		}
	}
	if len(reads) > 0 {
		fmt.Fprintf(&w, "\nGuest bytes engram read: %s.\n", strings.Join(reads, "; "))
	}
	if ri := findRow(rep.Rows, reingestName, "engram"); ri != nil {
		fmt.Fprintf(&w, "\nRe-ingest: %.0f MB/s over %s of template data read and hashed (wall clock of the whole command). BLAKE3 alone on the same bytes in 64 KiB pieces, in memory: %v MB/s with all %s cores, %v MB/s with 2, %v MB/s with 1.\n",
			ri.Extra["mbps"], mb(int64(ri.Extra["read_bytes"])), rep.BLAKE3["threads_"+m["cores"]], m["cores"], rep.BLAKE3["threads_2"], rep.BLAKE3["threads_1"])
	}
	fmt.Fprintln(&w, "\n| target | this run | met |")
	fmt.Fprintln(&w, "|---|---|---|")
	for _, t := range rep.Targets {
		met := "no"
		if t.Met {
			met = "yes"
		}
		fmt.Fprintf(&w, "| %s | %s | %s |\n", t.Goal, t.Actual, met)
	}
	fmt.Fprintln(&w)
	for _, n := range rep.Notes {
		fmt.Fprintf(&w, "- %s\n", n)
	}
	return w.String()
}

func findRow(rows []*Row, test, tool string) *Row {
	for _, r := range rows {
		if r.Test == test && r.Tool == tool {
			return r
		}
	}
	return nil
}
