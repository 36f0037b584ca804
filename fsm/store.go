package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Key layout of the Pebble store. Every write of one log entry, and the
// applied index covering it, goes into a single batch.
//
//	m/applied                       → uint64 BE: last applied log index
//	m/source                        → uint64 BE: index in the replicated log (raft) of the last applied command
//	m/restoring                     → present while a snapshot is being restored
//	m/maxid                         → the greatest generated-form saga id applied (see hexID)
//	s/<id>                          → msgpack Saga
//	h/<id>/<seq BE>                 → uint64 BE log index + the record as logged (past a saga's history cap, its oldest attempt records are deleted: history.go)
//	x/s/<state byte>/<id>           → "" (index by state)
//	x/d/…                           → (no longer written: q/d/ replaced it; removed by the query index rebuild)
//	k/<idempotency key>             → saga id (see retention.go for a key kept past its saga)
//	g/<finished><idempotency key>   → "" (keys kept past their saga: retention.go)
//	d/<name>\x00<version BE>        → msgpack Definition
//	q/…, m/qindex                   → the query indexes (see query.go)
var (
	keyApplied   = []byte("m/applied")
	keyMaxID     = []byte("m/maxid")
	keySource    = []byte("m/source")
	keyRestoring = []byte("m/restoring")
	prefixSaga   = []byte("s/")
	prefixHist   = []byte("h/")
	prefixState  = []byte("x/s/")
	prefixDefIdx = []byte("x/d/")
	prefixKey    = []byte("k/")
	prefixDef    = []byte("d/")
)

