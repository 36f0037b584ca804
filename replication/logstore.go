package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sagaengine/saga/wal"
)

// Errors returned by LogStore. Match them with errors.Is. GetLog of a
// missing index returns raft.ErrLogNotFound itself, never wrapped: raft
// compares it with == to decide to send a snapshot instead of entries.
var (
	// ErrLogCorrupt is returned (wrapped, often in a *LogCorruptionError)
	// when a stored entry does not decode, or carries a raft index that
	// does not match its place in the log.
	ErrLogCorrupt = errors.New("replication: corrupt raft log entry")
	// ErrLogNotContiguous is returned by StoreLog(s) for a batch whose
	// indexes are not consecutive, or whose first index does not follow the
	// last stored one. Nothing of the batch is written.
	ErrLogNotContiguous = errors.New("replication: raft log entries not contiguous")
	// ErrDeleteInside is returned by DeleteRange for a range that keeps
	// entries on both sides of it, which raft never asks for and a log
	// cannot do. Nothing is deleted.
	ErrDeleteInside = errors.New("replication: delete of a range inside the raft log")
	// ErrLogStoreClosed is returned by calls on a closed LogStore.
	ErrLogStoreClosed = errors.New("replication: log store closed")
)

// LogCorruptionError describes a stored entry that is not what its place
// in the log says it must be. errors.Is(err, ErrLogCorrupt) is true.
type LogCorruptionError struct {
	Dir      string // directory of the wal
	WalIndex uint64 // index of the record in the wal
	Reason   string
}

func (e *LogCorruptionError) Error() string {
	return fmt.Sprintf("replication: corrupt raft log in %s at wal index %d: %s", e.Dir, e.WalIndex, e.Reason)
}

// Unwrap makes errors.Is(err, ErrLogCorrupt) true.
func (e *LogCorruptionError) Unwrap() error { return ErrLogCorrupt }

// LogStore is a raft.LogStore and raft.MonotonicLogStore on a wal.Log: one
// raft entry per wal record, durable (fsynced) when StoreLog(s) returns.
//
// Raft indexes and wal indexes differ by an offset: raft may delete its
// whole log after installing a snapshot and continue at any index, while a
// wal's indexes only continue where they stopped. The offset is never
// stored by itself: every record carries its raft index, and OpenLogStore
// derives the offset from the first record (and checks it against the
// last). It is modular, so a raft index below the wal's next index works
// too.
//
// DeleteRange of a prefix (raft's compaction after a snapshot) removes only
// whole wal segment files, so that compaction never copies a segment: it
// may keep a few entries before the requested end, and FirstIndex says so. Raft
// allows this (those entries are still valid, committed entries; GetLog of
// them works). DeleteRange of a suffix (a follower's conflicting entries)
// and of everything (after a snapshot is installed) are exact.
//
// A LogStore is safe for concurrent use. After an I/O error the wal is
// poisoned (fail-stop): every later call fails until the store is closed
// and reopened.
type LogStore struct {
	mu     sync.RWMutex
	log    *wal.Log
	offset uint64 // raft index = wal index + offset (mod 2^64), while the log holds entries
	closed bool

	enc  []byte   // encoding buffer of StoreLogs, reused
	recs [][]byte // records of StoreLogs, reused
}

var (
	_ raft.LogStore          = (*LogStore)(nil)
	_ raft.MonotonicLogStore = (*LogStore)(nil)
)

// OpenLogStore opens or creates the raft log in dir (see wal.Open for opts
// and the repairs it makes). It returns a *LogCorruptionError when the
// first or last record does not decode, or when their raft indexes do not
// span the same distance as their wal indexes.
func OpenLogStore(dir string, opts wal.Options) (*LogStore, error) {
	l, err := wal.Open(dir, opts)
	if err != nil {
		return nil, err
	}
	s := &LogStore{log: l}
	if err := s.loadOffset(); err != nil {
		_ = l.Close()
		return nil, err
	}
	return s, nil
}

