package fuse

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
	"github.com/engram-vm/engram/view"
)

// ErrUnavailable means this machine cannot mount FUSE file systems.
var ErrUnavailable = errors.New("FUSE is not available")

// ErrStaleMount means the mount point still carries the mount of a
// server that died; fusermount3 -u clears it.
var ErrStaleMount = errors.New("dead mount")

// ErrNotEmpty means the mount point holds files the mount would hide;
// Options.NonEmpty mounts over them anyway.
var ErrNotEmpty = errors.New("not empty")

// Options configure Mount.
type Options struct {
	// AllowOther lets users other than the one mounting read the files
	// (fusermount3 needs user_allow_other in /etc/fuse.conf for non-root).
	AllowOther bool
	// FsName is shown as the source in mount tables (default "engram").
	FsName string
	// Errorf, if not nil, gets one line for the first request that
	// failed inside engram (a missing or damaged chunk) on each file, and
	// at the unmount one line per file counting its failures; the client
	// gets EIO every time.
	Errorf func(format string, args ...any)
	// Debug logs every FUSE request (go-fuse's debug output).
	Debug bool
	// NonEmpty mounts over a directory that has entries, hiding them
	// until the unmount (fuse2's "nonempty"); without it Mount refuses.
	NonEmpty bool
}

// Server is a mounted file system.
type Server struct {
	dir    string
	server *gofuse.Server
	once   sync.Once
	done   chan struct{}
}

// Content never changes under a name in by-id/, so the kernel may keep
// attributes, entries and pages for as long as it likes.
const (
	foreverTimeout = 365 * 24 * time.Hour
	// by-name/ entries and the directories change when engrams are
	// added, renamed or removed.
	shortTimeout = time.Second
)

// Check reports whether FUSE can be used here: /dev/fuse and fusermount3.
func Check() error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("%w: /dev/fuse is missing (install the Debian package fuse3 and load the fuse module)", ErrUnavailable)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		return fmt.Errorf("%w: fusermount3 is not on PATH (install the Debian package fuse3)", ErrUnavailable)
	}
	return nil
}

// CheckMountpoint says what is wrong with dir as a mount point: missing,
// not a directory, the dead mount of a killed server, or mounted already.
func CheckMountpoint(dir string) error {
	// statfs always reaches the server of a FUSE mount (stat may be
	// answered from cached attributes), so a dead one shows here.
	var sfs syscall.Statfs_t
	fi, err := os.Stat(dir)
	if err == nil {
		err = syscall.Statfs(dir, &sfs)
	}
	if errors.Is(err, syscall.ENOTCONN) {
		return fmt.Errorf("%s: %w of a killed engram mount is still attached; run `fusermount3 -u %s` first", dir, ErrStaleMount, dir)
	}
	if err != nil {
		return fmt.Errorf("mount point %s: %w", dir, unwrapPath(err))
	}
	if !fi.IsDir() {
		return fmt.Errorf("mount point %s: not a directory", dir)
	}
	if fstype, ok := mountedAt(dir); ok {
		return fmt.Errorf("mount point %s: already mounted (%s); unmount it first", dir, fstype)
	}
	return nil
}

// CheckEmpty refuses a mount point with entries in it: the mount would
// hide them without a word, which is what sshfs and fuse2's fusermount
// refuse to do unless told "nonempty".
func CheckEmpty(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", dir, unwrapPath(err))
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err != nil && err != io.EOF {
		return fmt.Errorf("mount point %s: %w", dir, unwrapPath(err))
	}
	if len(names) > 0 {
		return fmt.Errorf("mount point %s: %w (it holds %s, which the mount would hide); use an empty directory, or --nonempty to mount over it", dir, ErrNotEmpty, names[0])
	}
	return nil
}

// unwrapPath drops the *PathError around err, whose path the caller names.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// mountedAt reports whether something is mounted at dir, and its type.
func mountedAt(dir string) (string, bool) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", false
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts... - fstype source superopts
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || unescapeMount(fields[4]) != abs {
			continue
		}
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) {
				return fields[i+1], true
			}
		}
		return "unknown", true
	}
	return "", false
}