func key(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func sagaKey(id string) []byte { return key(prefixSaga, []byte(id)) }
func histPrefix(id string) []byte {
	return key(prefixHist, []byte(id), []byte("/"))
}

// appendHistKey appends a history key to dst (the hot path reuses one
// buffer: Pebble's Batch.Set copies what it is given).
func appendHistKey(dst []byte, id string, seq uint64) []byte {
	dst = append(append(append(dst, prefixHist...), id...), '/')
	return binary.BigEndian.AppendUint64(dst, seq)
}
func stateKey(st SagaState, id string) []byte { return appendStateKey(nil, st, id) }
func appendStateKey(dst []byte, st SagaState, id string) []byte {
	return append(append(append(dst, prefixState...), byte(st), '/'), id...)
}
func idemKey(k string) []byte { return key(prefixKey, []byte(k)) }
func defKey(name string, v int) []byte {
	return binary.BigEndian.AppendUint64(key(prefixDef, []byte(name), []byte{0}), uint64(v))
}

// upperBound returns the smallest key greater than every key with prefix p.
func upperBound(p []byte) []byte {
	u := append([]byte(nil), p...)
	for i := len(u) - 1; i >= 0; i-- {
		if u[i] < 0xff {
			u[i]++
			return u[:i+1]
		}
	}
	return nil
}

// StoreOptions configures a Store. The zero value works.
type StoreOptions struct {
	// FS is the file system; default vfs.Default. Tests pass
	// vfs.NewCrashableMem() to drop unsynced data.
	FS vfs.FS
	// Logger receives Pebble's messages. Default slog.Default().
	Logger *slog.Logger
	// CacheSize is Pebble's block cache, in bytes. Default 32 MiB. The
	// memtables (32 MiB each, usually one or two) come on top.
	CacheSize int64
	// LiveSagas bounds the in-memory cache of non-terminal sagas. Default 100000.
	LiveSagas int
	// ReadOnly opens an existing store without writing to it (sagactl's
	// read-only checks). ApplyBatch then fails.
	ReadOnly bool

	// pebbleWAL turns Pebble's own WAL on (NoSync commits), for the
	// benchmark that justifies keeping it off.
	pebbleWAL bool
}

// memTableSize is the size of Pebble's memtables.
const memTableSize = 32 << 20

// Store is the applied state in Pebble. It is not safe for concurrent
// ApplyBatch calls (the engine has one applier); reads are safe at any time.
//
// Pebble's own WAL is disabled: the saga log (package wal) is the source
// of truth, and the applied index is written in the same batch as the data
// it covers, so Pebble's durable state is always a prefix of the log that
// recovery completes by replay. BenchmarkStoreApply measured no CPU
// difference between the WAL off and the WAL on with NoSync commits (35–41k
// vs 37–40k records/s on the development machine, within noise): we keep it
// off because it would write every transition to disk a second time and
// add its background writes to the disk the saga log fsyncs on, for no
// durability the saga log does not already give.
type Store struct {
	db      *pebble.DB
	fs      *closingFS // releases what Pebble leaves open after an I/O error
	dir     string
	tmpDir  string // where Restore spools a snapshot
	applied atomic.Uint64
	source  atomic.Uint64
	// restoring is set while Restore runs or when a Restore was cut short.
	restoring atomic.Bool
	cache     *pebble.Cache

	// live caches the state of non-terminal sagas, so that applying a
	// transition does not read and decode the saga back from Pebble. The
	// cached values are never mutated (Apply returns copies).
	mu      sync.RWMutex
	live    map[string]*Saga
	liveMax int
	// latest caches the latest version of each definition read or written
	// (Start reads it for every saga). Values are never mutated.
	latest map[string]*Definition
	// cacheGen counts the times Restore dropped the caches (under mu): a
	// reader caches what it read from the disk only if no restore began
	// or ended since it read.
	cacheGen uint64
	// afterDiskRead, if set, runs between a reader's disk read of a
	// definition and its caching (a test seam).
	afterDiskRead func()
	// replayBatch is the memtable size at which a Replayer commits its
	// batch: over Pebble's large-batch threshold (half a memtable less
	// its empty size), so that the batch bypasses the memtable, and
	// large, because every batch flushed becomes an L0 sublevel of its
	// own (each writes m/applied, so its tables overlap all the others')
	// and Pebble compacts L0 from half of L0CompactionThreshold
	// sublevels on. At half a memtable, a replay of the harness's 1M
	// transitions flushed 27 times and compacted twice while it ran;
	// at two memtables it flushes 7 times and does not compact:
	// BenchmarkReplayer, 15% less CPU per transition. The batch's own
	// bytes are about half this (31 MB there: memTableSize overestimates),
	// well under MemTableStopWritesThreshold memtables queued, at which
	// writes stall.
	replayBatch int
	// maxID is the greatest saga id of the generated form (hexID) ever
	// applied: a start with a greater id of that form cannot name an
	// existing saga, so its existence lookup (a Pebble read that misses,
	// the costliest part of applying a start) is skipped. Part of the
	// state: deterministic on replay. Only ApplyBatch touches it.
	maxID string
	// indexed is set once the query indexes (q/ keys, see query.go) are
	// complete; without them List and Count scan the sagas.
	indexed atomic.Bool
	// querySteps counts the index keys and sagas List and Count visit:
	// the seam of the test that proves a query reads an index, not all.
	querySteps atomic.Int64
}

// hexID reports whether id has the form of the ids the engine generates:
// 22 lowercase hexadecimal digits, which sort like the numbers they spell.
func hexID(id string) bool { return len(id) == 22 && isHex(id) }

// OpenStore opens (or creates) the store in dir.
func OpenStore(dir string, o StoreOptions) (*Store, error) {
	if o.CacheSize < 0 || o.LiveSagas < 0 {
		return nil, fmt.Errorf("%w: StoreOptions.CacheSize %d and LiveSagas %d must not be negative",
			ErrInvalidOptions, o.CacheSize, o.LiveSagas)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.CacheSize <= 0 {
		o.CacheSize = 32 << 20
	}
	if o.LiveSagas <= 0 {
		o.LiveSagas = 100000
	}
	// Pebble reserves each memtable's size (and a large batch's) in the
	// block cache: a cache of CacheSize alone held no block at all while
	// two memtables were live (BenchmarkQuery found every read missing).
	// The reservations come on top, so the blocks get CacheSize.
	cache := pebble.NewCache(o.CacheSize + 2*memTableSize)
	base := o.FS
	if base == nil {
		base = vfs.Default
	}
	if o.ReadOnly {
		base = readOnlyFS{base}
	}
	fs := newClosingFS(base)
	opts := &pebble.Options{
		FS:         fs,
		DisableWAL: !o.pebbleWAL,
		Cache:      cache,
		Logger:     pebbleLogger{o.Logger},
		// A saga's value is rewritten by each of its transitions within
		// milliseconds: a larger memtable lets those versions collapse
		// before they are flushed, which cut compaction work (half the CPU
		// of a replay in the profile) several fold.
		MemTableSize:                memTableSize,
		MemTableStopWritesThreshold: 4,
		// The history is written once and never changed, in keys that
		// mostly grow, and every flush holds a slice of all of it: with
		// Pebble's default (compact L0 at 4 sublevels) the same bytes were
		// merged again and again. Letting L0 grow to 16 sublevels before
		// compacting it raised replay from ~350k to ~420k transitions/s
		// and did not slow the commit path (bench/recovery, engine
		// BenchmarkRun4Steps). Point reads stay cheap: bloom filters
		// answer misses and the live cache serves sagas in flight. Writes
		// stop only at 48 sublevels (a stall would hold the commit loop).
		L0CompactionThreshold: 16,
		L0StopWritesThreshold: 48,
		ReadOnly:              o.ReadOnly,
		ErrorIfNotExists:      o.ReadOnly,
		// Pebble's default reaction to a damaged block is Logger.Fatalf,
		// which does not return (pebbleLogger panics): one flipped bit in
		// an sstable brought the process down, from a read or from a
		// compaction. The read that finds the damage returns it as an
		// error (pebble.IsCorruptionError) anyway: log it, and let it.
		EventListener: &pebble.EventListener{DataCorruption: func(info pebble.DataCorruptionInfo) {
			o.Logger.Error("fsm: damaged state file", "info", info.String())
		}},
	}
	// Bloom filters make the lookups that miss (a new saga id, a new
	// idempotency key) cheap.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		fs.closeAll()
		cache.Unref()
		return nil, fmt.Errorf("fsm: open pebble store %s: %w", dir, err)
	}
	tmpDir := filepath.Dir(filepath.Clean(dir))
	if o.FS != nil && o.FS != vfs.Default {
		tmpDir = os.TempDir()
	}
	s := &Store{db: db, fs: fs, dir: dir, tmpDir: tmpDir, cache: cache, live: map[string]*Saga{}, liveMax: o.LiveSagas, latest: map[string]*Definition{},
		replayBatch: int(2 * opts.MemTableSize)}
	if err := s.loadMeta(); err != nil {
		_ = s.CloseNoFlush()
		return nil, err
	}
	if err := s.ensureQueryIndex(o.ReadOnly); err != nil {
		_ = s.CloseNoFlush()
		return nil, err
	}
	return s, nil
}

// loadMeta reads the applied and source indexes, the restore marker and
// the max id from Pebble.
func (s *Store) loadMeta() error {
	for _, m := range []struct {
		key  []byte
		name string
		dst  *atomic.Uint64
	}{{keyApplied, "applied index", &s.applied}, {keySource, "source index", &s.source}} {
		v, closer, err := s.db.Get(m.key)
		switch {
		case errors.Is(err, pebble.ErrNotFound):
			m.dst.Store(0)
		case err != nil:
			return fmt.Errorf("fsm: read %s: %w", m.name, err)
		default:
			n := len(v)
			if n == 8 {
				m.dst.Store(binary.BigEndian.Uint64(v))
			}
			closer.Close()
			if n != 8 {
				return fmt.Errorf("fsm: %s has %d bytes, want 8", m.name, n)
			}
		}
	}
	_, closer, err := s.db.Get(keyRestoring)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		s.restoring.Store(false)
	case err != nil:
		return fmt.Errorf("fsm: read restore marker: %w", err)
	default:
		closer.Close()
		s.restoring.Store(true)
	}
	s.maxID = ""
	return s.loadMaxID()
}