// loadOffset derives the offset from the first record and checks it
// against the last.
func (s *LogStore) loadOffset() error {
	wf, wl := s.log.FirstIndex(), s.log.LastIndex()
	if wf > wl {
		return nil // empty: the next StoreLogs sets the offset
	}
	first, err := s.readAt(wf)
	if err != nil {
		return err
	}
	last := first
	if wl != wf {
		if last, err = s.readAt(wl); err != nil {
			return err
		}
	}
	if first.Index == 0 || last.Index < first.Index || last.Index-first.Index != wl-wf {
		return &LogCorruptionError{Dir: s.log.Dir(), WalIndex: wl, Reason: fmt.Sprintf(
			"wal records [%d, %d] carry raft indexes [%d, %d]: the spans differ, so entries are missing or misplaced",
			wf, wl, first.Index, last.Index)}
	}
	s.offset = first.Index - wf
	return nil
}

// readAt reads and decodes the record at wal index wi.
func (s *LogStore) readAt(wi uint64) (*raft.Log, error) {
	p, err := s.log.Read(wi)
	if err != nil {
		return nil, err
	}
	var e raft.Log
	if err := decodeLogEntry(p, &e); err != nil {
		return nil, &LogCorruptionError{Dir: s.log.Dir(), WalIndex: wi, Reason: err.Error()}
	}
	return &e, nil
}

// bounds returns the raft indexes of the first and last entries, and
// whether the store holds any. s.mu held.
func (s *LogStore) bounds() (first, last uint64, ok bool, err error) {
	if s.closed {
		return 0, 0, false, ErrLogStoreClosed
	}
	if err := s.log.Err(); err != nil {
		return 0, 0, false, err
	}
	wf, wl := s.log.FirstIndex(), s.log.LastIndex()
	if wf > wl {
		return 0, 0, false, nil
	}
	return wf + s.offset, wl + s.offset, true, nil
}

// FirstIndex returns the index of the first stored entry, 0 when empty.
// After a compaction it may be lower than the index raft asked to delete
// up to (see LogStore).
func (s *LogStore) FirstIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	first, _, _, err := s.bounds()
	return first, err
}

// LastIndex returns the index of the last stored entry, 0 when empty.
func (s *LogStore) LastIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, last, _, err := s.bounds()
	return last, err
}

// GetLog reads the entry at index into log. It returns raft.ErrLogNotFound
// (unwrapped) for an index the store does not hold, and an error wrapping
// ErrLogCorrupt when the stored entry does not decode or carries another
// index.
func (s *LogStore) GetLog(index uint64, log *raft.Log) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	first, last, ok, err := s.bounds()
	if err != nil {
		return err
	}
	if !ok || index < first || index > last {
		return raft.ErrLogNotFound
	}
	wi := index - s.offset
	p, err := s.log.Read(wi)
	if err != nil {
		return err
	}
	if err := decodeLogEntry(p, log); err != nil {
		return &LogCorruptionError{Dir: s.log.Dir(), WalIndex: wi, Reason: err.Error()}
	}
	if log.Index != index {
		return &LogCorruptionError{Dir: s.log.Dir(), WalIndex: wi,
			Reason: fmt.Sprintf("entry carries raft index %d, expected %d", log.Index, index)}
	}
	return nil
}

// StoreLog stores one entry; see StoreLogs.
func (s *LogStore) StoreLog(log *raft.Log) error {
	return s.StoreLogs([]*raft.Log{log})
}

// StoreLogs appends logs with one fsync. Their indexes must be
// consecutive and, unless the store is empty, the first must follow
// LastIndex; otherwise it returns an error wrapping ErrLogNotContiguous
// and writes nothing. An empty store accepts any first index (raft
// continues after a snapshot). An I/O error poisons the wal.
func (s *LogStore) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, last, ok, err := s.bounds()
	if err != nil {
		return err
	}
	start := logs[0].Index
	if start == 0 {
		return fmt.Errorf("%w: raft index 0 does not exist", ErrLogNotContiguous)
	}
	if ok && start != last+1 {
		return fmt.Errorf("%w: batch starts at %d, the log ends at %d", ErrLogNotContiguous, start, last)
	}
	for i, e := range logs {
		if e.Index != start+uint64(i) {
			return fmt.Errorf("%w: entry %d of the batch has index %d, want %d",
				ErrLogNotContiguous, i, e.Index, start+uint64(i))
		}
	}
	// Encode into one buffer, then cut it: slices taken while it grows
	// would point into an abandoned array.
	s.enc = s.enc[:0]
	ends := make([]int, len(logs))
	for i, e := range logs {
		s.enc = appendLogEntry(s.enc, e)
		ends[i] = len(s.enc)
	}
	s.recs = s.recs[:0]
	prev := 0
	for _, end := range ends {
		s.recs = append(s.recs, s.enc[prev:end:end])
		prev = end
	}
	wfirst, err := s.log.Append(s.recs)
	clear(s.recs)
	if err != nil {
		return err
	}
	if !ok {
		s.offset = start - wfirst
	}
	return nil
}

