// Package engine is the embedded saga engine: the only place where the log
// (package wal), the state machine (package fsm) and the handlers (package
// compensation) meet.
//
// The ordering contract, which every public call and every handler
// invocation follows:
//
//  1. A transition is appended to the log and fsynced BEFORE it is applied
//     to the state machine (log before apply).
//  2. A call that changes state returns success only AFTER its transition
//     is durable and applied (ack after apply). Its error says whether it
//     was not applied, or, after an I/O error, that the outcome is unknown
//     (errors.Is(err, ErrOutcomeUnknown)). The one exception is chosen per
//     saga: a pipelined saga's forward progress (DurabilityPipelined) is
//     made durable while its next step runs, never more than one step
//     ahead; its start and its finish are acknowledged after apply.
//  3. A step action or compensation handler is invoked only AFTER a durable
//     record says it is about to run (persist before side effect). After a
//     crash such a step is uncertain, and recovery treats it by its
//     declared policy.
//  4. After any log write or sync error the engine is poisoned: no further
//     acknowledgement until it is reopened (fail-stop).
//
// Transitions of concurrent sagas share log batches (group commit): one
// fsync acknowledges every transition that arrived while the previous one
// was in flight.
//
// # Handlers' contexts, logs and traces
//
// An action or compensation handler runs on a context of the engine (it
// ends when the engine closes, the saga is aborted or the step's timeout
// passes), not on the caller's: a saga outlives the call that started
// it. Logger(ctx) is a logger naming the call's saga, step, kind and
// attempt. With Options.TracerProvider set, the context also carries the
// attempt's span and the baggage of the caller's context at Start; the
// saga's span is a child of the caller's span, and the caller's W3C
// trace context is kept in the saga's start record, so that the spans of
// a saga resumed after a crash, a restart or a failover continue the same
// trace under the same parent span. See trace.go for the span tree and
// why the saga span is a child of the caller's rather than linked to it.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/wal"
)

// Errors returned by the engine. Errors of the state machine and of the
// registry pass through wrapped; those a user meets are re-exported in
// types.go (ErrUnknownSaga, ErrIllegalTransition, ErrUnknownDefinition,
// ErrUnknownHandler, …), with the states, Registry, Call and Permanent, so
// an application imports package engine alone.
// Every error but ErrOutcomeUnknown and ErrNotSettled means "not applied".
var (
	// ErrOutcomeUnknown: an I/O error struck while the transition was being
	// made durable. It may or may not be in the log; reopen the engine and
	// look at the saga. The engine is poisoned.
	ErrOutcomeUnknown = errors.New("engine: outcome unknown after an I/O error")
	// ErrPoisoned: an earlier I/O error stopped the engine (fail-stop);
	// nothing was applied. Close and reopen it.
	ErrPoisoned = errors.New("engine: stopped by an earlier I/O error; close and reopen it")
	// ErrClosed: the engine is closed.
	ErrClosed = errors.New("engine: closed")
	// ErrLocked: another process holds the data directory.
	ErrLocked = errors.New("engine: data directory is locked by another process")
	// ErrInvalidOptions: Options.Validate found problems.
	ErrInvalidOptions = errors.New("engine: invalid options")
	// ErrInvalidArgument: a call's argument is malformed (or too large).
	ErrInvalidArgument = errors.New("engine: invalid argument")
	// ErrNotSettled: Run started the saga (it is durable and continues in
	// the background) but returned before it settled, because its context
	// ended. The returned Status carries the saga's id. Not "not applied".
	ErrNotSettled = errors.New("engine: saga started but not settled yet")
	// ErrNotDriven: Run or an engine-driven operation on a definition whose
	// steps have no actions.
	ErrNotDriven = errors.New("engine: definition has steps without actions")
	// ErrNotDataDir: Open with Options.Inspect on a directory that holds no
	// engine log (wal/): not an engine's data directory, or a replicated
	// member's, whose log is raft's.
	ErrNotDataDir = errors.New("engine: not a saga data directory")
	// ErrRecovery: Open found the log and the state inconsistent.
	ErrRecovery = errors.New("engine: recovery failed")
	// ErrReadOnly: a change was asked of an engine opened with Inspect.
	ErrReadOnly = errors.New("engine: opened for inspection (read only)")
)

// IsNotApplied reports whether err guarantees that nothing was applied:
// true for every non-nil error except ErrOutcomeUnknown and ErrNotSettled.
func IsNotApplied(err error) bool {
	return err != nil && !errors.Is(err, ErrOutcomeUnknown) && !errors.Is(err, ErrNotSettled)
}

// Log is what the engine needs of its log. *wal.Log implements it; see
// Options.WrapLog.
type Log interface {
	// Append makes recs durable as consecutive entries (one fsync) and
	// returns the index of the first.
	Append(recs [][]byte) (first uint64, err error)
	// Scan calls fn for each entry from index from on. The payload is
	// valid only until fn returns.
	Scan(from uint64, fn func(index uint64, payload []byte) error) error
	FirstIndex() uint64
	LastIndex() uint64
	// TruncateFront drops the entries before index.
	TruncateFront(index uint64) error
	// SegmentStarts lists the indexes TruncateFront handles cheaply.
	SegmentStarts() ([]uint64, error)
	Close() error
}