// loadMaxID reads m/maxid; a store written before it existed gets it by
// one scan of the saga keys.
func (s *Store) loadMaxID() error {
	v, closer, err := s.db.Get(keyMaxID)
	if err == nil {
		s.maxID = string(v)
		return closer.Close()
	}
	if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("fsm: read max id: %w", err)
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefixSaga, UpperBound: upperBound(prefixSaga)})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if id := string(it.Key()[len(prefixSaga):]); hexID(id) && id > s.maxID {
			s.maxID = id
		}
	}
	return it.Error()
}

type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf("pebble: "+format, args...))
}
func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf("pebble: "+format, args...))
}
func (p pebbleLogger) Fatalf(format string, args ...any) {
	// Pebble calls Fatalf on invariant violations and expects no return.
	msg := fmt.Sprintf("pebble: "+format, args...)
	p.l.Error(msg)
	panic(msg)
}

// AppliedIndex is the log index of the last applied entry.
func (s *Store) AppliedIndex() uint64 { return s.applied.Load() }

// SourceIndex is the index, in a replicated log, of the last command
// applied with ApplyCommand (0 if none): a replica skips commands at or
// below it after a restart.
func (s *Store) SourceIndex() uint64 { return s.source.Load() }

// QueryReads is the number of query index keys that List and Count have
// visited since OpenStore (on a store without the indexes, the sagas they
// scanned). Its change across one call is what that query read: the
// benchmark harness reports it to show that a filtered list reads an
// index, not every saga.
func (s *Store) QueryReads() int64 { return s.querySteps.Load() }

// RestoreIncomplete reports whether a Restore was cut short (by a crash or
// an error): the state is then partial and must be restored again before
// it is used.
func (s *Store) RestoreIncomplete() bool { return s.restoring.Load() }

// Entry is one log entry to apply.
type Entry struct {
	Index uint64
	Rec   *Record
	Raw   []byte // the record as stored in the log (kept in the history)
}

// Result is the outcome of one entry: the saga after it (nil for define
// records and rejected entries), or the reason it was rejected.
type Result struct {
	Saga *Saga
	// Prev is the saga's state before the entry (0 for a new saga).
	Prev SagaState
	Def  *Definition
	Err  error
	// Removed lists the sagas a KindRemoved record removed, as they were
	// (children after their parent). The caller must not modify them.
	Removed []*Saga
}

// ApplyBatch applies entries, in order, in one Pebble batch that also
// records the last entry's index as applied. A rejected entry (illegal
// transition, duplicate key…) changes nothing but still counts as applied,
// deterministically on every replay. The returned error is an I/O error:
// then nothing of the batch is applied.
func (s *Store) ApplyBatch(entries []Entry) ([]Result, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	return s.applyBatch(entries, 0)
}

// ApplyCommand is ApplyBatch for a replica: it applies the entries of one
// command of a replicated log (possibly none: a command that carried
// nothing to apply) and records source, the command's index in that log,
// in the same batch. source must be greater than SourceIndex().
func (s *Store) ApplyCommand(source uint64, entries []Entry) ([]Result, error) {
	if source <= s.source.Load() {
		return nil, fmt.Errorf("fsm: command index %d does not follow the applied command index %d", source, s.source.Load())
	}
	if s.restoring.Load() {
		return nil, ErrRestoreIncomplete
	}
	return s.applyBatch(entries, source)
}

// Command is one command of a replicated log: its index there and the
// entries it carries (possibly none).
type Command struct {
	Source  uint64
	Entries []Entry
}

// Replica is the state a replicated log keeps on each member: committed
// commands are applied to it in log order, it is snapshotted, and it is
// replaced by a snapshot sent by the leader. *Store implements it; the
// engine implements it over its Store, so that its apply path is the only
// one in both modes (single-node and replicated).
type Replica interface {
	// ApplyCommands applies consecutive committed commands and returns
	// each command's results. An error is an I/O error: the member can
	// no longer apply and must stop (fail-stop).
	ApplyCommands(cmds []Command) ([][]Result, error)
	// Snapshot is a point-in-time view of the whole state.
	Snapshot() (*StoreSnapshot, error)
	// Restore replaces the whole state with a snapshot's.
	Restore(r io.Reader) error
	// SourceIndex is the index of the last command applied.
	SourceIndex() uint64
	// AppliedIndex is the index of the last record applied.
	AppliedIndex() uint64
	// RestoreIncomplete reports a Restore cut short: the state must be
	// restored again before it is used.
	RestoreIncomplete() bool
}

var _ Replica = (*Store)(nil)

// ApplyCommands applies consecutive commands of a replicated log in one
// Pebble batch, as ApplyCommand would one by one, and returns each
// command's results. Sources must increase; entry indexes must continue
// from AppliedIndex() across commands.
func (s *Store) ApplyCommands(cmds []Command) ([][]Result, error) {
	st, res, err := s.StageCommands(cmds)
	if err != nil || st == nil {
		return nil, err
	}
	if err := st.Commit(); err != nil {
		return nil, err
	}
	return res, nil
}

