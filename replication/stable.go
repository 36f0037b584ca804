package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/hashicorp/raft"
)

// Errors returned by StableStore. Match them with errors.Is.
var (
	// ErrKeyNotFound is returned by Get and GetUint64 for a key never set.
	// Its message is exactly "not found": hashicorp/raft recognises a
	// missing key by comparing err.Error() with that string.
	ErrKeyNotFound = errors.New("not found")
	// ErrStableCorrupt is returned (wrapped, naming the file) by
	// OpenStableStore when the file fails its checksum or does not parse.
	// The store never opens empty instead: forgetting the current term or
	// the vote would let this node vote twice in one term.
	ErrStableCorrupt = errors.New("replication: stable store corrupt")
	// ErrStableNotUint64 is returned by GetUint64 for a key whose value was not
	// written by SetUint64 (it does not hold 8 bytes).
	ErrStableNotUint64 = errors.New("replication: stable store value is not a uint64")
	// ErrStablePoisoned is returned by Set and SetUint64 after a Set whose
	// rename succeeded but whose directory fsync failed: the file then
	// holds the new value, durably or not, while memory holds the old one.
	// Writing the old contents back would move the term backwards on disk,
	// so the store refuses writes until it is reopened.
	ErrStablePoisoned = errors.New("replication: stable store poisoned by an earlier I/O error; reopen it")
)

// StableStore is a raft.StableStore in one small file. Every key is kept
// in memory; every Set rewrites the whole file crash-safely: a temp file in
// the same directory, fsynced, renamed over the file, then the directory
// fsynced. The file is thus always either the old or the new version.
//
// Set and SetUint64 return only once the new value is durable. On an error
// the in-memory map keeps the old value. The file keeps it too, unless only
// the final directory fsync failed: then the file may hold either value,
// and every later Set fails with ErrStablePoisoned until the store is
// reopened (fail-stop). Raft stores its current term and vote here.
//
// A StableStore is safe for concurrent use.
type StableStore struct {
	path string

	mu     sync.RWMutex
	kv     map[string][]byte
	poison error // the directory fsync error after which Sets are refused

	// I/O steps of a rewrite, replaced by tests to inject failures.
	syncFile func(*os.File) error
	rename   func(from, to string) error
	syncDir  func(dir string) error
}

var _ raft.StableStore = (*StableStore)(nil)

// File format of a StableStore, all of it covered by the trailing CRC:
//
//	8 bytes  stableMagic
//	1 byte   stableVersion
//	uvarint  number of entries
//	entries, sorted by key: uvarint len(key), key, uvarint len(value), value
//	4 bytes  CRC32C (Castagnoli) of everything before it, big endian
const (
	stableMagic   = "SAGARSTB"
	stableVersion = 1
	stableTempExt = ".tmp"
)

var stableCRCTable = crc32.MakeTable(crc32.Castagnoli)

// OpenStableStore opens the store in the file at path, creating its
// directory if needed. A missing file is an empty store; a leftover temp
// file of an interrupted Set is removed. A file that fails its checksum or
// does not parse returns an error wrapping ErrStableCorrupt and naming the
// file.
func OpenStableStore(path string) (*StableStore, error) {
	s := &StableStore{
		path:     path,
		kv:       map[string][]byte{},
		syncFile: (*os.File).Sync,
		rename:   os.Rename,
		syncDir:  stableSyncDir,
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("replication: create %s: %w", dir, err)
		}
		if err := stableSyncDir(filepath.Dir(dir)); err != nil {
			return nil, err
		}
	}
	tmp := path + stableTempExt
	switch err := os.Remove(tmp); {
	case err == nil:
		// A Set crashed before its rename: the file holds the value it
		// had before, which that Set never acknowledged replacing.
		if err := stableSyncDir(dir); err != nil {
			return nil, err
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("replication: remove leftover %s: %w", tmp, err)
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("replication: read stable store %s: %w", path, err)
	}
	kv, err := parseStable(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v; refusing to open it empty, which would forget this node's "+
			"term and vote: restore the file from a backup, or rebuild this node from its peers", ErrStableCorrupt, path, err)
	}
	s.kv = kv
	return s, nil
}

// Path returns the file of the store.
func (s *StableStore) Path() string { return s.path }

// Set stores a copy of val under key, durably.
func (s *StableStore) Set(key, val []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.poison != nil {
		return fmt.Errorf("%w (cause: %v)", ErrStablePoisoned, s.poison)
	}
	next := maps.Clone(s.kv)
	next[string(key)] = append([]byte{}, val...) // never nil: the key is present
	if err := s.write(next); err != nil {
		return err
	}
	s.kv = next
	return nil
}

