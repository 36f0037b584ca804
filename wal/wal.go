// Package wal is a write-ahead log of checksummed records on top of
// github.com/tidwall/wal.
//
// tidwall/wal stores each entry as a uvarint length followed by the bytes,
// with no checksum; it refuses to open a log whose last segment ends in a
// torn entry, it never fsyncs its directory, and after a failed write its
// memory and its file may disagree. This package closes those holes:
//
//   - every record is framed with a format version, its log index and a
//     CRC32C (see DecodeFrame); the record size is bounded before any
//     allocation;
//   - Append writes a batch of records with a single fsync;
//   - Open cuts a torn, zero-filled or garbage tail of the last segment back
//     to the last valid record and logs what it dropped; damage anywhere
//     else refuses to open with a *CorruptionError naming the segment and
//     offset;
//   - the directory is fsynced whenever a segment file appears or vanishes;
//   - any write or sync error poisons the log (fail-stop): every later call
//     fails with ErrPoisoned until the log is closed and reopened.
//
// A Log is safe for concurrent use.
package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	twal "github.com/tidwall/wal"

	"github.com/sagaengine/saga/internal/torn"
)

// Errors returned by this package. Match them with errors.Is.
var (
	// ErrCorrupt is returned by Open (wrapped in a *CorruptionError) when a
	// record before the tail fails verification, and by Read when a stored
	// record fails verification.
	ErrCorrupt = errors.New("wal: corrupt record")
	// ErrPoisoned is returned by every call after a write, sync or
	// truncation error. The on-disk state is unknown until the log is
	// reopened, which re-verifies it.
	ErrPoisoned = errors.New("wal: log poisoned by an earlier I/O error; reopen it")
	// ErrClosed is returned by calls on a closed log.
	ErrClosed = errors.New("wal: log closed")
	// ErrRecordTooLarge is returned by Append when a record exceeds
	// Options.MaxRecordSize. Nothing of the batch is written.
	ErrRecordTooLarge = errors.New("wal: record too large")
	// ErrNotFound is returned by Read for an index outside [FirstIndex, LastIndex].
	ErrNotFound = errors.New("wal: index not found")
	// ErrOutOfRange is returned by TruncateFront for an index beyond
	// LastIndex+1 and by TruncateBack for an index before FirstIndex-1.
	ErrOutOfRange = errors.New("wal: index out of range")
	// ErrTornTail is returned by Open with Options.NoRepair when the log
	// ends in an incomplete write that Open would otherwise cut.
	ErrTornTail = errors.New("wal: the log ends in a torn (incomplete, never acknowledged) write")
	// ErrRepairNeeded is returned by Open with Options.NoRepair when its
	// plan makes a safe change other than cutting a torn tail.
	ErrRepairNeeded = errors.New("wal: the log needs a repair that Open makes by itself")
	// ErrNewerFormat: the log holds a record written by a newer version, in
	// a frame format this build does not read (its checksum valid, so not
	// damage). Open, Repair (even forced) and Plan refuse and change
	// nothing: read the log with a newer version.
	ErrNewerFormat = errors.New("wal: the log was written by a newer version")
	// ErrReadOnly is returned by the calls that change a log opened with
	// Options.NoRepair, and by such an Open where it would create a log.
	ErrReadOnly = errors.New("wal: the log is open for reading only (Options.NoRepair)")
	// ErrVanished poisons the log when its tail segment file was unlinked or
	// replaced while the log was open: records written to it would be lost.
	ErrVanished = errors.New("wal: the tail segment file was unlinked or replaced while the log was open")
	// ErrInvalidOptions is returned by Open when Options.Validate fails.
	ErrInvalidOptions = errors.New("wal: invalid options")
)

// RefusedError is returned by Open when the log cannot be used without a
// change that may drop acknowledged records. Open changed nothing. It
// matches the plan's Problem (ErrCorrupt or ErrLost) with errors.Is.
type RefusedError struct {
	Dir  string
	Plan *Plan
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("%v; nothing was changed. A forced repair would %s", e.Plan.Problem, e.Plan.Summary)
}

// Unwrap returns the plan's Problem.
func (e *RefusedError) Unwrap() error { return e.Plan.Problem }

// CorruptionError describes damage that Open refuses to repair by itself.
type CorruptionError struct {
	Segment string `json:"segment"` // file path of the damaged segment
	Offset  int64  `json:"offset"`  // byte offset of the first damaged record in the segment
	Index   uint64 `json:"index"`   // log index the damaged record should have had
	Reason  string `json:"reason"`
}

func (e *CorruptionError) Error() string {
	return fmt.Sprintf("wal: corrupt record at %s offset %d (index %d): %s; "+
		"valid records follow it, so this is damage, not a torn final write, and the log "+
		"refuses to open rather than skip acknowledged records. Restore the directory from a "+
		"backup or replica; or, accepting the loss of this record and every later one, cut the "+
		"segment with `truncate -s %d %s` and remove the segment files after it",
		e.Segment, e.Offset, e.Index, e.Reason, e.Offset, e.Segment)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptionError) Unwrap() error { return ErrCorrupt }

// Options configures a Log. The zero value works.
type Options struct {
	// SegmentSize is the size at which a segment file is closed and a new one
	// started. Default 20 MiB.
	SegmentSize int
	// MaxRecordSize bounds the payload of one record. Default 8 MiB.
	MaxRecordSize int
	// NoSync skips fsync. Only for tests and benchmarks that measure
	// everything but the disk: a crash of the machine loses acknowledged
	// records. Default false.
	NoSync bool
	// Logger receives the structured line written when Open cuts a torn
	// tail. Default: slog.Default().
	Logger *slog.Logger
	// NoRepair makes Open refuse (ErrTornTail, or ErrRepairNeeded) instead
	// of making any change its plan calls for: for inspection that must not
	// change the files. No file is changed at all: Open does not finish an
	// interrupted truncation (ErrRepairNeeded) or create a log where there
	// is none (ErrReadOnly), Close writes no EXTENT, and Append and the
	// truncations fail with ErrReadOnly.
	NoRepair bool
	// Applied, if set, is called once by Open, before it changes anything,
	// for the index up to which the caller's durable state holds every
	// record. Open then treats those records as redundant: damage confined
	// to them is repaired by itself (see Plan), and a log that ends before
	// it is refused with ErrLost. Default: none (every record is needed).
	Applied func() (uint64, error)

	// wrap lets tests of this package interpose on the segment store to
	// inject write and sync failures.
	wrap func(store) store
}

