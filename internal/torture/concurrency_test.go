package torture

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/engram-vm/engram/internal/qemutest"
)

// TestConcurrentIngests runs two ingests into one store at once (the
// second waits for the writer lock), with restore, ls and verify running
// beside them; everything must succeed and restore identical. Under -race
// the binary is race-built too.
func TestConcurrentIngests(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	store := initStore(t)
	base := image(t, dir, 8000, 64, 6)
	baseID := ingest(t, store, base)
	for round := range pick(2, 8) {
		a, b := image(t, dir, uint64(8100+2*round), 64, 10), image(t, dir, uint64(8101+2*round), 64, 10)
		srcs := []string{a, b}
		if round%2 == 1 {
			srcs[1] = a // the same image twice at once
		}
		ids := make([]string, 2)
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i, src := range srcs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := engram(t, raceBin, store, "-q", "ingest", src)
				if r.code != 0 {
					errs[i] = fmt.Errorf("ingest %d: exit %d: %s", i, r.code, r.stderr)
				}
				ids[i] = strings.TrimSpace(r.stdout)
			}()
		}
		// Readers while the ingests run.
		var readerErr error
		for _, args := range [][]string{{"ls"}, {"verify"}, {"restore", baseID, "-o", dir + fmt.Sprintf("/during-%d.qcow2", round)}} {
			r := engram(t, raceBin, store, append([]string{"-q"}, args...)...)
			if r.code != 0 && readerErr == nil {
				readerErr = fmt.Errorf("%s during ingest: exit %d: %s", args[0], r.code, r.stderr)
			}
		}
		wg.Wait()
		err := readerErr
		if err == nil {
			if _, cerr := qemutest.Try("qemu-img", "compare", base, dir+fmt.Sprintf("/during-%d.qcow2", round)); cerr != nil {
				err = fmt.Errorf("restore during ingest differs: %v", cerr)
			}
		}
		for i := range 2 {
			if err == nil {
				err = errs[i]
			}
			if err == nil {
				err = restoresIdentical(t, store, ids[i], srcs[i])
			}
		}
		if err == nil {
			err = verifyClean(t, store)
		}
		summary.add("concurrency: 2 ingests + restore/ls/verify (passed / tried)", err == nil)
		if err != nil {
			t.Error(err)
		}
	}
}
