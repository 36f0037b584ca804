package policy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
)

// Engine is what ExecuteWithSaga needs of the saga engine; *engine.Engine
// implements it.
type Engine interface {
	Define(ctx context.Context, d engine.Definition) (*engine.Definition, error)
	Start(ctx context.Context, definition string, input []byte, o engine.StartOptions) (string, error)
	Advance(ctx context.Context, id string, r engine.StepResult) (*engine.Status, error)
	Abort(ctx context.Context, id, actor, reason string) (*engine.Status, error)
	Wait(ctx context.Context, id string) (*engine.Status, error)
	Status(ctx context.Context, id string) (*engine.Status, error)
}

// Saga is the handle a workflow marks its milestones on. Without a saga
// (policy off) it is a no-op that just runs each milestone's function.
type Saga interface {
	// Step runs one milestone. fn does the work and returns an output that
	// is recorded and handed to the milestone's compensation handler.
	// Milestones must run in the order the policy lists them. With a
	// saga, the record saying the milestone runs is durable before fn is
	// called; when fn fails, every completed milestone is compensated in
	// reverse order. The last milestone's success is recorded only when
	// the workflow returns nil: the saga never completes before the
	// workflow does. A workflow that fails after it is compensated whole
	// (the last milestone as uncertain, without its output); one that
	// fails between milestones reports the next as failed without running
	// it, so only the completed ones are compensated.
	Step(ctx context.Context, milestone string, fn func(ctx context.Context) ([]byte, error)) error
	// ID is the saga's id; "" without a saga.
	ID() string
}

// Result says how a call ran.
type Result struct {
	// Saga is true when the call ran as a saga.
	Saga   bool
	SagaID string
	// State is the saga's final state (zero without a saga).
	State fsm.SagaState
	// Fallback is true when the policy wanted a saga but the engine was
	// unavailable and the call ran without one (run_without_saga).
	Fallback bool
	// Duplicate is true when UserContext.IdempotencyKey was used by an
	// earlier call: the workflow did not run, and the result is that
	// call's saga.
	Duplicate bool
}

// noSaga is the handle when the policy is off: no allocation, no lock, no I/O.
type noSaga struct{}

func (noSaga) Step(ctx context.Context, _ string, fn func(ctx context.Context) ([]byte, error)) error {
	_, err := fn(ctx)
	return err
}

func (noSaga) ID() string { return "" }

// Executor runs workflows with or without a saga, as the policy says.
type Executor struct {
	m   *Manager
	eng Engine
	// defined remembers the operation specs already defined in the engine
	// (keyed by the immutable *Operation of a snapshot).
	defined sync.Map
}

// NewExecutor returns an Executor. eng may be nil (no engine configured):
// then operations that the policy switches on follow their fallback.
func NewExecutor(m *Manager, eng Engine) *Executor {
	return &Executor{m: m, eng: eng}
}

// ExecuteWithSaga runs workflow for one operation [the seed plan's
// _execute_with_saga]. When the policy says off, workflow runs with a
// no-op handle at the cost of a plain call. When on, each milestone the
// workflow marks with Step is a durable, compensable saga step; if the
// workflow fails, ExecuteWithSaga returns after the completed milestones
// were compensated (or the saga is STUCK), with the workflow's error.
func (x *Executor) ExecuteWithSaga(ctx context.Context, operation string, uc UserContext, input []byte,
	workflow func(ctx context.Context, s Saga) error) (Result, error) {
	snap := x.m.snap.Load()
	if !snap.Decide(operation, uc) {
		return Result{}, workflow(ctx, noSaga{})
	}
	return x.withSaga(ctx, snap, operation, uc, input, workflow)
}