// Engine runs sagas durably. It is safe for concurrent use.
type Engine struct {
	dir   string
	opts  Options
	log   Log
	wal   *wal.Log // the real log under any wrapper, for Stats
	store *fsm.Store
	lock  *os.File
	// scratch is the temporary copy of the state an inspection replays
	// into; removed by Close.
	scratch string

	tr     *tracing    // nil when Options.TracerProvider is (trace.go)
	wq     writerQueue // the single-node commit path (commit.go)
	checks sync.Pool   // of *fsm.Saga: scratch states change checks records on
	// limits holds a semaphore per handler name of
	// Options.HandlerConcurrency; fixed at Open.
	limits   map[string]chan struct{}
	ckpt     chan struct{}
	ckptDone chan struct{}

	ctx     context.Context // cancelled by Close: stops drivers and timers
	workers *workers        // the goroutines that run handler invocations
	cancel  context.CancelFunc
	drivers sync.WaitGroup // goroutines that drive sagas
	bg      sync.WaitGroup // the deadline scheduler

	dlIn chan dlMsg // to the deadline loop, which owns the deadlines

	// closeMu orders store reads of public calls with Close closing the
	// store; storeClosed is set under its write lock.
	closeMu     sync.RWMutex
	storeClosed bool

	applyMu sync.Mutex // the apply stage: applies in log order, ordered with poisoning
	// unseen is set while a batch whose proposers were answered is being
	// committed to Pebble: closed once readers of the store see it
	// (applyLocked, awaitVisible).
	unseen atomic.Pointer[chan struct{}]
	// beforeCommit, if set (tests), runs after a batch's proposers were
	// answered and before the batch is committed to Pebble.
	beforeCommit func()
	// commitErr, if set (tests), fails every Pebble commit of a batch.
	commitErr error
	// behind is set when a batch whose proposers were answered failed
	// its Pebble commit: the store is behind what they were told, and
	// read refuses.
	behind   atomic.Pointer[error]
	mu       sync.Mutex
	closing  bool // Close has begun
	refused  bool // Open failed after starting the engine: Close flushes nothing
	poison   error
	runs     map[string]*run
	watchers map[string][]chan *fsm.Saga // woken with the settled saga
	defMu    sync.Mutex
	removeMu sync.Mutex // one RemoveExpired at a time

	// counts holds the number of sagas per state once StateCounts has
	// been called (counted lazily: a scan of the index); deltas gathers
	// the changes applied while that scan runs. Both under applyMu.
	counts, deltas map[fsm.SagaState]int
	countFrom      uint64     // applied index of the snapshot a first count scans
	countMu        sync.Mutex // one first count at a time

	// term is the current term of leadership (replicated mode only).
	term atomic.Pointer[term]

	lastID        atomic.Int64
	sinceCkpt     atomic.Uint64
	commits       atomic.Uint64
	committedRecs atomic.Uint64
	syncWaits     atomic.Uint64 // see Stats.SyncWaits
	recovery      RecoveryStats
}

// run is the in-memory companion of a saga that is not terminal. r.mu
// guards every field: a transition holds it from reading saga to caching
// the applied result; the scheduler (driver.go) decides under it what to
// start and registers it in calls. No handler runs under it.
type run struct {
	mu sync.Mutex
	// saga is the latest applied state; nil until loaded. It is shared
	// (with the store's cache, the results of transitions, handlers in
	// flight) and never modified: a transition replaces it.
	saga    *fsm.Saga
	calls   map[int]*invocation // handler invocations in flight, by step
	backoff time.Duration       // pause before driving again after a transient failure
	// ahead is the outcome of the saga's latest records queued ahead of
	// their durability (pipelined mode); nil once they are known durable.
	ahead *future
	// queued counts the changes of a saga with parallel steps whose
	// records are in the log queue and not yet known durable: saga
	// includes them (later records are built on it), so nothing may start
	// from it until queued is 0. rekick says a kick was put off meanwhile;
	// the change that brings queued to 0 makes it.
	queued int
	rekick bool
	// back is the writer queue's generation of the write that answered
	// this saga's latest proposal, while the queue counts the saga among
	// those expected back with their next record (writerQueue.returning);
	// 0 otherwise.
	back atomic.Uint64
	// inQueue counts the saga's proposals in the writer queue, not yet
	// taken into a write (under the queue's mu): a saga with a record
	// queued is not expected back, its record is (a parallel saga whose
	// next step waits for that record would hold a write for itself).
	inQueue atomic.Int32
	// backAt is when the write that set back was made durable, in
	// UnixNano: the start of the saga's comeback.
	backAt atomic.Int64
}

// invokerKey is the context key of the run whose step invocation a
// context belongs to (launch).
type invokerKey struct{}

// invokerOf returns the run whose step invocation ctx belongs to, if any.
func invokerOf(ctx context.Context) *run {
	r, _ := ctx.Value(invokerKey{}).(*run)
	return r
}

