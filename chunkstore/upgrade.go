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
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/engram-vm/engram/chunkstore/blob"
	dirblob "github.com/engram-vm/engram/chunkstore/blob/dir"
)

// The upgrade of a directory store from format 1 (numbered packs
// packs/%08x.pack, the authoritative index.db) to the blob-1 layout, run
// by the first writable Open under the exclusive store lock:
//
//  1. objects of an earlier, interrupted upgrade are removed (config.json
//     still says format 1, so none of them is committed);
//  2. the frames index.db points at are copied verbatim, pack by pack,
//     into pack objects, each followed by its index segment;
//  3. the metadata buckets (engram's catalog) become journal objects;
//  4. config.json of layout blob-1 replaces the old one (atomic rename):
//     the commit point;
//  5. index.db and the numbered packs are removed (removeLegacy; also
//     run by every writable Open, for an upgrade killed after step 4).
//
// Killed before step 4, the store is the format-1 store it was (the new
// objects sit beside it and are ignored by format-1 readers, which list
// packs/ for *.pack files only); after it, the new store holds everything.
// Damaged frames are copied as they are, so the new store's verify names
// them and its repair records them: nothing is lost, nothing is hidden.

// upgradeHook, when set (tests), runs between the steps and stops the
// upgrade where it returns an error, as a crash there would.
var upgradeHook func(step string) error

// maxUpgradePack cuts the copies of format-1 packs (up to pack_size, 64
// MiB by default) into objects a bucket takes in one PUT (minio-go goes
// multipart above 16 MiB), so the store can be copied to one as it is,
// and the upgrade holds less in memory.
const maxUpgradePack = 12 << 20

// maxUpgradeJournal is the size at which the catalog's copy is split into
// several journal objects (each far below maxJournalObject).
const maxUpgradeJournal = 16 << 20

func upgradeStep(step string) error {
	if upgradeHook != nil {
		return upgradeHook(step)
	}
	return nil
}

// upgradeV1 converts the format-1 store in dir; the caller holds the
// store lock exclusively.
func upgradeV1(ctx context.Context, dir string, opts UpgradeOptions) (UpgradeReport, error) {
	var rep UpgradeReport
	err := upgradeV1Report(ctx, dir, opts, &rep)
	return rep, err
}

// UpgradeOptions control Upgrade.
type UpgradeOptions struct {
	// DropUnreadable upgrades a store whose packs lack frames index.db
	// points at (a pack file gone or cut short), leaving those chunks
	// out (they could not be read anyway); without it the upgrade refuses
	// and changes nothing. The engrams that need them are then named by
	// verify and repair, and re-ingesting their sources stores them again.
	DropUnreadable bool
	// FromPacks rebuilds the index from the packs (every intact frame)
	// when index.db is lost or damaged; the catalog, which lived in it,
	// is then empty (UpgradeReport.CatalogLost): engram rebuilds it from
	// its catalog chunks (engram repair, engram.RecoverCatalog).
	FromPacks bool
	// LockTimeout, Command: as in OpenOptions.
	LockTimeout time.Duration
	Command     string
}

// UpgradeReport says what Upgrade did.
type UpgradeReport struct {
	Upgraded bool  `json:"upgraded"` // false: the store was current already
	Packs    int64 `json:"packs"`    // format-1 packs copied
	Chunks   int64 `json:"chunks"`
	Dropped  int64 `json:"dropped"` // chunks left out (DropUnreadable)
	// CatalogLost: FromPacks indexed the packs; no metadata was copied.
	CatalogLost bool  `json:"catalog_lost,omitempty"`
	BadFrames   int64 `json:"bad_frames,omitempty"` // damaged regions FromPacks skipped
}

// Upgrade converts the format-1 directory store in dir in place (what the
// first writable Open does, with options), holding the store lock
// exclusively.
func Upgrade(ctx context.Context, dir string, opts UpgradeOptions) (UpgradeReport, error) {
	legacy, err := dirLayout(dir)
	if err != nil || !legacy {
		return UpgradeReport{}, err
	}
	timeout := lockWait(opts.LockTimeout)
	lock, err := acquireLock(ctx, dir, timeout, opts.Command, true)
	if err != nil {
		return UpgradeReport{}, err
	}
	defer lock.release()
	rep, err := upgradeV1(ctx, dir, opts)
	if err == nil {
		err = removeLegacy(dir)
	}
	return rep, err
}