func (x *Executor) withSaga(ctx context.Context, snap *Snapshot, operation string, uc UserContext, input []byte,
	workflow func(ctx context.Context, s Saga) error) (Result, error) {
	spec := snap.ops[operation]
	fallback := snap.fallback
	if spec.OnEngineUnavailable != "" {
		fallback = spec.OnEngineUnavailable
	}
	id, created, err := x.start(ctx, snap, operation, spec, uc, input)
	switch {
	case err != nil && !unavailable(err):
		// A bad definition, an unknown handler, a refused key: the
		// guarantees cannot be dropped for that.
		return Result{}, fmt.Errorf("policy: operation %s: starting its saga: %w", operation, err)
	case err != nil && fallback == Fail:
		return Result{}, fmt.Errorf("%w: operation %s: %w", ErrEngineUnavailable, operation, err)
	case err != nil:
		x.m.fallbacks.Add(1)
		x.m.opts.Logger.Warn("policy: saga engine unavailable; running without saga guarantees",
			"operation", operation, "err", err)
		return Result{Fallback: true}, workflow(ctx, noSaga{})
	case !created:
		return x.duplicate(ctx, operation, id)
	}
	h := &handle{x: x, id: id, milestones: spec.Milestones}
	defer func() {
		// A panicking workflow must not leave its saga in progress: undo
		// what it did, then let the panic go on.
		if p := recover(); p != nil {
			if !h.failed {
				_, _ = x.eng.Abort(durable(ctx), id, "policy", fmt.Sprintf("workflow panicked: %v", p))
			}
			panic(p)
		}
	}()
	werr := workflow(ctx, h)
	res := Result{Saga: true, SagaID: id}
	done := !h.failed && h.next == len(h.milestones)
	switch {
	case werr == nil && done:
		// Only now, with the workflow's success, does the saga complete.
		if _, err := x.eng.Advance(durable(ctx), id, engine.StepResult{Step: h.milestones[h.next-1].Name, Output: h.lastOut}); err != nil {
			return res, fmt.Errorf("policy: operation %s: recording its completion: %w", operation, err)
		}
		res.State = fsm.StateCompleted
		return res, nil
	case werr == nil && h.failed:
		werr = fmt.Errorf("%w: operation %s: a milestone failed but the workflow returned no error", ErrIncomplete, operation)
	case werr == nil:
		werr = fmt.Errorf("%w: operation %s stopped after %d of %d milestones", ErrIncomplete, operation, h.next, len(h.milestones))
	}
	var rerr error
	switch {
	case h.failed:
		// The failed milestone was reported: compensation runs.
	case done:
		// The workflow failed after its last milestone, whose completion
		// was held back: abort, which compensates it (as uncertain: its
		// output was not recorded) and every earlier one.
		_, rerr = x.eng.Abort(durable(ctx), id, "policy", werr.Error())
	default:
		// The workflow failed between milestones: the next one never
		// started, so it is reported failed (nothing to undo) and only the
		// completed ones are compensated.
		_, rerr = x.eng.Advance(durable(ctx), id, engine.StepResult{Step: h.milestones[h.next].Name,
			Err: fmt.Errorf("not started: the workflow returned first: %w", werr)})
	}
	if rerr != nil {
		return res, fmt.Errorf("%w (recording the failure of saga %s failed: %w)", werr, id, rerr)
	}
	st, err := x.eng.Wait(ctx, id)
	if err != nil {
		// The compensation goes on in the engine; the caller stops waiting.
		return res, fmt.Errorf("%w (saga %s is compensating; stopped waiting: %w)", werr, id, err)
	}
	res.State = st.State
	return res, werr
}

// unavailable reports whether a start error means the engine cannot run
// sagas now and started none (closed, stopped by an earlier I/O error, not
// the leader, read only, none configured): the only case in which
// run_without_saga may drop the guarantees. Not ErrOutcomeUnknown: the
// saga may be in the log, and would later compensate work done without
// it. Not the caller's own context ending: the call fails.
func unavailable(err error) bool {
	return errors.Is(err, errNoEngine) || errors.Is(err, engine.ErrClosed) || errors.Is(err, engine.ErrPoisoned) ||
		errors.Is(err, engine.ErrNotLeader) || errors.Is(err, engine.ErrReadOnly)
}

var errNoEngine = errors.New("no saga engine configured")

// duplicate answers a call whose idempotency key an earlier call used.
func (x *Executor) duplicate(ctx context.Context, operation, id string) (Result, error) {
	res := Result{Saga: true, SagaID: id, Duplicate: true}
	st, err := x.eng.Status(ctx, id)
	if err != nil {
		return res, fmt.Errorf("policy: operation %s: the saga %s of an earlier call with this key: %w", operation, id, err)
	}
	res.State = st.State
	if st.State == fsm.StateCompleted {
		return res, nil
	}
	return res, fmt.Errorf("%w: operation %s: saga %s is %s; the workflow did not run again", ErrDuplicateCall, operation, id, st.State)
}