// Validate reports every problem of the caller's values at once (before
// defaults are filled in: a negative size is an error, not a default).
func (o *Options) Validate() error {
	var errs []error
	if o.SegmentSize < 0 {
		errs = append(errs, fmt.Errorf("SegmentSize %d is negative", o.SegmentSize))
	}
	if o.MaxRecordSize < 0 {
		errs = append(errs, fmt.Errorf("MaxRecordSize %d is negative", o.MaxRecordSize))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidOptions, errors.Join(errs...))
}

// EnsureDefaults fills unset fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.SegmentSize <= 0 {
		o.SegmentSize = 20 << 20
	}
	if o.MaxRecordSize <= 0 {
		o.MaxRecordSize = 8 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// store is the seam between this package and tidwall/wal: the operations
// the Log performs on its segment files. *twal.Log implements it; tests wrap
// it to inject real errors.
type store interface {
	WriteBatch(b *twal.Batch) error
	Sync() error
	Read(index uint64) ([]byte, error)
	FirstIndex() (uint64, error)
	LastIndex() (uint64, error)
	TruncateFront(index uint64) error
	TruncateBack(index uint64) error
	Close() error
}

// Stats are cumulative counters since Open.
type Stats struct {
	Appends   uint64        // Append calls that succeeded
	Records   uint64        // records appended
	Bytes     uint64        // bytes appended, framing included
	Syncs     uint64        // fsyncs of segment files issued by Append
	DirSyncs  uint64        // fsyncs of the directory
	SyncTime  time.Duration // total time spent in segment fsyncs
	TornBytes int64         // bytes cut from the tail by Open
}

// Log is a write-ahead log of checksummed records. Indexes start at 1 and
// grow by one per record, with no gaps.
type Log struct {
	dir  string
	opts Options

	mu       sync.RWMutex
	readMu   sync.Mutex // serializes st.Read: see readLocked
	st       store
	first    uint64 // index of the first record; last+1 when empty
	last     uint64 // index of the last record; first-1 when empty
	poison   error
	closed   bool
	batch    twal.Batch
	scratch  []byte
	tailSize int       // bytes in the tail segment, mirrored from tidwall's rule
	tw       *twal.Log // the tidwall log under any test wrapper, for Close
	// tail is our own read-only descriptor of the tail segment file:
	// Append checks after each write that the file is still linked under
	// its name (see checkTail).
	tail     *os.File
	tailPath string

	appends, records, bytes, syncs, dirSyncs atomic.Uint64
	syncNanos                                atomic.Int64
	tornBytes                                int64
}

// Open opens or creates the log in dir. It first decides, from the files
// alone and before it changes any, what the log needs (see PlanRepair):
//
//   - a clean log is opened as it is;
//   - a safe plan (a torn tail that was never acknowledged, or damage
//     confined to records that Options.Applied says the caller's state
//     holds) is carried out and logged;
//   - anything else is refused with a *RefusedError that matches ErrCorrupt
//     (damage) or ErrLost (records gone), and every file stays as it was.
//
// After any change it rewrites the EXTENT file (see Extent).
func Open(dir string, opts Options) (*Log, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.EnsureDefaults()
	exists := true
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		exists = false
	}
	// Asked before a pending truncation is settled, which changes files:
	// a caller that refuses (its state behind the log's start, say) must
	// find every file as it was.
	var applied uint64
	if opts.Applied != nil {
		var err error
		if applied, err = opts.Applied(); err != nil {
			return nil, fmt.Errorf("wal: the caller's applied index: %w", err)
		}
	}
	if exists && opts.NoRepair {
		if pending, err := hasPending(dir); err != nil || pending {
			if err == nil {
				err = fmt.Errorf("%w: Open would finish a truncation that a crash interrupted (its .START or .END file)", ErrRepairNeeded)
			}
			return nil, err
		}
	} else if exists {
		if err := settlePending(dir, opts); err != nil {
			return nil, err
		}
	}
	plan, err := PlanRepair(dir, applied)
	if err != nil {
		return nil, err
	}
	if !plan.Safe {
		return nil, &RefusedError{Dir: dir, Plan: plan}
	}
	l := &Log{dir: dir, opts: opts}
	if plan.Changes() {
		if opts.NoRepair {
			if plan.Restart == 0 && len(plan.Remove) == 0 {
				return nil, fmt.Errorf("%w: Open would %s", ErrTornTail, plan.Summary)
			}
			return nil, fmt.Errorf("%w: Open would %s", ErrRepairNeeded, plan.Summary)
		}
		if err := plan.carryOut(dir); err != nil {
			return nil, err
		}
		if plan.Truncate != nil {
			l.tornBytes = plan.Truncate.Bytes
		}
		opts.Logger.Warn("wal: repaired at open", "dir", dir, "what", plan.Summary)
	}
	if opts.NoRepair && plan.Report.Segments == 0 {
		// tidwall would create the first segment file (and the directory).
		return nil, fmt.Errorf("%w: %s holds no log, and Open would create one", ErrReadOnly, dir)
	}
	if opts.NoRepair {
		// Read without tidwall, which opens the tail segment for writing
		// (and so fails on a read-only filesystem): the plan's scan found
		// the log whole, from its first record to its last.
		rep := plan.Report
		segs, err := segmentFiles(dir)
		if err != nil {
			return nil, err
		}
		l.first, l.last = segs[0].first, segs[0].first-1
		if rep.Records > 0 {
			l.first, l.last = rep.FirstIndex, rep.LastIndex
		}
		l.st = readOnlyStore{dir: dir}
		if err := l.reloadTail(); err != nil {
			return nil, fmt.Errorf("wal: open %s: %w", dir, err)
		}
		return l, nil
	}
	if !exists {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("wal: create %s: %w", dir, err)
		}
		if err := syncDir(filepath.Dir(filepath.Clean(dir))); err != nil {
			return nil, err
		}
	}
	tl, err := twal.Open(dir, l.twalOptions())
	if err != nil {
		return nil, fmt.Errorf("wal: open %s after verification: %w", dir, err)
	}
	l.tw = tl
	var st store = tl
	if opts.wrap != nil {
		st = opts.wrap(st)
	}
	l.st = st
	if l.first, err = st.FirstIndex(); err == nil {
		l.last, err = st.LastIndex()
	}
	if err == nil {
		// tidwall creates the first segment file of a new log: make it durable.
		err = syncDir(dir)
	}
	if err == nil {
		err = l.reloadTail()
	}
	if err == nil && !opts.NoRepair {
		err = l.writeExtent(l.last, false)
	}
	if err != nil {
		l.closeFiles()
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	return l, nil
}

