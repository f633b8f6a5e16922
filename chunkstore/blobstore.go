package chunkstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"
	"github.com/zeebo/xxh3"
	bolt "go.etcd.io/bbolt"

	"github.com/engram-vm/engram/chunkstore/blob"
)

// BlobStore is a chunk store on a blob.Store (an S3 bucket): write-once
// objects in the bucket, a bbolt cache of the index and the metadata per
// host. Writers take no lock. See docs/FORMAT.md ("Chunk store in a
// bucket") for the objects and docs/DESIGN.md for the reasoning.
//
// It implements Store, Lister and Maintainer: Verify, GC in two phases
// with a margin (blobgc.go), Repair by damage lists (blobrepair.go).
type BlobStore struct {
	bs       blob.Store
	cfg      blobConfig
	codec    *codec
	readOnly bool
	trustIDs bool
	cacheDir string
	db       *dbPool
	cache    *blockCache
	many     manyState // GetMany's (blobgetmany.go)
	closed   atomic.Bool

	// refreshMu serialises refreshes in this process.
	refreshMu sync.Mutex
	// inflight: chunks this process's PutMany calls are storing (inflight.go).
	inflight inflight
	// viewTime is when the last refresh listed the bucket (UnixNano): the
	// age of this process's view, which gc's margin bounds.
	viewTime atomic.Int64
	// viewGC is the gc lists the refresh that set viewTime listed, the
	// ones its index condemns packs by (checkCommit).
	viewGC atomic.Pointer[viewLists]
	// dedupView is the view the first deduplication since the last commit
	// check decided on (has with forDedup finding an indexed copy): the
	// next commit is checked
	// against it, not against a later refresh's (a Get's, say), which may
	// have learnt a gc list the earlier decisions never heeded.
	dedupView atomic.Pointer[viewLists]
	// clock is time.Now but for tests of gc's margins.
	clock func() time.Time
	// news is what this process learnt from news/ (blobnews.go);
	// soleWriter turns it off.
	news       *newsState
	soleWriter bool

	// warn, when set, lets a refresh skip a damaged segment, journal
	// entry or gc list with a warning instead of failing (degraded.go);
	// damage is what the last refresh skipped.
	warn   func(string)
	warned sync.Map
	damage atomic.Pointer[refreshDamage]
	// dropJournal: the damaged journal entries Repair found
	// (RemoveDamagedJournal).
	dropJournal atomic.Pointer[[]string]

	// local is set for a store in a directory (dirstore.go).
	local *dirLocal
	// staged is set with OpenOptions.DeferSync (blobdefer.go).
	staged *staging
}

func (s *BlobStore) now() int64 {
	if s.clock != nil {
		return s.clock().UnixNano()
	}
	return time.Now().UnixNano()
}

var (
	_ Store      = (*BlobStore)(nil)
	_ Maintainer = (*BlobStore)(nil)
	_ Lister     = (*BlobStore)(nil)
)

// ErrNotSupported is returned by operations a store does not implement
// (yet): Repair of a BlobStore.
var ErrNotSupported = errors.New("not supported by this store yet")

// Object names and formats in the bucket.
const (
	blobConfigName   = "config.json"
	blobLayout       = "blob-1"
	blobPacksPrefix  = "packs/"
	blobIndexPrefix  = "index/"
	blobMetaPrefix   = "meta/"
	segMagic         = "EGIX"
	segVersion       = 1
	segFixed         = 16 // magic, version, n, reserved
	segEntry         = 32 + entrySize
	packFooterMagic  = "EGRMPIDX"
	packFooterSize   = 16 // u64 segment offset, magic
	journalVersion   = 1
	maxJournalObject = 64 << 20
	maxConfigObject  = 64 << 10
	// maxSegment bounds an index segment: a pack holds at most
	// maxPackObject bytes of frames, each at least one 48-byte frame per
	// chunk.
	maxPackObject = 1 << 30
	maxSegment    = segFixed + (maxPackObject/(frameFixed+frameEntry+frameTrailer))*segEntry + 8
)

// Cache buckets (beside meta, chunks, packs and user, as in index.db).
var (
	bucketBlobPacks = []byte("blob.packs") // local pack number (BE) -> 32-byte pack hash
	bucketBlobHash  = []byte("blob.hash")  // pack hash -> local pack number (BE)
	bucketBlobMeta  = []byte("blob.meta")  // journal object name -> "" (applied)
	bucketBlobSegs  = []byte("blob.segs")  // pack hash -> its index segment, as read
	bucketBlobCond  = []byte("blob.cond")  // local pack number (BE) -> "" (condemned by a pending gc list)
	bucketBlobGC    = []byte("blob.gc")    // gc list object name -> its body, as last listed
	bucketBlobDmg   = []byte("blob.dmg")   // damage list object name -> its body, as last listed
	keyStoreID      = []byte("store_id")

	cacheBuckets = [][]byte{bucketBlobPacks, bucketBlobHash, bucketBlobMeta, bucketBlobSegs, bucketBlobCond, bucketBlobGC, bucketBlobDmg}
)

// blobConfig is config.json in a bucket: the directory store's fields
// plus the layout and an ID that names the host's cache.
type blobConfig struct {
	config
	Layout  string `json:"layout"`
	StoreID string `json:"store_id"`
}

// BlobOpenOptions control OpenBlob.
type BlobOpenOptions struct {
	// ReadOnly refuses writes to the bucket (the local cache is still
	// refreshed).
	ReadOnly bool
	// CacheRoot holds one cache directory per store (named by its store
	// ID); "" means DefaultCacheRoot().
	CacheRoot string
	// CacheDir, when set, is the cache directory itself (a directory
	// store keeps its cache inside); CacheRoot is then ignored.
	CacheDir string
	// TrustIDs: see OpenOptions.TrustIDs.
	TrustIDs bool
	// LockTimeout bounds waits for the cache's index.db held by another
	// process on this host (0: DefaultLockTimeout).
	LockTimeout time.Duration
	// BlockCacheBytes: see OpenOptions.BlockCacheBytes.
	BlockCacheBytes int64
	// SoleWriter says no other process writes to the store (a directory
	// under a writer lock): PutMany then neither reads nor writes news/
	// (blobnews.go), which only pays when writers run at once.
	SoleWriter bool
	// Warn, when set, makes the store usable while an object every
	// refresh reads is damaged (a bucket shared by many hosts, where one
	// such object would otherwise stop every command, repair included):
	// the refresh skips it and Warn gets one line naming it, once per
	// object and process. What a skip leaves out is in degraded.go.
	//
	// Without Warn such an object fails the open (and any refresh) with
	// ErrIndexDamaged, ErrJournalDamaged or ErrListDamaged naming it: a
	// degraded store answers not-found for chunks the bucket holds and
	// lacks the records of a skipped journal entry, and a caller that did
	// not ask for that cannot tell it from a store that lost them. A
	// caller that wants to go on, or to run Repair, opens again with Warn.
	// (The CLI sets it for buckets; a directory store, held alone by
	// RepairDir, does not need it.)
	Warn func(msg string)
}

