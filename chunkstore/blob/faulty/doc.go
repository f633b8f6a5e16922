// Package faulty wraps a blob.Store and injects faults, for tests of what
// sits above it (kopia's blobtesting/faulty.go is the model): an
// operation on matching names fails before it runs, or runs and then
// reports an error (a reply lost on the wire), a given number of times,
// or calls a hook first (to kill a writer between two Puts, or to run
// something concurrently at an exact point).
package faulty