// unescapeMount undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Mount mounts the engrams of st, read through set, at dir and serves
// requests until Unmount (or fusermount3 -u). It returns once the mount
// is in place.
func Mount(dir string, st chunkstore.Reader, set *view.Set, opts Options) (*Server, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	if err := CheckMountpoint(dir); err != nil {
		return nil, err
	}
	if !opts.NonEmpty {
		if err := CheckEmpty(dir); err != nil {
			return nil, err
		}
	}
	if opts.FsName == "" {
		opts.FsName = "engram"
	}
	errorf := opts.Errorf
	if errorf == nil {
		errorf = func(string, ...any) {}
	}
	fsys := &fsys{st: st, set: set, errorf: errorf, failed: map[string]int{}}
	root := &rootDir{fs: fsys}
	long := foreverTimeout
	o := &fs.Options{
		MountOptions: gofuse.MountOptions{
			AllowOther: opts.AllowOther,
			FsName:     opts.FsName,
			Name:       "engram",
			// ro: the kernel itself answers EROFS to writes.
			Options: []string{"ro"},
			// Large reads and many in flight: kernel read-ahead comes as
			// background requests, and view reads ahead behind them.
			MaxWrite:      1 << 20,
			MaxReadAhead:  1 << 20,
			MaxBackground: 64,
			DisableXAttrs: true,
			Debug:         opts.Debug,
		},
		EntryTimeout:    &long,
		AttrTimeout:     &long,
		NullPermissions: true,
		RootStableAttr:  &fs.StableAttr{Ino: 1},
	}
	srv, err := fs.Mount(dir, root, o)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	raiseReadAhead(dir)
	s := &Server{dir: dir, server: srv, done: make(chan struct{})}
	go func() {
		srv.Wait()
		fsys.summarize()
		close(s.done)
	}()
	return s, nil
}

// kernelReadAhead is the read-ahead the kernel is asked to do on the
// mount: with 1 MiB requests, four of them in flight. FUSE lets the init
// reply only lower the default 128 KiB; the mount's own bdi knob can raise
// it, which halves the requests of a sequential copy and their CPU.
const kernelReadAhead = 4 << 20

// raiseReadAhead sets the mount's read_ahead_kb when this process may
// (root); otherwise the kernel default stays, which is slower, not wrong.
func raiseReadAhead(dir string) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return
	}
	major, minor := unix.Major(st.Dev), unix.Minor(st.Dev)
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", major, minor)
	_ = os.WriteFile(p, []byte(strconv.Itoa(kernelReadAhead>>10)), 0)
}

// Dir returns the mount point.
func (s *Server) Dir() string { return s.dir }

// Done is closed when the file system is no longer mounted.
func (s *Server) Done() <-chan struct{} { return s.done }

// Unmount unmounts the file system. It fails (and the mount stays and
// serves on) while files are open in it, e.g. by a loop device.
func (s *Server) Unmount() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	if err := s.server.Unmount(); err != nil {
		return fmt.Errorf("unmount %s: %w", s.dir, err)
	}
	<-s.done
	return nil
}

// fsys is what every node shares.
type fsys struct {
	st     chunkstore.Reader
	set    *view.Set
	errorf func(format string, args ...any)

	mu     sync.Mutex
	failed map[string]int // failures per file, logged once each
}

func (f *fsys) fail(what string, err error) syscall.Errno {
	return f.failFile(what, what, err)
}

// failFile logs only the first failure on file: one dd over a damaged
// chunk makes the kernel ask (and retry) several times, and a line for
// each buried the one that mattered. summarize counts the rest.
func (f *fsys) failFile(file, what string, err error) syscall.Errno {
	if errors.Is(err, engram.ErrNotFound) {
		return syscall.ENOENT
	}
	f.mu.Lock()
	f.failed[file]++
	first := f.failed[file] == 1
	f.mu.Unlock()
	if first {
		f.errorf("%s: %v (further failures of %s are counted, not logged)", what, err, file)
	}
	return syscall.EIO
}