// DefaultCacheRoot is $ENGRAM_CACHE_DIR, else $XDG_CACHE_HOME/engram,
// else ~/.cache/engram.
func DefaultCacheRoot() (string, error) {
	if d := os.Getenv("ENGRAM_CACHE_DIR"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory (set --cache-dir or ENGRAM_CACHE_DIR): %w", err)
	}
	return filepath.Join(d, "engram"), nil
}

// InitBlob makes an empty chunk store in bs: it writes config.json
// (create-only, so of two racing inits one fails with ErrStoreExists).
// A prefix already holding objects is refused (ErrStoreExists when it is a
// store, ErrNotStore otherwise) and nothing is written.
func InitBlob(ctx context.Context, bs blob.Store, opts InitOptions) error {
	cfg, err := opts.config()
	if err != nil {
		return fmt.Errorf("chunkstore init %s: %w", bs, err)
	}
	found := ""
	err = bs.List(ctx, "", func(in blob.Info) error { found = in.Name; return errStopList })
	if err != nil && !errors.Is(err, errStopList) {
		return fmt.Errorf("chunkstore init: %w", err)
	}
	if found != "" {
		// A config.json that is not an engram store's is somebody else's
		// data, not "a store already there".
		switch _, err := readBlobConfig(ctx, bs); {
		case err == nil || errors.Is(err, ErrFormatVersion):
			return fmt.Errorf("chunkstore init %s: %w", bs, ErrStoreExists)
		case errors.Is(err, ErrNotStore):
			if strings.HasSuffix(err.Error(), "(nothing was written)") { // foreignError's
				return err
			}
			return fmt.Errorf("%w (nothing was written)", err)
		default:
			return fmt.Errorf("chunkstore init: %w", err)
		}
	}
	var id [16]byte
	_, _ = rand.Read(id[:])
	bc := blobConfig{config: cfg, Layout: blobLayout, StoreID: hex.EncodeToString(id[:])}
	b, err := json.MarshalIndent(bc, "", "  ")
	if err != nil {
		return err
	}
	if err := bs.Put(ctx, blobConfigName, append(b, '\n')); err != nil {
		if errors.Is(err, blob.ErrExist) {
			return fmt.Errorf("chunkstore init %s: %w", bs, ErrStoreExists)
		}
		return fmt.Errorf("chunkstore init: %w", err)
	}
	return nil
}

var errStopList = errors.New("stop listing")

// notStoreError is ErrNotStore with a message of its own.
type notStoreError struct{ msg string }

func (e *notStoreError) Error() string        { return e.msg }
func (e *notStoreError) Is(target error) bool { return target == ErrNotStore }

func foreignError(bs blob.Store, found string) error {
	return &notStoreError{fmt.Sprintf("%s: not an engram store: it holds %s and no %s (nothing was written)", bs, found, blobConfigName)}
}

func readBlobConfig(ctx context.Context, bs blob.Store) (blobConfig, error) {
	var c blobConfig
	b, err := blob.ReadAll(ctx, bs, blobConfigName, maxConfigObject)
	if errors.Is(err, blob.ErrNotExist) {
		found := ""
		lerr := bs.List(ctx, "", func(in blob.Info) error { found = in.Name; return errStopList })
		if lerr != nil && !errors.Is(lerr, errStopList) {
			return c, lerr
		}
		if found != "" {
			return c, foreignError(bs, found)
		}
		return c, fmt.Errorf("%s: empty, no engram store here (engram init --store creates one): %w", bs, ErrNotStore)
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %s: %w: %v", bs, blobConfigName, ErrNotStore, err)
	}
	if err := c.check(); err != nil {
		if errors.Is(err, ErrFormatVersion) {
			return c, fmt.Errorf("%s: %s: %w", bs, blobConfigName, err)
		}
		return c, fmt.Errorf("%s: %s: %w: %w", bs, blobConfigName, ErrNotStore, err)
	}
	if c.Layout != blobLayout {
		if strings.HasPrefix(c.Layout, "blob-") {
			return c, fmt.Errorf("%s: layout %q, this program reads %q: %w", bs, c.Layout, blobLayout, ErrFormatVersion)
		}
		return c, fmt.Errorf("%s: %s: layout %q is not a bucket layout: %w", bs, blobConfigName, c.Layout, ErrNotStore)
	}
	if len(c.StoreID) != 32 {
		return c, fmt.Errorf("%s: %s: store_id %q: %w", bs, blobConfigName, c.StoreID, ErrNotStore)
	}
	if _, err := hex.DecodeString(c.StoreID); err != nil {
		return c, fmt.Errorf("%s: %s: store_id %q: %w", bs, blobConfigName, c.StoreID, ErrNotStore)
	}
	return c, nil
}

