//go:build tools

// Package main pins module dependencies that packages will import.
package main
import (
 _ "github.com/zeebo/blake3"
 _ "github.com/zeebo/xxh3"
 _ "github.com/klauspost/compress/zstd"
 _ "go.etcd.io/bbolt"
 _ "github.com/urfave/cli/v2"
 _ "golang.org/x/sync/errgroup"
 _ "golang.org/x/term"
 _ "golang.org/x/sys/unix"
 _ "github.com/schollz/progressbar/v3"
)
func main(){}