// Open opens the engine in dir, creating it if needed, and recovers: it
// replays every log entry after the state's applied index, then resumes
// every saga that is not terminal. It returns once the state is replayed;
// resumed compensations and engine-driven steps continue in the background.
func Open(dir string, opts Options) (*Engine, error) {
	start := time.Now()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.EnsureDefaults()
	if _, err := os.Stat(filepath.Join(dir, "wal")); opts.Inspect && err != nil {
		return nil, fmt.Errorf("%w: %s holds no wal/ (%w)", ErrNotDataDir, dir, err)
	}
	if ok, err := wal.Exists(filepath.Join(dir, "wal")); opts.Inspect && err == nil && !ok {
		// Open would create the log: inspection changes nothing.
		return nil, fmt.Errorf("%w: %s holds no log (no segment, no EXTENT file)", ErrNotDataDir, filepath.Join(dir, "wal"))
	}
	created := false
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		created = true
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("engine: create %s: %w", dir, err)
		}
		// Make the new directory's entry durable in its parent.
		if d, err := os.Open(filepath.Dir(filepath.Clean(dir))); err == nil {
			err = d.Sync()
			d.Close()
			if err != nil {
				return nil, fmt.Errorf("engine: sync parent of %s: %w", dir, err)
			}
		}
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	if opts.OpenReplicator != nil {
		r, err := opts.OpenReplicator()
		if err == nil && r == nil {
			err = errors.New("engine: OpenReplicator returned no replicator and no error")
		}
		if err != nil {
			if created {
				// Made above and still empty: a refused Open leaves no
				// directory. Removed under the lock: a second Open that
				// locked it in between would go on in a directory gone.
				_ = os.Remove(dir)
			}
			unlockDir(lock)
			return nil, err
		}
		opts.Replicator, opts.OpenReplicator = r, nil
	}
	e := &Engine{
		dir:      dir,
		opts:     opts,
		lock:     lock,
		runs:     map[string]*run{},
		wq:       writerQueue{grew: make(chan struct{}, 1), maxHold: defaultMaxHold},
		limits:   handlerLimits(opts.HandlerConcurrency),
		watchers: map[string][]chan *fsm.Saga{},
		ckpt:     make(chan struct{}, 1),
		ckptDone: make(chan struct{}),
		dlIn:     make(chan dlMsg, 256),
		tr:       newTracing(opts.TracerProvider),
	}
	replicated := opts.Replicator != nil
	fail := func(err error) (*Engine, error) {
		if e.cancel != nil {
			e.cancel()
		}
		if e.workers != nil {
			e.workers.close()
		}
		if replicated {
			_ = opts.Replicator.Close() // before the store it applies to
		}
		if e.store != nil {
			_ = e.store.CloseNoFlush()
		}
		if e.scratch != "" {
			_ = os.RemoveAll(filepath.Dir(e.scratch))
		}
		if e.log != nil {
			_ = e.log.Close()
		}
		unlockDir(lock)
		return nil, err
	}
	// A replicated member keeps no log of its own: raft's is the log, and
	// the replicator fills the state.
	stateDir := filepath.Join(dir, "state")
	if !replicated {
		if err := e.openLog(stateDir); err != nil {
			return fail(err)
		}
		if opts.Inspect {
			// Inspection replays into a scratch copy of the state, so the
			// state's own files stay exactly as they were.
			if stateDir, err = scratchState(stateDir); err != nil {
				return fail(err)
			}
			e.scratch = stateDir
		}
	}
	e.store, err = fsm.OpenStore(stateDir, fsm.StoreOptions{
		Logger: opts.Logger, CacheSize: opts.StoreCacheSize, FS: opts.StoreFS,
	})
	if err != nil {
		return fail(err)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.workers = &workers{}
	if replicated {
		if err := e.openReplicated(); err != nil {
			return fail(err)
		}
		e.recovery.Duration = time.Since(start)
		e.opts.Logger.Info("engine: open (replicated member)", "dir", e.dir,
			"applied_index", e.recovery.AppliedIndex, "command_index", e.store.SourceIndex())
	} else {
		if err := e.replay(); err != nil {
			return fail(err)
		}
		// Single-node mode has one term of leadership, the engine's life.
		e.term.Store(&term{ctx: e.ctx, cancel: e.cancel})
		e.curTerm().ready.Store(true)
		go e.checkpointLoop()
		if !opts.Inspect {
			e.bg.Add(2)
			go e.deadlineLoop()
			go e.retentionLoop()
			resumed, stuck, err := e.resumeAll(e.ctx)
			if err != nil {
				// A read of the state failed (a damaged table, say): refuse,
				// and leave the state's files as they were.
				e.refused = true
				_ = e.Close()
				return nil, fmt.Errorf("%w: read the sagas to resume: %w", ErrRecovery, err)
			}
			e.recovery.Resumed, e.recovery.Stuck = resumed, stuck
		}
		e.recovery.Duration = time.Since(start)
		e.opts.Logger.Info("engine: open",
			"dir", dir, "applied_index", e.recovery.AppliedIndex, "replayed", e.recovery.Replayed,
			"resumed", e.recovery.Resumed, "stuck", e.recovery.Stuck, "duration", e.recovery.Duration)
	}
	if h := e.opts.Hooks.OnRecovered; h != nil {
		h(e.recovery)
	}
	return e, nil
}

