package chunkstore

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Test hooks of BlobStore, set through the environment so that tests of
// the CLI can crash or stall a real `engram ingest` at a chosen point.
// They are read once at start-up; unset (always, outside tests) they cost
// one comparison per pack and per record.
//
//	ENGRAM_TEST_KILL_AT=POINT[:N]  SIGKILL this process the Nth time (default 1)
//	                               it reaches POINT:
//	  pack-put       while a pack's PUT is in flight (the kill is sent as
//	                 the request starts; the server may have some bytes)
//	  after-pack     after a pack's PUT, before its index segment's
//	  before-record  after the packs, before the catalog journal object
//	                 (the commit point) is written
//	ENGRAM_TEST_PAUSE_BEFORE_RECORD=PATH
//	                 before the commit check of a catalog journal object,
//	                 create PATH.paused and wait (at most a minute) until
//	                 PATH exists: a test runs gc meanwhile and then lets
//	                 the writer go on with a view older than gc's mark.
var (
	testKillPoint string
	testKillAt    int64 = 1
	testKillSeen  atomic.Int64
	testPausePath = os.Getenv("ENGRAM_TEST_PAUSE_BEFORE_RECORD")
	testPauseOnce sync.Once
)

func init() {
	v := os.Getenv("ENGRAM_TEST_KILL_AT")
	p, n, ok := strings.Cut(v, ":")
	testKillPoint = p
	if ok {
		if k, err := strconv.ParseInt(n, 10, 64); err == nil && k > 0 {
			testKillAt = k
		}
	}
}

// testKill kills the process if ENGRAM_TEST_KILL_AT names point and this
// is its Nth arrival there.
func testKill(point string) {
	if testKillPoint == "" || testKillPoint != point {
		return
	}
	if testKillSeen.Add(1) == testKillAt {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way; never go on
	}
}

// testKillDuring kills the process while do runs, if ENGRAM_TEST_KILL_AT
// names point; otherwise it just runs do.
func testKillDuring(point string, do func() error) error {
	if testKillPoint == "" || testKillPoint != point {
		return do()
	}
	if testKillSeen.Add(1) == testKillAt {
		go func() {
			time.Sleep(time.Millisecond) // let the request start
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}()
		_ = do()
		select {} // a PUT faster than the kill still must not go on
	}
	return do()
}

// testPause implements ENGRAM_TEST_PAUSE_BEFORE_RECORD, once per process.
func testPause() {
	if testPausePath == "" {
		return
	}
	testPauseOnce.Do(func() {
		_ = os.WriteFile(testPausePath+".paused", nil, 0o644)
		fmt.Fprintln(os.Stderr, "engram: test hook: paused before the record")
		for range 600 { // bounded: a test that never releases us loses a minute
			if _, err := os.Stat(testPausePath); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}
