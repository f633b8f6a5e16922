// Package torture holds engram's fault and hostile-input suites (project
// issue 7). It has no library code: its tests build the engram binary and
// drive it as a user would, then judge the results with qemu-img.
//
// Suites (each a Test function):
//
//   - crash: SIGKILL at random moments during ingest, restore, rm+gc and
//     verify; afterwards the store opens, verify is clean, every engram
//     committed before the kill restores identical, the interrupted
//     command re-runs to success, and no output is left half written at
//     the restore target;
//   - disk full: a store on a small tmpfs fills up during ingest: a clear
//     "no space" error, no partial engram, a store that verifies, and the
//     same ingest succeeds once space is freed;
//   - bit rot and loss: flipped bytes, truncated and deleted packs, a
//     damaged index.db, a killed lock holder: verify names every affected
//     engram, restore of those fails cleanly, the others restore, repair
//     says what was lost;
//   - hostile images: a generated corpus of crafted qcow2 files, each read
//     in-process with bounded time and memory and a sample through the
//     binary: errors, never panics;
//   - concurrency: two ingests into one store at once, and restore, ls and
//     verify while an ingest runs.
//
// The default run is short (a few kill points per command, a sample of the
// corpus) so `make test` stays quick. ENGRAM_TORTURE=full (`make torture`)
// runs the long version; ENGRAM_TORTURE_SUMMARY=FILE writes the summary of
// what was tried and what survived there as well as to the test log.
//
// Invariant the suites check: nothing committed is lost, and every failure
// is an error that names what is wrong.
package torture