// readOnlyStore is the segment store of a log opened with NoRepair: it
// reads the segment files itself and changes none.
type readOnlyStore struct{ dir string }

func (readOnlyStore) WriteBatch(*twal.Batch) error { return ErrReadOnly }
func (readOnlyStore) Sync() error                  { return ErrReadOnly }
func (readOnlyStore) TruncateFront(uint64) error   { return ErrReadOnly }
func (readOnlyStore) TruncateBack(uint64) error    { return ErrReadOnly }
func (readOnlyStore) Close() error                 { return nil }

// FirstIndex and LastIndex are not asked of it: Open sets the Log's.
func (readOnlyStore) FirstIndex() (uint64, error) { return 0, ErrReadOnly }
func (readOnlyStore) LastIndex() (uint64, error)  { return 0, ErrReadOnly }

// Read returns the frame of the record at index (checked by the caller),
// found by walking the segment that holds it.
func (s readOnlyStore) Read(index uint64) ([]byte, error) {
	segs, err := segmentFiles(s.dir)
	if err != nil {
		return nil, err
	}
	for i := len(segs) - 1; i >= 0; i-- {
		if segs[i].first > index {
			continue
		}
		data, err := readSegment(segs[i].path, nil)
		if err != nil {
			return nil, err
		}
		for off, next := 0, segs[i].first; off < len(data); next++ {
			size, n := binary.Uvarint(data[off:])
			if n <= 0 || uint64(len(data)-off-n) < size {
				break
			}
			if next == index {
				return data[off+n : off+n+int(size)], nil
			}
			off += n + int(size)
		}
		break
	}
	return nil, fmt.Errorf("%w: %d", ErrNotFound, index)
}

// writeExtent records the log's current reach in its EXTENT file. l.mu held
// (or the log not yet shared).
func (l *Log) writeExtent(last uint64, clean bool) error {
	return writeExtent(l.dir, Extent{TailStart: l.tailStart(), Last: last, Clean: clean}, l.opts.NoSync)
}

// tailStart is the first index of the tail segment, from its file name.
func (l *Log) tailStart() uint64 {
	n, _ := strconv.ParseUint(filepath.Base(l.tailPath), 10, 64)
	return n
}

func (l *Log) twalOptions() *twal.Options {
	return &twal.Options{
		NoSync:           true, // we fsync ourselves, after the write, so a sync error is ours to see
		SegmentSize:      l.opts.SegmentSize,
		LogFormat:        twal.Binary,
		SegmentCacheSize: 2,
		AllowEmpty:       true,
		DirPerms:         0o750,
		FilePerms:        0o640,
	}
}

// settlePending lets tidwall finish a truncation that a crash interrupted
// (its .START/.END files), so that the scan below sees plain segments.
func settlePending(dir string, opts Options) error {
	files, err := pendingFiles(dir)
	if err != nil || len(files) == 0 {
		return err
	}
	for _, f := range files {
		if err := checkPending(dir, f); err != nil {
			return err
		}
	}
	o := (&Log{opts: opts}).twalOptions()
	tl, err := twal.Open(dir, o)
	if err == nil {
		err = tl.Close()
	}
	// A torn tail makes tidwall fail after it has settled the renames;
	// verifyAndRepair deals with the tail.
	if err != nil && !errors.Is(err, twal.ErrCorrupt) {
		return fmt.Errorf("wal: settle interrupted truncation in %s: %w", dir, err)
	}
	return syncDir(dir)
}

// pendingFile is a .START or .END file that a truncation a crash
// interrupted left, named as tidwall names (and settles) one: the
// segment's 20-digit first index and the suffix. tidwall ignores any
// other name.
type pendingFile struct {
	name  string
	index uint64 // from the name
	start bool   // .START (a front truncation), else .END
}

// pendingFiles lists dir's pending truncation files.
func pendingFiles(dir string) ([]pendingFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("wal: read %s: %w", dir, err)
	}
	var out []pendingFile
	for _, e := range ents {
		n := e.Name()
		start := len(n) == 26 && strings.HasSuffix(n, ".START")
		if !start && !(len(n) == 24 && strings.HasSuffix(n, ".END")) {
			continue
		}
		if idx, err := strconv.ParseUint(n[:20], 10, 64); err == nil && idx > 0 {
			out = append(out, pendingFile{name: n, index: idx, start: start})
		}
	}
	return out, nil
}

// hasPending reports whether dir holds a pending truncation file.
func hasPending(dir string) (bool, error) {
	files, err := pendingFiles(dir)
	return len(files) > 0, err
}

// checkPending refuses, before tidwall acts on it, a .START or .END file
// that no interrupted truncation of this log left: tidwall settles one by
// removing every segment before it (START) or after it (END), which for a
// stray file removes acknowledged records. tidwall writes such a file
// whole (through a temp file): the records of a segment from the index
// its name gives on, none only for a truncation of every record. An END
// file, moreover, follows our TruncateBack, which first lowers the EXTENT
// file to the file's last record.
func checkPending(dir string, pf pendingFile) error {
	name, first := pf.name, pf.index
	path := filepath.Join(dir, name)
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("wal: read %s: %w", path, err)
	}
	side := "after"
	if pf.start {
		side = "before"
	}
	refuse := func(why string) error {
		return fmt.Errorf("%w: %s, the file an interrupted truncation leaves, %s; settling it would remove "+
			"the segments %s it, so nothing was changed. Remove it if no truncation was under way",
			ErrCorrupt, path, why, side)
	}
	next := first
	for off := 0; off < len(data); next++ {
		e, err := parseEntry(data, off, len(data))
		if err == nil && e.index != next {
			err = fmt.Errorf("record carries index %d", e.index)
		}
		if err != nil {
			return refuse(fmt.Sprintf("is not a segment starting at index %d (index %d at offset %d: %v)", first, next, off, err))
		}
		off = e.end
	}
	if next == first && pf.start {
		// Only a truncation of every record leaves an empty START file,
		// named after the index the log continues from.
		segs, err := segmentFiles(dir)
		if err != nil {
			return err
		}
		// With no segment left (a crash after tidwall removed the last,
		// before its rename), settling removes nothing: the log continues,
		// empty, from first, which must not fall short of the EXTENT file.
		end := first
		if len(segs) == 0 {
			ext, err := ReadExtent(dir)
			if err != nil {
				return err
			}
			if ext != nil && ext.Last > first-1 {
				end = 0
			}
		} else {
			tail := segs[len(segs)-1]
			data, err := os.ReadFile(tail.path)
			if err != nil {
				return fmt.Errorf("wal: read %s: %w", tail.path, err)
			}
			end = tail.first
			for off := 0; off < len(data); end++ {
				e, err := parseEntry(data, off, len(data))
				if err != nil || e.index != end {
					break
				}
				off = e.end
			}
		}
		if end != first {
			return refuse(fmt.Sprintf("holds no record, but the log does not end at index %d", first-1))
		}
	}
	if !pf.start {
		ext, err := ReadExtent(dir)
		if err != nil {
			return err
		}
		if ext != nil && ext.Last > next-1 {
			return refuse(fmt.Sprintf("ends at index %d, but the log's EXTENT file says it held index %d", next-1, ext.Last))
		}
	}
	return nil
}

