// Command s3 is the S3 bench rows of issue 12: engram with its store in a
// bucket on versitygw (scripts/s3-server.sh, on loopback) against the
// directory store, on a bench corpus (bench/corpus.sh: template.qcow2 and
// clone-K.qcow2 overlays, read only):
//
//   - fleet: the template and -clones clones ingested one after the other;
//     wall time, bytes stored (files of the store directory; objects in the
//     bucket) and requests made;
//   - restore: clone-1 restored from each store (from S3 by a host with an
//     empty cache, which rebuilds it from the bucket first);
//   - four concurrent ingesters (own caches, as four hosts) of the template
//     and three clones into a fresh bucket, against one ingester doing the
//     same four one after the other, and the bytes left after two gc
//     runs drop the duplicates concurrent hosts uploaded.
//
// Requests are counted by a reverse proxy on loopback in front of the
// server (the CLI's AWS_ENDPOINT_URL points at it), by kind: PUT, GET
// (object reads), LIST, other (HEAD, DELETE, bucket calls).
//
//	go run ./bench/s3 -corpus bench/cache/full-c1-n8 -engram bin/engram
//
// -restore-rows [-repeat N] [-ab OTHER-BINARY] [-latency 20ms] runs only
// the restore rows (restore.go).
//
// -rows concurrent runs only the 1 against 4 ingesters rows; their CPU
// column is user+sys of the engram processes.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/s3"
)

// Row is one line of the table.
type Row struct {
	Test     string         `json:"test"`
	Store    string         `json:"store"` // "dir" or "s3"
	Seconds  float64        `json:"seconds"`
	CPU      float64        `json:"cpu_seconds,omitempty"` // user+sys of the engram processes (concurrent rows)
	Bytes    int64          `json:"bytes_stored,omitempty"`
	Requests map[string]int `json:"requests,omitempty"`
}

func main() {
	corpus := flag.String("corpus", "", "corpus directory (template.qcow2, clone-K.qcow2); only read")
	engram := flag.String("engram", "bin/engram", "engram binary")
	script := flag.String("server", "scripts/s3-server.sh", "the S3 server script")
	clones := flag.Int("clones", 0, "clones in the fleet row (at least 3; 0: every clone-K.qcow2 of the corpus)")
	asJSON := flag.Bool("json", false, "print the rows as JSON")
	keep := flag.Bool("keep", false, "keep the work directory")
	only := flag.String("rows", "all", "which rows: all, or concurrent (only the 1 against 4 ingesters rows)")
	flag.Parse()
	if *corpus == "" {
		fatalf("-corpus DIR is required")
	}
	if *clones == 0 {
		for {
			if _, err := os.Stat(filepath.Join(*corpus, fmt.Sprintf("clone-%d.qcow2", *clones+1))); err != nil {
				break
			}
			*clones++
		}
	}
	if *clones < 3 {
		fatalf("-clones %d: want at least 3", *clones)
	}
	if *only != "all" && *only != "concurrent" {
		fatalf("-rows %q: want all or concurrent", *only)
	}
	b := &bench{corpus: *corpus, clones: *clones, concurrentOnly: *only == "concurrent"}
	var err error
	if b.engram, err = filepath.Abs(*engram); err != nil {
		fatalf("%v", err)
	}
	if b.work, err = os.MkdirTemp("", "engram-bench-s3-"); err != nil {
		fatalf("%v", err)
	}
	if *restoreRows {
		rows, err := b.runRestoreRows(*script)
		b.stop()
		_ = os.RemoveAll(b.work)
		if err != nil {
			fatalf("%v", err)
		}
		printRestoreRows(rows)
		return
	}
	rows, err := b.run(*script)
	b.stop()
	if *keep {
		fmt.Fprintf(os.Stderr, "bench/s3: work directory %s\n", b.work)
	} else {
		_ = os.RemoveAll(b.work)
	}
	if err != nil {
		fatalf("%v", err)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rows)
		return
	}
	fmt.Println("| test | store | time | CPU | stored | requests (PUT / GET / LIST / other) |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range rows {
		stored, reqs := "", "–"
		if r.Bytes > 0 {
			stored = fmt.Sprintf("%.1f MB", float64(r.Bytes)/1e6)
		}
		if r.Requests != nil {
			q := r.Requests
			reqs = fmt.Sprintf("%d (%d / %d / %d / %d)", q["PUT"]+q["GET"]+q["LIST"]+q["other"], q["PUT"], q["GET"], q["LIST"], q["other"])
		}
		cpu := ""
		if r.CPU > 0 {
			cpu = fmt.Sprintf("%.2f s", r.CPU)
		}
		fmt.Printf("| %s | %s | %.2f s | %s | %s | %s |\n", r.Test, r.Store, r.Seconds, cpu, stored, reqs)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench/s3: "+format+"\n", args...)
	os.Exit(1)
}

