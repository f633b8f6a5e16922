// Package qemutest runs QEMU's own tools (qemu-img, qemu-io) for tests, so
// fixtures are made and round trips judged by the tools users trust.
//
// A test that needs them calls Require: when CI=true a missing tool fails the
// test (CI must have installed qemu-utils); elsewhere it skips.
package qemutest

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Require fails (under CI=true) or skips the test when qemu-img or qemu-io
// is not on PATH.
func Require(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found on PATH; `make test` installs qemu-utils", tool)
			}
			t.Skipf("%s not found on PATH (install qemu-utils)", tool)
		}
	}
}

// Run runs a command and fails the test if it exits non-zero; it returns stdout.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := Try(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

// Try runs a command and returns its stdout, or an error carrying stderr.
func Try(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), &ToolError{Err: err, Stderr: strings.TrimSpace(stderr.String() + "\n" + stdout.String())}
	}
	return stdout.String(), nil
}

// ToolError is a failed tool run with what it printed.
type ToolError struct {
	Err    error
	Stderr string
}

func (e *ToolError) Error() string { return e.Err.Error() + ": " + e.Stderr }

// Img runs qemu-img with args.
func Img(t testing.TB, args ...string) string { t.Helper(); return Run(t, "qemu-img", args...) }

// IO runs qemu-io on image with one -c per command, e.g. "write -P 0xaa 0 64k".
// fmtName is the image format ("qcow2", "raw"); empty lets qemu-io probe.
func IO(t testing.TB, image, fmtName string, cmds ...string) {
	t.Helper()
	args := []string{}
	if fmtName != "" {
		args = append(args, "-f", fmtName)
	}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, image)
	out := Run(t, "qemu-io", args...)
	// qemu-io reports some failures on stdout with exit status 0.
	if strings.Contains(out, "failed:") || strings.Contains(out, "Error") {
		t.Fatalf("qemu-io %v: %s", args, out)
	}
}

// Create runs qemu-img create -f fmtName [-o opts] path size.
func Create(t testing.TB, fmtName, path, size string, opts ...string) {
	t.Helper()
	args := []string{"create", "-q", "-f", fmtName}
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, ","))
	}
	Img(t, append(args, path, size)...)
}

// Compare fails the test unless `qemu-img compare a b` says identical.
// Formats are probed; pass -f/-F style options through extra if needed.
func Compare(t testing.TB, a, b string, extra ...string) {
	t.Helper()
	args := append([]string{"compare"}, extra...)
	args = append(args, a, b)
	if out, err := Try("qemu-img", args...); err != nil {
		t.Fatalf("qemu-img compare %s %s: not identical: %v %s", a, b, err, out)
	}
}

// Check fails the test unless `qemu-img check` reports no errors and no
// leaks on a qcow2 image.
func Check(t testing.TB, path string) {
	t.Helper()
	out, err := Try("qemu-img", "check", "--output=json", path)
	if err != nil {
		t.Fatalf("qemu-img check %s: %v", path, err)
	}
	var r struct {
		CheckErrors int `json:"check-errors"`
		Leaks       int `json:"leaks"`
		Corruptions int `json:"corruptions"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("qemu-img check %s: bad JSON %q: %v", path, out, err)
	}
	if r.CheckErrors != 0 || r.Leaks != 0 || r.Corruptions != 0 {
		t.Fatalf("qemu-img check %s: %s", path, out)
	}
}

// MapEntry is one element of `qemu-img map --output=json`.
type MapEntry struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	Offset  *int64 `json:"offset,omitempty"`
}

// Map returns `qemu-img map --output=json` of path.
func Map(t testing.TB, path string, extra ...string) []MapEntry {
	t.Helper()
	args := append([]string{"map", "--output=json"}, extra...)
	out := Img(t, append(args, path)...)
	var m []MapEntry
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("qemu-img map %s: %v", path, err)
	}
	return m
}

// ToRaw converts src to a raw file at dst with qemu-img convert.
func ToRaw(t testing.TB, src, dst string) {
	t.Helper()
	Img(t, "convert", "-O", "raw", src, dst)
}

// RequireFUSE fails (under CI=true) or skips the test when FUSE mounts
// cannot work here: no /dev/fuse, no fusermount3, or not allowed to mount.
func RequireFUSE(t testing.TB) {
	t.Helper()
	var why string
	if _, err := os.Stat("/dev/fuse"); err != nil {
		why = "/dev/fuse is missing"
	} else if _, err := exec.LookPath("fusermount3"); err != nil {
		why = "fusermount3 not found on PATH"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; `make test` installs fuse3", why)
	}
	t.Skipf("%s (install fuse3)", why)
}