// OpenBlob opens the chunk store in bs. Its cache (CacheRoot/STORE-ID) is
// created when missing and brought up to date with the bucket: new index
// segments and catalog journal entries are read. The BlobStore owns bs
// and closes it.
func OpenBlob(ctx context.Context, bs blob.Store, opts BlobOpenOptions) (*BlobStore, error) {
	cfg, err := readBlobConfig(ctx, bs)
	if err != nil {
		return nil, err
	}
	c, err := getCodec(cfg.Params.Compression)
	if err != nil {
		return nil, err
	}
	dir := opts.CacheDir
	if dir == "" {
		root := opts.CacheRoot
		if root == "" {
			if root, err = DefaultCacheRoot(); err != nil {
				return nil, err
			}
		}
		dir = filepath.Join(root, cfg.StoreID)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	idx := filepath.Join(dir, indexName)
	if _, err := os.Stat(idx); errors.Is(err, os.ErrNotExist) {
		if err := createCache(idx, cfg.StoreID); err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
	}
	timeout := opts.LockTimeout
	if timeout <= 0 {
		timeout = DefaultLockTimeout
	}
	s := &BlobStore{bs: bs, cfg: cfg, codec: c, readOnly: opts.ReadOnly, trustIDs: opts.TrustIDs, cacheDir: dir,
		db: newDBPool(idx, false, timeout), cache: newBlockCache(opts.BlockCacheBytes),
		news: newNewsState(), soleWriter: opts.SoleWriter, warn: opts.Warn}
	if err := s.checkCache(ctx); err != nil {
		s.db.close()
		return nil, err
	}
	if err := s.Refresh(ctx); err != nil {
		s.db.close()
		return nil, err
	}
	return s, nil
}

func createCache(path, storeID string) error {
	tmp := fmt.Sprintf("%s.new-%d", path, os.Getpid())
	_ = os.Remove(tmp)
	err := createIndex(tmp, func(tx *bolt.Tx) error {
		for _, b := range cacheBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keyStoreID, []byte(storeID))
	})
	if err != nil {
		return err
	}
	// Link, not rename: of two processes creating the same cache at the
	// same moment, the second keeps the first's index.db (which the first
	// may have open) and drops its own.
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

func (s *BlobStore) checkCache(ctx context.Context) error {
	return s.db.view(ctx, func(tx *bolt.Tx) error {
		if _, _, err := buckets(tx); err != nil {
			return err
		}
		for _, b := range cacheBuckets {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("cache %s: not a bucket cache of this version (remove it to rebuild): %w", s.db.path, ErrIndexDamaged)
			}
		}
		if id := tx.Bucket(bucketMeta).Get(keyStoreID); string(id) != s.cfg.StoreID {
			return fmt.Errorf("cache %s belongs to store %q, not %q (remove it to rebuild): %w", s.db.path, id, s.cfg.StoreID, ErrIndexDamaged)
		}
		return nil
	})
}

func (s *BlobStore) String() string { return s.bs.String() }

// CacheDir returns the directory of this store's cache on this host.
func (s *BlobStore) CacheDir() string { return s.cacheDir }

// Params returns the parameters fixed at Init.
func (s *BlobStore) Params() Params { return s.cfg.Params }

// Close closes the cache and the blob store.
func (s *BlobStore) Close() error {
	// The last durable point, before the store is marked closed.
	ferr := s.flushStaged(context.Background())
	if s.closed.Swap(true) {
		return nil
	}
	s.dropStaged()
	s.db.close()
	err := s.bs.Close()
	if ferr != nil {
		err = ferr
	}
	if lerr := s.local.close(); err == nil {
		err = lerr
	}
	return err
}

func (s *BlobStore) check(write bool) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if write && s.readOnly {
		return fmt.Errorf("%s: %w", s.bs, ErrReadOnly)
	}
	return nil
}

func packObject(h ID) string  { return blobPacksPrefix + h.String()[:2] + "/" + h.String() }
func indexObject(h ID) string { return blobIndexPrefix + h.String() }

// ---- index segments ----

// encodeSegment encodes the entries of one pack (Pack fields ignored).
func encodeSegment(ents []indexed) []byte {
	b := make([]byte, segFixed, segFixed+len(ents)*segEntry+8)
	copy(b, segMagic)
	binary.LittleEndian.PutUint32(b[4:], segVersion)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(ents)))
	for _, x := range ents {
		e := x.e
		e.Pack = 0
		b = append(b, x.id[:]...)
		b = append(b, e.encode()...)
	}
	return binary.LittleEndian.AppendUint64(b, xxh3.Hash(b))
}

// decodeSegment checks and decodes an index segment; every length is
// checked against the segment's size before use.
func decodeSegment(b []byte) ([]indexed, error) {
	if len(b) < segFixed+8 || string(b[:4]) != segMagic {
		return nil, errors.New("not an index segment")
	}
	if v := binary.LittleEndian.Uint32(b[4:]); v != segVersion {
		if v > segVersion {
			return nil, fmt.Errorf("index segment version %d: %w", v, ErrFormatVersion)
		}
		return nil, fmt.Errorf("bad index segment version %d", v)
	}
	n := uint64(binary.LittleEndian.Uint32(b[8:]))
	if uint64(len(b)) != segFixed+n*segEntry+8 {
		return nil, fmt.Errorf("index segment of %d bytes cannot hold %d entries", len(b), n)
	}
	if sum := binary.LittleEndian.Uint64(b[len(b)-8:]); sum != xxh3.Hash(b[:len(b)-8]) {
		return nil, errors.New("index segment checksum mismatch")
	}
	out := make([]indexed, n)
	for i := range out {
		x := b[segFixed+i*segEntry:]
		copy(out[i].id[:], x[:32])
		e, err := decodeEntry(out[i].id, x[32:32+entrySize])
		if err != nil {
			return nil, err
		}
		out[i].e = e
	}
	return out, nil
}

// ---- writing ----

// Put stores one chunk; see PutMany.
func (s *BlobStore) Put(ctx context.Context, id ID, data []byte) (bool, error) {
	n, err := s.PutMany(ctx, []Chunk{{ID: id, Data: data}})
	return n > 0, err
}

// PutMany stores the chunks the cache does not know as one new pack: the
// pack object, then its index segment, then the cache commit. Calls run
// concurrently (no lock, in this process or any other); a chunk two calls
// store at once ends in two packs, and every cache keeps the copy in the
// pack with the smaller hash. news/ (blobnews.go) makes that rare: it
// first merges the packs other writers announced, leaves chunks another
// writer has claimed to that writer, and looks again before uploading.
func (s *BlobStore) PutMany(ctx context.Context, chunks []Chunk) (int, error) {
	if err := s.check(true); err != nil {
		return 0, err
	}
	for _, c := range chunks {
		if len(c.Data) > MaxChunkSize {
			return 0, &TooLargeError{ID: c.ID, Len: len(c.Data)}
		}
	}
	// What other hosts stored since we last looked, before spending
	// compression and upload on it (blobnews.go).
	if err := s.pollNews(ctx, false); err != nil {
		return 0, err
	}
	var uniq []Chunk
	seen := map[ID]bool{}
	for _, c := range chunks {
		if !seen[c.ID] {
			seen[c.ID] = true
			uniq = append(uniq, c)
		}
	}
	// Taken before the index is asked, so a call that ends in between
	// has its chunks indexed by then.
	mine, theirs, waits, call := s.inflight.take(uniq)
	added, err := s.putMissing(ctx, mine)
	s.inflight.finish(call, mine, err)
	if err != nil || len(theirs) == 0 {
		return added, err
	}
	// Chunks another call of this process was storing: once it has
	// returned they are indexed, unless it failed; store what is missing.
	if err := wait(ctx, waits); err != nil {
		return added, err
	}
	n, err := s.putMissing(ctx, theirs)
	return added + n, err
}

