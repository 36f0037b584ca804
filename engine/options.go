package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/wal"
)

// Options configures an Engine. The zero value works (with an empty
// registry, which suits sagas whose steps have no compensation). Open
// copies it and never modifies the caller's value.
type Options struct {
	// Registry holds the step actions and compensation handlers that
	// definitions name. Default: an empty registry.
	Registry *compensation.Registry
	// Logger receives the engine's structured logs. Default slog.Default().
	Logger *slog.Logger
	// Clock drives backoff, timeouts and deadlines. Default the wall clock.
	Clock compensation.Clock
	// Rand returns numbers in [0,1) for backoff jitter. Default math/rand/v2.
	Rand func() float64
	// Hooks are called on transitions; see Hooks.
	Hooks Hooks
	// TracerProvider, if set, turns tracing on: a span per saga (a child
	// of the span of the context given to Start or Run), a span per
	// attempt of an action or a compensation, events for operator
	// actions; the W3C trace context of the start is recorded in the
	// saga's start record, so that spans after a crash, a restart or a
	// failover continue the trace; handlers get a context with their
	// span and the recorded baggage. See trace.go. Default nil: off, at
	// no cost (nothing recorded, no span, no allocation).
	TracerProvider trace.TracerProvider

	// DefaultCompensationRetry applies to steps whose definition sets no
	// compensation retry policy. Default compensation.DefaultCompensationPolicy():
	// backoff from 100ms to 30s for up to 10 minutes, then STUCK.
	DefaultCompensationRetry compensation.Policy
	// DefaultActionRetry applies to steps whose definition sets no action
	// retry policy. Default compensation.DefaultActionPolicy(): one attempt.
	DefaultActionRetry compensation.Policy

	// MaxParallelSteps bounds the handler calls in flight at once for one
	// saga with parallel steps (after): ready steps beyond it wait for a
	// call to end. Default 16.
	MaxParallelSteps int
	// HandlerConcurrency bounds, per action or compensation handler name,
	// the calls of it in flight at once across every saga of the engine
	// (a remote service that must not be flooded, after a restart with
	// many sagas to resume, say). Names not in the map are unbounded.
	HandlerConcurrency map[string]int

	// Retention is how long a finished (COMPLETED or FAILED) saga is kept
	// after it finished, for definitions that set none of their own
	// (Definition.Retention): then it is removed with its history, and
	// handed to the Archiver first if there is one. STUCK and running
	// sagas are never removed. Default DefaultRetention (7 days);
	// KeepForever keeps every saga. See retention.go.
	Retention time.Duration
	// DedupeWindow is how long after its saga finished an idempotency
	// key still refuses a second start with it. It is at least the
	// retention of the saga's definition (a key is kept past its saga
	// when the window is longer). Default: Retention; KeepForever keeps
	// keys forever. Shorter than Retention is an error.
	DedupeWindow time.Duration
	// RemovalInterval is how often the engine removes expired sagas (on
	// the leader, in a replicated group). Default DefaultRemovalInterval;
	// ManualRemoval: only when RemoveExpired is called.
	RemovalInterval time.Duration
	// RemovalBatch bounds the sagas one removal record names. Default 512.
	RemovalBatch int
	// Archiver, if set, receives each finished saga with its history
	// before the saga is removed; a saga is removed only once Archive
	// returned nil for it. Package archive is a file sink.
	Archiver Archiver

	// HistoryCap bounds the history of each saga started from now on
	// (the cap travels in its start record, so a saga keeps the cap it
	// started with): past it, the oldest attempts of a retry loop (a
	// compensation retried for days, a step retried many times) are
	// dropped from the history and summarised in the saga's
	// fsm.Saga.HistoryDropped; the start, every completion and failure,
	// aborts and operator actions are always kept (the rule is in
	// fsm/history.go). Recovery never reads the history. Default
	// DefaultHistoryCap records; UnlimitedHistory keeps every record.
	HistoryCap int

	// MaxBatch bounds the records in one group commit (one log fsync).
	// Default 4096.
	MaxBatch int
	// CheckpointEvery is the number of applied records after which the
	// state is flushed and the log truncated up to it. Default 262144.
	CheckpointEvery uint64
	// WAL configures the saga log (record size limit, segment size). The
	// engine's default segment size is 8 MiB: a checkpoint truncates the
	// log at a segment start, and tidwall/wal rewrites that segment while
	// appends wait, so smaller segments mean shorter stalls.
	WAL wal.Options
	// StoreCacheSize is the Pebble block cache in bytes. Default 32 MiB;
	// Pebble's memtables (32 MiB each, usually one or two) come on top.
	StoreCacheSize int64
	// StoreFS is the file system under the saga state (Pebble), for every
	// access: Open's read-only probe, the store, its flushes. Default
	// vfs.Default. A seam for fault injection (pebble's vfs/errorfs) and
	// for latency: it must wrap the disk the data directory is on, since
	// the directory lock, the log and Inspect's scratch copy use the disk
	// directly.
	StoreFS vfs.FS

	// Inspect opens the directory for inspection (sagactl): the log is
	// replayed into the state, but no saga is resumed, no deadline armed
	// and no handler run; calls that change state fail with ErrReadOnly.
	Inspect bool

	// Replicator, if set, runs the engine as one member of a replicated
	// group (see Replicator; package replication builds one). The engine
	// then keeps no log of its own in dir (WAL, WrapLog, MaxBatch and
	// CheckpointEvery do not apply) and owns the replicator: Close closes
	// it.
	Replicator Replicator
	// OpenReplicator, if set, opens the Replicator once Open holds the
	// data directory's lock, for a replicator whose files live in dir (as
	// sagad's raft log does in DATA/raft): a second process started on the
	// same directory is then refused before it opens them. Not with
	// Replicator. An error is Open's error, and nothing else is opened.
	OpenReplicator func() (Replicator, error)

	// WrapLog, if set, receives the log after it is opened and returns
	// the one the engine uses: a seam for fault injection (failing writes
	// or syncs) and for benchmarks that add latency to every sync.
	WrapLog func(Log) Log
}