type bench struct {
	corpus, engram, work string
	clones               int
	concurrentOnly       bool
	script, serverDir    string
	env                  map[string]string // the server's AWS_*
	proxyURL             string
	mu                   sync.Mutex
	counts               map[string]int
	cpu                  time.Duration // user+sys of engram processes since takeCPU
}

// takeCPU returns the CPU time of the engram processes that ended since
// the last call.
func (b *bench) takeCPU() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.cpu
	b.cpu = 0
	return c.Seconds()
}

// start runs the server and the counting proxy in front of it.
func (b *bench) start(script string) error {
	var err error
	if b.script, err = filepath.Abs(script); err != nil {
		return err
	}
	b.serverDir = filepath.Join(b.work, "s3")
	var stderr bytes.Buffer
	cmd := exec.Command(b.script, "start", b.serverDir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.serverDir = ""
		return fmt.Errorf("%s start: %v: %s", script, err, strings.TrimSpace(stderr.String()))
	}
	b.env = map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if kv, ok := strings.CutPrefix(sc.Text(), "export "); ok {
			if k, v, ok := strings.Cut(kv, "="); ok {
				b.env[k] = strings.Trim(v, `'"`)
			}
		}
	}
	target, err := url.Parse(b.env["AWS_ENDPOINT_URL"])
	if err != nil || target.Host == "" {
		return fmt.Errorf("%s start printed no usable AWS_ENDPOINT_URL: %q", script, out)
	}
	// The proxy keeps the Host header the client signed (httputil's
	// Director leaves req.Host alone), so signatures still verify.
	proxy := httputil.NewSingleHostReverseProxy(target)
	// A client that cancels a request it no longer needs (the last
	// fetches of a restore) is not news.
	proxy.ErrorLog = log.New(io.Discard, "", 0)
	b.counts = map[string]int{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	b.proxyURL = "http://" + ln.Addr().String()
	go func() {
		_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			kind := "other"
			switch {
			case r.Method == http.MethodPut && strings.Count(strings.Trim(r.URL.Path, "/"), "/") >= 1:
				kind = "PUT"
			case r.Method == http.MethodGet && r.URL.Query().Has("list-type"):
				kind = "LIST"
			case r.Method == http.MethodGet && strings.Count(strings.Trim(r.URL.Path, "/"), "/") >= 1:
				kind = "GET"
			}
			b.mu.Lock()
			b.counts[kind]++
			b.mu.Unlock()
			if *latency > 0 {
				time.Sleep(*latency)
			}
			proxy.ServeHTTP(w, r)
		}))
	}()
	return nil
}

func (b *bench) stop() {
	if b.serverDir != "" {
		_ = exec.Command(b.script, "stop", b.serverDir).Run()
	}
}

// takeCounts returns the requests counted since the last call.
func (b *bench) takeCounts() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.counts
	b.counts = map[string]int{}
	return c
}