// segmentFiles lists the segment files of dir in index order.
func segmentFiles(dir string) ([]segmentFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("wal: read %s: %w", dir, err)
	}
	var segs []segmentFile
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || len(name) != 20 {
			continue
		}
		idx, err := strconv.ParseUint(name, 10, 64)
		if err != nil || idx == 0 {
			continue
		}
		segs = append(segs, segmentFile{path: filepath.Join(dir, name), first: idx})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].first < segs[j].first })
	return segs, nil
}

type segmentFile struct {
	path  string
	first uint64
}

// TornTail describes an incomplete final write at the end of the last
// segment: never acknowledged (its fsync did not return), safe to cut.
type TornTail struct {
	Segment    string `json:"segment"`
	Offset     int64  `json:"offset"`      // where the valid records end
	Bytes      int64  `json:"bytes"`       // bytes after Offset
	FirstIndex uint64 `json:"first_index"` // index the first dropped record would have had
	Reason     string `json:"reason"`
}

// Report is the result of Verify.
type Report struct {
	Segments   int              `json:"segments"`
	Records    uint64           `json:"records"`
	Bytes      int64            `json:"bytes"`
	FirstIndex uint64           `json:"first_index"` // 0 when the log holds no record
	LastIndex  uint64           `json:"last_index"`
	Torn       *TornTail        `json:"torn,omitempty"`    // nil when the tail is clean
	Corrupt    *CorruptionError `json:"corrupt,omitempty"` // damage Open refuses; nil when none
	// Newer is the first record of a newer frame format (ErrNewerFormat),
	// where reading stopped; nil when none. It is not damage.
	Newer *CorruptionError `json:"newer_format,omitempty"`
	// PendingTruncation is set when the directory holds the .START or .END
	// file of a truncation that a crash interrupted: Open finishes it
	// (Options.NoRepair refuses), and the report is of the segments as
	// they are before.
	PendingTruncation bool `json:"pending_truncation,omitempty"`
	// DroppedByForce counts the records from the corruption on (those a
	// forced repair would cut); 0 without corruption.
	DroppedByForce uint64 `json:"dropped_by_force"`
	// HighestDropped is the highest index of a valid record found after
	// the corruption (best effort); 0 when none.
	HighestDropped uint64 `json:"highest_dropped"`
}

// Verify checks every record of the log in dir without changing anything.
// fn, if not nil, is called for every valid record in order until the
// first damage.
//
// A record is bounded on reading only by its segment's size, not by
// Options.MaxRecordSize: a complete record with a valid checksum, written
// by an engine configured with a larger limit, is never taken for damage.
//
// Invalid bytes at the end of the last segment are a torn tail only when
// they look like what an interrupted write leaves (see isTear); anything
// else, such as a segment of random bytes, is reported as Corrupt.
func Verify(dir string, fn func(index uint64, payload []byte) error) (*Report, error) {
	segs, err := segmentFiles(dir)
	if err != nil {
		return nil, err
	}
	rep, err := verifySegments(segs, fn)
	if rep != nil {
		// (With fn's error too: its caller may stop the walk on purpose.)
		var perr error
		if rep.PendingTruncation, perr = hasPending(dir); err == nil {
			err = perr
		}
	}
	return rep, err
}

func verifySegments(segs []segmentFile, fn func(index uint64, payload []byte) error) (*Report, error) {
	rep := &Report{Segments: len(segs)}
	var buf []byte // reused from segment to segment when no fn keeps payloads
	for i, s := range segs {
		data, err := readSegment(s.path, buf)
		if err != nil {
			return nil, err
		}
		if fn == nil {
			buf = data
		}
		maxFrame := len(data)
		rep.Bytes += int64(len(data))
		if rep.Newer != nil {
			continue
		}
		if rep.Corrupt != nil {
			n, hi := countFrames(data, maxFrame)
			rep.DroppedByForce += n
			rep.HighestDropped = max(rep.HighestDropped, hi)
			continue
		}
		isLast := i == len(segs)-1
		off, next := 0, s.first
		for off < len(data) {
			e, perr := parseEntry(data, off, maxFrame)
			if perr == nil && e.index != next {
				perr = fmt.Errorf("record carries index %d, expected %d", e.index, next)
			}
			if perr != nil {
				switch {
				case errors.Is(perr, ErrNewerFormat):
					rep.Newer = &CorruptionError{Segment: s.path, Offset: int64(off), Index: next,
						Reason: strings.TrimPrefix(perr.Error(), ErrNewerFormat.Error()+": ")}
				case !isLast || validFrameAfter(data, off+1, next, maxFrame):
					rep.Corrupt = &CorruptionError{Segment: s.path, Offset: int64(off), Index: next, Reason: perr.Error()}
					rep.countDropped(data[off:], maxFrame)
				case !isTear(data, off, next):
					rep.Corrupt = &CorruptionError{Segment: s.path, Offset: int64(off), Index: next,
						Reason: perr.Error() + fmt.Sprintf("; the %d byte(s) from there to the end of the last segment are not what an interrupted write leaves "+
							"(a prefix of the next record, then zeros)", len(data)-off)}
					rep.countDropped(data[off:], maxFrame)
				default:
					rep.Torn = &TornTail{Segment: s.path, Offset: int64(off), Bytes: int64(len(data) - off),
						FirstIndex: next, Reason: perr.Error()}
				}
				break
			}
			if fn != nil {
				if err := fn(e.index, e.payload); err != nil {
					return rep, err
				}
			}
			if rep.FirstIndex == 0 {
				rep.FirstIndex = e.index
			}
			rep.LastIndex = e.index
			rep.Records++
			off = e.end
			next++
		}
		if rep.Corrupt == nil && rep.Newer == nil && !isLast && next != segs[i+1].first {
			rep.Corrupt = &CorruptionError{Segment: s.path, Offset: int64(len(data)), Index: next,
				Reason: fmt.Sprintf("segment ends before index %d where the next segment starts", segs[i+1].first)}
		}
	}
	return rep, nil
}

