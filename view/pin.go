package view

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/engram-vm/engram/chunkstore"
	"github.com/engram-vm/engram/engram"
)

// PinsDir is the directory of a store that holds pin files.
const PinsDir = "pins"

// maxPinFile bounds a pin file gc reads (a root is 40 bytes a page: a
// 64 MiB pin file holds roots of some 100 TiB of guest).
const maxPinFile = 64 << 20

const (
	pinFormat  = "engram-pin"
	pinVersion = 1
)

// pinFile is the JSON content of a pin file; docs/FORMAT.md describes it.
type pinFile struct {
	Format  string      `json:"format"`
	Version int         `json:"version"`
	PID     int         `json:"pid"`
	Host    string      `json:"host"`
	Command string      `json:"command,omitempty"`
	Created time.Time   `json:"created"`
	Engrams []pinEngram `json:"engrams"`
}

type pinEngram struct {
	ID   string `json:"id"`
	Root string `json:"root"` // base64 of the root encoding
}

// Pins is this process's pin file in a store: the engrams it reads, with
// their roots, so that gc keeps their chunks even after an rm. The process
// holds an exclusive flock on the file for as long as it lives; gc takes a
// pin whose lock it can get for the leftover of a dead process and
// removes it. Safe for concurrent use.
type Pins struct {
	dir  string // the store's pins directory
	path string // this process's pin file
	pf   pinFile

	mu     sync.Mutex
	f      *os.File // the locked, current file; nil until the first add
	ids    map[engram.ID]bool
	closed bool
}

// NewPins prepares a pin file for this process in the store at storeDir;
// nothing is written until an engram is pinned. command is recorded for
// people who look (e.g. "engram mount /mnt").
func NewPins(storeDir, command string) (*Pins, error) {
	dir := filepath.Join(storeDir, PinsDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("pin: %w", err)
	}
	// Fail now, not at the first engram a client opens.
	if err := syscall.Access(dir, 2 /* W_OK */); err != nil {
		return nil, fmt.Errorf("pin: %s: %w", dir, err)
	}
	host, _ := os.Hostname()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := fmt.Sprintf("%s.%d.%s.pin", safeName(host), os.Getpid(), hex.EncodeToString(rnd[:]))
	return &Pins{
		dir:  dir,
		path: filepath.Join(dir, name),
		pf:   pinFile{Format: pinFormat, Version: pinVersion, PID: os.Getpid(), Host: host, Command: command, Created: time.Now().UTC().Truncate(time.Second)},
		ids:  map[engram.ID]bool{},
	}, nil
}

// safeName keeps a host name usable as part of a file name.
func safeName(s string) string {
	s = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
	if s == "" {
		return "host"
	}
	return s
}

// Pin pins engrams ids of the store at storeDir for this process until
// release is called; it reads their roots from a read-only open of the
// store. A Set made with Options.Pins pins what it opens by itself, which
// also covers engrams opened later (mount); Pin is for a caller that
// knows its engrams up front.
func Pin(storeDir string, ids []engram.ID) (release func() error, err error) {
	ctx := context.Background()
	st, err := chunkstore.Open(ctx, storeDir, chunkstore.OpenOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	p, err := NewPins(storeDir, strings.Join(os.Args, " "))
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		if err := p.pin(ctx, st, id); err != nil {
			p.Close()
			return nil, err
		}
	}
	return p.Close, nil
}

// pin pins engram id of st, then checks it is still in the catalog: an rm
// (and gc) between reading the root and writing the pin would leave the
// reader with chunks gc no longer keeps.
func (p *Pins) pin(ctx context.Context, st chunkstore.Reader, id engram.ID) error {
	root, err := engram.LoadRoot(ctx, st, id)
	if err != nil {
		return err
	}
	if err := p.add(id, engram.EncodeRoot(root)); err != nil {
		return fmt.Errorf("engram %s: %w", id.Short(), err)
	}
	ok, err := engram.Has(ctx, st, id)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s (removed while pinning)", engram.ErrNotFound, id)
	}
	return nil
}

// Path returns the pin file's path (it exists once something is pinned).
func (p *Pins) Path() string { return p.path }

// add pins engram id with its root encoding. The file is replaced
// atomically: written and locked under a temporary name, then renamed
// over the old one, whose lock is dropped only after the rename.
func (p *Pins) add(id engram.ID, root []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("pin: closed")
	}
	if p.ids[id] {
		return nil
	}
	pf := p.pf
	pf.Engrams = append(append([]pinEngram(nil), p.pf.Engrams...), pinEngram{ID: id.String(), Root: base64.StdEncoding.EncodeToString(root)})
	b, err := json.Marshal(pf)
	if err != nil {
		return err
	}
	tmp := p.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("pin: %w", err)
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("pin %s: %w", tmp, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fail(err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		return fail(err)
	}
	// gc trusts what the file says only after this process wrote it all;
	// fsync makes a crash leave the old file or the whole new one.
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, p.path); err != nil {
		return fail(err)
	}
	if p.f != nil {
		p.f.Close()
	}
	p.f = f
	p.pf = pf
	p.ids[id] = true
	return nil
}