// DefaultHistoryCap is the history cap of a saga (Options.HistoryCap)
// when Options sets none: a thousand records, far more than a saga that
// does not retry for long ever writes (a 256-step saga that compensates
// writes under 800), and a few hundred kilobytes per saga at most.
const DefaultHistoryCap = 1000

// UnlimitedHistory as Options.HistoryCap keeps every record of every
// saga's history.
const UnlimitedHistory = -1

// EnsureDefaults fills every unset field with its default.
func (o *Options) EnsureDefaults() {
	if o.Registry == nil {
		o.Registry = compensation.NewRegistry()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = compensation.RealClock{}
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	if o.DefaultCompensationRetry.IsZero() {
		o.DefaultCompensationRetry = compensation.DefaultCompensationPolicy()
	}
	if o.DefaultActionRetry.IsZero() {
		o.DefaultActionRetry = compensation.DefaultActionPolicy()
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 4096
	}
	if o.HistoryCap == 0 {
		o.HistoryCap = DefaultHistoryCap
	}
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.DedupeWindow == 0 {
		o.DedupeWindow = o.Retention
	}
	if o.RemovalInterval == 0 {
		o.RemovalInterval = DefaultRemovalInterval
	}
	if o.RemovalBatch <= 0 {
		o.RemovalBatch = 512
	}
	if o.MaxParallelSteps <= 0 {
		o.MaxParallelSteps = 16
	}
	if o.CheckpointEvery == 0 {
		o.CheckpointEvery = 1 << 18
	}
	if o.WAL.Logger == nil {
		o.WAL.Logger = o.Logger
	}
	if o.WAL.SegmentSize == 0 {
		o.WAL.SegmentSize = 8 << 20
	}
	o.WAL.EnsureDefaults() // MaxRecordSize: propose checks it
}

// Validate reports every problem of the options at once. Open validates
// the caller's values before it fills in defaults, so a negative size is an
// error, never replaced by the default.
func (o *Options) Validate() error {
	var errs []error
	if o.MaxParallelSteps < 0 {
		errs = append(errs, fmt.Errorf("MaxParallelSteps %d is negative", o.MaxParallelSteps))
	}
	for _, name := range slices.Sorted(maps.Keys(o.HandlerConcurrency)) {
		if n := o.HandlerConcurrency[name]; n <= 0 {
			errs = append(errs, fmt.Errorf("HandlerConcurrency[%q] is %d: a bound must be positive (leave the name out for none)", name, n))
		}
	}
	if o.MaxBatch < 0 {
		errs = append(errs, fmt.Errorf("MaxBatch %d is negative", o.MaxBatch))
	}
	if o.HistoryCap < 0 && o.HistoryCap != UnlimitedHistory {
		errs = append(errs, fmt.Errorf("HistoryCap %d is negative (0 is the default, UnlimitedHistory keeps every record)", o.HistoryCap))
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"Retention", o.Retention}, {"DedupeWindow", o.DedupeWindow}} {
		if d.d < 0 && d.d != KeepForever {
			errs = append(errs, fmt.Errorf("%s %s is negative (0 is the default, KeepForever keeps forever)", d.name, d.d))
		}
	}
	ret := o.Retention
	if ret == 0 {
		ret = DefaultRetention
	}
	if w := o.DedupeWindow; w != 0 && w != KeepForever && (ret == KeepForever || w < ret) {
		errs = append(errs, fmt.Errorf("DedupeWindow %s is shorter than the retention %s: an idempotency key must outlive its saga", w, ret))
	}
	if o.RemovalInterval < 0 && o.RemovalInterval != ManualRemoval {
		errs = append(errs, fmt.Errorf("RemovalInterval %s is negative (ManualRemoval turns the removal loop off)", o.RemovalInterval))
	}
	if o.RemovalBatch < 0 || o.RemovalBatch > fsm.MaxRemoval {
		errs = append(errs, fmt.Errorf("RemovalBatch %d is outside [0, %d]", o.RemovalBatch, fsm.MaxRemoval))
	}
	if o.StoreCacheSize < 0 {
		errs = append(errs, fmt.Errorf("StoreCacheSize %d is negative", o.StoreCacheSize))
	}
	if err := o.WAL.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("field WAL: %w", err))
	}
	for _, p := range []struct {
		name string
		p    compensation.Policy
	}{{"DefaultCompensationRetry", o.DefaultCompensationRetry}, {"DefaultActionRetry", o.DefaultActionRetry}} {
		rp := fsm.RetryPolicy(p.p)
		d := fsm.Definition{Name: "options", Steps: []fsm.StepDef{{Name: "x", Retry: rp}}}
		if d.Validate() != nil {
			errs = append(errs, fmt.Errorf("%s has a negative value or a jitter outside [0,1]", p.name))
		}
	}
	if o.Replicator != nil && o.OpenReplicator != nil {
		errs = append(errs, errors.New("give Replicator or OpenReplicator, not both"))
	}
	if (o.Replicator != nil || o.OpenReplicator != nil) && o.Inspect {
		errs = append(errs, errors.New("option Inspect opens a single-node data directory; a replicated member is inspected through its leader or the admin API"))
	}
	if o.WAL.NoRepair && !o.Inspect {
		errs = append(errs, errors.New("WAL.NoRepair opens the log for reading only, and every transition would fail: set Inspect to inspect a data directory"))
	}
	if (o.Replicator != nil || o.OpenReplicator != nil) && o.WrapLog != nil {
		errs = append(errs, errors.New("WrapLog does not apply with a Replicator (the replicator owns the log)"))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidOptions, errors.Join(errs...))
}