// readSegment reads a segment file into buf's memory if it fits (a new
// slice otherwise): reading every segment into fresh memory, as
// os.ReadFile does, touched as many new pages as the log has bytes, and
// on a virtual machine a first touch can cost more than the read.
func readSegment(path string, buf []byte) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("wal: read segment %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("wal: read segment %s: %w", path, err)
	}
	size := int(fi.Size())
	if cap(buf) < size {
		buf = make([]byte, 0, size)
	}
	buf = buf[:size]
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("wal: read segment %s: %w", path, err)
	}
	return buf[:n], nil // a file that shrank since Stat: what is there
}

// isTear reports whether the invalid bytes data[off:] at the end of the
// last segment are what an interrupted append leaves, and so were never
// acknowledged: their fsync did not return. Appends only add to the file,
// so a tear is the beginning of one write whose later part never reached
// the disk:
//
//   - nothing but zeros (the file grew; the data did not land); or
//   - one record that claims to be the next (its format version and index,
//     as far as they are there), cut short by the end of the file or
//     holding a whole zero-filled sector, followed by nothing but zeros.
//
// Anything else (random bytes, a record of another index, data after the
// broken record) is damage to data that was written, and Open refuses it.
func isTear(data []byte, off int, next uint64) bool {
	rest := data[off:]
	if allZero(rest) {
		return true
	}
	size, n := binary.Uvarint(rest)
	switch {
	case n == 0:
		return true // the length prefix itself is cut by the end of the file
	case n < 0:
		return false
	}
	hdr := rest[n:]
	if len(hdr) > 0 && hdr[0] != FormatVersion {
		return false
	}
	if uint64(len(hdr)) > size {
		hdr = hdr[:size]
	}
	if len(hdr) >= 9 {
		if binary.BigEndian.Uint64(hdr[1:9]) != next {
			return false
		}
	} else if !bytesPrefixOfIndex(hdr, next) {
		return false
	}
	end := uint64(n) + size
	if end > uint64(len(rest)) {
		return true // cut short by the end of the file
	}
	frameStart, frameEnd := off+n, off+int(end)
	if !allZero(data[frameEnd:]) {
		return false
	}
	// The record is complete in length but fails its checksum: torn only
	// if part of it never landed, i.e. its bytes in some sector are all
	// zeros (at least 16 of them, so that a zero byte or two of a damaged
	// record do not pass for a lost sector).
	return torn.LostSector(data, frameStart, frameEnd)
}

// bytesPrefixOfIndex reports whether hdr (shorter than 9 bytes) is a prefix
// of the header of a record with index next.
func bytesPrefixOfIndex(hdr []byte, next uint64) bool {
	var want [9]byte
	want[0] = FormatVersion
	binary.BigEndian.PutUint64(want[1:], next)
	for i := range hdr {
		if hdr[i] != want[i] {
			return false
		}
	}
	return true
}

func allZero(b []byte) bool { return torn.AllZero(b) }

// countFrames counts the parseable records in data (best effort, for
// reporting what a forced repair drops).
// and the highest index among them.
func countFrames(data []byte, maxFrame int) (n, highest uint64) {
	for off := 0; off < len(data); {
		e, err := parseEntry(data, off, maxFrame)
		if err != nil {
			off++
			continue
		}
		n++
		highest = max(highest, e.index)
		off = e.end
	}
	return n, highest
}

// countDropped adds the damaged record and what follows it in its segment
// to what a forced repair drops.
func (rep *Report) countDropped(data []byte, maxFrame int) {
	n, hi := countFrames(data, maxFrame)
	rep.DroppedByForce += n + 1
	rep.HighestDropped = max(rep.HighestDropped, hi)
}