// summarize logs, for each file that failed more than once, how often.
func (f *fsys) summarize() {
	f.mu.Lock()
	defer f.mu.Unlock()
	files := make([]string, 0, len(f.failed))
	for file, n := range f.failed {
		if n > 1 {
			files = append(files, file)
		}
	}
	sort.Strings(files)
	for _, file := range files {
		f.errorf("%s: %d requests failed in all", file, f.failed[file])
	}
}

// Inode numbers: the root and its two directories are fixed, an engram's
// file takes the low 63 bits of its ID (go-fuse numbers symlinks from
// 2^63 up).
const (
	inoByID   = 2
	inoByName = 3
)

func engramIno(id engram.ID) uint64 {
	ino := binary.LittleEndian.Uint64(id[:8]) &^ (1 << 63)
	if ino <= inoByName {
		ino += 16
	}
	return ino
}

// mounted is when the process started serving: the time of the directories.
var mounted = time.Now()

func dirAttr(out *gofuse.Attr, ino uint64) {
	out.Ino = ino
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
	setTimes(out, mounted)
}

func setTimes(out *gofuse.Attr, t time.Time) {
	s, ns := uint64(t.Unix()), uint32(t.Nanosecond())
	out.Mtime, out.Mtimensec = s, ns
	out.Ctime, out.Ctimensec = s, ns
	out.Atime, out.Atimensec = s, ns
}

// rootDir holds by-id/ and by-name/.
type rootDir struct {
	fs.Inode
	fs *fsys
}

var (
	_ fs.NodeOnAdder    = (*rootDir)(nil)
	_ fs.NodeGetattrer  = (*rootDir)(nil)
	_ fs.NodeStatfser   = (*rootDir)(nil)
	_ fs.NodeReaddirer  = (*byIDDir)(nil)
	_ fs.NodeLookuper   = (*byIDDir)(nil)
	_ fs.NodeReaddirer  = (*byNameDir)(nil)
	_ fs.NodeLookuper   = (*byNameDir)(nil)
	_ fs.NodeReadlinker = (*nameLink)(nil)
	_ fs.NodeGetattrer  = (*engramFile)(nil)
	_ fs.NodeOpener     = (*engramFile)(nil)
	_ fs.FileReader     = (*handle)(nil)
	_ fs.FileLseeker    = (*handle)(nil)
	_ fs.FileReleaser   = (*handle)(nil)
)

func (r *rootDir) OnAdd(ctx context.Context) {
	r.AddChild("by-id", r.NewPersistentInode(ctx, &byIDDir{fs: r.fs}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: inoByID}), false)
	r.AddChild("by-name", r.NewPersistentInode(ctx, &byNameDir{fs: r.fs}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: inoByName}), false)
}

func (r *rootDir) Getattr(ctx context.Context, _ fs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	dirAttr(&out.Attr, 1)
	out.Nlink = 4
	out.SetTimeout(shortTimeout)
	return 0
}

func (r *rootDir) Statfs(ctx context.Context, out *gofuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	return 0
}

// byIDDir lists every engram as <ID>.raw.
type byIDDir struct {
	fs.Inode
	fs *fsys
}

func (d *byIDDir) Getattr(ctx context.Context, _ fs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	dirAttr(&out.Attr, inoByID)
	out.SetTimeout(shortTimeout)
	return 0
}