// StageCommands is the first half of ApplyCommands, as StageBatch is of
// ApplyBatch: it returns the staged batch (nil for no commands) and each
// command's results.
func (s *Store) StageCommands(cmds []Command) (*Staged, [][]Result, error) {
	if len(cmds) == 0 {
		return nil, nil, nil
	}
	if s.restoring.Load() {
		return nil, nil, ErrRestoreIncomplete
	}
	prev := s.source.Load()
	var all []Entry
	for _, c := range cmds {
		if c.Source <= prev {
			return nil, nil, fmt.Errorf("fsm: command index %d does not follow the command index %d", c.Source, prev)
		}
		prev = c.Source
		all = append(all, c.Entries...)
	}
	st, err := s.stage(all, prev)
	if err != nil {
		return nil, nil, err
	}
	out := make([][]Result, len(cmds))
	off := 0
	for i, c := range cmds {
		out[i] = st.results[off : off+len(c.Entries) : off+len(c.Entries)]
		off += len(c.Entries)
	}
	return st, out, nil
}

func (s *Store) applyBatch(entries []Entry, source uint64) ([]Result, error) {
	st, err := s.stage(entries, source)
	if err != nil {
		return nil, err
	}
	if err := st.Commit(); err != nil {
		return nil, err
	}
	return st.results, nil
}

// Staged is a batch of entries applied in memory but not yet to Pebble:
// its results are final, as the entries are in the log, but readers of
// the store see none of it until Commit. Between StageBatch and Commit
// (or Discard) nothing else may be applied to the store: the next batch
// starts from what this one commits.
//
// It lets an applier answer the entries' proposers from the results
// while Pebble takes the batch, the larger half of an apply's cost.
type Staged struct {
	a       *applier
	source  uint64
	results []Result
	done    bool
}

// StageBatch is the first half of ApplyBatch: it applies entries to a
// batch in memory and returns it with one Result per entry. The returned
// error is an I/O error: then nothing was staged.
func (s *Store) StageBatch(entries []Entry) (*Staged, error) {
	return s.stage(entries, 0)
}

func (s *Store) stage(entries []Entry, source uint64) (*Staged, error) {
	// Sized up front: a replay batch of thousands of entries otherwise
	// grows the batch by doubling and copying.
	size := 0
	for _, e := range entries {
		size += 2*len(e.Raw) + 64
	}
	a := s.newApplier(size)
	a.slabSize = len(entries)
	out := make([]Result, len(entries))
	if err := a.add(entries, out); err != nil {
		a.close()
		return nil, err
	}
	return &Staged{a: a, source: source, results: out}, nil
}

// Results are the staged entries' outcomes, one per entry.
func (st *Staged) Results() []Result { return st.results }

// Commit writes the staged batch to Pebble and makes it visible to
// readers. An error means nothing of it was applied; the store must not
// be applied to again (the entries are in the log: reopening replays
// them).
func (st *Staged) Commit() error {
	if st.done {
		return errors.New("fsm: staged batch committed or discarded already")
	}
	st.done = true
	defer st.a.close()
	return st.a.commit(st.source)
}

// Discard drops a staged batch without applying it.
func (st *Staged) Discard() {
	if !st.done {
		st.done = true
		st.a.close()
	}
}

// applier builds one Pebble batch from consecutive entries, possibly
// given in several calls to add, and commits it. Its overlays hold what
// the batch changes, for the entries after: a saga's value and indexes
// are written once per batch, however many of its transitions the batch
// holds. It is used by the store's one applier goroutine only.
type applier struct {
	s      *Store
	b      *pebble.Batch
	hk, hv []byte // scratch for history keys and values
	kb     []byte // scratch for the keys commit writes
	// sorted is set for a Replayer's batches, which Pebble sorts as it
	// commits them (a large batch becomes a memtable of its own): add
	// defers each entry's history (hist, histB, chains) and commit
	// writes the whole batch in key order (sw), which Pebble's sort then
	// only checks.
	sorted   bool
	hist     []histOp
	histB    []byte
	histKeys int // the bytes of the deferred history's keys
	sw       sortedWriter
	w        enc // scratch for saga values
	// ov is the overlay of the sagas this batch changed (or removed):
	// one map for what were four, looked up once per entry.
	ov   map[string]*overlay
	slab []overlay // where touch takes the next overlay from
	// slabSize is the size of the next slab: the batch's entries at
	// first (a live batch of one record touches one saga: a slab of 256
	// tripled the bytes a saga allocated), 256 after.
	slabSize int
	touched  []string               // ids in order of first change (those of ov)
	keys     map[string]string      // idempotency keys taken by this batch
	defs     map[string]*Definition // latest definitions written by this batch
	maxID    string
	last     uint64 // index of the last entry added; 0 before the first
	n        int    // entries added
	pending  int    // about the bytes commit will add (saga values, indexes)
}

func (s *Store) newApplier(size int) *applier {
	return &applier{
		s:     s,
		b:     s.db.NewBatchWithSize(size),
		ov:    make(map[string]*overlay),
		keys:  make(map[string]string),
		defs:  make(map[string]*Definition),
		maxID: s.maxID,
		last:  s.applied.Load(),
	}
}

func (a *applier) close() { a.b.Close() }

// overlay is what a batch holds of one saga it changed or removed.
type overlay struct {
	saga   *Saga // as the batch leaves it (nil: removed by it)
	before *Saga // as Pebble holds it (nil: none)
	// owned is set when no one else has seen saga (no Result carried
	// it): add may change it in place.
	owned bool
	// hist is the saga's chain of deferred history writes (a Replayer's
	// batch): indexes in applier.hist, head -1 for none.
	hist histChain
}

// touch returns the overlay of saga id, made with before as its state in
// Pebble if the batch had none.
func (a *applier) touch(id string, before *Saga) *overlay {
	if o, ok := a.ov[id]; ok {
		return o
	}
	if len(a.slab) == 0 {
		n := a.slabSize
		if n <= 0 || n > 256 {
			n = 256
		}
		a.slab = make([]overlay, n) // one allocation for many sagas
		a.slabSize = 256
	}
	o := &a.slab[0]
	a.slab = a.slab[1:]
	*o = overlay{before: before, saga: before, hist: histChain{-1, -1}}
	a.ov[id] = o
	a.touched = append(a.touched, id)
	return o
}

