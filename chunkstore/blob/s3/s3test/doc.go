// Package s3test gives tests a real S3 server: versitygw started through
// scripts/s3-server.sh on a free loopback port (once per test binary, on
// first use; stopped by Main), or an existing server when
// ENGRAM_TEST_S3_EXTERNAL=1 and the AWS_* variables point at it (how
// `make s3-interop` runs the suites against a second engine).
//
// When no server can be had, tests skip — unless CI=true, where they fail.
package s3test