func truncateFile(path string, off int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("wal: open %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Truncate(off); err != nil {
		return fmt.Errorf("wal: truncate %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("wal: sync %s: %w", path, err)
	}
	return nil
}

// validFrameAfter reports whether any byte offset from 'from' on starts a
// valid record whose index is at least minIndex: proof that the damage
// before it is not a torn final write.
func validFrameAfter(data []byte, from int, minIndex uint64, maxFrame int) bool {
	for p := from; p+1+HeaderSize <= len(data); p++ {
		e, err := parseEntry(data, p, maxFrame)
		if err == nil && e.index >= minIndex {
			return true
		}
	}
	return false
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("wal: open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("wal: sync directory %s: %w", dir, err)
	}
	return nil
}

// check returns the error every call must fail with, if any. l.mu held.
func (l *Log) check() error {
	if l.closed {
		return ErrClosed
	}
	if l.poison != nil {
		return fmt.Errorf("%w (cause: %v)", ErrPoisoned, l.poison)
	}
	return nil
}

// Append writes recs as consecutive records with one fsync and returns the
// index of the first. It returns only after the records are durable. On
// any I/O error the log is poisoned and the error wraps ErrPoisoned: the
// records may or may not be on disk, and no later call succeeds until the
// log is reopened.
func (l *Log) Append(recs [][]byte) (first uint64, err error) {
	if len(recs) == 0 {
		return 0, errors.New("wal: append of an empty batch")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.check(); err != nil {
		return 0, err
	}
	if l.opts.NoRepair {
		return 0, ErrReadOnly
	}
	for i, r := range recs {
		if len(r) > l.opts.MaxRecordSize {
			return 0, fmt.Errorf("%w: record %d of the batch has %d bytes, the maximum is %d",
				ErrRecordTooLarge, i, len(r), l.opts.MaxRecordSize)
		}
	}
	first = l.last + 1
	l.batch.Clear()
	cycled := false
	var nbytes int
	for i, r := range recs {
		l.scratch = appendFrame(l.scratch[:0], first+uint64(i), r)
		l.batch.Write(first+uint64(i), l.scratch)
		// Mirror tidwall's segment rule (writeBatch/cycle) to know when a
		// new segment file appeared and the directory needs an fsync.
		if i == 0 && l.tailSize > l.opts.SegmentSize {
			cycled, l.tailSize = true, 0
		}
		sz := uvarintLen(uint64(len(l.scratch))) + len(l.scratch)
		nbytes += sz
		l.tailSize += sz
		if l.tailSize >= l.opts.SegmentSize {
			cycled, l.tailSize = true, 0
		}
	}
	if err := l.st.WriteBatch(&l.batch); err != nil {
		l.poison = err
		return 0, fmt.Errorf("%w: write: %v", ErrPoisoned, err)
	}
	if !l.opts.NoSync {
		start := time.Now()
		err := l.st.Sync()
		l.syncNanos.Add(int64(time.Since(start)))
		l.syncs.Add(1)
		if err != nil {
			l.poison = err
			return 0, fmt.Errorf("%w: fsync: %v", ErrPoisoned, err)
		}
		if cycled {
			if err := syncDir(l.dir); err != nil {
				l.poison = err
				return 0, fmt.Errorf("%w: %v", ErrPoisoned, err)
			}
			l.dirSyncs.Add(1)
		}
	}
	if cycled {
		// A new tail segment: check the one tidwall just closed, watch the
		// new one, and record that the log reached it.
		err := l.checkTail()
		if err == nil {
			err = l.reloadTail()
		}
		if err == nil {
			err = l.writeExtent(l.last+uint64(len(recs)), false)
		}
		if err != nil {
			l.poison = err
			return 0, fmt.Errorf("%w: %v", ErrPoisoned, err)
		}
	} else if err := l.checkTail(); err != nil {
		l.poison = err
		return 0, fmt.Errorf("%w: %v", ErrPoisoned, err)
	}
	l.last += uint64(len(recs))
	l.appends.Add(1)
	l.records.Add(uint64(len(recs)))
	l.bytes.Add(uint64(nbytes))
	return first, nil
}

// Read returns the payload of the record at index, verified.
func (l *Log) Read(index uint64) ([]byte, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if err := l.check(); err != nil {
		return nil, err
	}
	return l.readLocked(index)
}

func (l *Log) readLocked(index uint64) ([]byte, error) {
	if index < l.first || index > l.last {
		return nil, fmt.Errorf("%w: %d (log holds [%d, %d])", ErrNotFound, index, l.first, l.last)
	}
	// tidwall's Read holds only its read lock while it loads a segment
	// into its cache (mutating the segment and the cache), so concurrent
	// Reads of older segments race, and can panic (tidwall/wal issue #34).
	// Serialize them; the caller's l.mu read lock still excludes writers.
	l.readMu.Lock()
	frame, err := l.st.Read(index)
	l.readMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("wal: read index %d: %w", index, err)
	}
	idx, payload, err := DecodeFrame(frame, 0) // any size the file holds: the limit is for writing
	if err == nil && idx != index {
		err = fmt.Errorf("record carries index %d", idx)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: index %d: %v", ErrCorrupt, index, err)
	}
	return payload, nil
}

// Scan calls fn for every record from index 'from' to the last, in order.
// It stops at the first error, from fn or from reading. The payload passed
// to fn is valid only until fn returns: it is a view of a buffer Scan
// reuses (copy what you keep).
//
// Scan streams the segment files in order through one small buffer and
// verifies each record (checksum and index) as Read does. It does not go
// through tidwall, whose Read loads each segment into fresh memory,
// indexes it and copies every record out: on a virtual machine where a
// first touch of a page is dear, that cost more than the reading. It reads
// the files without holding the log's lock: appends may go on meanwhile
// (it stops at the last record there was when it began), but a
// TruncateFront meanwhile may make it fail (the engine scans only while it
// opens).
func (l *Log) Scan(from uint64, fn func(index uint64, payload []byte) error) error {
	l.mu.RLock()
	if err := l.check(); err != nil {
		l.mu.RUnlock()
		return err
	}
	if from < l.first {
		from = l.first
	}
	last := l.last
	l.mu.RUnlock()
	if from > last {
		return nil
	}
	segs, err := segmentFiles(l.dir)
	if err != nil {
		return err
	}
	sc := segmentScanner{buf: make([]byte, 0, scanBuffer)}
	next := from // the next index fn is owed
	for i, sg := range segs {
		if i+1 < len(segs) && segs[i+1].first <= from {
			continue // wholly before from
		}
		if sg.first > next {
			break // a gap: reported below
		}
		if next, err = sc.scan(sg, from, last, fn); err != nil {
			return err
		}
		if next > last {
			return nil
		}
		next = max(next, from)
	}
	return fmt.Errorf("%w: %d (the segment files end before index %d, the last)", ErrNotFound, next, last)
}

// scanBuffer is the size of Scan's buffer; it grows for a larger record.
const scanBuffer = 1 << 20

// segmentScanner reads one segment file after another through buf.
type segmentScanner struct{ buf []byte }

// scan calls fn for the records of segment sg with indexes in [from,
// last] and returns the index after the last record it read.
func (sc *segmentScanner) scan(sg segmentFile, from, last uint64, fn func(uint64, []byte) error) (uint64, error) {
	f, err := os.Open(sg.path)
	if err != nil {
		return 0, fmt.Errorf("wal: read segment %s: %w", sg.path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("wal: read segment %s: %w", sg.path, err)
	}
	maxFrame := int(fi.Size())
	buf, start, eof := sc.buf[:0], 0, false
	// fill reads more of the file after buf[start:], which it first moves
	// to the front, into a buffer that holds at least need bytes.
	fill := func(need int) error {
		n := copy(buf[:cap(buf)], buf[start:])
		buf, start = buf[:n], 0
		if need > cap(buf) {
			buf = append(make([]byte, 0, need), buf...)
		}
		m, err := io.ReadFull(f, buf[n:cap(buf)])
		buf = buf[:n+m]
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			eof, err = true, nil
		}
		if err != nil {
			return fmt.Errorf("wal: read segment %s: %w", sg.path, err)
		}
		return nil
	}
	defer func() { sc.buf = buf[:0] }()
	idx, off := sg.first, int64(0)
	for idx <= last {
		if len(buf)-start < binary.MaxVarintLen64 && !eof {
			if err := fill(0); err != nil {
				return 0, err
			}
		}
		if len(buf) == start {
			break // the end of the segment
		}
		if size, n := binary.Uvarint(buf[start:]); n > 0 && size <= uint64(maxFrame) &&
			uint64(len(buf)-start-n) < size && !eof {
			if err := fill(n + int(size)); err != nil {
				return 0, err
			}
		}
		e, err := parseEntry(buf[start:], 0, maxFrame)
		if err == nil && e.index != idx {
			err = fmt.Errorf("record carries index %d", e.index)
		}
		if err != nil {
			return 0, fmt.Errorf("%w: index %d at offset %d of %s: %v", ErrCorrupt, idx, off, sg.path, err)
		}
		if idx >= from {
			if err := fn(idx, e.payload); err != nil {
				return 0, err
			}
		}
		start += e.end
		off += int64(e.end)
		idx++
	}
	return idx, nil
}

// FirstIndex is the index of the first record; LastIndex()+1 when empty.
func (l *Log) FirstIndex() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.first
}