// histOp is one deferred history write: the set of h/<id>/<seq> to
// histB[off:end] (index BE and the record as logged), or its delete.
type histOp struct {
	seq      uint64
	off, end int
	next     int // the saga's next op, -1 for none
	del      bool
}

// histChain is a saga's deferred history writes, in order.
type histChain struct{ head, tail int }

// deferHistory records a history write of the saga of o for commit.
func (a *applier) deferHistory(o *overlay, id string, seq, index uint64, raw []byte, del bool) {
	op := histOp{seq: seq, next: -1, del: del}
	if !del {
		op.off = len(a.histB)
		a.histB = append(binary.BigEndian.AppendUint64(a.histB, index), raw...)
		op.end = len(a.histB)
	}
	i := len(a.hist)
	a.hist = append(a.hist, op)
	a.histKeys += len(prefixHist) + len(id) + 9
	if o.hist.head < 0 {
		o.hist = histChain{i, i}
		return
	}
	a.hist[o.hist.tail].next = i
	o.hist.tail = i
}

// writeHistory writes the deferred history of saga id to the batch, in
// the order it was deferred. removeTree calls it before its range
// delete of the saga's history, which must cover it.
func (a *applier) writeHistory(id string) error {
	o, ok := a.ov[id]
	if !ok {
		return nil
	}
	for i := o.hist.head; i >= 0; i = a.hist[i].next {
		op := &a.hist[i]
		a.hk = appendHistKey(a.hk[:0], id, op.seq)
		var err error
		if op.del {
			err = a.b.Delete(a.hk, nil)
		} else {
			err = a.b.Set(a.hk, a.histB[op.off:op.end], nil)
		}
		if err != nil {
			return err
		}
	}
	o.hist = histChain{-1, -1}
	return nil
}

// add applies entries to the batch. With out (one Result per entry) it
// reports each entry's outcome; without, the sagas the batch changes are
// changed in place after their first copy, since no result shares them.
// An error is an I/O error or entries that do not follow the applied
// index: the batch must then be dropped.
func (a *applier) add(entries []Entry, out []Result) error {
	s, b := a.s, a.b
	for i, e := range entries {
		if e.Index != a.last+1 {
			if a.n == 0 {
				return fmt.Errorf("fsm: entry index %d does not follow the applied index %d", e.Index, a.last)
			}
			return fmt.Errorf("fsm: entry index %d does not follow %d", e.Index, a.last)
		}
		a.last = e.Index
		a.n++
		var res Result
		r := e.Rec
		if r.Kind == KindDefine {
			latest, ok := a.defs[r.Def.Name]
			if !ok {
				var err error
				if latest, err = s.LatestDefinition(r.Def.Name); err != nil && !errors.Is(err, ErrUnknownDefinition) {
					return err
				}
			}
			d, err := ApplyDefinition(latest, r)
			if err != nil {
				res.Err = err
			} else {
				if err := b.Set(defKey(d.Name, d.Version), marshal(d, 256), nil); err != nil {
					return err
				}
				a.defs[d.Name] = d
				res.Def = d
			}
			if out != nil {
				out[i] = res
			}
			continue
		}
		if r.Kind == KindRemoved {
			if res.Err = r.Validate(); res.Err == nil {
				removed, err := a.remove(r)
				if err != nil {
					return err
				}
				res.Removed = removed
			}
			if out != nil {
				out[i] = res
			}
			continue
		}
		o := a.ov[r.Saga]
		var cur *Saga
		switch {
		case o != nil:
			cur = o.saga
		case r.Kind == KindSagaStarted && hexID(r.Saga) && r.Saga > a.maxID:
			// Greater than every id of its form ever applied: new for sure.
		default:
			var err error
			if cur, err = s.get(r.Saga); err != nil && !errors.Is(err, ErrUnknownSaga) {
				return err
			}
		}
		err, ioErr := a.keyTaken(r, cur)
		if ioErr != nil {
			return ioErr
		}
		var dropped uint64 // cur's, which an in-place apply changes
		if cur != nil {
			dropped = cur.HistoryDropped
		}
		var next *Saga
		switch {
		case err != nil:
		case out == nil && o != nil && cur != nil && o.owned && r.Kind != KindSagaStarted:
			// Validated as Apply would; cur is this batch's own copy.
			if err = r.Validate(); err == nil {
				if err = applyInPlace(cur, r); err == nil {
					next = cur
				}
			}
		case out == nil && cur == nil && r.Kind == KindSagaStarted:
			// Apply(nil, r), keeping the record's step definitions
			// instead of a copy (see Replayer.Apply).
			if err = r.Validate(); err == nil {
				next = startWith(r, r.Start.Steps)
			}
		default:
			next, err = Apply(cur, r)
		}
		if err != nil {
			res.Err = err
			if out != nil {
				out[i] = res
			}
			continue
		}
		if o == nil {
			o = a.touch(r.Saga, cur)
			a.pending += sagaSizeHint(next) + 3*64 // its value, keys and index keys
		}
		if a.sorted {
			a.deferHistory(o, next.ID, next.Seq, e.Index, e.Raw, false)
			if next.HistoryDropped != dropped {
				a.deferHistory(o, next.ID, next.HistoryDroppedLast, 0, nil, true)
			}
		} else {
			a.hk = appendHistKey(a.hk[:0], next.ID, next.Seq)
			a.hv = append(binary.BigEndian.AppendUint64(a.hv[:0], e.Index), e.Raw...)
			if err := b.Set(a.hk, a.hv, nil); err != nil {
				return err
			}
			if next.HistoryDropped != dropped {
				// Past its history cap: the record Apply dropped (history.go).
				a.hk = appendHistKey(a.hk[:0], next.ID, next.HistoryDroppedLast)
				if err := b.Delete(a.hk, nil); err != nil {
					return err
				}
			}
		}
		if r.Kind == KindSagaStarted && r.Start.IdempotencyKey != "" {
			a.keys[r.Start.IdempotencyKey] = r.Saga
		}
		if r.Kind == KindSagaStarted && hexID(r.Saga) && r.Saga > a.maxID {
			a.maxID = r.Saga
		}
		o.saga, o.owned = next, out == nil
		if out != nil {
			res.Saga = next
			if cur != nil {
				res.Prev = cur.State
			}
			out[i] = res
		}
	}
	return nil
}