// Close removes the pin file: its engrams are no longer protected.
func (p *Pins) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if p.f == nil {
		return nil
	}
	err := os.Remove(p.path)
	if cerr := p.f.Close(); err == nil {
		err = cerr
	}
	p.f = nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pin: %w", err)
	}
	return nil
}

// Pinned is an engram some live process has pinned.
type Pinned struct {
	ID   engram.ID
	Root engram.Root
	File string // the pin file that names it
	PID  int
}

// ListPins returns the engrams pinned in the store at storeDir by live
// processes, and removes the pin files of dead ones. A pin file that a
// live process holds but that does not decode is an error naming it: gc
// must not go on without knowing what it protects.
func ListPins(storeDir string) ([]Pinned, error) {
	dir := filepath.Join(storeDir, PinsDir)
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pins: %w", err)
	}
	sort.Slice(des, func(i, j int) bool { return des[i].Name() < des[j].Name() })
	var out []Pinned
	for _, de := range des {
		if !strings.HasSuffix(de.Name(), ".pin") {
			continue // temporary files of a writer, or not ours
		}
		path := filepath.Join(dir, de.Name())
		pins, live, err := readPin(path)
		if err != nil {
			return nil, err
		}
		if live {
			out = append(out, pins...)
		}
	}
	return out, nil
}

// readPin reads one pin file. live is false (and the file removed) when no
// process holds its lock.
func readPin(path string) (pins []Pinned, live bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil // released meanwhile
	}
	if err != nil {
		return nil, false, fmt.Errorf("pin file %s: %w", path, err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		// Nobody holds it. If the name still points at this inode, the
		// owner died without removing it; otherwise it was just replaced
		// (the owner renamed a new file over it) and the new one is live.
		fi1, err1 := f.Stat()
		fi2, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && os.SameFile(fi1, fi2) {
			_ = os.Remove(path)
			return nil, false, nil
		}
		if errors.Is(err2, fs.ErrNotExist) {
			return nil, false, nil
		}
		return readPin(path)
	} else if !errors.Is(err, syscall.EWOULDBLOCK) {
		return nil, false, fmt.Errorf("pin file %s: lock: %w", path, err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPinFile+1))
	if err != nil {
		return nil, true, fmt.Errorf("pin file %s: %w", path, err)
	}
	pins, err = decodePin(b, path)
	return pins, true, err
}

// decodePin decodes the content of a live pin file; every root must hash
// to its ID and decode.
func decodePin(b []byte, path string) ([]Pinned, error) {
	if len(b) > maxPinFile {
		return nil, fmt.Errorf("pin file %s: larger than %d bytes", path, maxPinFile)
	}
	var pf pinFile
	if err := json.Unmarshal(b, &pf); err != nil {
		return nil, fmt.Errorf("pin file %s: %w", path, err)
	}
	if pf.Format != pinFormat || pf.Version != pinVersion {
		return nil, fmt.Errorf("pin file %s: format %q version %d, want %q version %d", path, pf.Format, pf.Version, pinFormat, pinVersion)
	}
	var pins []Pinned
	for i, e := range pf.Engrams {
		id, err := chunkstore.ParseID(e.ID)
		if err != nil {
			return nil, fmt.Errorf("pin file %s: engram %d: %w", path, i, err)
		}
		enc, err := base64.StdEncoding.DecodeString(e.Root)
		if err != nil || chunkstore.Sum(enc) != id {
			return nil, fmt.Errorf("pin file %s: engram %s: root does not match its ID", path, id.Short())
		}
		root, err := engram.DecodeRoot(enc)
		if err != nil {
			return nil, fmt.Errorf("pin file %s: engram %s: %w", path, id.Short(), err)
		}
		pins = append(pins, Pinned{ID: id, Root: root, File: path, PID: pf.PID})
	}
	return pins, nil
}

// PinnedChunks calls fn for every chunk (pages and data) an engram pinned
// in the store at storeDir needs, so gc keeps them. Pinned engrams still
// in the catalog are skipped: engram.LiveChunks reports those. st must be
// the store at storeDir, opened for writing (rm and gc take the writer
// lock), so no engram leaves the catalog meanwhile.
func PinnedChunks(ctx context.Context, storeDir string, st chunkstore.Reader, fn func(chunkstore.ID)) error {
	pins, err := ListPins(storeDir)
	if err != nil {
		return err
	}
	seen := map[engram.ID]bool{}
	for _, p := range pins {
		if seen[p.ID] {
			continue
		}
		seen[p.ID] = true
		if ok, err := engram.Has(ctx, st, p.ID); err != nil {
			return err
		} else if ok {
			continue
		}
		for _, pg := range p.Root.Pages {
			fn(pg.ID)
		}
		err := engram.ForEachChunk(ctx, st, p.Root, func(c engram.ChunkRef) error { fn(c.ID); return nil })
		if err != nil {
			return fmt.Errorf("engram %s pinned by %s: %w", p.ID.Short(), p.File, err)
		}
	}
	return nil
}