func upgradeV1Report(ctx context.Context, dir string, opts UpgradeOptions, rep *UpgradeReport) error {
	legacy, err := dirLayout(dir) // again, under the lock
	if err != nil || !legacy {
		return err
	}
	cfg, err := readConfig(dir)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		return fmt.Errorf("%s: upgrading the store from format 1 (nothing changed; the old store is intact): %w", dir, err)
	}
	bs, err := dirblob.Open(dir, false)
	if err != nil {
		return fail(err)
	}
	defer bs.Close()
	for _, prefix := range []string{blobPacksPrefix, blobIndexPrefix, blobMetaPrefix, blobGCPrefix, blobDamagePrefix} {
		var names []string
		err := bs.List(ctx, prefix, func(in blob.Info) error { names = append(names, in.Name); return nil })
		if err != nil {
			return fail(err)
		}
		for _, n := range names {
			if _, ok := parsePackName(filepath.Base(n)); ok && filepath.Dir(n) == "packs" {
				continue // a format-1 pack
			}
			if err := bs.Delete(ctx, n); err != nil {
				return fail(err)
			}
		}
	}
	if err := os.RemoveAll(filepath.Join(dir, dirCacheName)); err != nil {
		return fail(err)
	}
	idx := filepath.Join(dir, indexName)
	const hint = "; `engram upgrade --from-packs` indexes the packs instead (the catalog then comes back from its catalog chunks)"
	var byPack map[uint32][]indexed
	var ops []journalOp
	if opts.FromPacks {
		if byPack, rep.BadFrames, err = scanLegacyPacks(ctx, dir); err != nil {
			return fail(err)
		}
		rep.CatalogLost = true
	} else if _, err := os.Stat(idx); err != nil {
		return fail(fmt.Errorf("%s: %w%s", idx, err, hint))
	} else if byPack, ops, err = readLegacyIndex(idx); err != nil {
		return fail(fmt.Errorf("%w%s", err, hint))
	}
	nums := sortedNums(byPack)
	for _, num := range nums {
		dropped, err := copyLegacyPack(ctx, bs, dir, num, byPack[num], min(cfg.PackSize, maxUpgradePack), opts.DropUnreadable)
		if err != nil {
			if errors.Is(err, errUnreadable) {
				err = fmt.Errorf("%w; `engram upgrade --drop-unreadable` upgrades without those chunks", err)
			}
			return fail(err)
		}
		rep.Packs++
		rep.Chunks += int64(len(byPack[num]) - dropped)
		rep.Dropped += int64(dropped)
		if err := upgradeStep("pack"); err != nil {
			return fail(err)
		}
	}
	if err := upgradeStep("packs"); err != nil {
		return fail(err)
	}
	t := time.Now().UnixNano()
	for len(ops) > 0 {
		n, size := 0, 0
		for n < len(ops) && (n == 0 || size < maxUpgradeJournal) {
			size += len(ops[n].Key) + len(ops[n].Value) + len(ops[n].Bucket)
			n++
		}
		body, err := json.Marshal(journal{V: journalVersion, Ops: ops[:n]})
		if err != nil {
			return fail(err)
		}
		if err := bs.Put(ctx, journalName(t, body), body); err != nil {
			return fail(err)
		}
		ops = ops[n:]
		t++
	}
	if err := upgradeStep("journal"); err != nil {
		return fail(err)
	}
	var sid [16]byte
	_, _ = rand.Read(sid[:])
	nc := blobConfig{config: cfg, Layout: blobLayout, StoreID: hex.EncodeToString(sid[:])}
	nc.Version = configVersion
	b, err := json.MarshalIndent(nc, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := writeFileAtomic(filepath.Join(dir, configName), append(b, '\n')); err != nil {
		return fail(err)
	}
	rep.Upgraded = true
	if err := upgradeStep("config"); err != nil {
		return fmt.Errorf("%s: upgrade: %w", dir, err)
	}
	return nil
}

// errUnreadable marks a frame index.db points at that its pack lacks.
var errUnreadable = errors.New("frames index.db points at are not there")