// keyTaken returns a *DuplicateKeyError for a start whose idempotency key
// another saga holds, or the I/O error of looking the key up.
func (a *applier) keyTaken(r *Record, cur *Saga) (dup, err error) {
	if r.Kind != KindSagaStarted || r.Start == nil || r.Start.IdempotencyKey == "" || cur != nil {
		return nil, nil
	}
	k := r.Start.IdempotencyKey
	v, err := a.keyValue(k)
	if err != nil {
		return nil, err
	}
	if owner, _, _ := splitKeyValue(v); v != nil {
		return &DuplicateKeyError{Key: k, Existing: owner}, nil
	}
	return nil, nil
}

// commit writes each touched saga's value and indexes and the applied
// index (and source, if not 0) and commits the batch, then publishes the
// new state to the caches. An error means nothing of the batch was
// applied.
func (a *applier) commit(source uint64) error {
	s, b := a.s, a.b
	var w batchWriter = b
	if a.sorted {
		// The history first (h/ sorts before every key commit writes),
		// each saga's in order, the sagas in id order; then the rest,
		// sorted by sortedWriter.
		slices.Sort(a.touched)
		for _, id := range a.touched {
			if err := a.writeHistory(id); err != nil {
				return err
			}
		}
		w = &a.sw
	}
	for _, id := range a.touched {
		o := a.ov[id]
		if o.saga == nil {
			continue // removed by this batch (see removeTree)
		}
		if err := s.writeSaga(w, &a.w, &a.kb, o.before, o.saga); err != nil {
			return err
		}
	}
	if a.maxID != s.maxID {
		if err := w.Set(keyMaxID, []byte(a.maxID), nil); err != nil {
			return err
		}
	}
	if a.n > 0 {
		if err := w.Set(keyApplied, binary.BigEndian.AppendUint64(nil, a.last), nil); err != nil {
			return err
		}
	}
	if source != 0 {
		if err := w.Set(keySource, binary.BigEndian.AppendUint64(nil, source), nil); err != nil {
			return err
		}
	}
	if a.sorted {
		if err := a.sw.writeTo(b); err != nil {
			return err
		}
	}
	// NoSync: durability comes from the saga log; see the Store doc.
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("fsm: commit batch: %w", err)
	}
	s.applied.Store(a.last)
	if source != 0 {
		s.source.Store(source)
	}
	s.maxID = a.maxID
	s.mu.Lock()
	for name, d := range a.defs {
		s.latest[name] = d
	}
	for id, o := range a.ov {
		if sg := o.saga; sg == nil || sg.State.Terminal() {
			delete(s.live, id)
		} else if _, ok := s.live[id]; ok || len(s.live) < s.liveMax {
			s.live[id] = o.saga
		}
	}
	s.mu.Unlock()
	return nil
}

// Replayer applies a long run of log entries, as ApplyBatch would entry by
// entry, but in few large Pebble batches: the recovery of a log the state
// has not seen. Each saga's value is written once per batch, and a saga
// is copied once per batch and then changed in place. A batch of at least
// half a memtable is one Pebble does not copy into its memtable: it
// becomes a memtable of its own, flushed as it is (Pebble's large-batch
// path), which skips the skiplist inserts, and the fresh memtable memory,
// that were most of the cost of a replay.
//
// A Replayer gives no per-entry results. Entries must follow each other
// and AppliedIndex; AppliedIndex advances at each batch commit. Like
// ApplyBatch, it is for the store's one applier; reads are safe meanwhile.
type Replayer struct {
	s     *Store
	a     *applier
	limit int
	// spare holds the buffers of the last batch's applier, for the next:
	// growing them anew for each batch copied more than the batch held.
	spare replayBuffers
}

// replayBuffers are an applier's buffers that a Replayer reuses.
type replayBuffers struct {
	hist  []histOp
	histB []byte
	sw    sortedWriter
}

// NewReplayer returns a Replayer for s.
func (s *Store) NewReplayer() *Replayer {
	return &Replayer{s: s, limit: s.replayBatch}
}

// Apply applies entries. An error is an I/O error (or entries that do not
// follow): the batch being built is dropped, and what was committed
// before stays applied.
//
// The state may keep parts of the entries' records (a start's step
// definitions, outputs, errors): the caller must not change them
// afterwards. It may reuse the Record values themselves, and the Raw
// bytes, once Apply returns.
func (r *Replayer) Apply(entries []Entry) error {
	if r.a == nil {
		// Sized for a whole batch, with room for a chunk's overshoot:
		// growing it by doubling would copy it and touch fresh memory.
		r.a = r.s.newApplier(r.limit / 2)
		r.a.sorted = true
		sp := &r.spare
		if sp.histB == nil {
			// About what a batch of the limit holds (BenchmarkReplayer:
			// 19 MB of history values and 10 MB of other writes at 64 MB).
			sp.histB = make([]byte, 0, r.limit/3)
			sp.hist = make([]histOp, 0, r.limit/400)
			sp.sw.buf = make([]byte, 0, r.limit/6)
		}
		r.a.hist, r.a.histB, r.a.sw = sp.hist[:0], sp.histB[:0], sp.sw
	}
	if err := r.a.add(entries, nil); err != nil {
		r.a.close()
		r.a = nil
		return err
	}
	if r.a.memTableSize() >= r.limit {
		return r.Finish()
	}
	return nil
}

