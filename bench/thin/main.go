// Command thin is the `restore --thin` bench row: it ingests a corpus's
// template and flattened clones (bench/corpus.sh: template.qcow2,
// flat-K.qcow2, clone-K.qcow2) flat into an empty store, restores them
// with `engram restore --thin`, checks every file with `qemu-img compare`,
// and prints one markdown row (time, total bytes on disk against the
// flattened files and against the original template + overlays) and, with
// -json, the same as JSON. bench/run can call it or copy its row.
//
//	go run ./bench/thin -corpus bench/cache/quick-... -engram bin/engram
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Row is what the bench reports.
type Row struct {
	Test          string  `json:"test"`
	Clones        int     `json:"clones"`
	Seconds       float64 `json:"seconds"`         // restore --thin wall time
	ThinBytes     int64   `json:"thin_bytes"`      // files written, on disk (apparent size)
	FlatBytes     int64   `json:"flat_bytes"`      // template.qcow2 + flat-K.qcow2
	OriginalBytes int64   `json:"original_bytes"`  // template.qcow2 + clone-K.qcow2 (the overlays)
	VsFlat        float64 `json:"thin_vs_flat"`    // ThinBytes / FlatBytes
	VsOriginal    float64 `json:"thin_vs_overlay"` // ThinBytes / OriginalBytes
}

func main() {
	corpus := flag.String("corpus", "", "corpus directory (bench/corpus.sh output)")
	engram := flag.String("engram", "bin/engram", "engram binary")
	asJSON := flag.Bool("json", false, "print the row as JSON")
	keep := flag.Bool("keep", false, "keep the work directory")
	flag.Parse()
	if *corpus == "" {
		fatalf("-corpus DIR is required")
	}
	row, err := run(*corpus, *engram, *keep)
	if err != nil {
		fatalf("%v", err)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(row)
		return
	}
	fmt.Println("| test | time | on disk | vs flattened | vs template + overlays |")
	fmt.Println("|---|---|---|---|---|")
	fmt.Printf("| %s | %.2f s | %.1f MB | %.1f MB (%.1f%%) | %.1f MB (%.1f%%) |\n", row.Test, row.Seconds,
		mb(row.ThinBytes), mb(row.FlatBytes), 100*row.VsFlat, mb(row.OriginalBytes), 100*row.VsOriginal)
}

func mb(n int64) float64 { return float64(n) / 1e6 }

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench/thin: "+format+"\n", args...)
	os.Exit(1)
}

func size(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func run(corpus, engram string, keep bool) (*Row, error) {
	engram, err := filepath.Abs(engram)
	if err != nil {
		return nil, err
	}
	template := filepath.Join(corpus, "template.qcow2")
	flats, _ := filepath.Glob(filepath.Join(corpus, "flat-*.qcow2"))
	sort.Strings(flats)
	if len(flats) == 0 {
		return nil, fmt.Errorf("%s: no flat-K.qcow2 files", corpus)
	}
	row := &Row{Clones: len(flats)}
	row.Test = fmt.Sprintf("restore --thin of the flattened fleet (%d + template)", len(flats))
	work, err := os.MkdirTemp("", "engram-bench-thin-")
	if err != nil {
		return nil, err
	}
	if !keep {
		defer os.RemoveAll(work)
	}
	store := filepath.Join(work, "store")
	eng := func(args ...string) ([]byte, error) {
		cmd := exec.Command(engram, append([]string{"--store", store}, args...)...)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return out, fmt.Errorf("engram %s: %w", strings.Join(args, " "), err)
		}
		return out, nil
	}
	names := []string{"template"}
	if _, err := eng("-q", "ingest", "--name", "template", template); err != nil {
		return nil, err
	}
	if row.FlatBytes, err = size(template); err != nil {
		return nil, err
	}
	row.OriginalBytes = row.FlatBytes
	for _, f := range flats {
		name := strings.TrimSuffix(filepath.Base(f), ".qcow2")
		names = append(names, name)
		if _, err := eng("-q", "ingest", "--name", name, f); err != nil {
			return nil, err
		}
		n, err := size(f)
		if err != nil {
			return nil, err
		}
		row.FlatBytes += n
		clone := filepath.Join(corpus, strings.Replace(filepath.Base(f), "flat-", "clone-", 1))
		if n, err = size(clone); err != nil {
			return nil, err
		}
		row.OriginalBytes += n
	}
	out := filepath.Join(work, "thin")
	start := time.Now()
	if _, err := eng(append([]string{"-q", "restore", "--thin", "-o", out}, names...)...); err != nil {
		return nil, err
	}
	row.Seconds = time.Since(start).Seconds()
	for i, name := range names {
		p := filepath.Join(out, name+".qcow2")
		n, err := size(p)
		if err != nil {
			return nil, err
		}
		row.ThinBytes += n
		src := template
		if i > 0 {
			src = flats[i-1]
		}
		if msg, err := exec.Command("qemu-img", "compare", src, p).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("qemu-img compare %s %s: %v: %s", src, p, err, msg)
		}
	}
	row.VsFlat = float64(row.ThinBytes) / float64(row.FlatBytes)
	row.VsOriginal = float64(row.ThinBytes) / float64(row.OriginalBytes)
	return row, nil
}