// LastIndex is the index of the last record; 0 for a new log.
func (l *Log) LastIndex() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.last
}

// Dir is the directory of the log.
func (l *Log) Dir() string { return l.dir }

// Err returns the poisoning error, or nil while the log is healthy.
func (l *Log) Err() error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.poison != nil {
		return l.check()
	}
	return nil
}

// TruncateFront removes every record before index, which becomes the
// first (index may be LastIndex()+1 to empty the log). An I/O error
// poisons the log.
//
// When index is the first of a segment (see SegmentStarts), the segment
// files before it are removed and nothing is copied. Otherwise tidwall
// rewrites the segment holding index from index on, through a temp file
// it fsyncs. (tidwall's own TruncateFront copies the segment holding index
// even when index starts it, so a cut at a segment start bypasses it.)
func (l *Log) TruncateFront(index uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.check(); err != nil {
		return err
	}
	if l.opts.NoRepair {
		return ErrReadOnly
	}
	if index > l.last+1 {
		return fmt.Errorf("%w: truncate front to %d, last index is %d", ErrOutOfRange, index, l.last)
	}
	if index <= l.first {
		return nil
	}
	if index <= l.last {
		segs, err := segmentFiles(l.dir)
		if err != nil {
			l.poison = err
			return fmt.Errorf("%w: %v", ErrPoisoned, err)
		}
		for _, sg := range segs {
			if sg.first == index {
				return l.dropSegmentsBefore(segs, index)
			}
		}
	}
	if err := l.st.TruncateFront(index); err != nil {
		l.poison = err
		return fmt.Errorf("%w: truncate front: %v", ErrPoisoned, err)
	}
	if err := syncDir(l.dir); err != nil {
		l.poison = err
		return fmt.Errorf("%w: %v", ErrPoisoned, err)
	}
	l.dirSyncs.Add(1)
	l.first = index
	// tidwall rewrote the segment holding index without the records before
	// it (or the tail as an empty segment when index is LastIndex+1); when
	// that segment is the tail, the size Append mirrors has shrunk.
	return l.reloadTail()
}

// dropSegmentsBefore removes the segment files before the segment that
// starts at index: it closes tidwall, removes the files oldest first (a
// crash in between leaves a log that starts at a later segment, which
// opens), fsyncs the directory and reopens tidwall, which reads only the
// tail segment. Any failure poisons the log. l.mu held.
func (l *Log) dropSegmentsBefore(segs []segmentFile, index uint64) error {
	fail := func(err error) error {
		l.poison = err
		return fmt.Errorf("%w: drop segments before %d: %v", ErrPoisoned, index, err)
	}
	if err := l.st.Close(); err != nil {
		return fail(err)
	}
	for _, sg := range segs {
		if sg.first >= index {
			break
		}
		if err := os.Remove(sg.path); err != nil {
			return fail(err)
		}
	}
	if err := syncDir(l.dir); err != nil {
		return fail(err)
	}
	l.dirSyncs.Add(1)
	tl, err := twal.Open(l.dir, l.twalOptions())
	if err != nil {
		return fail(err)
	}
	l.tw = tl
	var st store = tl
	if l.opts.wrap != nil {
		st = l.opts.wrap(st)
	}
	first, err := st.FirstIndex()
	last, err2 := st.LastIndex()
	if err = errors.Join(err, err2); err == nil && (first != index || last != l.last) {
		err = fmt.Errorf("reopened segments hold [%d, %d], want [%d, %d]", first, last, index, l.last)
	}
	if err != nil {
		_ = st.Close()
		return fail(err)
	}
	// The tail segment is the same file, so l.tailSize still holds.
	l.st = st
	l.first = index
	return nil
}

// TruncateBack removes every record after index, which becomes the last
// (index may be FirstIndex()-1 to empty the log; an index at or beyond
// LastIndex is a no-op). The next Append continues at index+1. tidwall
// rewrites the segment holding index (through a temp file it fsyncs) and
// removes the segments after it; the directory is then fsynced, so the
// truncation is durable when TruncateBack returns. An I/O error poisons the
// log.
func (l *Log) TruncateBack(index uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.check(); err != nil {
		return err
	}
	if l.opts.NoRepair {
		return ErrReadOnly
	}
	if index+1 < l.first {
		return fmt.Errorf("%w: truncate back to %d, first index is %d", ErrOutOfRange, index, l.first)
	}
	if index >= l.last {
		return nil
	}
	// Lower the recorded extent first: a crash after the truncation must
	// not find the log shorter than its EXTENT file says.
	starts, err := l.SegmentStarts()
	if err != nil {
		l.poison = err
		return fmt.Errorf("%w: truncate back: %v", ErrPoisoned, err)
	}
	x := Extent{Last: index}
	for _, s := range starts {
		if s <= index || x.TailStart == 0 {
			x.TailStart = s
		}
	}
	if err := writeExtent(l.dir, x, l.opts.NoSync); err != nil {
		l.poison = err
		return fmt.Errorf("%w: truncate back: %v", ErrPoisoned, err)
	}
	if err := l.st.TruncateBack(index); err != nil {
		l.poison = err
		return fmt.Errorf("%w: truncate back: %v", ErrPoisoned, err)
	}
	if err := syncDir(l.dir); err != nil {
		l.poison = err
		return fmt.Errorf("%w: %v", ErrPoisoned, err)
	}
	l.dirSyncs.Add(1)
	l.last = index
	// The tail is now the rewritten segment holding index (or an empty
	// first segment).
	return l.reloadTail()
}

