// Package s3 is a blob.Store in an S3 bucket under a prefix, on
// github.com/minio/minio-go/v7.
//
// Configuration is what AWS tools read: AWS_ENDPOINT_URL (any S3 server;
// path-style requests when set, https://s3.amazonaws.com otherwise),
// AWS_REGION or AWS_DEFAULT_REGION, and credentials from
// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, else
// ~/.aws/credentials, else the instance's IAM role.
//
// Put is one PutObject request with If-None-Match: * and multipart
// disabled (minio-go switches to multipart above 16 MiB, and servers drop
// the condition on multipart uploads), so create-only holds up to the
// 5 GiB single-PUT limit. The server checks every body: over plain HTTP
// minio-go signs it (SHA-256 per 64 KiB), over HTTPS it carries a
// Content-MD5. Transient failures (5xx, 429, network errors)
// are retried by minio-go's retry timer, with exponential backoff and
// jitter, Config.MaxRetries times. A request on whose connection nothing
// moves, either way, for Config.IdleTimeout (ENGRAM_S3_TIMEOUT, default
// 30 s) fails, and is retried once at most: an endpoint that stops
// answering mid-command is reported within about twice the timeout
// (idle.go). Server errors become one line each,
// matching blob.ErrNoBucket, ErrAccessDenied, ErrUnreachable or
// ErrClockSkew.
package s3
