package qcow2

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// qemuLockWrite is the byte QEMU's file-posix driver holds a lock on while
// a process has the image open with the write permission
// (RAW_LOCK_PERM_BASE 100 + the bit of BLK_PERM_WRITE, 1). qemu-img info,
// check and convert test it and refuse ("Failed to get shared "write"
// lock") unless given -U.
const qemuLockWrite = 101

// CheckWriters returns an error wrapping ErrInUse, naming the file, when
// another process (a running VM, qemu-io, qemu-img commit) holds QEMU's
// write lock on a file of im's chain or on its external data file: what is
// read of it may be torn between the writer's cluster and table updates.
// Files on a file system without OFD locks are not checked, as QEMU does.
func CheckWriters(im *Image) error {
	for l := im; l != nil; l = l.backing {
		for _, p := range []string{l.path, l.info.DataFile} {
			if p == "" {
				continue
			}
			if err := checkWriter(p); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkWriter(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return nil // Open already read it; a vanished file fails there
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: qemuLockWrite, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return nil // no OFD locks here: QEMU cannot lock it either
	}
	if lk.Type != unix.F_UNLCK {
		return fmt.Errorf("%s: %w: another process has it open for writing (QEMU's write lock is held: a running VM or qemu-io); stop it or snapshot the disk first, or give --force-share to read it anyway", path, ErrInUse)
	}
	return nil
}