// reloadTail points the log at its tail segment file, after Open, a new
// segment or a truncation that rewrote it: it sets l.tailSize from the
// file's size (tidwall reloads a rewritten segment from its file, so the
// size on disk is exactly what its cycle rule sees next) and opens a
// descriptor of the file for checkTail. Without it Append cannot tell when
// tidwall starts a segment (and the directory needs an fsync), so a failure
// poisons the log. l.mu held.
func (l *Log) reloadTail() error {
	segs, err := segmentFiles(l.dir)
	if err == nil && len(segs) == 0 {
		err = errors.New("no segment file left")
	}
	var f *os.File
	var info os.FileInfo
	if err == nil {
		if f, err = os.Open(segs[len(segs)-1].path); err == nil {
			info, err = f.Stat()
		}
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		l.poison = err
		return fmt.Errorf("%w: the tail segment: %v", ErrPoisoned, err)
	}
	if l.tail != nil {
		l.tail.Close()
	}
	l.tail, l.tailPath, l.tailSize = f, segs[len(segs)-1].path, int(info.Size())
	if l.tw != nil {
		reserveTidwallTail(l.tw, l.opts.SegmentSize+tailSlack)
	}
	return nil
}

// tailSlack is the room reserved in the tail segment's buffer beyond
// SegmentSize: tidwall closes a segment once it reaches SegmentSize, after
// the entry that crossed it.
const tailSlack = 64 << 10

// reserveTidwallTail gives the in-memory copy of the tail segment that
// tidwall/wal v1.2.1 keeps (segment.ebuf, every entry appended to it) the
// capacity of a whole segment, keeping its length and bytes: tidwall
// grows it by append, and Go grows a large slice by a quarter at a time,
// so a segment of n bytes cost about 5n bytes of fresh memory and 4n of
// copying, in the log stage of every group commit (BenchmarkAppend). If a
// later version changes the fields, it does nothing (and
// TestTailBufferReserved fails). l.mu held: tidwall is not in use.
func reserveTidwallTail(tl *twal.Log, size int) {
	segs := reflect.ValueOf(tl).Elem().FieldByName("segments")
	if !segs.IsValid() || segs.Kind() != reflect.Slice || segs.Len() == 0 {
		return
	}
	seg := segs.Index(segs.Len() - 1)
	if seg.Kind() != reflect.Pointer || seg.IsNil() || seg.Elem().Kind() != reflect.Struct {
		return
	}
	ebuf := seg.Elem().FieldByName("ebuf")
	if !ebuf.IsValid() || ebuf.Type() != reflect.TypeOf([]byte(nil)) {
		return
	}
	b := (*[]byte)(unsafe.Pointer(ebuf.UnsafeAddr()))
	if cap(*b) >= size {
		return
	}
	grown := make([]byte, len(*b), size)
	copy(grown, *b)
	*b = grown
}

// checkTail fails with ErrVanished when the tail segment file is no longer
// linked under its name (unlinked, or replaced by another file): every
// record written to it since would be lost at the next open. Two stat
// calls, no I/O. l.mu held.
func (l *Log) checkTail() error {
	var fd, byName syscall.Stat_t
	if err := syscall.Fstat(int(l.tail.Fd()), &fd); err != nil {
		return fmt.Errorf("%w: fstat %s: %v", ErrVanished, l.tailPath, err)
	}
	if fd.Nlink == 0 {
		return fmt.Errorf("%w: %s was unlinked", ErrVanished, l.tailPath)
	}
	if err := syscall.Stat(l.tailPath, &byName); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrVanished, l.tailPath, err)
	}
	if byName.Ino != fd.Ino || byName.Dev != fd.Dev {
		return fmt.Errorf("%w: %s now names another file (inode %d, was %d)", ErrVanished, l.tailPath, byName.Ino, fd.Ino)
	}
	return nil
}

// SegmentStarts returns the first index of each segment, in order: the
// indexes TruncateFront handles without rewriting data.
func (l *Log) SegmentStarts() ([]uint64, error) { return SegmentStartsIn(l.dir) }

// SegmentStartsIn returns the first index of each segment file in dir, in
// order, from the file names alone (none when dir does not exist): the
// first is the log's first index. A front truncation that a crash
// interrupted (its .START file) is counted as Open will settle it: the
// segments before it are gone and it starts one. It reads no segment and
// changes nothing.
func SegmentStartsIn(dir string) ([]uint64, error) {
	segs, err := segmentFiles(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var from uint64 // where a pending front truncation cuts the log to
	files, err := pendingFiles(dir)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		if f.start {
			from = max(from, f.index)
		}
	}
	var out []uint64
	if from > 0 {
		out = append(out, from)
	}
	for _, s := range segs {
		if s.first > from {
			out = append(out, s.first)
		}
	}
	return out, nil
}

// Stats returns cumulative counters.
func (l *Log) Stats() Stats {
	return Stats{
		Appends:   l.appends.Load(),
		Records:   l.records.Load(),
		Bytes:     l.bytes.Load(),
		Syncs:     l.syncs.Load(),
		DirSyncs:  l.dirSyncs.Load(),
		SyncTime:  time.Duration(l.syncNanos.Load()),
		TornBytes: l.tornBytes,
	}
}

// Close syncs and closes the log and records in its EXTENT file that it
// ended cleanly. Closing a poisoned log releases its files and returns the
// poisoning error. Close releases every descriptor whatever fails.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	l.closed = true
	err := l.closeFiles()
	if l.poison != nil {
		return fmt.Errorf("%w (cause: %v)", ErrPoisoned, l.poison)
	}
	if err != nil {
		return fmt.Errorf("wal: close: %w", err)
	}
	if l.opts.NoRepair {
		return nil // opened for reading: nothing changed, nothing to record
	}
	if err := l.writeExtent(l.last, true); err != nil {
		return fmt.Errorf("wal: close: %w", err)
	}
	return nil
}

// closeFiles closes the segment store and the tail descriptor. tidwall's
// Close returns on a failed fsync before it closes its segment file (after
// an EIO every fsync fails again), which would keep the file, and the
// filesystem under it, busy until the process exits: the descriptor is
// then closed here (see closeTidwallFile).
func (l *Log) closeFiles() error {
	var err error
	if l.st != nil {
		if err = l.st.Close(); err != nil && l.tw != nil {
			closeTidwallFile(l.tw)
		}
	}
	if l.tail != nil {
		l.tail.Close()
		l.tail = nil
	}
	return err
}

// closeTidwallFile closes the segment file that tidwall/wal v1.2.1 keeps in
// its unexported field sfile, for the one case where its Close does not:
// a failed fsync. If a later version renames the field, it does nothing
// (and TestCloseAfterEIOReleasesDescriptors fails).
func closeTidwallFile(tl *twal.Log) {
	v := reflect.ValueOf(tl).Elem().FieldByName("sfile")
	if !v.IsValid() || v.Type() != reflect.TypeOf((*os.File)(nil)) {
		return
	}
	if f := *(**os.File)(unsafe.Pointer(v.UnsafeAddr())); f != nil {
		_ = f.Close()
	}
}