// DeleteRange deletes the entries from lo to hi inclusive. Raft asks for
// three shapes:
//
//   - everything (lo <= FirstIndex, hi >= LastIndex): the log is emptied
//     and the next StoreLogs may start at any index;
//   - a suffix (lo > FirstIndex, hi >= LastIndex): a follower drops
//     conflicting entries; exact, through wal.TruncateBack, which rewrites
//     the one segment holding lo-1 (rare: only after a leader change);
//   - a prefix (lo <= FirstIndex, hi < LastIndex): compaction, after every
//     snapshot; only whole segment files are removed (wal.TruncateFront at
//     a segment start copies nothing), up to the last segment starting at
//     or before hi+1, so up to a segment's worth of entries up to hi may
//     remain. Raft tolerates this: it reads FirstIndex and never needs
//     those entries to be gone.
//
// A range inside the log returns an error wrapping ErrDeleteInside. A
// range that holds no stored entry is a no-op.
func (s *LogStore) DeleteRange(lo, hi uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	first, last, ok, err := s.bounds()
	if err != nil {
		return err
	}
	if !ok || lo > hi || hi < first || lo > last {
		return nil
	}
	switch {
	case lo <= first && hi >= last:
		return s.log.TruncateFront(last - s.offset + 1)
	case hi >= last:
		return s.log.TruncateBack(lo - s.offset - 1)
	case lo <= first:
		cut := hi + 1 - s.offset // wal index that would become the first
		starts, err := s.log.SegmentStarts()
		if err != nil {
			return err
		}
		i, found := slices.BinarySearch(starts, cut)
		if !found {
			i--
		}
		if i < 0 || starts[i] <= first-s.offset {
			return nil // no whole segment to drop yet
		}
		return s.log.TruncateFront(starts[i])
	default:
		return fmt.Errorf("%w: [%d, %d] of [%d, %d]", ErrDeleteInside, lo, hi, first, last)
	}
}

// IsMonotonic reports true: the store refuses gaps between entries, so
// raft deletes the whole log after restoring a snapshot instead of leaving
// a gap (raft.MonotonicLogStore).
func (s *LogStore) IsMonotonic() bool { return true }

// Stats returns the cumulative counters of the underlying wal.
func (s *LogStore) Stats() wal.Stats { return s.log.Stats() }

// Close closes the wal. A closed store fails every call with
// ErrLogStoreClosed.
func (s *LogStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrLogStoreClosed
	}
	s.closed = true
	return s.log.Close()
}

// Encoding of one raft.Log as the payload of one wal record (the wal adds
// its own index and CRC32C):
//
//	1 byte   logEncodingVersion
//	1 byte   flags (logFlagAppendedAt; other bits must be 0)
//	uvarint  Index
//	uvarint  Term
//	1 byte   Type
//	8 bytes  AppendedAt as Unix nanoseconds, big endian; only with logFlagAppendedAt
//	         (a time outside 1677-09-21..2262-04-11 is clamped to that range:
//	         raft sets it from the clock, for information only)
//	uvarint  len(Data), then Data
//	uvarint  len(Extensions), then Extensions
//
// uvarints must be minimal, so that every entry has exactly one encoding.
const (
	logEncodingVersion = 1
	logFlagAppendedAt  = 1 << 0
)