// Get returns a copy of the value of key, or (nil, ErrKeyNotFound). The
// value of a key that was set, even to nothing, is never nil.
func (s *StableStore) Get(key []byte) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.kv[string(key)]
	if !ok {
		return nil, ErrKeyNotFound
	}
	return append([]byte{}, v...), nil
}

// SetUint64 stores val under key as 8 bytes, big endian, durably.
func (s *StableStore) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 returns the value SetUint64 stored under key, or
// (0, ErrKeyNotFound), or (0, ErrStableNotUint64) for a value of another size.
func (s *StableStore) GetUint64(key []byte) (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.kv[string(key)]
	if !ok {
		return 0, ErrKeyNotFound
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: key %q holds %d bytes", ErrStableNotUint64, key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// write replaces the file with kv: temp file, fsync, rename, directory
// fsync. On an error before the rename the temp file is removed; an error
// after it poisons the store. s.mu held.
func (s *StableStore) write(kv map[string][]byte) error {
	data := encodeStable(kv)
	tmp := s.path + stableTempExt
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("replication: create %s: %w", tmp, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = s.syncFile(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.rename(tmp, s.path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("replication: write stable store %s: %w", s.path, err)
	}
	if err := s.syncDir(filepath.Dir(s.path)); err != nil {
		s.poison = err
		return fmt.Errorf("replication: write stable store %s: %w", s.path, err)
	}
	return nil
}

// encodeStable returns the file contents holding kv.
func encodeStable(kv map[string][]byte) []byte {
	keys := slices.Sorted(maps.Keys(kv))
	b := append([]byte(stableMagic), stableVersion)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(kv[k])))
		b = append(b, kv[k]...)
	}
	return appendStableCRC(b)
}

// appendStableCRC appends the CRC32C of b to b.
func appendStableCRC(b []byte) []byte {
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, stableCRCTable))
}

// parseStable parses file contents. It never panics, and allocates no more
// than the data holds, whatever the data.
func parseStable(data []byte) (map[string][]byte, error) {
	const head = len(stableMagic) + 1
	if len(data) < head+1+4 {
		return nil, fmt.Errorf("file of %d bytes is too short", len(data))
	}
	body, sum := data[:len(data)-4], binary.BigEndian.Uint32(data[len(data)-4:])
	if got := crc32.Checksum(body, stableCRCTable); got != sum {
		return nil, fmt.Errorf("checksum mismatch (stored %08x, computed %08x)", sum, got)
	}
	if string(body[:len(stableMagic)]) != stableMagic {
		return nil, fmt.Errorf("bad magic %q", body[:len(stableMagic)])
	}
	if v := body[len(stableMagic)]; v != stableVersion {
		return nil, fmt.Errorf("unknown format version %d", v)
	}
	p := body[head:]
	field := func(what string) ([]byte, error) {
		n, k := binary.Uvarint(p)
		if k <= 0 {
			return nil, fmt.Errorf("unreadable %s length", what)
		}
		p = p[k:]
		if n > uint64(len(p)) {
			return nil, fmt.Errorf("%s of %d bytes runs past the end", what, n)
		}
		f := p[:n]
		p = p[n:]
		return f, nil
	}
	count, k := binary.Uvarint(p)
	if k <= 0 {
		return nil, errors.New("unreadable entry count")
	}
	p = p[k:]
	if count > uint64(len(p))/2 { // an entry takes at least two bytes
		return nil, fmt.Errorf("entry count %d exceeds what %d bytes can hold", count, len(p))
	}
	kv := make(map[string][]byte, count)
	for i := range count {
		key, err := field("key")
		if err != nil {
			return nil, fmt.Errorf("entry %d: %v", i, err)
		}
		val, err := field("value")
		if err != nil {
			return nil, fmt.Errorf("entry %d: %v", i, err)
		}
		if _, dup := kv[string(key)]; dup {
			return nil, fmt.Errorf("entry %d: duplicate key %q", i, key)
		}
		kv[string(key)] = append([]byte{}, val...) // never nil: the key is present
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("%d bytes follow the last entry", len(p))
	}
	return kv, nil
}

// stableSyncDir fsyncs dir, making a rename or a new file in it durable.
func stableSyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("replication: open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("replication: sync directory %s: %w", dir, err)
	}
	return nil
}