// openLog opens the single-node log in dir/wal. It decides everything
// before anything is written: the log's plan needs the state's applied
// index, read from a read-only open of the state.
func (e *Engine) openLog(stateDir string) error {
	walDir := filepath.Join(e.dir, "wal")
	if err := requireLog(walDir, stateDir); err != nil {
		return err
	}
	walOpts := e.opts.WAL
	walOpts.NoRepair = walOpts.NoRepair || e.opts.Inspect
	walOpts.Applied = func() (uint64, error) {
		applied, err := storedAppliedIndex(stateDir, e.opts.StoreFS)
		if err != nil {
			return 0, fmt.Errorf("%w: read the applied index of the state in %s: %w", ErrRecovery, stateDir, err)
		}
		// A log that starts after the state's next index lacks records the
		// state lacks too. Refused here, before wal.Open or the state's
		// read-write open change a file (replay would refuse only after
		// Pebble had rewritten its MANIFEST, or created a new store where
		// the state was removed).
		starts, err := wal.SegmentStartsIn(walDir)
		if err != nil {
			return 0, err
		}
		if len(starts) > 0 && starts[0] > applied+1 {
			return 0, fmt.Errorf("%w: the state has applied index %d but the log starts at %d: "+
				"entries in between are gone (was the state directory removed or replaced?); nothing was changed",
				ErrRecovery, applied, starts[0])
		}
		return applied, nil
	}
	w, err := wal.Open(walDir, walOpts)
	if err != nil {
		var refused *wal.RefusedError
		if errors.As(err, &refused) || errors.Is(err, wal.ErrBadExtent) || errors.Is(err, wal.ErrCorrupt) {
			err = fmt.Errorf("%w: %w. See what a repair would do: sagactl --dir %s wal repair --dry-run", ErrRecovery, err, e.dir)
		}
		return err
	}
	e.wal, e.log = w, w
	if e.opts.WrapLog != nil {
		e.log = e.opts.WrapLog(w)
	}
	return nil
}

// requireLog refuses a data directory whose state exists without its log:
// the log was removed, and with it every transition the state has not
// applied. (A new directory gets its log before its state.)
func requireLog(walDir, stateDir string) error {
	ents, err := os.ReadDir(stateDir)
	if errors.Is(err, os.ErrNotExist) || (err == nil && len(ents) == 0) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("engine: read %s: %w", stateDir, err)
	}
	ok, err := wal.Exists(walDir)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRecovery, err)
	}
	if !ok {
		return fmt.Errorf("%w: %w: %s holds a state but %s holds no log (no segment, no EXTENT file): "+
			"the log was removed, and with it the transitions not yet checkpointed; nothing was changed. "+
			"Restore the directory from a backup or replica", ErrRecovery, wal.ErrLost, stateDir, walDir)
	}
	return nil
}

// StoredAppliedIndex reads the applied index of the state of the stopped
// engine in dir without changing a file (0 when it has no state yet): every
// log record up to it is durable in the state.
func StoredAppliedIndex(dir string) (uint64, error) {
	return storedAppliedIndex(filepath.Join(dir, "state"), nil)
}

func storedAppliedIndex(stateDir string, fs vfs.FS) (uint64, error) {
	ents, err := os.ReadDir(stateDir)
	if errors.Is(err, os.ErrNotExist) || (err == nil && len(ents) == 0) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	st, err := fsm.OpenStore(stateDir, fsm.StoreOptions{ReadOnly: true, CacheSize: 1 << 20, FS: fs,
		Logger: slog.New(slog.DiscardHandler)})
	if errors.Is(err, pebble.ErrDBDoesNotExist) && !slices.ContainsFunc(ents, func(e os.DirEntry) bool {
		return strings.HasSuffix(e.Name(), ".sst")
	}) {
		// A crash while Pebble created the store (its LOCK written, its
		// MANIFEST not yet made current) left no state: none was applied.
		// (A log that does not start at 1 is refused by the caller.)
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	applied := st.AppliedIndex()
	return applied, st.CloseNoFlush()
}

// scratchState copies the state in stateDir (if any) to a new temporary
// directory and returns the copy's path. The engine is not running (the
// caller holds the lock), so the files are still: immutable sstables are
// hard-linked (Pebble never rewrites one; deleting the link leaves the
// original), everything else is copied.
func scratchState(stateDir string) (string, error) {
	tmp, err := os.MkdirTemp("", "saga-inspect-")
	if err != nil {
		return "", fmt.Errorf("engine: scratch directory: %w", err)
	}
	copyDir := filepath.Join(tmp, "state")
	ents, err := os.ReadDir(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return copyDir, nil // no state yet: replay into an empty one
	}
	if err == nil {
		err = os.MkdirAll(copyDir, 0o750)
	}
	for _, ent := range ents {
		if err != nil {
			break
		}
		if ent.IsDir() {
			continue
		}
		src, dst := filepath.Join(stateDir, ent.Name()), filepath.Join(copyDir, ent.Name())
		if strings.HasSuffix(ent.Name(), ".sst") && os.Link(src, dst) == nil {
			continue
		}
		err = copyFile(src, dst)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("engine: copy the state for inspection: %w", err)
	}
	return copyDir, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// lockDir takes an exclusive flock on the data directory itself, so that
// locking writes no file: an offline inspection of a stopped directory
// leaves it exactly as it was. (Versions before this one locked a LOCK
// file in the directory; such a file is left alone.)
func lockDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("engine: open %s to lock it: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %s (%v)", ErrLocked, dir, err)
	}
	return f, nil
}

