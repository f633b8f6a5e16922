package s3

import (
	"context"

	"github.com/minio/minio-go/v7"
)

// StartUpload begins a multipart upload of name and leaves it unfinished,
// as an interrupted copy by another tool would.
func (s *Store) StartUpload(ctx context.Context, name string) error {
	_, err := minio.Core{Client: s.c}.NewMultipartUpload(ctx, s.bucket, s.prefix+name, minio.PutObjectOptions{})
	return err
}

// Stalls is the number of requests that stalled so far.
func (s *Store) Stalls() int64 { return s.stalls.Load() }