// cmd is engram against store, with the S3 variables pointing at the proxy
// and cache as the host's cache root.
func (b *bench) cmd(store, cache string, args ...string) *exec.Cmd {
	c := exec.Command(b.engram, append([]string{"--store", store, "--cache-dir", cache}, args...)...)
	c.Env = os.Environ()
	for k, v := range b.env {
		if k == "AWS_ENDPOINT_URL" {
			v = b.proxyURL
		}
		c.Env = append(c.Env, k+"="+v)
	}
	return c
}

func (b *bench) engramRun(store, cache string, args ...string) error {
	c := b.cmd(store, cache, args...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	if c.ProcessState != nil {
		b.mu.Lock()
		b.cpu += c.ProcessState.UserTime() + c.ProcessState.SystemTime()
		b.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("engram %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return nil
}

func (b *bench) newBucket() (string, error) {
	var r [6]byte
	_, _ = rand.Read(r[:])
	name := "engram-bench-" + hex.EncodeToString(r[:])
	store := "s3://" + name + "/fleet"
	if err := b.engramRun(store, filepath.Join(b.work, "cache-init"), "init"); err != nil {
		return "", err
	}
	b.takeCounts()
	b.takeCPU()
	return name, nil
}

// bucketBytes sums the sizes of the bucket's objects (listed directly,
// not through the proxy).
func (b *bench) bucketBytes(bucket string) (int64, error) {
	cfg := s3.Config{Bucket: bucket, Endpoint: b.env["AWS_ENDPOINT_URL"], Region: b.env["AWS_REGION"],
		AccessKey: b.env["AWS_ACCESS_KEY_ID"], SecretKey: b.env["AWS_SECRET_ACCESS_KEY"]}
	bs, err := s3.Open(context.Background(), cfg, false)
	if err != nil {
		return 0, err
	}
	var n int64
	err = bs.List(context.Background(), "", func(in blob.Info) error { n += in.Size; return nil })
	return n, err
}

func dirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			n += fi.Size()
		}
		return err
	})
	return n, err
}

// images are the template and clone-1..n, with their engram names.
func (b *bench) images(n int) (paths, names []string) {
	paths, names = []string{filepath.Join(b.corpus, "template.qcow2")}, []string{"template"}
	for k := 1; k <= n; k++ {
		paths = append(paths, filepath.Join(b.corpus, fmt.Sprintf("clone-%d.qcow2", k)))
		names = append(names, fmt.Sprintf("clone-%d", k))
	}
	return paths, names
}

func (b *bench) run(script string) ([]Row, error) {
	paths, names := b.images(b.clones)
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
	}
	if err := b.start(script); err != nil {
		return nil, err
	}
	var rows []Row
	if b.concurrentOnly {
		return b.concurrent(paths, names, rows)
	}
	fleet := fmt.Sprintf("fleet: template + %d clones, ingest", b.clones)

	// Fleet into the directory store.
	dirStore := filepath.Join(b.work, "dir-store")
	t0 := time.Now()
	for i, p := range paths {
		if err := b.engramRun(dirStore, filepath.Join(b.work, "cache-dir"), "ingest", "--name", names[i], p); err != nil {
			return nil, err
		}
	}
	secs := time.Since(t0).Seconds()
	n, err := dirBytes(dirStore)
	if err != nil {
		return nil, err
	}
	rows = append(rows, Row{Test: fleet, Store: "dir", Seconds: secs, Bytes: n})

	// Fleet into a bucket, one host.
	bucket, err := b.newBucket()
	if err != nil {
		return nil, err
	}
	s3Store := "s3://" + bucket + "/fleet"
	t0 = time.Now()
	for i, p := range paths {
		if err := b.engramRun(s3Store, filepath.Join(b.work, "cache-fleet"), "ingest", "--name", names[i], p); err != nil {
			return nil, err
		}
	}
	secs = time.Since(t0).Seconds()
	reqs := b.takeCounts()
	if n, err = b.bucketBytes(bucket); err != nil {
		return nil, err
	}
	rows = append(rows, Row{Test: fleet, Store: "s3", Seconds: secs, Bytes: n, Requests: reqs})

	// Restore clone-1 from each.
	restore := "restore clone-1 (qcow2)"
	out := filepath.Join(b.work, "restored-dir.qcow2")
	t0 = time.Now()
	if err := b.engramRun(dirStore, filepath.Join(b.work, "cache-dir"), "restore", "-o", out, "clone-1"); err != nil {
		return nil, err
	}
	rows = append(rows, Row{Test: restore, Store: "dir", Seconds: time.Since(t0).Seconds()})
	_ = os.Remove(out)
	out = filepath.Join(b.work, "restored-s3.qcow2")
	t0 = time.Now()
	if err := b.engramRun(s3Store, filepath.Join(b.work, "cache-fresh"), "restore", "-o", out, "clone-1"); err != nil {
		return nil, err
	}
	rows = append(rows, Row{Test: restore + ", empty cache", Store: "s3", Seconds: time.Since(t0).Seconds(), Requests: b.takeCounts()})
	_ = os.Remove(out)
	t0 = time.Now()
	if err := b.engramRun(s3Store, filepath.Join(b.work, "cache-fresh"), "restore", "-o", out, "clone-1"); err != nil {
		return nil, err
	}
	rows = append(rows, Row{Test: restore + ", warm cache", Store: "s3", Seconds: time.Since(t0).Seconds(), Requests: b.takeCounts()})
	if c, err := exec.Command("qemu-img", "compare", "-q", paths[1], out).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("qemu-img compare of clone-1 restored from S3: %v %s", err, c)
	}
	_ = os.Remove(out)
	return b.concurrent(paths, names, rows)
}