func unlockDir(f *os.File) {
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	_ = f.Close()
}

// replay applies every log entry after the state's applied index.
func (e *Engine) replay() error {
	applied := e.store.AppliedIndex()
	first, last := e.log.FirstIndex(), e.log.LastIndex()
	e.recovery.AppliedIndex, e.recovery.LastIndex = applied, last
	if applied > last {
		return fmt.Errorf("%w: the state has applied index %d but the log ends at %d: "+
			"acknowledged log entries are missing (was the wal directory replaced?)", ErrRecovery, applied, last)
	}
	if applied+1 < first {
		return fmt.Errorf("%w: the state has applied index %d but the log starts at %d: "+
			"entries in between are gone (was the state directory replaced?)", ErrRecovery, applied, first)
	}
	// Reading and decoding the log runs in its own goroutine, ahead of
	// applying: on two cores that overlaps the two halves of the work.
	// Chunks go round between the two: one being read, two queued, one
	// being applied. Their records and payload bytes are reused from
	// round to round, so replay touches little new memory (a first touch
	// of a page costs more than decoding what it holds, on some VMs).
	const chunk, nChunks = 4096, 4
	chunks := make(chan *replayChunk, nChunks-2)
	free := make(chan *replayChunk, nChunks)
	for range nChunks {
		free <- &replayChunk{recs: make([]fsm.Record, chunk), entries: make([]fsm.Entry, 0, chunk)}
	}
	readErr := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		defer close(chunks)
		var c *replayChunk
		take := func() bool {
			select {
			case c = <-free:
				c.entries, c.raw = c.entries[:0], c.raw[:0]
				return true
			case <-stop:
				return false
			}
		}
		send := func() bool {
			select {
			case chunks <- c:
				c = nil
				return true
			case <-stop:
				return false
			}
		}
		errStopped := errors.New("stopped")
		if !take() {
			readErr <- nil
			return
		}
		// The Replayer only reads the records: they may share their
		// starts' step definitions (fsm.Decoder).
		dec := fsm.NewDecoder()
		err := e.log.Scan(applied+1, func(idx uint64, p []byte) error {
			// p is valid only during the call: the chunk keeps a copy.
			n := len(c.entries)
			r := &c.recs[n]
			if err := dec.Decode(p, r); err != nil {
				return fmt.Errorf("%w: log entry %d: %v", ErrRecovery, idx, err)
			}
			off := len(c.raw)
			c.raw = append(c.raw, p...)
			c.entries = append(c.entries, fsm.Entry{Index: idx, Rec: r, Raw: c.raw[off:len(c.raw):len(c.raw)]})
			if n+1 == chunk && (!send() || !take()) {
				return errStopped
			}
			return nil
		})
		if err == nil && len(c.entries) > 0 {
			send()
		}
		if errors.Is(err, errStopped) {
			err = nil
		}
		readErr <- err
	}()
	// The replayer applies the chunks in large Pebble batches; an entry
	// counts as replayed once added (a failure fails Open anyway).
	rp := e.store.NewReplayer()
	var applyErr error
	for c := range chunks {
		if applyErr != nil {
			continue
		}
		if err := rp.Apply(c.entries); err != nil {
			applyErr = fmt.Errorf("%w: %v", ErrRecovery, err)
			close(stop)
			continue
		}
		e.recovery.Replayed += uint64(len(c.entries))
		free <- c // the Replayer keeps nothing of a chunk once applied
	}
	if applyErr == nil {
		if err := rp.Finish(); err != nil {
			applyErr = fmt.Errorf("%w: %v", ErrRecovery, err)
		}
	}
	if err := <-readErr; err != nil {
		return err
	}
	if applyErr != nil {
		return applyErr
	}
	e.sinceCkpt.Store(e.recovery.Replayed)
	return nil
}

// replayChunk is a run of decoded log entries on its way from the reader
// to the applier. Raw payloads point into raw, records into recs: both
// are reused once the chunk is applied.
type replayChunk struct {
	entries []fsm.Entry
	recs    []fsm.Record
	raw     []byte
}

// transitionHooks runs the OnTransition hook for each applied entry.
func (e *Engine) transitionHooks(entries []fsm.Entry, results []fsm.Result) {
	hook := e.opts.Hooks.OnTransition
	if hook == nil {
		return
	}
	for i, res := range results {
		if res.Err == nil {
			hook(TransitionEvent{Index: entries[i].Index, Record: entries[i].Rec, Saga: res.Saga, Prev: res.Prev})
		}
	}
}

// afterApply ends the spans and wakes the waiters of sagas that settled.
func (e *Engine) afterApply(results []fsm.Result) {
	var settled []*fsm.Saga
	for _, res := range results {
		if res.Err == nil && res.Saga != nil && (res.Saga.State.Terminal() || res.Saga.State == fsm.StateStuck) {
			settled = append(settled, res.Saga)
		}
	}
	if len(settled) == 0 {
		return
	}
	if e.tr != nil {
		for _, sg := range settled {
			e.tr.settle(sg)
		}
	}
	e.mu.Lock()
	for _, sg := range settled {
		for _, ch := range e.watchers[sg.ID] {
			ch <- sg // buffered, one send per channel
		}
		delete(e.watchers, sg.ID)
	}
	e.mu.Unlock()
}