// readLegacyIndex reads format 1's index.db: the chunk entries by pack and
// the metadata buckets as journal puts. bbolt panics on some damaged
// files; that is an error naming the file here, as in dbPool.
func readLegacyIndex(idx string) (byPack map[uint32][]indexed, ops []journalOp, err error) {
	defer func() {
		if r := recover(); r != nil {
			byPack, ops, err = nil, nil, fmt.Errorf("%s: %v: %w", idx, r, ErrIndexDamaged)
		}
	}()
	// bbolt would try to initialize an empty file, which read-only fails
	// as "bad file descriptor".
	if fi, serr := os.Stat(idx); serr == nil && fi.Size() == 0 {
		return nil, nil, fmt.Errorf("%s: %w: the file is empty (0 bytes)", idx, ErrIndexDamaged)
	}
	db, err := bolt.Open(idx, 0o644, &bolt.Options{ReadOnly: true, Timeout: DefaultLockTimeout})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w: %w", idx, ErrIndexDamaged, err)
	}
	defer db.Close()
	byPack = map[uint32][]indexed{}
	err = db.View(func(tx *bolt.Tx) error {
		chunks, _, err := buckets(tx)
		if err != nil {
			return err
		}
		err = chunks.ForEach(func(k, v []byte) error {
			if len(k) != len(ID{}) {
				return fmt.Errorf("%s: chunk key %x is not %d bytes: %w", indexName, k, len(ID{}), ErrIndexDamaged)
			}
			e, err := decodeEntry(ID(k), v)
			if err != nil {
				return err
			}
			byPack[e.Pack] = append(byPack[e.Pack], indexed{ID(k), e})
			return nil
		})
		if err != nil {
			return err
		}
		u := tx.Bucket(bucketUser)
		if u == nil {
			return nil
		}
		return u.ForEach(func(name, v []byte) error {
			b := u.Bucket(name)
			if v != nil || b == nil {
				return nil
			}
			return b.ForEach(func(k, v []byte) error {
				if v == nil {
					return nil // MetaTx never nests deeper
				}
				ops = append(ops, journalOp{Op: "put", Bucket: bytes.Clone(name), Key: bytes.Clone(k), Value: bytes.Clone(v)})
				return nil
			})
		})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", idx, err)
	}
	return byPack, ops, nil
}

// scanLegacyPacks indexes every intact frame of the format-1 packs in
// dir (what format 1's repair did when index.db was lost); a chunk in
// several frames keeps its first. It returns the damaged regions skipped.
func scanLegacyPacks(ctx context.Context, dir string) (map[uint32][]indexed, int64, error) {
	des, err := os.ReadDir(filepath.Join(dir, packsDir))
	if err != nil {
		return nil, 0, err
	}
	byPack := map[uint32][]indexed{}
	seen := map[ID]bool{}
	var bad int64
	for _, de := range des {
		num, ok := parsePackName(de.Name())
		if !ok || !de.Type().IsRegular() {
			continue
		}
		f, size, err := openPack(filepath.Join(dir, packsDir, de.Name()))
		if err != nil {
			return nil, 0, err
		}
		_, err = scanPack(ctx, f, num, size, func(off int64, fr *frame, raw []byte) error {
			lens := make([]int, len(fr.Chunks))
			for i, c := range fr.Chunks {
				lens[i] = int(c.Len)
			}
			sh := shares(int64(len(raw)), lens)
			for i, c := range fr.Chunks {
				if seen[c.ID] {
					continue
				}
				seen[c.ID] = true
				byPack[num] = append(byPack[num], indexed{c.ID, entry{Pack: num, FrameOff: off, FrameLen: uint32(len(raw)), BlockOff: c.Off, RawLen: c.Len, Share: sh[i]}})
			}
			return nil
		}, func(int64, error) { bad++ })
		f.Close()
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", filepath.Join(dir, packsDir, de.Name()), err)
		}
	}
	return byPack, bad, nil
}

