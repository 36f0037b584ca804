package policy

import (
	"context"
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
}

// Saga is the handle a workflow marks its milestones on. Without a saga
// (policy off) it is a no-op that just runs each milestone's function.
type Saga interface {
	// Step runs one milestone. fn does the work and returns an output that
	// is recorded and handed to the milestone's compensation handler.
	// Milestones must run in the order the policy lists them. With a
	// saga, the record saying the milestone runs is durable before fn is
	// called; when fn fails, every completed milestone is compensated in
	// reverse order.
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
	id, err := x.start(ctx, snap, operation, spec, uc, input)
	if err != nil {
		if fallback == Fail {
			return Result{}, fmt.Errorf("%w: operation %s: %w", ErrEngineUnavailable, operation, err)
		}
		x.m.fallbacks.Add(1)
		x.m.opts.Logger.Warn("policy: saga engine unavailable; running without saga guarantees",
			"operation", operation, "err", err)
		return Result{Fallback: true}, workflow(ctx, noSaga{})
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
	switch {
	case werr == nil && !h.failed && h.next == len(h.milestones):
		res.State = fsm.StateCompleted
		return res, nil
	case werr == nil && h.failed:
		werr = fmt.Errorf("%w: operation %s: a milestone failed but the workflow returned no error", ErrIncomplete, operation)
	case werr == nil:
		werr = fmt.Errorf("%w: operation %s stopped after %d of %d milestones", ErrIncomplete, operation, h.next, len(h.milestones))
	}
	if !h.failed {
		// The workflow failed outside a milestone (or skipped some): undo
		// what it did, the running milestone included. Recorded even if
		// the caller's context has ended.
		if _, err := x.eng.Abort(durable(ctx), id, "policy", werr.Error()); err != nil {
			return res, fmt.Errorf("%w (and aborting saga %s failed: %v)", werr, id, err)
		}
	}
	st, err := x.eng.Wait(ctx, id)
	if err != nil {
		// The compensation goes on in the engine; the caller stops waiting.
		return res, fmt.Errorf("%w (saga %s is compensating; stopped waiting: %v)", werr, id, err)
	}
	res.State = st.State
	return res, werr
}

// durable returns a context for the calls that record what happened: they
// must reach the log even when the caller's context has ended, or the
// saga would stay in progress with nobody to finish it.
func durable(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

// start defines the operation's saga (once per policy snapshot) and starts
// one on exactly that definition version, recording the policy it runs
// under.
func (x *Executor) start(ctx context.Context, snap *Snapshot, operation string, spec *Operation, uc UserContext, input []byte) (string, error) {
	if x.eng == nil {
		return "", fmt.Errorf("no saga engine configured")
	}
	version, ok := x.defined.Load(spec)
	if !ok {
		d := engine.Definition{Name: operation}
		for _, m := range spec.Milestones {
			d.Steps = append(d.Steps, engine.StepDef{Name: m.Name, Compensation: m.Compensation,
				CompensationRetry: retryPolicy(spec.Retry)})
		}
		def, err := x.eng.Define(ctx, d)
		if err != nil {
			return "", err
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
	return x.eng.Start(ctx, operation, input, engine.StartOptions{User: uc.UserID, Meta: meta,
		Version: version.(int), Timeout: timeout})
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
	failed     bool // a milestone failed and was reported: compensation runs
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