// checkpointLoop flushes the state and truncates the log behind it.
func (e *Engine) checkpointLoop() {
	defer close(e.ckptDone)
	for range e.ckpt {
		if err := e.checkpoint(); err != nil {
			e.opts.Logger.Warn("engine: checkpoint failed", "err", err)
		}
	}
}

func (e *Engine) checkpoint() error {
	applied := e.store.AppliedIndex()
	if err := e.store.Flush(); err != nil {
		return err
	}
	e.sinceCkpt.Store(0)
	// Everything up to applied is now in Pebble's files: the log before
	// applied+1 is no longer needed. Cut at a segment start so nothing is
	// rewritten.
	starts, err := e.log.SegmentStarts()
	if err != nil {
		return err
	}
	cut := uint64(0)
	for _, s := range starts {
		if s <= applied+1 {
			cut = s
		}
	}
	if cut <= e.log.FirstIndex() {
		return nil
	}
	if err := e.log.TruncateFront(cut); err != nil {
		e.failStop(nil, fmt.Errorf("log truncation: %w", err))
		return err
	}
	e.opts.Logger.Debug("engine: checkpoint", "applied_index", applied, "log_first_index", cut)
	return nil
}

// propose submits records, all of one saga (or one definition), as one
// unit and waits for them to be durable and applied. Once submitted, the
// proposal is waited for even if ctx ends: abandoning it would turn a
// known outcome into an unknown one.
func (e *Engine) propose(ctx context.Context, recs []*fsm.Record) ([]fsm.Result, error) {
	return e.proposeFor(ctx, recs, nil)
}

// proposeFor is propose for a change of the saga of r (nil for none).
func (e *Engine) proposeFor(ctx context.Context, recs []*fsm.Record, r *run) ([]fsm.Result, error) {
	p, err := e.proposal(ctx, recs)
	if err != nil {
		return nil, err
	}
	p.run = r
	if e.opts.Replicator != nil {
		return e.proposeReplicated(ctx, p.raw)
	}
	return e.commit(p)
}

