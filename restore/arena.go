package restore

import "golang.org/x/sys/unix"

// hugePage is the size of a transparent huge page on amd64 and arm64.
const hugePage = 2 << 20

// arena is the job buffers of one restore in one anonymous mapping that
// asks for transparent huge pages. A 4 MiB buffer is then 2 pages to fault
// in and for each O_DIRECT write to pin, not 1024.
type arena struct {
	m    []byte
	bufs []*[]byte
}

// newArena maps n empty buffers of capacity size (a multiple of
// hugePage, so that each starts on one, and so on a qcow2.DirectAlign
// boundary), or returns nil when the mapping fails; the caller then
// allocates buffers as before.
func newArena(n, size int) *arena {
	m, err := unix.Mmap(-1, 0, n*size+hugePage, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return nil
	}
	a := &arena{m: m}
	skip := 0
	if r := uintptrOf(m) % hugePage; r != 0 {
		skip = int(hugePage - r)
	}
	body := m[skip : skip+n*size]
	// Advice only: without huge pages the buffers work the same.
	_ = unix.Madvise(body, unix.MADV_HUGEPAGE)
	for i := range n {
		b := body[i*size : i*size : (i+1)*size]
		a.bufs = append(a.bufs, &b)
	}
	return a
}

// release unmaps the arena; nothing may use its buffers afterwards.
func (a *arena) release() {
	if a != nil {
		_ = unix.Munmap(a.m)
	}
}