// copyLegacyPack copies the frames that ents (the index entries of pack
// num) point at into pack objects of at most about packSize bytes. Frames
// the pack file lacks are an error, or with drop left out (and counted).
func copyLegacyPack(ctx context.Context, bs blob.Store, dir string, num uint32, ents []indexed, packSize int64, drop bool) (int, error) {
	path := filepath.Join(dir, packsDir, packName(num))
	f, size, err := openPack(path)
	if err != nil {
		if drop && errors.Is(err, fs.ErrNotExist) {
			return len(ents), nil
		}
		return 0, fmt.Errorf("%s: %w (index.db points %d chunks at it): %w", path, err, len(ents), errUnreadable)
	}
	defer f.Close()
	dropped := 0
	sort.Slice(ents, func(i, j int) bool {
		if ents[i].e.FrameOff != ents[j].e.FrameOff {
			return ents[i].e.FrameOff < ents[j].e.FrameOff
		}
		return ents[i].e.BlockOff < ents[j].e.BlockOff
	})
	pack := packHeader(num)
	var seg []indexed
	flush := func() error {
		if len(seg) == 0 {
			return nil
		}
		err := putPackObject(ctx, bs, pack, seg)
		pack, seg = packHeader(num), nil
		return err
	}
	var frame []byte
	lastOff, newOff := int64(-1), int64(0)
	for _, x := range ents {
		if x.e.FrameOff != lastOff {
			end := x.e.FrameOff + int64(x.e.FrameLen)
			if end > size {
				if drop {
					dropped++
					continue // (the frame's other chunks follow: dropped too)
				}
				return 0, fmt.Errorf("%s: index.db points chunk %s at 0x%x+%d, past the end of the pack (%d bytes): %w", path, x.id.Short(), x.e.FrameOff, x.e.FrameLen, size, errUnreadable)
			}
			if int64(len(pack)) > packHeaderSize && int64(len(pack))+int64(x.e.FrameLen) > packSize {
				if err := flush(); err != nil {
					return 0, err
				}
			}
			frame = make([]byte, x.e.FrameLen)
			if _, err := f.ReadAt(frame, x.e.FrameOff); err != nil {
				return 0, fmt.Errorf("%s: %w", path, err)
			}
			lastOff, newOff = x.e.FrameOff, int64(len(pack))
			pack = append(pack, frame...)
		} else if x.e.FrameLen != uint32(len(frame)) {
			return 0, fmt.Errorf("%s: index.db gives the frame at 0x%x two lengths (%d, %d)", path, x.e.FrameOff, len(frame), x.e.FrameLen)
		}
		x.e.FrameOff = newOff
		seg = append(seg, x)
	}
	return dropped, flush()
}

// putPackObject completes pack (header and frames) with the copy of its
// index segment and footer, and writes the pack, then the segment.
func putPackObject(ctx context.Context, bs blob.Store, pack []byte, ents []indexed) error {
	seg := encodeSegment(ents)
	segOff := uint64(len(pack))
	pack = append(pack, seg...)
	pack = binary.LittleEndian.AppendUint64(pack, segOff)
	pack = append(pack, packFooterMagic...)
	h := Sum(pack)
	if err := bs.Put(ctx, packObject(h), pack); err != nil && !errors.Is(err, blob.ErrExist) {
		return err
	}
	if err := bs.Put(ctx, indexObject(h), seg); err != nil && !errors.Is(err, blob.ErrExist) {
		return err
	}
	return nil
}

// removeLegacy removes what a format-1 store leaves after its upgrade
// committed: index.db and the numbered packs. A no-op on a store that
// has none.
func removeLegacy(dir string) error {
	if legacy, err := dirLayout(dir); err != nil || legacy {
		return err
	}
	var gone []string
	if _, err := os.Stat(filepath.Join(dir, indexName)); err == nil {
		gone = append(gone, filepath.Join(dir, indexName))
	}
	des, err := os.ReadDir(filepath.Join(dir, packsDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, de := range des {
		if _, ok := parsePackName(de.Name()); ok && de.Type().IsRegular() {
			gone = append(gone, filepath.Join(dir, packsDir, de.Name()))
		}
	}
	for _, p := range gone {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: removing what the format upgrade left: %w", dir, err)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	if len(des) > 0 {
		return syncDir(filepath.Join(dir, packsDir))
	}
	return nil
}

// packName is the file name of format-1 pack num under packs/: 8 hex digits.
func packName(num uint32) string { return fmt.Sprintf("%08x.pack", num) }

func parsePackName(name string) (uint32, bool) {
	hexPart, ok := strings.CutSuffix(name, ".pack")
	if !ok || len(hexPart) != 8 {
		return 0, false
	}
	n, err := strconv.ParseUint(hexPart, 16, 32)
	return uint32(n), err == nil
}