// proposal encodes recs and checks that the engine takes proposals.
func (e *Engine) proposal(ctx context.Context, recs []*fsm.Record) (*proposal, error) {
	p := &proposal{recs: recs, from: invokerOf(ctx)}
	raw := p.one[:]
	if len(recs) > len(p.one) {
		raw = make([][]byte, len(recs))
	}
	raw = raw[:len(recs)]
	for i, r := range recs {
		b, err := fsm.Encode(r)
		if err != nil {
			return nil, err
		}
		if len(b) > e.opts.WAL.MaxRecordSize {
			return nil, fmt.Errorf("%w: %s record of saga %s encodes to %d bytes, over the %d-byte limit (Options.WAL.MaxRecordSize): %w",
				ErrInvalidArgument, r.Kind, r.Saga, len(b), e.opts.WAL.MaxRecordSize, wal.ErrRecordTooLarge)
		}
		raw[i] = b
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if e.opts.Inspect {
		return nil, ErrReadOnly
	}
	if poison := e.poisoned(); poison != nil {
		return nil, fmt.Errorf("%w (cause: %v)", ErrPoisoned, poison)
	}
	p.raw, p.done = raw, make(chan proposalResult, 1)
	return p, nil
}

// getRun returns the in-memory run of a saga, creating it.
func (e *Engine) getRun(id string) *run {
	e.mu.Lock()
	r, ok := e.runs[id]
	if !ok {
		r = &run{}
		e.runs[id] = r
	}
	e.mu.Unlock()
	return r
}

// lockRun returns the saga's run with r.mu held, and only a run that is
// still the saga's: one dropped while this caller waited for its lock is
// an orphan, whose calls would no longer keep a step from running twice.
func (e *Engine) lockRun(id string) *run {
	for {
		r := e.getRun(id)
		r.mu.Lock()
		e.mu.Lock()
		cur := e.runs[id] == r
		e.mu.Unlock()
		if cur {
			return r
		}
		r.mu.Unlock()
	}
}

// read runs f, a read of the store, unless Close has closed the store.
func (e *Engine) read(f func() error) error {
	e.awaitVisible()
	e.closeMu.RLock()
	defer e.closeMu.RUnlock()
	if e.storeClosed {
		return ErrClosed
	}
	if cause := e.behind.Load(); cause != nil {
		return fmt.Errorf("%w (cause: %v): the state is behind what was acknowledged; reopen to replay the log", ErrPoisoned, *cause)
	}
	return f()
}

// transition serializes a change to one saga: under the saga's lock it
// builds the records from the current state, checks them against the pure
// state machine (so an illegal change never reaches the log), proposes
// them and caches the result.
func (e *Engine) transition(ctx context.Context, id string, build func(cur *fsm.Saga) ([]*fsm.Record, error)) (*fsm.Saga, error) {
	sg, _, err := e.change(ctx, id, build, false, nil)
	return sg, err
}

// transitionAhead is transition for the forward progress of a pipelined
// saga (the engine's own records, or its caller's Advance): when the
// records leave the saga in progress, it returns as soon as they have
// their place in the log, with the state they lead to (cached as the
// saga's state: every later record of the saga is queued after them).
// Otherwise, in strict mode and in replicated mode, it is transition. prev
// is the future of the records before these, the ones that began the step
// now done: the caller must waitDurable(prev) before the next step begins,
// so that the saga is never more than one step ahead of the log. then, if
// set, runs under the saga's lock with the new state.
func (e *Engine) transitionAhead(ctx context.Context, id string, build func(cur *fsm.Saga) ([]*fsm.Record, error), then func(*run, *fsm.Saga)) (next *fsm.Saga, prev *future, err error) {
	return e.change(ctx, id, build, true, then)
}

// waitDurable returns once the records of f are durable (at once for a
// nil f), with their error.
func (e *Engine) waitDurable(f *future) error { return f.wait(&e.syncWaits) }

// future is the outcome of records queued ahead of their durability.
type future struct {
	done chan struct{}
	err  error
}

// wait returns once the records are durable (at once for a nil f),
// counting in waits a wait that had to block (Stats.SyncWaits).
func (f *future) wait(waits *atomic.Uint64) error {
	if f == nil {
		return nil
	}
	select {
	case <-f.done:
	default:
		waits.Add(1) // this step waits for the disk
		<-f.done
	}
	return f.err
}

// change is transition and transitionAhead: it returns the saga's new
// state and the future of the records queued before these and not yet
// known durable (nil if none).
func (e *Engine) change(ctx context.Context, id string, build func(cur *fsm.Saga) ([]*fsm.Record, error), ahead bool, then func(*run, *fsm.Saga)) (*fsm.Saga, *future, error) {
	if err := e.gate(ctx); err != nil {
		return nil, nil, err
	}
	var rekick bool
	defer func() {
		if rekick {
			e.kick(id)
		}
	}()
	r := e.lockRun(id)
	defer r.mu.Unlock()
	// Whatever happens, a run whose saga is gone or terminal leaves memory.
	defer e.dropRunLocked(id, r)
	if r.saga == nil {
		var sg *fsm.Saga
		err := e.read(func() (err error) { sg, err = e.store.Peek(id); return err })
		if err != nil {
			return nil, nil, err
		}
		r.saga = sg
	}
	recs, err := build(r.saga)
	if err != nil {
		return nil, nil, err
	}
	if len(recs) == 0 {
		return r.saga, r.ahead, nil // nothing to change
	}
	// The check runs on a scratch state: the state the records lead to is
	// the one the store applies (and shares), except when queued ahead.
	scratch, _ := e.checks.Get().(*fsm.Saga)
	if scratch == nil {
		scratch = new(fsm.Saga)
	}
	defer func() {
		scratch.Reset()
		e.checks.Put(scratch)
	}()
	next := r.saga
	for _, rec := range recs {
		if next, err = fsm.ApplyInto(scratch, next, rec); err != nil {
			return nil, nil, err
		}
	}
	if ahead && e.opts.Replicator == nil && next.Durability == fsm.DurabilityPipelined && next.State == fsm.StateInProgress {
		next = next.Clone() // shared from here on: r.saga, the caller's
		p, err := e.proposal(ctx, recs)
		if err != nil {
			return nil, nil, err
		}
		p.run = r
		lead, err := e.enqueue(p)
		if err != nil {
			return nil, nil, err
		}
		prev, f := r.ahead, &future{done: make(chan struct{})}
		r.saga, r.ahead = next, f
		if then != nil {
			then(r, next)
		}
		go func() {
			results, err := e.await(p, lead)
			for _, res := range results {
				if err == nil && res.Err != nil {
					err = res.Err // cannot happen: built under the lock, queued in order
				}
			}
			if err != nil {
				r.mu.Lock()
				r.saga = nil // reload from the store if ever used again
				r.mu.Unlock()
			}
			f.err = err
			close(f.done)
		}()
		return next, prev, nil
	}
	if e.opts.Replicator == nil && next.Parallel() {
		sg, err := e.changeQueued(ctx, r, recs, next.Clone(), then)
		if r.queued == 0 && r.rekick {
			r.rekick, rekick = false, true
		}
		return sg, nil, err
	}
	results, err := e.proposeFor(ctx, recs, r)
	if err != nil {
		if errors.Is(err, ErrOutcomeUnknown) {
			r.saga = nil // reload from the store if ever used again
		}
		return nil, nil, err
	}
	for _, res := range results {
		if res.Err != nil {
			// Cannot happen while every change goes through this lock;
			// the state machine rejected it deterministically.
			r.saga = nil
			return nil, nil, res.Err
		}
	}
	// Durable, and with it every record of the saga queued before.
	r.saga, r.ahead = results[len(results)-1].Saga, nil
	if then != nil {
		then(r, r.saga)
	}
	return r.saga, nil, nil
}

// changeQueued is change for a saga with parallel steps (single-node):
// several of its invocations record outcomes at once, and holding r.mu
// across each fsync would give each its own. So the records take their
// place in the log under the lock, next (the state they lead to) becomes
// the saga's, and the lock is let go while they become durable: the
// changes of branches that end together share one fsync. It returns once
// they are durable, with r.mu held again. Persist before side effect
// holds: kick starts nothing while a change is queued (r.queued), and
// every caller acts on its own change only once it returns.
func (e *Engine) changeQueued(ctx context.Context, r *run, recs []*fsm.Record, next *fsm.Saga, then func(*run, *fsm.Saga)) (*fsm.Saga, error) {
	p, err := e.proposal(ctx, recs)
	if err != nil {
		return nil, err
	}
	p.run = r
	lead, err := e.enqueue(p)
	if err != nil {
		return nil, err
	}
	r.saga = next
	r.queued++
	if then != nil {
		then(r, next)
	}
	// Steps of the saga still running whose records are not queued yet
	// (r.calls holds every invocation in flight, this one too): a write
	// this proposal leads holds for them, briefly, to share their fsync.
	var siblings func() bool
	if lead && len(r.calls) > r.queued {
		siblings = func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return len(r.calls) <= r.queued
		}
	}
	r.mu.Unlock()
	e.syncWaits.Add(1)
	results, err := e.awaitHolding(p, lead, siblings)
	for _, res := range results {
		if err == nil && res.Err != nil {
			err = res.Err // cannot happen: built under the lock, queued in order
		}
	}
	r.mu.Lock()
	r.queued--
	if err != nil {
		// The log is poisoned (every record queued after these fails
		// too): reload from the store if the saga is ever used again.
		r.saga = nil
		return nil, err
	}
	return next, nil
}

