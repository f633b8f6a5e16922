// Package blobtest is the conformance suite of blob.Store: Run checks
// every promise of the contract in blob.Store's doc comment against a
// fresh store per subtest (restic's backend test suite and kopia's
// blobtesting are the models). Every implementation's tests call it.
package blobtest
