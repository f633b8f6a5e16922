// Package blob is the storage layer under the chunk store: a flat
// namespace of write-once objects with create-only Put, ranged Get, List
// by prefix and Delete. The contract is the doc comment of Store;
// package blobtest checks it for every implementation:
//
//	blob/dir     a local directory (atomic create-only by link(2), fsync)
//	blob/s3      an S3 bucket under a prefix (github.com/minio/minio-go/v7)
//	blob/mem     memory, for tests
//	blob/faulty  a wrapper that injects errors and lost replies, for tests
//
// It imports nothing of the project.
package blob