func (d *byIDDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	entries, err := engram.List(ctx, d.fs.st)
	if err != nil {
		return nil, d.fs.fail("by-id", err)
	}
	list := make([]gofuse.DirEntry, 0, len(entries))
	for _, e := range entries {
		list = append(list, gofuse.DirEntry{Name: e.ID.String() + ".raw", Mode: syscall.S_IFREG, Ino: engramIno(e.ID)})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return fs.NewListDirStream(list), 0
}

func (d *byIDDir) Lookup(ctx context.Context, name string, out *gofuse.EntryOut) (*fs.Inode, syscall.Errno) {
	hexID, ok := strings.CutSuffix(name, ".raw")
	if !ok || len(hexID) != 64 {
		return nil, syscall.ENOENT
	}
	id, err := chunkstore.ParseID(hexID)
	if err != nil || id.String() != hexID { // one spelling per file: lower case
		return nil, syscall.ENOENT
	}
	e, err := engram.Get(ctx, d.fs.st, id)
	if err != nil {
		return nil, d.fs.fail("by-id/"+strconv.Quote(name), err)
	}
	disk, err := d.fs.set.OpenEntry(ctx, e)
	if err != nil {
		return nil, d.fs.fail("by-id/"+strconv.Quote(name), err)
	}
	f := &engramFile{disk: disk, fs: d.fs}
	for _, r := range e.Records {
		if r.Created.After(f.mtime) {
			f.mtime = r.Created
		}
	}
	f.attr(&out.Attr)
	return d.NewInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG, Ino: out.Attr.Ino}), 0
}

// byNameDir lists a symlink NAME.raw -> ../by-id/<ID>.raw per name.
type byNameDir struct {
	fs.Inode
	fs *fsys
}

func (d *byNameDir) Getattr(ctx context.Context, _ fs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	dirAttr(&out.Attr, inoByName)
	out.SetTimeout(shortTimeout)
	return 0
}

// fileName is the by-name/ entry of name, or false if name cannot be one
// (a name with a slash, or . and ..).
func fileName(name string) (string, bool) {
	if engram.CheckFileName(name) != nil {
		return "", false
	}
	return name + ".raw", true
}

