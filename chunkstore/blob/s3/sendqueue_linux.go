package s3

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// sendQueue is the bytes the kernel holds for the connection, not yet
// acknowledged by the peer (-1: unknown).
func sendQueue(raw syscall.RawConn) int64 {
	if raw == nil {
		return -1
	}
	q := -1
	_ = raw.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			q = v
		}
	})
	return int64(q)
}