// nodeOverhead is less than what Pebble charges a key in a memtable
// beyond its key and value bytes (about 200: the tallest skiplist node,
// 20 levels of 8 bytes, a header and the key's trailer). Were it more, a
// replay batch could fall just short of the large-batch threshold and go
// through the memtable: slower, not wrong.
const nodeOverhead = 160

// memTableSize is about the room the batch would take in a memtable once
// committed, counting the saga values and index keys commit adds.
func (a *applier) memTableSize() int {
	return a.b.Len() + int(a.b.Count())*nodeOverhead + a.pending + len(a.touched)*3*nodeOverhead +
		len(a.histB) + a.histKeys + len(a.hist)*nodeOverhead
}

// Finish commits what Apply has added and not yet committed.
func (r *Replayer) Finish() error {
	a := r.a
	if a == nil {
		return nil
	}
	r.a = nil
	defer a.close()
	err := a.commit(0)
	if a.sorted {
		r.spare = replayBuffers{hist: a.hist[:0], histB: a.histB[:0], sw: a.sw}
	}
	return err
}

// sagaSizeHint is about the encoded size of sg, so that encoding it
// allocates once: a step with its definition and retry policies takes
// about 100 bytes.
func sagaSizeHint(sg *Saga) int {
	n := 128 + 128*len(sg.Steps) + len(sg.Input)
	for i := range sg.Steps {
		n += len(sg.Steps[i].Output)
	}
	return n
}

// writeSaga writes a saga's value and updates its indexes from prev (nil
// for a new saga) to next. w and kb are scratch for the value and the
// keys (Pebble's Batch.Set and Delete copy what they are given).
func (s *Store) writeSaga(b batchWriter, w *enc, kb *[]byte, prev, next *Saga) error {
	w.b = slices.Grow(w.b[:0], sagaSizeHint(next))
	next.appendMsgpack(w)
	k := append(append((*kb)[:0], prefixSaga...), next.ID...)
	*kb = k
	if err := b.Set(k, w.b, nil); err != nil {
		return err
	}
	if prev == nil {
		if next.IdempotencyKey != "" {
			k = append(append(k[:0], prefixKey...), next.IdempotencyKey...)
			*kb = k
			if err := b.Set(k, []byte(next.ID), nil); err != nil {
				return err
			}
		}
	}
	if prev == nil || prev.State != next.State {
		if prev != nil {
			k = appendStateKey(k[:0], prev.State, prev.ID)
			*kb = k
			if err := b.Delete(k, nil); err != nil {
				return err
			}
		}
		k = appendStateKey(k[:0], next.State, next.ID)
		*kb = k
		if err := b.Set(k, nil, nil); err != nil {
			return err
		}
	}
	return writeQueryKeys(b, kb, prev, next)
}

// Get returns a saga, or an error wrapping ErrUnknownSaga. The caller
// owns the result.
func (s *Store) Get(id string) (*Saga, error) {
	sg, err := s.get(id)
	if err != nil {
		return nil, err
	}
	return sg.DeepCopy(), nil
}

// Peek is Get without the copy: it returns the saga as the store holds
// it (its cache's value, or one just decoded), shared with the store and
// with every other caller. The caller must not modify it, nor anything it
// points to. The store never changes a saga it has published: a later
// transition makes a new one. For the engine, which treats every state
// as immutable; Get is for callers that keep or change what they read.
func (s *Store) Peek(id string) (*Saga, error) { return s.get(id) }

// get returns a saga that the caller must not modify.
func (s *Store) get(id string) (*Saga, error) {
	s.mu.RLock()
	cached, ok := s.live[id]
	s.mu.RUnlock()
	if ok {
		return cached, nil
	}
	v, closer, err := s.db.Get(sagaKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrUnknownSaga, id)
	}
	if err != nil {
		return nil, fmt.Errorf("fsm: read saga %s: %w", id, err)
	}
	defer closer.Close()
	var sg Saga
	if err := unmarshal(v, &sg); err != nil {
		return nil, fmt.Errorf("fsm: decode saga %s: %w", id, err)
	}
	return &sg, nil
}

// KeyOwner returns the id of the saga started with idempotency key k, or "".
// A key kept past its removed saga still names it (see retention.go).
func (s *Store) KeyOwner(k string) (string, error) {
	v, err := s.keyValue(k)
	owner, _, _ := splitKeyValue(v)
	return owner, err
}

// keyValue returns the stored k/ value of an idempotency key (nil: free).
func (s *Store) keyValue(k string) ([]byte, error) {
	v, closer, err := s.db.Get(idemKey(k))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fsm: read idempotency key: %w", err)
	}
	defer closer.Close()
	return slices.Clone(v), nil
}

// HistoryEntry is one applied transition of a saga.
type HistoryEntry struct {
	Seq    uint64
	Index  uint64 // log index
	Record *Record
}