// putMissing stores the chunks of cs (distinct IDs) the cache lacks,
// leaving to other hosts those they claimed first (blobnews.go).
func (s *BlobStore) putMissing(ctx context.Context, cs []Chunk) (int, error) {
	if len(cs) == 0 {
		return 0, nil
	}
	ids := make([]ID, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	have, err := s.has(ctx, ids, true)
	if err != nil {
		return 0, err
	}
	var fresh []Chunk
	for i, c := range cs {
		if have[i] {
			continue
		}
		if !s.trustIDs {
			if got := Sum(c.Data); got != c.ID {
				return 0, fmt.Errorf("chunkstore: put chunk %s: its data hashes to %s", c.ID, got)
			}
		}
		fresh = append(fresh, c)
	}
	return s.putFresh(ctx, fresh)
}

// putFresh stores chunks the cache lacks, leaving to other hosts those
// they claimed first (blobnews.go).
func (s *BlobStore) putFresh(ctx context.Context, fresh []Chunk) (int, error) {
	if len(fresh) == 0 {
		return 0, nil
	}
	mine, held, own, err := s.claimFor(ctx, fresh)
	if err != nil {
		return 0, err
	}
	added, yielded, err := s.storeFresh(ctx, mine, own)
	s.release(own)
	held = append(held, yielded...)
	if err != nil || len(held) == 0 {
		return added, err
	}
	// The chunks another writer claimed: wait for its pack, store what
	// it did not.
	left, err := s.awaitHeld(ctx, held)
	if err != nil {
		return added, err
	}
	n, _, err := s.storeFresh(ctx, left, nil)
	return added + n, err
}

// storeFresh stores chunks the cache lacks, in packs of about PackSize;
// under claim own, it returns the chunks it yielded to an earlier claim
// (see dropStored).
func (s *BlobStore) storeFresh(ctx context.Context, fresh []Chunk, own *claim) (int, []Chunk, error) {
	added := 0
	var yielded []Chunk
	for start := 0; start < len(fresh); {
		end, size := start, int64(0)
		for end < len(fresh) && (end == start || size+int64(len(fresh[end].Data)) <= s.cfg.PackSize) {
			size += int64(len(fresh[end].Data))
			end++
		}
		n, y, err := s.writePack(ctx, fresh[start:end], own)
		added += n
		yielded = append(yielded, y...)
		if err != nil {
			return added, yielded, err
		}
		start = end
	}
	return added, yielded, nil
}

// writePack uploads chunks as one pack with its index segment and indexes
// them in the cache.
func (s *BlobStore) writePack(ctx context.Context, chunks []Chunk, own *claim) (int, []Chunk, error) {
	frames := encodeBlocks(chunks, s.cfg.BlockSize, s.codec)
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	// Right before the upload: frames another host stored meanwhile, or
	// claimed first.
	frames, yielded, err := s.dropStored(ctx, frames, own)
	if err != nil || len(frames) == 0 {
		return 0, yielded, err
	}
	added, err := s.putFrames(ctx, frames, s.staged != nil, false)
	return added, yielded, err
}

// writeFrames uploads frames as one pack with its index segment and
// indexes them in the cache (gc's rewrite calls it with frames it copied).
func (s *BlobStore) writeFrames(ctx context.Context, frames []encFrame) (int, error) {
	return s.putFrames(ctx, frames, false, true)
}

// putFrames is writeFrames; with stage, the pack waits for the next
// durable point (blobdefer.go). gc is set for gc's own rewrite, which
// holds the lease: no sweep runs while it writes.
func (s *BlobStore) putFrames(ctx context.Context, frames []encFrame, stage, gc bool) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var nchunks int
	for _, fr := range frames {
		nchunks += len(fr.chunks)
	}
	// The pack's parts: header, frames, segment, footer.
	parts := make([][]byte, 0, len(frames)+3)
	// A random number where a directory pack has its number: two packs of
	// the same chunks are two objects, so chunks stored again beside a
	// condemned copy (gc) never land in the condemned object itself.
	var nonce [4]byte
	_, _ = rand.Read(nonce[:])
	parts = append(parts, packHeader(binary.LittleEndian.Uint32(nonce[:])))
	size := int64(len(parts[0]))
	ents := make([]indexed, 0, nchunks)
	for _, fr := range frames {
		off := size
		parts = append(parts, fr.data)
		size += int64(len(fr.data))
		lens := make([]int, len(fr.chunks))
		for i, c := range fr.chunks {
			lens[i] = len(c.Data)
		}
		sh := shares(int64(len(fr.data)), lens)
		var boff uint32
		for i, c := range fr.chunks {
			ents = append(ents, indexed{c.ID, entry{FrameOff: off, FrameLen: uint32(len(fr.data)), BlockOff: boff, RawLen: uint32(len(c.Data)), Share: sh[i]}})
			boff += uint32(len(c.Data))
		}
	}
	seg := encodeSegment(ents)
	footer := binary.LittleEndian.AppendUint64(make([]byte, 0, packFooterSize), uint64(size))
	footer = append(footer, packFooterMagic...)
	parts = append(parts, seg, footer)
	size += int64(len(seg) + len(footer))
	if stage {
		// Written from the frame buffers, without the copy into one pack
		// buffer.
		hs := blake3.New()
		for _, p := range parts {
			_, _ = hs.Write(p)
		}
		var h ID
		copy(h[:], hs.Sum(nil))
		n, err := s.stage(ctx, h, parts, size, seg, ents)
		releaseFrames(frames)
		return n, err
	}
	pack := make([]byte, 0, size)
	for _, p := range parts {
		pack = append(pack, p...)
	}
	releaseFrames(frames) // copied into pack: their buffers serve the next call
	h := Sum(pack)
	// Pack first, then its segment: a segment never names a pack that is
	// not there. ErrExist: the same bytes are there already (the name is
	// their hash), from another writer or our own retried request.
	t0 := s.now()
	if err := testKillDuring("pack-put", func() error { return s.bs.Put(ctx, packObject(h), pack) }); err != nil && !errors.Is(err, blob.ErrExist) {
		return 0, fmt.Errorf("chunkstore: uploading pack: %w", err)
	}
	testKill("after-pack")
	if err := s.bs.Put(ctx, indexObject(h), seg); err != nil && !errors.Is(err, blob.ErrExist) {
		return 0, fmt.Errorf("chunkstore: uploading index segment: %w", err)
	}
	if !gc {
		// A gc may have swept the pack as an orphan while the segment was
		// on its way (blobgc.go).
		if err := s.packsLanded(ctx, t0, []ID{h}, func(int) error { return s.bs.Put(ctx, packObject(h), pack) }); err != nil {
			return 0, err
		}
	}
	s.announce(ctx, h)
	var added int
	err := s.db.update(context.WithoutCancel(ctx), func(tx *bolt.Tx) error {
		var err error
		added, err = mergeSegment(tx, h, int64(len(pack)), ents, seg, false, nil)
		return err
	})
	return added, err
}