func (d *byNameDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	entries, err := engram.List(ctx, d.fs.st)
	if err != nil {
		return nil, d.fs.fail("by-name", err)
	}
	seen := map[string]bool{}
	var list []gofuse.DirEntry
	for _, e := range entries {
		for _, r := range e.Records {
			fn, ok := fileName(r.Name)
			if !ok || seen[fn] {
				continue
			}
			seen[fn] = true
			// A name moves to the newest ingest that used it, and older
			// records keep it: list the names that still resolve.
			if _, err := d.fs.resolveName(ctx, r.Name, entries); err == nil {
				list = append(list, gofuse.DirEntry{Name: fn, Mode: syscall.S_IFLNK})
			}
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return fs.NewListDirStream(list), 0
}

func (d *byNameDir) Lookup(ctx context.Context, name string, out *gofuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n, ok := strings.CutSuffix(name, ".raw")
	if !ok {
		return nil, syscall.ENOENT
	}
	if _, ok := fileName(n); !ok {
		return nil, syscall.ENOENT
	}
	target, errno := d.fs.linkTarget(ctx, n)
	if errno != 0 {
		return nil, errno
	}
	l := &nameLink{fs: d.fs, name: n}
	out.Mode = syscall.S_IFLNK | 0o777
	out.Nlink = 1
	out.Size = uint64(len(target))
	setTimes(&out.Attr, mounted)
	out.SetEntryTimeout(shortTimeout)
	out.SetAttrTimeout(shortTimeout)
	return d.NewInode(ctx, l, fs.StableAttr{Mode: syscall.S_IFLNK}), 0
}

// resolveName returns the engram name stands for. Only names count, not
// ID prefixes (engram.Resolve tries names first, then prefixes, so a
// result for a name that could be a hex prefix is checked against the
// records). entries, if not nil, is a fresh engram.List.
func (f *fsys) resolveName(ctx context.Context, name string, entries []*engram.Entry) (engram.ID, error) {
	id, err := engram.Resolve(ctx, f.st, name)
	if err != nil {
		return id, err
	}
	if !maybeHex(name) {
		return id, nil
	}
	if entries == nil {
		if entries, err = engram.List(ctx, f.st); err != nil {
			return id, err
		}
	}
	for _, e := range entries {
		if e.ID != id {
			continue
		}
		for _, r := range e.Records {
			if r.Name == name {
				return id, nil
			}
		}
	}
	return id, fmt.Errorf("%w: no engram named %q", engram.ErrNotFound, name)
}

func maybeHex(s string) bool {
	if len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// linkTarget resolves a name to the by-id/ path it stands for.
func (f *fsys) linkTarget(ctx context.Context, name string) (string, syscall.Errno) {
	id, err := f.resolveName(ctx, name, nil)
	if err != nil {
		return "", f.fail("by-name/"+strconv.Quote(name+".raw"), err)
	}
	return "../by-id/" + id.String() + ".raw", 0
}

// nameLink is a by-name/ symlink; it resolves the name on every read, so
// it follows the name when a newer ingest takes it.
type nameLink struct {
	fs.Inode
	fs   *fsys
	name string
}

func (l *nameLink) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	t, errno := l.fs.linkTarget(ctx, l.name)
	return []byte(t), errno
}

func (l *nameLink) Getattr(ctx context.Context, _ fs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	t, errno := l.fs.linkTarget(ctx, l.name)
	if errno != 0 {
		return errno
	}
	out.Mode = syscall.S_IFLNK | 0o777
	out.Nlink = 1
	out.Size = uint64(len(t))
	setTimes(&out.Attr, mounted)
	out.SetTimeout(shortTimeout)
	return 0
}

// engramFile is by-id/<ID>.raw: the engram's guest content.
type engramFile struct {
	fs.Inode
	fs    *fsys
	disk  *view.Disk
	mtime time.Time
}

// attr fills the attributes; all fields are known without I/O, so the
// Getattr a loop device sends thousands of times costs nothing.
func (f *engramFile) attr(out *gofuse.Attr) {
	out.Ino = engramIno(f.disk.ID())
	out.Mode = syscall.S_IFREG | 0o444
	out.Nlink = 1
	out.Size = uint64(f.disk.Size())
	// Without Blksize go-fuse computes Blocks from Size, making every
	// file look fully allocated to du.
	out.Blksize = 4096
	out.Blocks = uint64(f.disk.DataBytes()+511) / 512
	if !f.mtime.IsZero() {
		setTimes(out, f.mtime) // the newest ingest of the engram
	}
}

func (f *engramFile) Getattr(ctx context.Context, _ fs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	f.attr(&out.Attr)
	return 0
}

func (f *engramFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	// Content is addressed by hash: the kernel's cached pages never go
	// stale, so keep them across opens.
	return &handle{r: f.disk.NewReader(), fs: f.fs}, gofuse.FOPEN_KEEP_CACHE, 0
}

// handle is one open file: a view.Reader with its own read-ahead.
type handle struct {
	r  *view.Reader
	fs *fsys
}

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (gofuse.ReadResult, syscall.Errno) {
	// The cached chunks themselves go to writev: no copy into dest, and
	// no attempt to splice (which ReadResultData makes, and which fails
	// and logs for 1 MiB replies).
	vec, err := h.r.ReadSlices(off, len(dest))
	if err != nil && err != io.EOF {
		file := fmt.Sprintf("by-id/%s.raw", h.r.Disk().ID())
		return nil, h.fs.failFile(file, fmt.Sprintf("%s: read at %#x", file, off), err)
	}
	return gofuse.ReadResultVector(vec), 0
}

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

func (h *handle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	var pos int64
	var err error
	switch whence {
	case seekData:
		pos, err = h.r.SeekData(int64(off))
	case seekHole:
		pos, err = h.r.SeekHole(int64(off))
	default:
		return 0, syscall.EINVAL // the kernel answers SET, CUR and END itself
	}
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return 0, errno
		}
		file := fmt.Sprintf("by-id/%s.raw", h.r.Disk().ID())
		return 0, h.fs.failFile(file, file+": seek", err)
	}
	return uint64(pos), 0
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.r.Close()
	return 0
}