// dropRunLocked forgets the run of a saga that is gone (not loaded) or
// terminal, once nothing of it is in flight. r.mu held.
func (e *Engine) dropRunLocked(id string, r *run) {
	if (r.saga != nil && !r.saga.State.Terminal()) || len(r.calls) > 0 || r.queued > 0 {
		return
	}
	e.mu.Lock()
	if e.runs[id] == r {
		delete(e.runs, id)
	}
	e.mu.Unlock()
}

// Close stops the drivers (an action or compensation in flight sees its
// context cancelled and is treated as uncertain at the next Open), lets
// the writer queue answer what it holds, flushes the state and closes the
// log. It waits
// for handlers in flight to return: a handler that ignores its context
// holds Close up. A second Close returns ErrClosed.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closing {
		e.mu.Unlock()
		return ErrClosed
	}
	e.closing = true
	e.cancel()
	e.mu.Unlock()
	e.bg.Wait()
	e.drivers.Wait()
	e.workers.close()
	e.tr.endAll("engine closed")
	var errs []error
	// Stop what feeds the store first: the replicator's applies, or the
	// writer queue and the checkpoints.
	if e.opts.Replicator != nil {
		errs = append(errs, e.opts.Replicator.Close())
	} else {
		e.closeQueue()
		close(e.ckpt)
		<-e.ckptDone
	}
	poison := e.poisoned()
	e.closeMu.Lock()
	e.storeClosed = true
	e.closeMu.Unlock()
	if poison != nil || e.opts.Inspect || e.refused {
		// Do not flush a state that may be ahead of an unknown log (an
		// inspection's state is a scratch copy, removed below).
		errs = append(errs, e.store.CloseNoFlush())
	} else {
		errs = append(errs, e.store.Close())
	}
	// Every file is released whatever failed; a poisoned engine reports
	// what stopped it (the log's Close returns it for an I/O error of the
	// log, the poison covers an error of the state).
	if e.log != nil {
		logErr := e.log.Close()
		errs = append(errs, logErr)
		if poison != nil && logErr == nil {
			errs = append(errs, fmt.Errorf("%w (cause: %v)", ErrPoisoned, poison))
		}
	}
	if e.scratch != "" {
		_ = os.RemoveAll(filepath.Dir(e.scratch))
	}
	unlockDir(e.lock)
	return errors.Join(errs...)
}

// Stats are counters since Open.
type Stats struct {
	Commits     uint64 // group commits (log appends)
	Records     uint64 // records committed
	LogSyncs    uint64 // fsyncs of the log
	LogSyncTime time.Duration
	// SyncWaits counts the times a call or a step waited for its records
	// to become durable (single-node mode): 5 for a strict 4-step saga, 2
	// for a pipelined one whose steps outlast an fsync. Group commit
	// shares fsyncs among waits; it does not reduce this count.
	SyncWaits    uint64
	AppliedIndex uint64
	Recovery     RecoveryStats
}

// Stats returns counters since Open. AppliedIndex covers every record
// whose proposer has been answered.
func (e *Engine) Stats() Stats {
	var ws wal.Stats
	if e.wal != nil {
		ws = e.wal.Stats()
	}
	// AppliedIndex covers every record a proposer was answered for: the
	// batch answered before its Pebble commit is waited for.
	e.awaitVisible()
	return Stats{
		Commits:      e.commits.Load(),
		Records:      e.committedRecs.Load(),
		LogSyncs:     ws.Syncs,
		LogSyncTime:  ws.SyncTime,
		SyncWaits:    e.syncWaits.Load(),
		AppliedIndex: e.store.AppliedIndex(),
		Recovery:     e.recovery,
	}
}