// concurrent adds the rows of four ingesters at once against one, template
// + 3 clones each time.
func (b *bench) concurrent(paths, names []string, rows []Row) ([]Row, error) {
	four, fourNames := paths[:4], names[:4]
	bucket, err := b.newBucket()
	if err != nil {
		return nil, err
	}
	one := "s3://" + bucket + "/fleet"
	t0 := time.Now()
	for i, p := range four {
		if err := b.engramRun(one, filepath.Join(b.work, "cache-one"), "ingest", "--name", fourNames[i], p); err != nil {
			return nil, err
		}
	}
	secs := time.Since(t0).Seconds()
	reqs := b.takeCounts()
	n, err := b.bucketBytes(bucket)
	if err != nil {
		return nil, err
	}
	rows = append(rows, Row{Test: "template + 3 clones, 1 ingester", Store: "s3", Seconds: secs, CPU: b.takeCPU(), Bytes: n, Requests: reqs})

	if bucket, err = b.newBucket(); err != nil {
		return nil, err
	}
	many := "s3://" + bucket + "/fleet"
	t0 = time.Now()
	errs := make([]error, len(four))
	var wg sync.WaitGroup
	for i, p := range four {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = b.engramRun(many, filepath.Join(b.work, fmt.Sprintf("cache-host%d", i)), "ingest", "--name", fourNames[i], p)
		}()
	}
	wg.Wait()
	secs = time.Since(t0).Seconds()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	reqs = b.takeCounts()
	if n, err = b.bucketBytes(bucket); err != nil {
		return nil, err
	}
	rows = append(rows, Row{Test: "template + 3 clones, 4 concurrent ingesters", Store: "s3", Seconds: secs, CPU: b.takeCPU(), Bytes: n, Requests: reqs})
	// Hosts that stored the same chunk at once each uploaded a copy; two
	// gc runs (the margin 1 ns: nothing else writes here) drop the extra
	// ones.
	t0 = time.Now()
	for i := range 2 {
		if err := b.engramRun(many, filepath.Join(b.work, fmt.Sprintf("cache-host%d", i)), "gc", "--margin", "1ns"); err != nil {
			return nil, err
		}
	}
	secs = time.Since(t0).Seconds()
	reqs = b.takeCounts()
	if n, err = b.bucketBytes(bucket); err != nil {
		return nil, err
	}
	rows = append(rows, Row{Test: "the same bucket, then 2 × gc --margin 1ns", Store: "s3", Seconds: secs, Bytes: n, Requests: reqs})
	return rows, nil
}
