package policy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

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
// (policy off) it just runs each milestone's function. It is safe for
// concurrent use.
type Saga interface {
	// Step runs one milestone. fn does the work and returns an output that
	// is recorded and handed to the milestone's compensation handler.
	// Milestones must run in the order the policy lists them; in a DAG
	// operation (milestones with after), a milestone runs once every
	// milestone it comes after is done, and Step refuses one whose
	// dependencies are not (ErrMilestoneOrder: Step checks, it does not
	// wait; Group.Go waits). With a saga, the record saying the
	// milestone runs is durable before fn is called; when fn fails, every
	// completed milestone is compensated in reverse (dependency) order.
	// The last milestone's success is recorded only when the workflow
	// returns nil: the saga never completes before the workflow does. A
	// workflow that fails after it is compensated whole (the last
	// milestone as uncertain, without its output); one that fails
	// between milestones reports the next as failed without running it,
	// so only the completed ones are compensated.
	Step(ctx context.Context, milestone string, fn func(ctx context.Context) ([]byte, error)) error
	// Group returns a group that runs milestones of a DAG operation at
	// once (see Group). ctx is the parent of its milestones' contexts.
	Group(ctx context.Context) Group
	// ID is the saga's id; "" without a saga.
	ID() string
}

// Group runs milestones concurrently, in the manner of errgroup: Go
// starts one in a goroutine, Wait waits for all the group started and
// returns the first error. It is safe for concurrent use; a group is
// done once Wait returned.
//
// Go starts its milestone once every milestone it comes after (the
// policy's after) is done; each must have been started before, by Step
// or by Go of any group of the call. With a saga the guarantee stays
// all or nothing: when any milestone fails, no milestone starts any
// more (Go and Step return ErrMilestoneOrder, a waiting one never runs),
// the running ones are cancelled through their context, and the saga
// compensates every completed milestone after the milestones that
// depend on it, independent branches at once. A milestone that was
// running, or whose dependencies were done, when another failed counts
// as started: unless it answers success before its compensation
// begins, it is compensated as uncertain (without its output), so its
// handler must tolerate undoing what never happened (as for any
// uncertain step). The milestone whose success would complete the saga
// (the last to succeed) is recorded only when the workflow returns nil.
// A workflow that returns while milestones it started still run has
// them cancelled and waited for, and its saga fails (ErrIncomplete).
// Go is for DAG operations: on a sequence it is refused
// (ErrMilestoneOrder), use Step.
//
// Without a saga (policy off, or the engine unavailable and the
// operation runs without one) the group runs the functions in
// goroutines, waiting for the dependencies of a DAG operation that it
// started itself, and cancels its context at the first error. It costs
// the goroutines and one small allocation per group; a workflow that
// uses no group allocates nothing.
//
// Why a group and not Go and Wait on the handle: the handle without a
// saga has no state (it is what keeps the off path free of
// allocations), and a group gives each fan-out its own Wait, so a
// workflow can fan out, join, go on with Step and fan out again, or
// hand a group to a helper, without one Wait waiting for another's
// goroutines.
type Group interface {
	// Go starts a milestone in a goroutine; fn gets a context that ends
	// when a milestone fails (with a saga: any of the call's; without:
	// one of this group's) or Wait returns.
	Go(milestone string, fn func(ctx context.Context) ([]byte, error))
	// Wait waits for every milestone started by Go and returns the first
	// error of one, or of a Go refused (unknown milestone, out of order).
	Wait() error
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

// noSaga is the handle when the policy is off: no allocation, no lock, no
// I/O. sh is the operation's shape when it is a DAG (its groups wait for
// dependencies), nil otherwise; a one-pointer struct, it fits in the
// interface without an allocation.
type noSaga struct{ sh *shape }

func (noSaga) Step(ctx context.Context, _ string, fn func(ctx context.Context) ([]byte, error)) error {
	_, err := fn(ctx)
	return err
}

func (n noSaga) Group(ctx context.Context) Group {
	g := &plainGroup{sh: n.sh}
	g.init(ctx)
	return g
}

func (noSaga) ID() string { return "" }

// group is what both groups share: the goroutines, the first error and
// the context it cancels.
type group struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup
	once   sync.Once
	err    error // written once, read after wg.Wait
}