// mergeSegment indexes the entries of pack h (segment seg) in the cache,
// unless the pack is known already, leaving out those in frames repair
// listed as damaged. A chunk already indexed in another
// pack keeps the entry of a pack gc has not condemned, then of the pack
// with the smaller hash, so every cache that has seen the same packs and
// gc lists agrees whatever order it saw them in. It returns the
// number of chunks the cache did not know before.
func mergeSegment(tx *bolt.Tx, h ID, size int64, ents []indexed, seg []byte, condemned bool, damaged map[int64]bool) (int, error) {
	chunks, packs, err := buckets(tx)
	if err != nil {
		return 0, err
	}
	byHash, byNum, cond := tx.Bucket(bucketBlobHash), tx.Bucket(bucketBlobPacks), tx.Bucket(bucketBlobCond)
	if byHash.Get(h[:]) != nil {
		return 0, nil
	}
	if err := tx.Bucket(bucketBlobSegs).Put(h[:], seg); err != nil {
		return 0, err
	}
	meta := tx.Bucket(bucketMeta)
	num := uint32(1)
	if v := meta.Get(keyNextPack); len(v) == 4 {
		num = max(num, binary.LittleEndian.Uint32(v))
	}
	if err := meta.Put(keyNextPack, u32le(num+1)); err != nil {
		return 0, err
	}
	if err := byHash.Put(h[:], packKey(num)); err != nil {
		return 0, err
	}
	if err := byNum.Put(packKey(num), h[:]); err != nil {
		return 0, err
	}
	if condemned {
		// Not an empty value: bbolt's Get returns nil for one within the
		// transaction that put it, and a rebuild merges every pack in one
		// transaction, so a condemned copy merged first would not count as
		// condemned when its rewritten copy came next.
		if err := cond.Put(packKey(num), []byte{1}); err != nil {
			return 0, err
		}
	}
	deltas := map[uint32]*packRec{}
	rec := packRec{Size: size}
	n := 0
	for _, x := range ents {
		if damaged[x.e.FrameOff] {
			continue // repair found this frame damaged: as if never stored
		}
		x.e.Pack = num
		isNew := true
		if v := chunks.Get(x.id[:]); v != nil {
			isNew = false
			cur, err := decodeEntry(x.id, v)
			if err != nil {
				return 0, err
			}
			// Keep the copy in a pack gc has not condemned, then the one in
			// the pack with the smaller hash.
			other := byNum.Get(packKey(cur.Pack))
			otherCond := cond.Get(packKey(cur.Pack)) != nil
			if other != nil && (otherCond == condemned && bytes.Compare(other, h[:]) <= 0 || !otherCond && condemned) {
				continue
			}
			addDelta(deltas, cur, -1)
		}
		if err := chunks.Put(x.id[:], x.e.encode()); err != nil {
			return 0, err
		}
		rec.Live += int64(x.e.Share)
		rec.Chunks++
		rec.Raw += int64(x.e.RawLen)
		if isNew {
			n++
		}
	}
	if err := packs.Put(packKey(num), rec.encode()); err != nil {
		return 0, err
	}
	return n, applyDeltas(packs, deltas)
}

// ---- reading ----

// Has reports whether the cache knows chunk id.
func (s *BlobStore) Has(ctx context.Context, id ID) (bool, error) {
	r, err := s.HasMany(ctx, []ID{id})
	if err != nil {
		return false, err
	}
	return r[0], nil
}

// HasMany answers Has for ids in one cache transaction.
func (s *BlobStore) HasMany(ctx context.Context, ids []ID) ([]bool, error) {
	return s.has(ctx, ids, false)
}

// HasForDedup is HasMany for a writer deciding what to store: a chunk
// whose indexed copy is in a pack gc has condemned counts as missing.
func (s *BlobStore) HasForDedup(ctx context.Context, ids []ID) ([]bool, error) {
	return s.has(ctx, ids, true)
}

// Deduper is implemented by stores where a chunk HasMany reports may be
// gone before the writer commits (BlobStore: its copy is in a pack gc has
// condemned). A writer that skips the chunks the store holds asks
// HasForDedup instead of HasMany, or it would build on the condemned copy.
type Deduper interface {
	HasForDedup(ctx context.Context, ids []ID) ([]bool, error)
}

var _ Deduper = (*BlobStore)(nil)

// has answers HasMany; forDedup leaves out chunks whose indexed copy is in
// a pack gc has condemned, so PutMany stores them again: the condemned
// pack may be gone before this writer commits.
func (s *BlobStore) has(ctx context.Context, ids []ID, forDedup bool) ([]bool, error) {
	if err := s.check(false); err != nil {
		return nil, err
	}
	out := make([]bool, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	// Staged chunks first: a durable point indexes its packs before it
	// forgets them, so a chunk it moves meanwhile is seen in one or the
	// other.
	// The view before the index is read: the cache may be newer than it
	// (a refresh under way, another process's), never older.
	var pre *viewLists
	if forDedup && s.dedupView.Load() == nil {
		pre = s.currentView()
	}
	s.stagedHas(ids, out)
	hit := false
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		chunks, _, err := buckets(tx)
		if err != nil {
			return err
		}
		cond := tx.Bucket(bucketBlobCond)
		for i, id := range ids {
			if out[i] {
				continue
			}
			v := chunks.Get(id[:])
			out[i] = v != nil && (!forDedup || len(v) < 4 || cond.Get(packKey(binary.LittleEndian.Uint32(v))) == nil)
			hit = hit || out[i]
		}
		return nil
	})
	if pre != nil && hit {
		// A chunk left out relies on its indexed copy until the commit.
		s.dedupView.CompareAndSwap(nil, pre)
	}
	return out, err
}

