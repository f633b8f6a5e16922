package qcow2

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// FuzzOpen opens arbitrary bytes as an image and reads and maps a bounded
// part of it: errors are fine, panics and hangs are not.
func FuzzOpen(f *testing.F) {
	f.Add([]byte("QFI\xfb"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "img")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		exercise(t, p)
	})
}

// TestFuzzSeedsOpen keeps the seed corpus meaningful: the seeds are valid
// images (except the overlay, whose backing file is absent on purpose).
func TestFuzzSeedsOpen(t *testing.T) {
	files, _ := filepath.Glob("testdata/fuzz/FuzzOpen/seed-*")
	if len(files) == 0 {
		t.Fatal("no seeds")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		q := strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")")
		data, err := strconv.Unquote(q)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		p := filepath.Join(t.TempDir(), "img")
		os.WriteFile(p, []byte(data), 0o644)
		err = exercise(t, p)
		if strings.Contains(f, "-ov-") {
			if !errors.Is(err, ErrBackingMissing) {
				t.Fatalf("%s: %v, want ErrBackingMissing", f, err)
			}
		} else if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
}
