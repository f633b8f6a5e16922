// Package mem is an in-memory blob.Store for tests: the same contract as
// the directory and S3 stores, checked by the same suite.
package mem
