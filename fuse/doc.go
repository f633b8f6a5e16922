// Package fuse mounts the engrams of a store as a read-only file system
// (go-fuse): by-id/<ID>.raw for every engram, by-name/<NAME>.raw symlinks
// to them. It is a thin adapter: reads, extents and SEEK_DATA/SEEK_HOLE
// answers come from view/, which knows nothing of FUSE.
//
// Content is addressed by hash, so by-id/ entries, attributes and pages
// are cached by the kernel for as long as it likes (long timeouts,
// FOPEN_KEEP_CACHE); the directories and by-name/ links are looked up
// again after a second, so new engrams and moved names show up. Getattr
// answers from memory (a loop device calls it thousands of times), and
// st_blocks counts the engram's data bytes, so du and cp --sparse see the
// holes. The mount is "ro": the kernel answers writes with EROFS.
//
// # Caveats
//
//   - A server killed with -9 leaves its mount attached (reads fail with
//     ENOTCONN) until `fusermount3 -u DIR`; CheckMountpoint says so.
//   - Unmount fails while files are open in the mount (a loop device, a
//     shell's working directory); the mount then keeps serving.
package fuse