// Lookup returns the entries of the ids the cache knows.
func (s *BlobStore) Lookup(ctx context.Context, ids []ID) ([]Entry, error) {
	if err := s.check(false); err != nil {
		return nil, err
	}
	if err := s.flushFor(ctx, ids); err != nil {
		return nil, err
	}
	return lookupEntries(ctx, s.db, ids)
}

// lookup returns id's entry and the hash of its pack.
func (s *BlobStore) lookup(ctx context.Context, id ID) (entry, ID, bool, error) {
	var e entry
	var h ID
	var ok bool
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		chunks, _, err := buckets(tx)
		if err != nil {
			return err
		}
		var found bool
		if e, found, err = getEntry(chunks, id); !found {
			return err
		}
		hb := tx.Bucket(bucketBlobPacks).Get(packKey(e.Pack))
		if len(hb) != 32 {
			return fmt.Errorf("%s: chunk %s points at pack %d, which has no hash: %w", s.db.path, id.Short(), e.Pack, ErrIndexDamaged)
		}
		copy(h[:], hb)
		ok = true
		return nil
	})
	return e, h, ok, err
}

// Get fetches the chunk's frame with one ranged GET (or from the block
// cache) and checks the chunk's BLAKE3.
func (s *BlobStore) Get(ctx context.Context, id ID) ([]byte, error) {
	if err := s.check(false); err != nil {
		return nil, err
	}
	if err := s.flushFor(ctx, []ID{id}); err != nil {
		return nil, err
	}
	data, err := s.get(ctx, id)
	if errors.Is(err, blob.ErrNotExist) {
		// gc on another host deleted the pack this cache points at (the
		// chunk then lives in another copy): refresh and look again.
		if rerr := s.Refresh(ctx); rerr != nil {
			return nil, rerr
		}
		data, err = s.get(ctx, id)
	}
	return data, err
}

func (s *BlobStore) get(ctx context.Context, id ID) ([]byte, error) {
	b, j, err := s.getBlock(ctx, id)
	if err != nil {
		return nil, err
	}
	data, err := b.Chunk(j)
	if err != nil {
		return nil, err
	}
	if data = bytes.Clone(data); data == nil {
		data = []byte{}
	}
	return data, nil
}