// Hooks are optional callbacks. They run on the engine's commit path, so
// they must be fast and must not call back into the engine.
type Hooks struct {
	// OnTransition is called for every applied transition, after it is
	// durable and the state machine has applied it, and before the
	// caller that proposed it is acknowledged. Pebble may not hold it
	// yet: the engine's reads wait until it does.
	OnTransition func(TransitionEvent)
	// OnCommit is called after each group commit with its size and the
	// time its log append (write + fsync) took: once the batch is
	// durable, before the state machine applies it and before any of its
	// proposers is acknowledged. Single-node mode only: a replicated
	// member's log appends are its replicator's.
	OnCommit func(records int, appendTime time.Duration)
	// OnPoisoned is called once when an I/O error stops the engine.
	OnPoisoned func(err error)
	// OnRecovered is called once at the end of Open.
	OnRecovered func(RecoveryStats)
}

// TransitionEvent describes one applied transition.
type TransitionEvent struct {
	Index  uint64        // log index
	Record *fsm.Record   // the transition
	Saga   *fsm.Saga     // the saga after it (nil for definitions); read only
	Prev   fsm.SagaState // the saga's state before it (0 for a new saga)
}

// RecoveryStats describes what Open did.
type RecoveryStats struct {
	AppliedIndex uint64        // state's applied index found on disk
	LastIndex    uint64        // log's last index
	Replayed     uint64        // log entries replayed into the state
	Resumed      int           // sagas resumed (compensations and engine-driven steps)
	Stuck        int           // STUCK sagas waiting for an operator
	Duration     time.Duration // time spent in Open
}