// appendLogEntry appends the encoding of e to dst.
func appendLogEntry(dst []byte, e *raft.Log) []byte {
	var flags byte
	if !e.AppendedAt.IsZero() {
		flags |= logFlagAppendedAt
	}
	dst = append(dst, logEncodingVersion, flags)
	dst = binary.AppendUvarint(dst, e.Index)
	dst = binary.AppendUvarint(dst, e.Term)
	dst = append(dst, byte(e.Type))
	if flags&logFlagAppendedAt != 0 {
		dst = binary.BigEndian.AppendUint64(dst, uint64(unixNanoClamped(e.AppendedAt)))
	}
	dst = binary.AppendUvarint(dst, uint64(len(e.Data)))
	dst = append(dst, e.Data...)
	dst = binary.AppendUvarint(dst, uint64(len(e.Extensions)))
	return append(dst, e.Extensions...)
}

// Bounds of the times whose Unix nanoseconds fit an int64.
var (
	minUnixNanoTime = time.Unix(0, math.MinInt64)
	maxUnixNanoTime = time.Unix(0, math.MaxInt64)
)

// unixNanoClamped is t.UnixNano(), clamped to the representable range
// (where t.UnixNano() itself is undefined).
func unixNanoClamped(t time.Time) int64 {
	switch {
	case t.Before(minUnixNanoTime):
		return math.MinInt64
	case t.After(maxUnixNanoTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// logDecoder reads the fields of an encoded entry, bounds-checked.
type logDecoder struct {
	p   []byte
	err error
}

func (d *logDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrLogCorrupt}, args...)...)
	}
}

func (d *logDecoder) byte1(what string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.p) < 1 {
		d.fail("entry ends before its %s", what)
		return 0
	}
	b := d.p[0]
	d.p = d.p[1:]
	return b
}

func (d *logDecoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.p)
	switch {
	case n == 0:
		d.fail("entry ends inside its %s", what)
		return 0
	case n < 0:
		d.fail("%s overflows 64 bits", what)
		return 0
	case n != uvarintSize(v):
		d.fail("%s is not minimally encoded", what)
		return 0
	}
	d.p = d.p[n:]
	return v
}

func (d *logDecoder) fixed64(what string) uint64 {
	if d.err != nil {
		return 0
	}
	if len(d.p) < 8 {
		d.fail("entry ends inside its %s", what)
		return 0
	}
	v := binary.BigEndian.Uint64(d.p)
	d.p = d.p[8:]
	return v
}

// bytes returns a length-prefixed field as a sub-slice (nil when empty),
// its capacity cut so that appending to it cannot overwrite what follows.
func (d *logDecoder) bytes(what string) []byte {
	n := d.uvarint(what + " length")
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.p)) {
		d.fail("%s of %d bytes runs past the end of the %d remaining", what, n, len(d.p))
		return nil
	}
	if n == 0 {
		return nil
	}
	b := d.p[:n:n]
	d.p = d.p[n:]
	return b
}

// decodeLogEntry decodes p into e, overwriting every field. Data and
// Extensions alias p. It never panics and allocates nothing, whatever p
// holds; an error wraps ErrLogCorrupt.
func decodeLogEntry(p []byte, e *raft.Log) error {
	d := logDecoder{p: p}
	if v := d.byte1("version"); d.err == nil && v != logEncodingVersion {
		d.fail("unknown encoding version %d", v)
	}
	flags := d.byte1("flags")
	if d.err == nil && flags&^logFlagAppendedAt != 0 {
		d.fail("unknown flags %#x", flags)
	}
	var out raft.Log
	out.Index = d.uvarint("index")
	out.Term = d.uvarint("term")
	out.Type = raft.LogType(d.byte1("type"))
	if flags&logFlagAppendedAt != 0 {
		out.AppendedAt = time.Unix(0, int64(d.fixed64("append time")))
	}
	out.Data = d.bytes("data")
	out.Extensions = d.bytes("extensions")
	if d.err == nil && len(d.p) != 0 {
		d.fail("%d bytes follow the entry", len(d.p))
	}
	if d.err != nil {
		return d.err
	}
	*e = out
	return nil
}

// uvarintSize is the size of the minimal uvarint encoding of x.
func uvarintSize(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}