// getBlock returns the block holding chunk id (from the block cache or
// its frame) and the chunk's index in it, which the caller checks with
// Block.Chunk.
func (s *BlobStore) getBlock(ctx context.Context, id ID) (*Block, int, error) {
	e, h, ok, err := s.lookup(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	if !ok {
		return nil, 0, &NotFoundError{ID: id}
	}
	corrupt := func(reason string, err error) error {
		return &CorruptChunkError{ID: id, Pack: s.bs.String() + "/" + packObject(h), Offset: e.FrameOff, Reason: reason, Err: err}
	}
	key := blockKey{e.Pack, e.FrameOff}
	cb, err := s.cache.load(key, func() (*Block, error) {
		if e.FrameLen < frameFixed+frameEntry+frameTrailer || e.FrameLen > maxFrameBytes {
			return nil, &frameError{"reading frame", fmt.Errorf("index says the frame is %d bytes", e.FrameLen)}
		}
		buf, err := s.bs.Get(ctx, packObject(h), e.FrameOff, int64(e.FrameLen))
		if err != nil {
			return nil, err
		}
		f, n, err := decodeFrame(buf)
		if err != nil {
			return nil, &frameError{"reading frame", err}
		}
		if n != int64(e.FrameLen) {
			return nil, &frameError{"reading frame", fmt.Errorf("frame is %d bytes, index says %d", n, e.FrameLen)}
		}
		block, err := f.block()
		if err != nil {
			return nil, &frameError{"decompressing block", err}
		}
		return newBlock(s.bs, key, h, block, f.Chunks), nil
	})
	if err != nil {
		var fe *frameError
		if errors.As(err, &fe) {
			return nil, 0, corrupt(fe.reason, fe.err)
		}
		if errors.Is(err, blob.ErrNotExist) || errors.Is(err, blob.ErrRange) {
			return nil, 0, corrupt("reading frame", err)
		}
		return nil, 0, err // the bucket cannot be reached: not damage
	}
	i := slices.IndexFunc(cb.chunks, func(c frameChunk) bool { return c.ID == id && c.Off == e.BlockOff })
	if i < 0 {
		return nil, 0, corrupt(fmt.Sprintf("frame does not list the chunk at block offset %d", e.BlockOff), nil)
	}
	if c := cb.chunks[i]; c.Len != e.RawLen {
		return nil, 0, corrupt(fmt.Sprintf("frame says %d bytes, index says %d", c.Len, e.RawLen), nil)
	}
	return cb, i, nil
}

// Stats sums the pack records of the cache.
func (s *BlobStore) Stats(ctx context.Context) (Stats, error) {
	if err := s.check(false); err != nil {
		return Stats{}, err
	}
	if err := s.flushStaged(ctx); err != nil {
		return Stats{}, err
	}
	return packStats(ctx, s.db)
}

// ForEach implements Lister over the cache.
func (s *BlobStore) ForEach(ctx context.Context, fn func(Entry) error) error {
	if err := s.check(false); err != nil {
		return err
	}
	if err := s.flushStaged(ctx); err != nil {
		return err
	}
	var all []Entry
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		chunks, _, err := buckets(tx)
		if err != nil {
			return err
		}
		return chunks.ForEach(func(k, v []byte) error {
			id := ID(k)
			e, err := decodeEntry(id, v)
			if err != nil {
				return err
			}
			all = append(all, Entry{ID: id, RawLen: int(e.RawLen), StoredLen: int64(e.Share)})
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, e := range all {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// ---- metadata: the cache's bbolt, journalled to the bucket ----

// View runs fn on the cache's metadata.
func (s *BlobStore) View(ctx context.Context, fn func(MetaTx) error) error {
	if err := s.check(false); err != nil {
		return err
	}
	return s.db.view(ctx, func(tx *bolt.Tx) error { return fn(metaTx{tx}) })
}

// journalOp is one Put or Delete of an Update.
type journalOp struct {
	Op     string `json:"op"` // "put" or "del"
	Bucket []byte `json:"b"`
	Key    []byte `json:"k"`
	Value  []byte `json:"v,omitempty"`
}

type journal struct {
	V   int         `json:"v"`
	Ops []journalOp `json:"ops"`
}

// recordingTx applies to the cache and remembers what it did.
type recordingTx struct {
	metaTx
	ops *[]journalOp
}

func (r recordingTx) Put(bucket, key, value []byte) error {
	if err := r.metaTx.Put(bucket, key, value); err != nil {
		return err
	}
	*r.ops = append(*r.ops, journalOp{Op: "put", Bucket: bytes.Clone(bucket), Key: bytes.Clone(key), Value: bytes.Clone(value)})
	return nil
}

func (r recordingTx) Delete(bucket, key []byte) error {
	if err := r.metaTx.Delete(bucket, key); err != nil {
		return err
	}
	*r.ops = append(*r.ops, journalOp{Op: "del", Bucket: bytes.Clone(bucket), Key: bytes.Clone(key)})
	return nil
}

// journalName names a journal object so that names sort in commit order:
// 16 hex digits of a time (nanoseconds, later than every entry this cache
// has applied), then a hash of the content.
func journalName(t int64, body []byte) string {
	return fmt.Sprintf("%s%016x-%s", blobMetaPrefix, t, Sum(body).String()[:16])
}

func parseJournalName(name string) (int64, bool) {
	rest, ok := strings.CutPrefix(name, blobMetaPrefix)
	if !ok || len(rest) != 33 || rest[16] != '-' {
		return 0, false
	}
	t, err := strconv.ParseUint(rest[:16], 16, 63)
	if _, herr := hex.DecodeString(rest[17:]); err != nil || herr != nil {
		return 0, false
	}
	return int64(t), true
}

// lastApplied returns the newest journal name the cache has applied.
func lastApplied(tx *bolt.Tx) string {
	k, _ := tx.Bucket(bucketBlobMeta).Cursor().Last()
	return string(k)
}

// Update runs fn on the cache's metadata and, if it changed anything,
// writes the changes as one journal object before the cache transaction
// commits: the object is the commit point (engram.Commit's record), and
// every other host's cache replays it on its next refresh.
func (s *BlobStore) Update(ctx context.Context, fn func(MetaTx) error) error {
	if err := s.check(true); err != nil {
		return err
	}
	// The durable point of deferred packs (blobdefer.go): the journal
	// object may name any chunk PutMany returned, so they are durable
	// first, and indexed in this transaction.
	staged, done, err := s.publishStaged(ctx)
	if err != nil {
		return err
	}
	err = s.update(ctx, staged, fn)
	done(err)
	return err
}

func (s *BlobStore) update(ctx context.Context, staged []*stagedPack, fn func(MetaTx) error) error {
	testPause()
	if err := s.checkCommit(ctx); err != nil {
		return err
	}
	staged, err := s.indexAhead(ctx, staged)
	if err != nil {
		return err
	}
	return s.db.update(ctx, func(tx *bolt.Tx) error {
		if err := indexStaged(tx, staged); err != nil {
			return err
		}
		var ops []journalOp
		if err := fn(recordingTx{metaTx{tx}, &ops}); err != nil {
			return err
		}
		if len(ops) == 0 {
			return nil
		}
		body, err := json.Marshal(journal{V: journalVersion, Ops: ops})
		if err != nil {
			return err
		}
		t := s.now()
		if last, ok := parseJournalName(lastApplied(tx)); ok && last >= t {
			if last == math.MaxInt64 {
				// One more would wrap to a name no reader parses: the
				// record would be lost to every host.
				return fmt.Errorf("%s: %s is dated at the end of time, so no entry can sort after it (remove it): %w", s.bs, lastApplied(tx), ErrIndexDamaged)
			}
			t = last + 1
		}
		name := journalName(t, body)
		testKill("before-record")
		if err := s.bs.Put(ctx, name, body); err != nil && !errors.Is(err, blob.ErrExist) {
			return fmt.Errorf("chunkstore: writing catalog journal: %w", err)
		}
		return tx.Bucket(bucketBlobMeta).Put([]byte(name), nil)
	})
}

func applyJournal(tx *bolt.Tx, body []byte) error {
	var j journal
	if err := json.Unmarshal(body, &j); err != nil {
		return err
	}
	if j.V != journalVersion {
		if j.V > journalVersion {
			return fmt.Errorf("journal version %d: %w", j.V, ErrFormatVersion)
		}
		return fmt.Errorf("bad journal version %d", j.V)
	}
	m := metaTx{tx}
	for _, op := range j.Ops {
		var err error
		switch op.Op {
		case "put":
			err = m.Put(op.Bucket, op.Key, op.Value)
		case "del":
			err = m.Delete(op.Bucket, op.Key)
		default:
			err = fmt.Errorf("unknown journal op %q", op.Op)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// ---- refresh ----

// Refresh brings the cache up to date with the bucket: index segments of
// packs it has not seen are merged, journal entries it has not applied are
// replayed in name order. An entry that sorts before one already applied
// (written concurrently by another host) makes it rebuild the metadata
// from every journal entry, so every cache ends in the same state.
func (s *BlobStore) Refresh(ctx context.Context) (err error) {
	if err := s.check(false); err != nil {
		return err
	}
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	start := s.now()
	d := newRefreshDamage()
	defer func() {
		if err == nil {
			s.damage.Store(d)
		}
	}()
	var segs []string
	// The journal first, then the segments: a writer puts its segments
	// before its record, so every record listed here has its segments in
	// the listing after it. (The other way round, a record committed
	// between the two listings arrives without its chunks: found by
	// TestS3GCDuringIngest as a gc refusing with "chunk not found".)
	journals, full, err := s.listJournal(ctx, false) // blobjournal.go
	if err != nil {
		return err
	}
	// gc's lists before the segments: a sweep deletes its packs before it
	// replaces its pending list by a done marker (which names no packs),
	// so a pack listed here is either not swept yet or condemned by a list
	// listed before. (The other way round, a sweep between the two
	// listings left a swept pack indexed and not condemned, and a writer
	// whose view is newer than the mark deduplicated against it and
	// passed the commit check: TestBlobGCSweepDuringRefresh.)
	lists, err := s.gcLists(ctx)
	if err != nil {
		return err
	}
	for n, l := range lists {
		if l.damaged != nil {
			s.skipList(d, n, l.damaged)
		}
	}
	err = s.bs.List(ctx, blobIndexPrefix, func(in blob.Info) error {
		segs = append(segs, in.Name)
		return nil
	})
	if err != nil {
		return err
	}
	if err := s.refreshPacks(ctx, lists, segs, d); err != nil {
		return err
	}
	ids := make(map[string]bool, len(lists))
	for n, l := range lists {
		if l.damaged == nil { // (a damaged list was not heeded: checkView refuses)
			ids[gcMarkID(n)] = true
		}
	}
	s.viewGC.Store(&viewLists{time: start, ids: ids}) // before viewTime: checkCommit loads them the other way round
	s.viewTime.Store(start)
	s.newsFrom(start)
	// Journal.
	sort.Strings(journals)
	var last string
	applied := map[string]bool{}
	err = s.db.view(ctx, func(tx *bolt.Tx) error {
		last = lastApplied(tx)
		return tx.Bucket(bucketBlobMeta).ForEach(func(k, _ []byte) error { applied[string(k)] = true; return nil })
	})
	if err != nil {
		return err
	}
	// Entries read and checked before deciding on a rebuild: a damaged
	// one skipped (degraded) must not make every refresh rebuild.
	var todo []string
	for _, name := range journals {
		if !applied[name] {
			todo = append(todo, name)
		}
	}
	bodies := map[string][]byte{}
	if err := s.readJournal(ctx, todo, bodies, d); err != nil {
		return err
	}
	rebuild := false
	for _, name := range todo {
		if _, ok := bodies[name]; ok && name < last {
			rebuild = true
		}
	}
	if rebuild && !full {
		if journals, full, err = s.listJournal(ctx, true); err != nil {
			return err
		}
		sort.Strings(journals)
	}
	if rebuild {
		todo = journals
		if err := s.readJournal(ctx, todo, bodies, d); err != nil {
			return err
		}
	}
	todo = slices.DeleteFunc(todo, func(n string) bool { _, ok := bodies[n]; return !ok })
	// An entry skipped as damaged is not applied, and once the newest
	// applied entry is an hour past it the next refresh's listing no
	// longer reaches it: so such a refresh does not count as a full
	// listing, and clears the last one, and every refresh of this cache
	// lists all of meta/ (and warns, once per process) until repair
	// removes it.
	skipped := len(d.journal) > 0
	listed := func(tx *bolt.Tx) error {
		if skipped {
			return tx.Bucket(bucketMeta).Delete(keyJournalListed)
		} else if full {
			return markJournalListed(tx, start)
		}
		return nil
	}
	if len(todo) == 0 {
		if full || skipped {
			return s.db.update(ctx, listed)
		}
		return nil
	}
	return s.db.update(ctx, func(tx *bolt.Tx) error {
		if rebuild {
			for _, b := range [][]byte{bucketUser, bucketBlobMeta} {
				if err := tx.DeleteBucket(b); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
					return err
				}
				if _, err := tx.CreateBucket(b); err != nil {
					return err
				}
			}
		}
		if err := listed(tx); err != nil {
			return err
		}
		for _, name := range todo {
			if err := applyJournal(tx, bodies[name]); err != nil {
				return fmt.Errorf("%s: %s: %w", s.bs, name, err)
			}
			if err := tx.Bucket(bucketBlobMeta).Put([]byte(name), nil); err != nil {
				return err
			}
		}
		return nil
	})
}

// ---- maintenance ----

// Verify refreshes the cache, then reads every pack it knows, checks its
// hash, every frame and every chunk, and every cache entry against what it
// found.
func (s *BlobStore) Verify(ctx context.Context, report func(Problem)) (VerifyStats, error) {
	var st VerifyStats
	if err := s.check(false); err != nil {
		return st, err
	}
	if err := s.flushStaged(ctx); err != nil {
		return st, err
	}
	if err := s.Refresh(ctx); err != nil {
		return st, err
	}
	emit := func(p Problem) {
		st.Problems++
		if report != nil {
			report(p)
		}
	}
	s.emitDamage(emit) // what the refresh skipped (degraded.go)
	if err := s.verifyJournal(ctx, emit); err != nil {
		return st, err
	}
	if err := s.verifyStrays(ctx, emit); err != nil {
		return st, err
	}
	var packs []verifyPackInfo
	err := s.db.view(ctx, func(tx *bolt.Tx) error {
		cond := tx.Bucket(bucketBlobCond)
		return tx.Bucket(bucketBlobPacks).ForEach(func(k, v []byte) error {
			if len(k) == 4 && len(v) == 32 {
				packs = append(packs, verifyPackInfo{binary.BigEndian.Uint32(k), ID(v), cond.Get(k) != nil})
			}
			return nil
		})
	})
	if err != nil {
		return st, err
	}
	recorded := map[ID]bool{}
	err = s.db.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobDmg).ForEach(func(_, v []byte) error {
			var d damageList
			if json.Unmarshal(v, &d) == nil {
				if h, err := ParseID(d.Pack); err == nil {
					recorded[h] = true
				}
			}
			return nil
		})
	})
	if err != nil {
		return st, err
	}
	scanned, err := s.verifyPacks(ctx, packs, recorded, emit, &st)
	if err != nil {
		return st, err
	}
	err = s.ForEach(ctx, func(e Entry) error {
		ent, h, ok, err := s.lookup(ctx, e.ID)
		if err != nil || !ok {
			return err
		}
		st.Chunks++
		fd := scanned[ent.Pack]
		name := s.bs.String() + "/" + packObject(h)
		p := Problem{ID: e.ID, Pack: name, Offset: ent.FrameOff}
		switch {
		case fd == nil:
			return nil // pack merged after the scan
		case fd.err != nil:
			p.Err = fd.err
		case fd.frames[ent.FrameOff] == nil:
			if bad, ok := fd.bad[ent.FrameOff]; ok {
				p.Err = fmt.Errorf("damaged frame: %w", bad)
			} else {
				p.Err = errors.New("no intact frame starts at this offset")
			}
		default:
			sf := fd.frames[ent.FrameOff]
			i := slices.IndexFunc(sf.chunks, func(c frameChunk) bool { return c.ID == e.ID && c.Off == ent.BlockOff })
			switch {
			case sf.n != int64(ent.FrameLen):
				p.Err = fmt.Errorf("frame is %d bytes, index says %d", sf.n, ent.FrameLen)
			case i < 0:
				p.Err = fmt.Errorf("frame does not list the chunk at block offset %d", ent.BlockOff)
			case sf.chunks[i].Len != ent.RawLen:
				p.Err = fmt.Errorf("frame says %d bytes, index says %d", sf.chunks[i].Len, ent.RawLen)
			default:
				p.Err = sf.bad[i]
			}
		}
		if p.Err != nil {
			emit(p)
		}
		return nil
	})
	return st, err
}