func (g *group) init(ctx context.Context) { g.ctx, g.cancel = context.WithCancelCause(ctx) }

func (g *group) fail(err error) {
	g.once.Do(func() {
		g.err = err
		g.cancel(err)
	})
}

func (g *group) Wait() error {
	g.wg.Wait()
	g.cancel(context.Canceled)
	return g.err
}

// plainGroup is the Group without a saga.
type plainGroup struct {
	group
	sh    *shape
	mu    sync.Mutex
	ended []chan struct{} // by milestone: closed when one this group started ends; nil until Go (mu)
}

func (g *plainGroup) Go(milestone string, fn func(ctx context.Context) ([]byte, error)) {
	var deps []chan struct{}
	var ended chan struct{}
	if g.sh != nil {
		if i, ok := g.sh.index[milestone]; ok {
			g.mu.Lock()
			if g.ended == nil {
				g.ended = make([]chan struct{}, len(g.sh.deps))
			}
			for _, d := range g.sh.deps[i] {
				if c := g.ended[d]; c != nil {
					deps = append(deps, c)
				}
			}
			ended = make(chan struct{})
			g.ended[i] = ended
			g.mu.Unlock()
		}
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if ended != nil {
			defer close(ended)
		}
		for _, c := range deps {
			select {
			case <-c:
			case <-g.ctx.Done():
			}
		}
		if len(deps) > 0 && g.ctx.Err() != nil {
			g.fail(context.Cause(g.ctx)) // a dependency failed: this one never runs
			return
		}
		if _, err := fn(g.ctx); err != nil {
			g.fail(err)
		}
	}()
}

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
// workflow marks with Step, or runs concurrently with a Group's Go (an
// operation whose milestones declare after), is a durable, compensable
// saga step; if the workflow fails, ExecuteWithSaga returns after the
// completed milestones were compensated (or the saga is STUCK), with the
// workflow's error. Milestones the workflow started and left running
// when it returned are cancelled and waited for first.
func (x *Executor) ExecuteWithSaga(ctx context.Context, operation string, uc UserContext, input []byte,
	workflow func(ctx context.Context, s Saga) error) (Result, error) {
	snap := x.m.snap.Load()
	if !snap.Decide(operation, uc) {
		return Result{}, workflow(ctx, noSaga{sh: snap.offShape(operation)})
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
		return Result{Fallback: true}, workflow(ctx, noSaga{sh: snap.offShape(operation)})
	case !created:
		return x.duplicate(ctx, operation, id)
	}
	h := newHandle(x, id, operation, spec)
	defer func() {
		// A panicking workflow must not leave its saga in progress: undo
		// what it did, then let the panic go on.
		if p := recover(); p != nil {
			h.shut(fmt.Errorf("the workflow panicked: %v", p))
			if e := h.ending(); e.failing < 0 || !e.failRecorded {
				_, _ = x.eng.Abort(durable(ctx), id, "policy", abortReason(fmt.Sprintf("workflow panicked: %v", p)))
			}
			panic(p)
		}
	}()
	werr := workflow(ctx, h)
	// Milestones still running now were left behind: none may start or
	// go on after the workflow returned.
	h.shut(errWorkflowReturned)
	h.wg.Wait()
	e := h.ending()
	res := Result{Saga: true, SagaID: id}
	switch {
	case werr == nil && e.held >= 0 && !e.lost:
		// Only now, with the workflow's success, does the saga complete.
		if _, err := x.eng.Advance(durable(ctx), id, engine.StepResult{Step: h.ms[e.held].Name, Output: e.heldOut}); err != nil {
			return res, fmt.Errorf("policy: operation %s: recording its completion: %w", operation, err)
		}
		res.State = fsm.StateCompleted
		return res, nil
	case werr == nil && e.failing >= 0:
		werr = fmt.Errorf("%w: operation %s: a milestone failed but the workflow returned no error", ErrIncomplete, operation)
	case werr == nil:
		werr = fmt.Errorf("%w: operation %s stopped after %d of %d milestones", ErrIncomplete, operation, e.done, len(h.ms))
	}
	var rerr error
	switch {
	case e.failing >= 0 && e.failRecorded:
		// The failed milestone was reported: compensation runs.
	case e.failing >= 0:
		// Its record failed: try once more (a re-send of a failure
		// already applied changes nothing).
		_, rerr = x.eng.Advance(durable(ctx), id, engine.StepResult{Step: h.ms[e.failing].Name, Err: e.failErr})
	case e.held >= 0 || e.lost || e.notStarted < 0:
		// The workflow failed after its last milestone, whose completion
		// was held back, or after milestones whose success is not
		// recorded: abort, which compensates them (as uncertain: their
		// output was not recorded) and every completed one.
		_, rerr = x.eng.Abort(durable(ctx), id, "policy", abortReason(werr.Error()))
	default:
		// The workflow failed between milestones: the next one never
		// started, so it is reported failed (nothing to undo) and only the
		// completed ones are compensated.
		_, rerr = x.eng.Advance(durable(ctx), id, engine.StepResult{Step: h.ms[e.notStarted].Name,
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

// abortReason makes a workflow's error (or panic) a reason the engine
// takes for its abort: valid UTF-8 and at most engine.MaxReason bytes. The
// engine refuses any other, which would leave the saga in progress until
// its timeout instead of compensating it now.
func abortReason(msg string) string {
	msg = strings.ToValidUTF8(msg, "\uFFFD")
	if len(msg) <= engine.MaxReason {
		return msg
	}
	const more = "… (truncated)"
	cut := engine.MaxReason - len(more)
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + more
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

var (
	errNoEngine         = errors.New("no saga engine configured")
	errWorkflowReturned = errors.New("the workflow returned")
)

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
				CompensationRetry: retryPolicy(spec.Retry), After: m.After})
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

// handle is the Saga of a call that runs as a saga. Step and the
// goroutines of its groups run milestones concurrently; every field
// below mu is owned by it, and every engine call is made outside it.
type handle struct {
	x         *Executor
	id        string
	operation string
	ms        []Milestone
	sh        *shape
	// stop ends at the first failure, when an outcome cannot be
	// recorded, or when the workflow returns: every running milestone's
	// context ends with it.
	stop  context.Context
	halt  context.CancelCauseFunc
	ended []chan struct{} // by milestone: closed when its run ended, whatever the outcome
	wg    sync.WaitGroup  // the goroutines of the groups

	mu      sync.Mutex
	state   []milestoneState
	left    int   // milestones whose success is not yet known
	stopped error // why no milestone starts any more; nil while they may
	// failing is the milestone whose failure is the saga's (-1: none);
	// recorded is closed once that failure's record returned, and
	// failRecorded says whether it was applied.
	failing      int
	failErr      error
	recorded     chan struct{}
	failRecorded bool
	held         int    // the milestone whose success is held back (-1: none)
	heldOut      []byte // its output, recorded when the workflow returns nil
}

type milestoneState uint8

const (
	msIdle    milestoneState = iota // not started
	msWaiting                       // claimed by Go, waiting for its dependencies
	msRunning                       // its function runs, or its outcome is being recorded
	msDone                          // its success is recorded
	msHeld                          // it succeeded; the record waits for the workflow (held)
	msFailed                        // it failed: the saga's failure (failing)
	msLost                          // it ran, and the engine does not have its success: it is or will be uncertain
	msSkipped                       // claimed, never ran (the saga stopped while it waited)
)

func newHandle(x *Executor, id, operation string, spec *Operation) *handle {
	h := &handle{x: x, id: id, operation: operation, ms: spec.Milestones, sh: spec.shape,
		ended: make([]chan struct{}, len(spec.Milestones)), state: make([]milestoneState, len(spec.Milestones)),
		left: len(spec.Milestones), failing: -1, held: -1}
	for i := range h.ended {
		h.ended[i] = make(chan struct{})
	}
	h.stop, h.halt = context.WithCancelCause(context.Background())
	return h
}

func (h *handle) ID() string { return h.id }

func (h *handle) Step(ctx context.Context, milestone string, fn func(ctx context.Context) ([]byte, error)) error {
	i, err := h.claim(milestone, false)
	if err != nil {
		return err
	}
	return h.run(ctx, i, fn, nil)
}

func (h *handle) Group(ctx context.Context) Group {
	g := &sagaGroup{h: h}
	g.init(ctx)
	return g
}

// sagaGroup is the Group of a call that runs as a saga.
type sagaGroup struct {
	group
	h *handle
}

func (g *sagaGroup) Go(milestone string, fn func(ctx context.Context) ([]byte, error)) {
	h := g.h
	i, err := h.claim(milestone, true)
	if err != nil {
		g.fail(err)
		return
	}
	g.wg.Add(1)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer g.wg.Done()
		err := h.await(g.ctx, i)
		if err == nil {
			err = h.run(g.ctx, i, fn, g.fail)
		}
		if err != nil {
			g.fail(err)
		}
	}()
}

// claim reserves milestone for a run: it must be one of the operation's,
// not run before, and the saga not stopped; for Step (!async) every
// dependency must be done, for Go started.
func (h *handle) claim(milestone string, async bool) (int, error) {
	i, ok := h.sh.index[milestone]
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case !ok:
		return 0, fmt.Errorf("%w: operation %s has no milestone %q", ErrMilestoneOrder, h.operation, milestone)
	case h.stopped != nil:
		return 0, fmt.Errorf("%w: milestone %q after the saga stopped: %w", ErrMilestoneOrder, milestone, h.stopped)
	case async && !h.sh.parallel:
		return 0, fmt.Errorf("%w: operation %s is a sequence: run milestone %q with Step", ErrMilestoneOrder, h.operation, milestone)
	case h.state[i] != msIdle:
		return 0, fmt.Errorf("%w: milestone %q ran twice", ErrMilestoneOrder, milestone)
	}
	var missing []string
	for _, d := range h.sh.deps[i] {
		if s := h.state[d]; s == msIdle || (!async && s != msDone) {
			missing = append(missing, strconv.Quote(h.ms[d].Name))
		}
	}
	if missing != nil {
		if !h.sh.parallel {
			return 0, fmt.Errorf("%w: ran %q, the policy's next milestone is %s", ErrMilestoneOrder, milestone, missing[0])
		}
		verb := "started"
		if !async {
			verb = "done"
		}
		return 0, fmt.Errorf("%w: milestone %q comes after %s, not yet %s", ErrMilestoneOrder, milestone, strings.Join(missing, ", "), verb)
	}
	if async {
		h.state[i] = msWaiting
	} else {
		h.state[i] = msRunning
	}
	return i, nil
}

// await waits until milestone i's dependencies ended, and marks it
// running if they are done and the saga goes on; if not, it never runs.
func (h *handle) await(ctx context.Context, i int) error {
	for _, d := range h.sh.deps[i] {
		select {
		case <-h.ended[d]:
		case <-h.stop.Done():
		case <-ctx.Done():
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var err error
	for _, d := range h.sh.deps[i] {
		if h.state[d] != msDone {
			err = fmt.Errorf("%w: milestone %q never ran: %q, which it comes after, did not complete", ErrMilestoneOrder, h.ms[i].Name, h.ms[d].Name)
			break
		}
	}
	switch {
	case h.stopped != nil:
		err = fmt.Errorf("%w: milestone %q never ran: %w", ErrMilestoneOrder, h.ms[i].Name, h.stopped)
	case err == nil && ctx.Err() != nil:
		err = fmt.Errorf("milestone %q never ran: %w", h.ms[i].Name, context.Cause(ctx))
	}
	if err != nil {
		h.state[i] = msSkipped
		close(h.ended[i])
		return err
	}
	h.state[i] = msRunning
	return nil
}

// run runs milestone i's function, then records its outcome. The engine
// recorded the milestone as running (Start, or the Advance of its last
// dependency): the side effect may happen now. Its outcome is recorded
// even if the caller's context ended meanwhile. fail, if not nil, is
// told a failure before the other milestones are cancelled (a group's
// first error is then this one, not a cancellation it caused).
func (h *handle) run(ctx context.Context, i int, fn func(ctx context.Context) ([]byte, error), fail func(error)) error {
	mctx, cancel := context.WithCancelCause(ctx)
	unwatch := context.AfterFunc(h.stop, func() { cancel(context.Cause(h.stop)) })
	out, err := fn(mctx)
	unwatch()
	cancel(context.Canceled)
	defer close(h.ended[i])
	h.mu.Lock()
	switch {
	case h.failing >= 0:
		// The saga failed while this one ran: the engine marked it
		// uncertain. A success is a late answer, recorded after the
		// failure (so that it cannot make a dependent ready first) if
		// the engine still takes it; the milestone is compensated
		// either way.
		h.state[i] = msLost
		recorded := h.recorded
		h.mu.Unlock()
		if err != nil {
			return err
		}
		<-recorded
		if _, aerr := h.x.eng.Advance(durable(ctx), h.id, engine.StepResult{Step: h.ms[i].Name, Output: out}); aerr == nil {
			h.mu.Lock()
			h.state[i] = msDone
			h.mu.Unlock()
		}
		return nil
	case err != nil:
		h.state[i], h.failing, h.failErr = msFailed, i, err
		h.recorded = make(chan struct{})
		h.stopped = fmt.Errorf("milestone %q failed: %w", h.ms[i].Name, err)
		h.mu.Unlock()
		_, aerr := h.x.eng.Advance(durable(ctx), h.id, engine.StepResult{Step: h.ms[i].Name, Err: err})
		h.mu.Lock()
		h.failRecorded = aerr == nil
		close(h.recorded)
		h.mu.Unlock()
		if aerr != nil {
			err = fmt.Errorf("%w (and recording the failure failed: %v)", err, aerr)
		}
		if fail != nil {
			fail(err)
		}
		h.halt(h.stoppedErr())
		return err
	}
	h.left--
	if h.left == 0 {
		// The last success: it completes the saga, which must wait for
		// the workflow's own success (see withSaga).
		h.state[i], h.held, h.heldOut = msHeld, i, out
		h.mu.Unlock()
		return nil
	}
	h.mu.Unlock()
	_, aerr := h.x.eng.Advance(durable(ctx), h.id, engine.StepResult{Step: h.ms[i].Name, Output: out})
	h.mu.Lock()
	switch {
	case aerr == nil:
		h.state[i] = msDone
	case h.failing >= 0:
		// Refused as a late answer to a saga that failed meanwhile.
		h.state[i], aerr = msLost, nil
	default:
		h.state[i] = msLost
		if h.stopped == nil {
			h.stopped = fmt.Errorf("the success of milestone %q was not recorded: %w", h.ms[i].Name, aerr)
		}
	}
	h.mu.Unlock()
	if aerr != nil {
		h.halt(h.stoppedErr())
	}
	return aerr
}

func (h *handle) stoppedErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stopped
}

// shut stops the handle when the workflow returned (or panicked): no
// milestone starts any more, and the running ones are cancelled.
func (h *handle) shut(why error) {
	h.mu.Lock()
	if h.stopped == nil {
		h.stopped = why
	}
	h.mu.Unlock()
	h.halt(h.stoppedErr())
}

// ending is what the workflow left, for withSaga to settle.
type ending struct {
	failing      int // the failed milestone (-1: none)
	failErr      error
	failRecorded bool
	held         int // the milestone held back (-1: none)
	heldOut      []byte
	lost         bool // some milestone ran and the engine does not have its success
	done         int  // milestones whose success is known
	notStarted   int  // a milestone the engine holds as running that never ran (-1: none)
}

func (h *handle) ending() ending {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := ending{failing: h.failing, failErr: h.failErr, failRecorded: h.failRecorded, held: h.held, heldOut: h.heldOut, notStarted: -1}
	for i, s := range h.state {
		switch s {
		case msDone, msHeld:
			e.done++
		case msLost, msRunning:
			e.lost = true
		}
		if e.notStarted < 0 && (s == msIdle || s == msSkipped) {
			ready := true
			for _, d := range h.sh.deps[i] {
				ready = ready && h.state[d] == msDone
			}
			if ready {
				e.notStarted = i
			}
		}
	}
	return e
}