// History returns the transitions applied to a saga, in order: every one,
// except the attempt records its history cap dropped (see history.go),
// which Saga.HistoryDropped summarises and which leave gaps in Seq.
func (s *Store) History(id string) ([]HistoryEntry, error) {
	p := histPrefix(id)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: upperBound(p)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []HistoryEntry
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		if len(v) < 8 || len(k) != len(p)+8 {
			return nil, fmt.Errorf("fsm: malformed history entry of saga %s", id)
		}
		r, err := Decode(v[8:])
		if err != nil {
			return nil, fmt.Errorf("fsm: history of saga %s: %w", id, err)
		}
		out = append(out, HistoryEntry{
			Seq:    binary.BigEndian.Uint64(k[len(p):]),
			Index:  binary.BigEndian.Uint64(v[:8]),
			Record: r,
		})
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		if _, err := s.Get(id); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Each calls fn for every saga in state st, in id order, until fn returns
// an error.
func (s *Store) Each(st SagaState, fn func(*Saga) error) error {
	p := key(prefixState, []byte{byte(st), '/'})
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: upperBound(p)})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		sg, err := s.Get(string(it.Key()[len(p):]))
		if err != nil {
			return err
		}
		if err := fn(sg); err != nil {
			return err
		}
	}
	return it.Error()
}

// CountByState returns the number of sagas in each state.
func (s *Store) CountByState() (map[SagaState]int, error) { return count(s.db) }

// CountLater takes a consistent snapshot now and returns a function that
// counts the sagas per state as of that snapshot, to be run later (and
// outside any lock the caller holds while taking it).
//
// It also returns the applied index the snapshot holds: a transition
// counted by the scan is one at or below it.
func (s *Store) CountLater() (uint64, func() (map[SagaState]int, error)) {
	snap := s.db.NewSnapshot()
	var applied uint64
	if v, closer, err := snap.Get(keyApplied); err == nil {
		if len(v) == 8 {
			applied = binary.BigEndian.Uint64(v)
		}
		closer.Close()
	}
	return applied, func() (map[SagaState]int, error) {
		defer snap.Close()
		return count(snap)
	}
}

type iterSource interface {
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

func count(src iterSource) (map[SagaState]int, error) {
	out := make(map[SagaState]int)
	for _, st := range States() {
		p := key(prefixState, []byte{byte(st), '/'})
		it, err := src.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: upperBound(p)})
		if err != nil {
			return nil, err
		}
		for it.First(); it.Valid(); it.Next() {
			out[st]++
		}
		err = it.Error()
		it.Close()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Definition returns one version of a definition.
func (s *Store) Definition(name string, version int) (*Definition, error) {
	v, closer, err := s.db.Get(defKey(name, version))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s version %d", ErrUnknownDefinition, name, version)
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	var d Definition
	if err := unmarshal(v, &d); err != nil {
		return nil, fmt.Errorf("fsm: decode definition %s: %w", name, err)
	}
	return &d, nil
}

// LatestDefinition returns the highest version of a definition.
func (s *Store) LatestDefinition(name string) (*Definition, error) {
	d, err := s.PeekLatestDefinition(name)
	if err != nil {
		return nil, err
	}
	return d.Clone(), nil
}

// PeekLatestDefinition is LatestDefinition without the copy: the
// definition is shared with the store's cache, and the caller must not
// modify it (its Steps included). A redefinition caches a new value.
func (s *Store) PeekLatestDefinition(name string) (*Definition, error) {
	s.mu.RLock()
	d, ok := s.latest[name]
	gen := s.cacheGen
	s.mu.RUnlock()
	if ok {
		return d, nil
	}
	d, err := s.latestFromDisk(name)
	if err != nil {
		return nil, err
	}
	if s.afterDiskRead != nil {
		s.afterDiskRead()
	}
	s.mu.Lock()
	// A newer version applied meanwhile wins; during a restore the disk
	// is changing under us, and one that began and ended since the read
	// replaced what was read: do not cache it.
	if _, ok := s.latest[name]; !ok && !s.restoring.Load() && s.cacheGen == gen {
		s.latest[name] = d
	}
	s.mu.Unlock()
	return d, nil
}

func (s *Store) latestFromDisk(name string) (*Definition, error) {
	p := key(prefixDef, []byte(name), []byte{0})
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: upperBound(p)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	if !it.Last() {
		if err := it.Error(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %s", ErrUnknownDefinition, name)
	}
	var d Definition
	if err := unmarshal(it.Value(), &d); err != nil {
		return nil, fmt.Errorf("fsm: decode definition %s: %w", name, err)
	}
	return &d, nil
}

// Definitions returns the latest version of every definition.
func (s *Store) Definitions() ([]*Definition, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefixDef, UpperBound: upperBound(prefixDef)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []*Definition
	for it.First(); it.Valid(); it.Next() {
		var d Definition
		if err := unmarshal(it.Value(), &d); err != nil {
			return nil, fmt.Errorf("fsm: decode definition: %w", err)
		}
		if n := len(out); n > 0 && out[n-1].Name == d.Name {
			out[n-1] = &d
		} else {
			out = append(out, &d)
		}
	}
	return out, it.Error()
}

// Checkpoint writes a consistent copy of the store to dest (a new
// directory; sstables are hard-linked where possible).
func (s *Store) Checkpoint(dest string) error {
	if err := s.db.Checkpoint(dest); err != nil {
		return fmt.Errorf("fsm: checkpoint to %s: %w", dest, err)
	}
	return nil
}

// Flush makes everything applied so far durable in Pebble's own files, so
// that the log before AppliedIndex()+1 may be truncated.
func (s *Store) Flush() error {
	if err := s.db.Flush(); err != nil {
		return fmt.Errorf("fsm: flush: %w", err)
	}
	return nil
}

// Close flushes and closes the store.
func (s *Store) Close() error {
	ferr := s.db.Flush()
	err := s.db.Close()
	s.fs.closeAll()
	s.cache.Unref()
	if ferr != nil {
		return fmt.Errorf("fsm: flush on close: %w", ferr)
	}
	return err
}

// CloseNoFlush closes the store without flushing its memtable, as a crash
// would: everything after the last flush must then come from log replay.
func (s *Store) CloseNoFlush() error {
	err := s.db.Close()
	s.fs.closeAll()
	s.cache.Unref()
	return err
}
