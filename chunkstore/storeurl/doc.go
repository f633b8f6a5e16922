// Package storeurl opens a chunk store from a location string, picking
// the implementation: s3://BUCKET[/PREFIX] is a chunkstore.BlobStore on
// an S3 bucket (credentials and endpoint from the AWS_* environment, see
// package blob/s3), anything else a directory: a
// chunkstore.BlobStore over blob/dir (chunkstore.Open).
// The CLI opens every store through it.
package storeurl
