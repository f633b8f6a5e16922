package s3test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/engram-vm/engram/chunkstore/blob/s3"
)

var (
	once    sync.Once
	env     map[string]string // AWS_* of the server
	dataDir string            // where we started it; "" if external
	script  string
	failure error
)

// Main runs the tests and stops the server if one was started. Use it
// from TestMain: func TestMain(m *testing.M) { s3test.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	Stop()
	os.Exit(code)
}

// Stop stops the server this process started, if any.
func Stop() {
	if dataDir != "" && script != "" {
		_ = exec.Command(script, "stop", dataDir).Run()
		_ = os.RemoveAll(dataDir)
		dataDir = ""
	}
}

func start() {
	if os.Getenv("ENGRAM_TEST_S3_EXTERNAL") == "1" {
		env = map[string]string{}
		for _, k := range []string{"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_SESSION_TOKEN"} {
			env[k] = os.Getenv(k)
		}
		if env["AWS_ENDPOINT_URL"] == "" {
			failure = fmt.Errorf("ENGRAM_TEST_S3_EXTERNAL=1 but AWS_ENDPOINT_URL is not set")
		}
		return
	}
	script, failure = findScript()
	if failure != nil {
		return
	}
	dataDir, failure = os.MkdirTemp("", "engram-s3test-")
	if failure != nil {
		return
	}
	cmd := exec.Command(script, "start", dataDir)
	cmd.Env = os.Environ()
	if os.Getenv("CI") != "true" {
		cmd.Env = append(cmd.Env, "S3_SERVER_INSTALL=0") // no 3-minute surprise in a quick go test
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		failure = fmt.Errorf("%s start: %v: %s", script, err, strings.TrimSpace(stderr.String()))
		_ = os.RemoveAll(dataDir)
		dataDir = ""
		return
	}
	env = map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		kv, ok := strings.CutPrefix(sc.Text(), "export ")
		if k, v, ok2 := strings.Cut(kv, "="); ok && ok2 {
			env[k] = v
		}
	}
	if env["AWS_ENDPOINT_URL"] == "" {
		failure = fmt.Errorf("%s start printed no AWS_ENDPOINT_URL: %q", script, out)
	}
}

// findScript walks up from the working directory to scripts/s3-server.sh.
func findScript() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(d, "scripts", "s3-server.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		up := filepath.Dir(d)
		if up == d {
			return "", fmt.Errorf("scripts/s3-server.sh not found above the working directory")
		}
		d = up
	}
}

// Env returns the server's AWS_* variables (AWS_ENDPOINT_URL,
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION), starting the
// server on first use. Without a server the test is skipped, or fails
// under CI=true.
func Env(t testing.TB) map[string]string {
	t.Helper()
	once.Do(start)
	if failure != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no S3 server for the test (CI=true, so this fails): %v", failure)
		}
		t.Skipf("no S3 server (run make deps, or set CI=true to fail instead): %v", failure)
	}
	return env
}

// SetEnv sets the server's AWS_* variables for the test (t.Setenv), for
// code that reads the environment (the CLI).
func SetEnv(t *testing.T) {
	t.Helper()
	for k, v := range Env(t) {
		t.Setenv(k, v)
	}
}

// Bucket returns a fresh bucket name (not created).
func Bucket(t testing.TB) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "engram-test-" + hex.EncodeToString(b[:])
}

// Config returns a configuration for a fresh bucket on the server (the
// bucket is created by s3.Open with create set).
func Config(t testing.TB) s3.Config {
	t.Helper()
	e := Env(t)
	return s3.Config{Bucket: Bucket(t), Endpoint: e["AWS_ENDPOINT_URL"], Region: e["AWS_REGION"],
		AccessKey: e["AWS_ACCESS_KEY_ID"], SecretKey: e["AWS_SECRET_ACCESS_KEY"], SessionToken: e["AWS_SESSION_TOKEN"]}
}