// durable returns a context for the calls that record what happened: they
// must reach the log even when the caller's context has ended, or the
// saga would stay in progress with nobody to finish it.
func durable(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

// start defines the operation's saga (once per policy snapshot) and starts
// one on exactly that definition version, recording the policy it runs
// under.
func (x *Executor) start(ctx context.Context, snap *Snapshot, operation string, spec *Operation, uc UserContext, input []byte) (id string, created bool, err error) {
	if x.eng == nil {
		return "", false, errNoEngine
	}
	version, ok := x.defined.Load(spec)
	if !ok {
		d := engine.Definition{Name: operation}
		d.Durability, _ = engine.ParseDurability(spec.Durability) // validated with the policy
		for _, m := range spec.Milestones {
			d.Steps = append(d.Steps, engine.StepDef{Name: m.Name, Compensation: m.Compensation,
				CompensationRetry: retryPolicy(spec.Retry)})
		}
		def, err := x.eng.Define(ctx, d)
		if err != nil {
			return "", false, err
		}
		version = def.Version
		x.defined.Store(spec, version)
	}
	meta := map[string]string{"policy_version": strconv.FormatUint(snap.Version, 10)}
	if uc.TenantID != "" {
		meta["tenant"] = uc.TenantID
	}
	timeout := spec.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	// With a key, the saga's id is chosen here: a different id back from
	// Start means an earlier call holds the key.
	want := ""
	if uc.IdempotencyKey != "" {
		var b [10]byte
		_, _ = rand.Read(b[:])
		want = "pol-" + hex.EncodeToString(b[:])
	}
	id, err = x.eng.Start(ctx, operation, input, engine.StartOptions{ID: want, User: uc.UserID, Meta: meta,
		Version: version.(int), Timeout: timeout, IdempotencyKey: uc.IdempotencyKey})
	return id, err == nil && (want == "" || id == want), err
}

// retryPolicy turns an operation's retry settings into the engine's, unset
// fields taking the engine's compensation defaults: a partial setting never
// means "no backoff" or "no bound".
func retryPolicy(r *Retry) engine.RetryPolicy {
	p := engine.RetryPolicy(compensation.DefaultCompensationPolicy())
	if r == nil {
		return p
	}
	if r.InitialBackoff > 0 {
		p.InitialBackoff = r.InitialBackoff
	}
	if r.MaxBackoff > 0 {
		p.MaxBackoff = r.MaxBackoff
	}
	if r.MaxAttempts > 0 {
		p.MaxAttempts = r.MaxAttempts
		if r.MaxElapsed == 0 {
			p.MaxElapsed = 0 // bounded by the count alone
		}
	}
	if r.MaxElapsed > 0 {
		p.MaxElapsed = r.MaxElapsed
	}
	return p
}

// handle is the Saga of a call that runs as a saga.
type handle struct {
	x          *Executor
	id         string
	milestones []Milestone
	next       int
	failed     bool   // a milestone failed and was reported: compensation runs
	lastOut    []byte // the last milestone's output, recorded when the workflow returns
}

func (h *handle) ID() string { return h.id }

func (h *handle) Step(ctx context.Context, milestone string, fn func(ctx context.Context) ([]byte, error)) error {
	if h.failed {
		return fmt.Errorf("%w: milestone %q after a failed one", ErrMilestoneOrder, milestone)
	}
	if h.next >= len(h.milestones) || h.milestones[h.next].Name != milestone {
		want := "none (all ran)"
		if h.next < len(h.milestones) {
			want = strconv.Quote(h.milestones[h.next].Name)
		}
		return fmt.Errorf("%w: ran %q, the policy's next milestone is %s", ErrMilestoneOrder, milestone, want)
	}
	// The engine recorded this milestone as running (Start, or the
	// previous Advance): the side effect may happen now. Its outcome is
	// recorded even if the caller's context ended meanwhile.
	out, err := fn(ctx)
	if err == nil && h.next == len(h.milestones)-1 {
		// The last milestone: its success completes the saga, which must
		// wait for the workflow's own success (see withSaga).
		h.lastOut, h.next = out, h.next+1
		return nil
	}
	if _, aerr := h.x.eng.Advance(durable(ctx), h.id, engine.StepResult{Step: milestone, Output: out, Err: err}); aerr != nil {
		if err != nil {
			return fmt.Errorf("%w (and recording the failure failed: %v)", err, aerr)
		}
		return aerr
	}
	h.next++
	if err != nil {
		h.failed = true
		return err
	}
	return nil
}
