package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// Definition is a saga type: a name and ordered steps. See fsm.Definition.
type Definition = fsm.Definition

// StepDef is one step of a Definition. See fsm.StepDef.
type StepDef = fsm.StepDef

// RetryPolicy bounds attempts. See fsm.RetryPolicy.
type RetryPolicy = fsm.RetryPolicy

// Define stores a saga definition durably [design_saga_journey] and
// returns it with its version: 1 for a new name, the latest version when
// nothing changed, one more when the steps or timeout changed. Every
// compensation handler and action it names must already be registered
// (compensation.ErrUnknownName otherwise); a malformed definition returns
// an *fsm.DefinitionError listing every problem, among them more than
// MaxSteps steps (ErrTooManySteps). Sagas already started keep
// the definition they started with. Neither d nor the result shares memory
// with the engine: either may be changed afterwards.
func (e *Engine) Define(ctx context.Context, d Definition) (*Definition, error) {
	if e.opts.Inspect {
		return nil, ErrReadOnly
	}
	// The record, and the definition the store caches, own copies: a
	// caller changing its value afterwards must not change what was
	// logged.
	d = *d.Clone()
	d.Version = 1
	if err := d.ValidateNew(); err != nil {
		return nil, err
	}
	if err := e.checkNames(d.Steps); err != nil {
		return nil, err
	}
	e.defMu.Lock()
	defer e.defMu.Unlock()
	if err := e.checkChildren(&d); err != nil {
		return nil, err
	}
	var latest *Definition
	err := e.read(func() (err error) { latest, err = e.store.LatestDefinition(d.Name); return err })
	switch {
	case errors.Is(err, fsm.ErrUnknownDefinition):
	case err != nil:
		return nil, err
	default:
		d.Version = latest.Version
		if reflect.DeepEqual(*latest, d) {
			return latest, nil
		}
		d.Version = latest.Version + 1
	}
	res, err := e.propose(ctx, []*fsm.Record{{Kind: fsm.KindDefine, At: e.now(), Def: &d}})
	if err != nil {
		return nil, err
	}
	if res[0].Err != nil {
		return nil, res[0].Err
	}
	// The applied definition is the one the store caches as the latest.
	return res[0].Def.Clone(), nil
}

func (e *Engine) checkNames(steps []StepDef) error {
	handlers, actions := make([]string, 0, len(steps)), make([]string, 0, len(steps))
	for _, s := range steps {
		handlers = append(handlers, s.Compensation)
		actions = append(actions, s.Action)
	}
	return e.opts.Registry.Check(handlers, actions)
}

// Definition returns the latest version of a definition, or the given
// version when version > 0: a copy the caller owns (so does Definitions).
func (e *Engine) Definition(ctx context.Context, name string, version int) (d *Definition, err error) {
	err = e.read(func() error {
		if version > 0 {
			d, err = e.store.Definition(name, version)
		} else {
			d, err = e.store.LatestDefinition(name)
		}
		return err
	})
	return d, err
}

// peekDefinition is Definition for a caller that only reads the result
// (start, which copies the steps it keeps): the latest version is the
// store's shared value, not a copy.
func (e *Engine) peekDefinition(name string, version int) (d *Definition, err error) {
	if version > 0 {
		return e.Definition(context.Background(), name, version)
	}
	err = e.read(func() error { d, err = e.store.PeekLatestDefinition(name); return err })
	return d, err
}

// Definitions returns the latest version of every definition, by name.
func (e *Engine) Definitions(ctx context.Context) (ds []*Definition, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	err = e.read(func() error { ds, err = e.store.Definitions(); return err })
	return ds, err
}

// StartOptions are the optional parts of Start and Run.
type StartOptions struct {
	// ID is the saga's id; default a new time-ordered id. 1-128 of
	// letters, digits and . _ : @ -, and not of the form of a child
	// saga's id (ending in a dot and digits, or child.<32 hex digits)
	// nor in use: Start refuses those without writing anything.
	ID string
	// IdempotencyKey: a second Start with the same key returns the first
	// saga's id and starts nothing. At most MaxIdempotencyKey bytes of
	// UTF-8.
	IdempotencyKey string
	// User is the user context recorded with the saga and passed to
	// handlers. At most MaxUser bytes of UTF-8.
	User string
	// Meta is free-form data recorded with the saga: at most MaxMetaPairs
	// entries, keys not empty; see MaxMetaKey and MaxMetaValue.
	Meta map[string]string
	// Version selects a definition version; default the latest.
	Version int
	// Timeout overrides the definition's saga deadline (from now).
	Timeout time.Duration
	// Durability overrides the definition's durability mode when set (a
	// policy sets it per operation).
	Durability *Durability

	// parent and depth start a child saga (nested.go).
	parent string
	depth  int
}

// Start creates a saga of the named definition [execute_saga_journey];
// its first step is then running. In this mode the caller performs each
// step and reports it with Advance. It returns the saga's id; with an
// idempotency key already used, the existing saga's id.
func (e *Engine) Start(ctx context.Context, definition string, input []byte, o StartOptions) (string, error) {
	id, _, err := e.start(ctx, definition, input, o, false)
	return id, err
}

func (e *Engine) start(ctx context.Context, definition string, input []byte, o StartOptions, driven bool) (id string, created bool, err error) {
	if e.opts.Inspect {
		return "", false, ErrReadOnly
	}
	if err := startTextCheck(o); o.parent == "" && err != nil {
		return "", false, err // a child's user is its parent's, checked at its start
	}
	if owner, err := e.keyOwner(o.IdempotencyKey); err != nil || owner != "" {
		return owner, false, err
	}
	def, err := e.peekDefinition(definition, o.Version)
	if err != nil {
		return "", false, err
	}
	if driven {
		for _, s := range def.Steps {
			if s.Action == "" && s.Child == "" {
				return "", false, fmt.Errorf("%w: %s step %q", ErrNotDriven, def.Name, s.Name)
			}
		}
	} else if hasChild(def.Steps) {
		return "", false, fmt.Errorf("%w: %s runs child sagas, which only the engine drives: start it with Run", ErrInvalidArgument, def.Name)
	}
	// Handlers are registered per process: check them again, so that a
	// saga never starts in a process that could not compensate it.
	if err := e.checkNames(def.Steps); err != nil {
		return "", false, err
	}
	if o.Timeout < 0 {
		return "", false, fmt.Errorf("%w: negative timeout", ErrInvalidArgument)
	}
	id = o.ID
	if id == "" {
		id = e.newID()
	} else if !fsm.ValidID(id) {
		return "", false, fmt.Errorf("%w: saga id %q (1-128 of letters, digits, . _ : @ -)", ErrInvalidArgument, id)
	} else {
		if o.parent == "" && fsm.ChildLike(id) {
			return "", false, fmt.Errorf("%w: saga id %q has the form of a child saga's id (<parent id>.<step index>, or child.<32 hex digits>), "+
				"which a child step of another saga could need: choose an id that does not end in a dot and digits", ErrInvalidArgument, id)
		}
		// An id in use is refused here, before anything is logged: the
		// start record would only be refused by Apply, at the cost of a
		// durable write (and a history a reader would find odd). Apply
		// still refuses it, for a start that races another.
		var sg *fsm.Saga
		err := e.read(func() (err error) { sg, err = e.store.Peek(id); return err })
		switch {
		case errors.Is(err, fsm.ErrUnknownSaga):
		case err != nil:
			return "", false, err
		default:
			return e.usedID(id, o, sg)
		}
	}
	now := e.now()
	// The record owns copies: a caller reusing its buffers must not
	// change what was logged.
	si := &fsm.StartInfo{
		Definition: def.Name, Version: def.Version, Steps: e.plan(def.Steps), Driven: driven,
		User: o.User, IdempotencyKey: o.IdempotencyKey, Input: bytes.Clone(input), Meta: maps.Clone(o.Meta),
		Parent: o.parent, Depth: o.depth,
	}
	si.Durability = def.Durability
	if e.opts.HistoryCap > 0 {
		si.HistoryCap = e.opts.HistoryCap // UnlimitedHistory: 0, no cap
	}
	if o.Durability != nil {
		if *o.Durability > DurabilityPipelined {
			return "", false, fmt.Errorf("%w: unknown durability %d (want DurabilityStrict or DurabilityPipelined)", ErrInvalidArgument, uint8(*o.Durability))
		}
		si.Durability = *o.Durability
	}
	if si.Durability == DurabilityPipelined && fsm.Parallel(def.Steps) {
		return "", false, fmt.Errorf("%w: definition %s has parallel steps (after), which run strict: pipelined durability is for sequences", ErrInvalidArgument, def.Name)
	}
	timeout := def.Timeout
	if o.Timeout > 0 {
		timeout = o.Timeout
	}
	if timeout > 0 {
		if int64(timeout) > math.MaxInt64-now {
			// now + timeout would wrap to a deadline in the past (about
			// 1700), which the engine never arms: a saga with no deadline.
			return "", false, fmt.Errorf("%w: timeout %v puts the saga's deadline past the year 2262", ErrInvalidArgument, timeout)
		}
		si.Deadline = now + int64(timeout)
	}
	span, bag, tc := e.tr.begin(ctx, id, si)
	if span != nil {
		si.Trace = tc
		defer func() {
			if span != nil { // not handed over below
				e.tr.started(id, span, bag, created, err)
			}
		}()
	}
	res, err := e.propose(ctx, []*fsm.Record{{Kind: fsm.KindSagaStarted, Saga: id, At: now, Start: si}})
	if err != nil {
		return "", false, err
	}
	var dk *fsm.DuplicateKeyError
	if errors.As(res[0].Err, &dk) {
		return dk.Existing, false, nil
	}
	if errors.Is(res[0].Err, fsm.ErrSagaExists) {
		// Taken since the look above: Apply refuses a start for its id
		// and never looks at the key.
		return e.usedID(id, o, nil)
	}
	if res[0].Err != nil {
		return "", false, res[0].Err
	}
	if span != nil {
		// Before the deadline is armed: a deadline that fired first would
		// find no span for the saga and open a second one.
		e.tr.started(id, span, bag, true, nil)
		span = nil
	}
	if si.Deadline > 0 {
		e.armDeadline(id, si.Deadline)
	}
	return id, true, nil
}

// keyOwner returns the saga that holds idempotency key k ("" for none,
// or no key).
func (e *Engine) keyOwner(k string) (owner string, err error) {
	if k != "" {
		err = e.read(func() (err error) { owner, err = e.store.KeyOwner(k); return err })
	}
	return owner, err
}

// usedID answers a start whose id is taken (sg, or looked up if nil): a
// re-send that raced the start it repeats is answered by its key; a child
// step run again gets its child; any other start is refused, having
// logged nothing.
func (e *Engine) usedID(id string, o StartOptions, sg *fsm.Saga) (string, bool, error) {
	if owner, err := e.keyOwner(o.IdempotencyKey); err != nil || owner != "" {
		return owner, false, err
	}
	if o.parent == "" {
		return "", false, fmt.Errorf("%w: saga %s", ErrSagaExists, id)
	}
	if sg == nil {
		if err := e.read(func() (err error) { sg, err = e.store.Peek(id); return err }); err != nil {
			return "", false, err
		}
	}
	if sg.Parent != o.parent {
		return "", false, fmt.Errorf("%w: saga %s exists and is not a child of %s", ErrInvalidArgument, id, o.parent)
	}
	return id, false, nil // a child step run again: its child exists
}

// plan snapshots the definition's steps with the engine's default retry
// policies filled in, so the saga behaves the same after a restart with
// other defaults.
func (e *Engine) plan(steps []StepDef) []StepDef {
	out := append([]StepDef(nil), steps...)
	for i := range out {
		if out[i].Retry == (RetryPolicy{}) {
			out[i].Retry = RetryPolicy(e.opts.DefaultActionRetry)
		}
		if out[i].CompensationRetry == (RetryPolicy{}) {
			out[i].CompensationRetry = RetryPolicy(e.opts.DefaultCompensationRetry)
		}
		if out[i].Child != "" {
			// Running a child step again finds its child by id: a crash
			// leaves nothing uncertain about it.
			out[i].OnUncertain = fsm.UncertainRetry
		}
	}
	return out
}

func (e *Engine) now() int64 { return e.opts.Clock.Now().UnixNano() }

// newID returns a unique id that sorts by creation time.
func (e *Engine) newID() string {
	for {
		last := e.lastID.Load()
		ns := e.now()
		if ns <= last {
			ns = last + 1
		}
		if e.lastID.CompareAndSwap(last, ns) {
			return fmt.Sprintf("%016x%06x", uint64(ns), rand.Uint32()&0xffffff)
		}
	}
}

// StepResult is a step's outcome reported by the caller.
type StepResult struct {
	// Step is the name of the step being reported; it must be the
	// saga's current step (a stale or duplicate report is refused).
	Step string
	// Output is recorded and handed to the step's compensation.
	Output []byte
	// Err, if set, fails the step: the engine then compensates every
	// completed step in reverse order, in the background.
	Err error
}

// Advance records the result of the saga's current step [advance_saga_step].
// On success the next step is running (or the saga is COMPLETED); on
// failure the saga is COMPENSATING and the engine undoes the completed
// steps in the background (see Wait).
//
// For a pipelined saga (DurabilityPipelined) a success that leaves the
// saga in progress returns once the record is queued in the log and the
// previous step's record is durable: the next step may begin while this
// record is synced. A success that completes the saga, and every failure,
// returns only once durable and applied, as in strict mode.
func (e *Engine) Advance(ctx context.Context, id string, res StepResult) (*Status, error) {
	sg, prev, err := e.transitionAhead(ctx, id, func(cur *fsm.Saga) ([]*fsm.Record, error) {
		if cur.Driven {
			return nil, fmt.Errorf("%w: saga %s is engine-driven; its steps are reported by the engine", ErrInvalidArgument, id)
		}
		kind := fsm.KindStepCompleted
		if res.Err != nil {
			kind = fsm.KindStepFailed
		}
		if resent(cur, res) {
			return nil, nil // already recorded: a re-send after a crash changes nothing
		}
		// An error names the step reported, by index and name: a DAG
		// saga's Current is -1, and is no step to name.
		refused := func(reason string) error {
			return &fsm.TransitionError{Saga: id, Kind: kind, State: cur.State, Step: stepNamed(cur, res.Step),
				StepName: res.Step, Reason: reason}
		}
		if cur.State != fsm.StateInProgress {
			return nil, refused("the saga is not in progress")
		}
		step := cur.Current
		if cur.Parallel() {
			// Any running step may be reported; Apply refuses one whose
			// dependencies are not done, naming them.
			if step = stepNamed(cur, res.Step); step < 0 {
				return nil, fmt.Errorf("%w: saga %s has no step %q", ErrInvalidArgument, id, res.Step)
			}
		} else if name := cur.Steps[cur.Current].Name; res.Step != name {
			return nil, refused(fmt.Sprintf("reported step %q, but the current step is %q", res.Step, name))
		}
		r := &fsm.Record{Saga: id, At: e.now(), Step: step}
		if res.Err == nil {
			r.Kind, r.Output = fsm.KindStepCompleted, bytes.Clone(res.Output)
		} else {
			r.Kind, r.Err = fsm.KindStepFailed, errorInfo(res.Err)
		}
		return []*fsm.Record{r}, nil
	}, nil)
	if err != nil {
		return nil, err
	}
	// A pipelined saga's report returns once the record that began the
	// step just reported is durable (this one may still be on its way):
	// the caller is never more than one step ahead of the log.
	if err := e.waitDurable(prev); err != nil {
		return nil, fmt.Errorf("%w: an earlier step's record of saga %s did not become durable: %v", ErrOutcomeUnknown, id, err)
	}
	if sg.State == fsm.StateCompensating {
		e.kick(id)
	}
	return newStatus(sg), nil
}

// stepNamed returns the index of sg's step named name, or -1.
func stepNamed(sg *fsm.Saga, name string) int {
	for i := range sg.Steps {
		if sg.Steps[i].Name == name {
			return i
		}
	}
	return -1
}

// resent reports whether res is exactly what the saga already recorded for
// that step: the same success with the same output, or the same failure
// (kind and message). Advance then answers with the saga as it is, so a
// caller that re-sends its report after a crash does not get an error.
func resent(cur *fsm.Saga, res StepResult) bool {
	for _, st := range cur.Steps {
		if st.Name != res.Step {
			continue
		}
		if res.Err == nil {
			return st.Status >= fsm.StepDone && st.Status != fsm.StepFailed && !st.Uncertain && st.Err == nil &&
				bytes.Equal(st.Output, res.Output)
		}
		ei := errorInfo(res.Err)
		return st.Status == fsm.StepFailed && st.Err != nil && st.Err.Kind == ei.Kind && st.Err.Message == ei.Message
	}
	return false
}

// maxErrorMessage bounds an error message kept in the log: a handler's
// error must not make a record too large to write.
const maxErrorMessage = 4 << 10

func errorInfo(err error) *fsm.ErrorInfo {
	var ei *fsm.ErrorInfo
	if errors.As(err, &ei) {
		c := *ei
		c.Message = truncate(c.Message)
		return &c
	}
	kind := "error"
	if compensation.IsPermanent(err) {
		kind = "permanent"
	}
	return &fsm.ErrorInfo{Kind: kind, Message: truncate(err.Error()), Retryable: !compensation.IsPermanent(err)}
}

// truncate cuts msg to maxErrorMessage bytes, at a character boundary,
// and makes it valid UTF-8 (a handler's error may hold any bytes; every
// reader of the record shows it as text).
func truncate(msg string) string {
	msg = strings.ToValidUTF8(msg, "\uFFFD")
	if len(msg) <= maxErrorMessage {
		return msg
	}
	cut := maxErrorMessage
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "… (truncated)"
}

// Run starts a saga whose steps all name actions and drives it: the engine
// calls each action in order and, when one fails, compensates the
// completed steps in reverse order. It returns when the saga is COMPLETED,
// FAILED or STUCK. If ctx ends first, Run returns the saga's current
// Status with an error wrapping ErrNotSettled and ctx's error: the saga is
// durable and continues in the background. With an idempotency key
// already used, Run waits for the existing saga.
func (e *Engine) Run(ctx context.Context, definition string, input []byte, o StartOptions) (*Status, error) {
	id, created, err := e.Launch(ctx, definition, input, o)
	if err != nil {
		return nil, err
	}
	if !created {
		st, err := e.Status(ctx, id)
		if errors.Is(err, ErrUnknownSaga) && o.IdempotencyKey != "" {
			return nil, fmt.Errorf("%w: idempotency key %q belongs to saga %s, which finished and was removed; the key refuses a new start for Options.DedupeWindow: %w",
				ErrRemoved, o.IdempotencyKey, id, err)
		}
		if err != nil {
			return nil, err
		}
		if !st.Saga.Driven {
			return nil, fmt.Errorf("%w: idempotency key %q belongs to saga %s, which its caller drives with Advance",
				ErrInvalidArgument, o.IdempotencyKey, id)
		}
	}
	return e.waitStarted(ctx, id)
}

// Launch starts a saga as Run does, engine-driven, and returns once its
// start is durable, without waiting for it to settle: the engine drives
// it in the background (Wait or Status follow it). created is false when
// the idempotency key was used already: id is then the existing saga's,
// whoever drives it (Status says; a saga removed after its retention
// keeps its key, and Status then answers ErrUnknownSaga). Unlike Run,
// Launch does not refuse the key of a caller-driven saga: it waits for
// nothing, and a re-send (say, after the definition gained a version whose
// steps all have actions) must be answered with the saga it started.
func (e *Engine) Launch(ctx context.Context, definition string, input []byte, o StartOptions) (id string, created bool, err error) {
	id, created, err = e.start(ctx, definition, input, o, true)
	if err != nil {
		return "", false, err
	}
	if created {
		e.kick(id)
	}
	return id, created, nil
}

// waitStarted waits for a saga Run started; an early return says the saga
// exists.
func (e *Engine) waitStarted(ctx context.Context, id string) (*Status, error) {
	st, err := e.Wait(ctx, id)
	if err == nil {
		return st, nil
	}
	cur, serr := e.Status(context.Background(), id)
	if serr != nil {
		cur = &Status{ID: id}
	}
	if errors.Is(err, ErrPoisoned) || errors.Is(err, ErrClosed) {
		// The saga started (its start is durable and acknowledged); the
		// engine stopped afterwards. ErrPoisoned would say "nothing was
		// applied": only the cause's text goes along.
		return cur, fmt.Errorf("%w: saga %s: the engine stopped while it ran: %v", ErrNotSettled, id, err)
	}
	return cur, fmt.Errorf("%w: saga %s: %w", ErrNotSettled, id, err)
}

// Status returns the state of a saga [get_saga_status].
func (e *Engine) Status(ctx context.Context, id string) (*Status, error) {
	var sg *fsm.Saga
	if err := e.read(func() (err error) { sg, err = e.store.Get(id); return err }); err != nil {
		return nil, err
	}
	return statusOf(sg), nil // Get returned a copy
}

// List returns a page of the sagas matching q, in creation order (oldest
// or newest first), and the cursor of the next page ("" at the end). The
// filters combine (state, definition and version, user, tenant, meta
// key=value, created and updated ranges); the store reads the most
// selective index (see fsm.Query). A query that cannot be run returns an
// error wrapping ErrInvalidQuery.
func (e *Engine) List(ctx context.Context, q fsm.Query) ([]*Status, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	var sagas []*fsm.Saga
	var next string
	err := e.read(func() (err error) { sagas, next, err = e.store.List(q); return err })
	if err != nil {
		return nil, "", err
	}
	out := make([]*Status, len(sagas))
	for i, sg := range sagas {
		out[i] = statusOf(sg) // List returns copies
	}
	return out, next, nil
}

// Count returns the number of sagas in each state.
func (e *Engine) Count(ctx context.Context) (counts map[fsm.SagaState]int, err error) {
	err = e.read(func() error { counts, err = e.store.CountByState(); return err })
	return counts, err
}

// CountQuery returns the number of sagas matching q (its cursor and limit
// aside), or an error wrapping ErrInvalidQuery.
func (e *Engine) CountQuery(ctx context.Context, q fsm.Query) (n int, err error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	err = e.read(func() error { n, err = e.store.Count(q); return err })
	return n, err
}

// DefinitionVersions returns every definition with all its versions, by
// name.
func (e *Engine) DefinitionVersions(ctx context.Context) (ds []fsm.DefinitionVersions, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	err = e.read(func() error { ds, err = e.store.AllDefinitionVersions(); return err })
	return ds, err
}

// History returns every transition of a saga, in order, but the oldest
// attempts of a retry loop that ran past the saga's history cap
// (Options.HistoryCap): Status.HistoryDropped summarises those, and their
// seqs are missing from the history.
func (e *Engine) History(ctx context.Context, id string) ([]fsm.HistoryEntry, error) {
	var h []fsm.HistoryEntry
	err := e.read(func() (err error) { h, err = e.store.History(id); return err })
	return h, err
}

// Abort stops an in-progress saga and compensates what it did, including
// the running step (whose effect is uncertain). Recorded with who and why.
func (e *Engine) Abort(ctx context.Context, id, actor, reason string) (*Status, error) {
	return e.operator(ctx, id, fsm.KindAborted, actor, reason)
}

// Retry makes a STUCK saga retry its compensation now, with a fresh retry
// budget. Recorded with who and why.
func (e *Engine) Retry(ctx context.Context, id, actor, reason string) (*Status, error) {
	return e.operator(ctx, id, fsm.KindRetried, actor, reason)
}

// Resolve records that an operator undid a STUCK saga's current step by
// hand; compensation continues with the steps before it.
func (e *Engine) Resolve(ctx context.Context, id, actor, reason string) (*Status, error) {
	return e.operator(ctx, id, fsm.KindResolved, actor, reason)
}

func (e *Engine) operator(ctx context.Context, id string, kind fsm.Kind, actor, reason string) (*Status, error) {
	if actor == "" {
		return nil, fmt.Errorf("%w: an operator action needs an actor (who)", ErrInvalidArgument)
	}
	if err := checkOperatorText(actor, reason); err != nil {
		return nil, err
	}
	var then func(*run, *fsm.Saga)
	if kind == fsm.KindAborted {
		then = cancelCalls
	}
	sg, _, err := e.change(ctx, id, func(cur *fsm.Saga) ([]*fsm.Record, error) {
		return []*fsm.Record{{Kind: kind, Saga: id, At: e.now(), Step: max(cur.Current, 0), Actor: actor, Reason: reason}}, nil
	}, false, then)
	if err != nil {
		return nil, err
	}
	e.tr.event(sg, kind, actor, reason)
	if sg.State == fsm.StateCompensating {
		e.kick(id)
	}
	return newStatus(sg), nil
}

// Wait blocks until the saga is COMPLETED, FAILED or STUCK (or ctx ends)
// and returns its status.
func (e *Engine) Wait(ctx context.Context, id string) (*Status, error) {
	// Register first, then look: a saga that settles in between is sent
	// on the channel, so no wake-up is lost.
	ch := make(chan *fsm.Saga, 1)
	e.mu.Lock()
	e.watchers[id] = append(e.watchers[id], ch)
	e.mu.Unlock()
	// A look at the shared state (no copy): a Status is built only for a
	// saga that has settled.
	var sg *fsm.Saga
	if err := e.read(func() (err error) { sg, err = e.store.Peek(id); return err }); err != nil {
		e.unwatch(id, ch)
		return nil, err
	}
	if sg.State.Terminal() || sg.State == fsm.StateStuck {
		e.unwatch(id, ch)
		return newStatus(sg), nil
	}
	select {
	case sg := <-ch:
		return newStatus(sg), nil
	case <-ctx.Done():
		e.unwatch(id, ch)
		return nil, ctx.Err()
	case <-e.ctx.Done():
		e.unwatch(id, ch)
		if poison := e.poisoned(); poison != nil {
			return nil, fmt.Errorf("%w (cause: %v)", ErrPoisoned, poison)
		}
		return nil, ErrClosed
	}
}

func (e *Engine) unwatch(id string, ch chan *fsm.Saga) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ws := e.watchers[id]
	for i, w := range ws {
		if w == ch {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(e.watchers, id)
	} else {
		e.watchers[id] = ws
	}
}

// Status is a saga's state for callers and operators.
type Status struct {
	ID         string
	Definition string
	Version    int
	State      fsm.SagaState
	// CurrentStep is the step running (IN_PROGRESS) or being compensated
	// (COMPENSATING, STUCK); "" in a terminal state. For a saga with
	// parallel steps: the steps running, comma-separated, or the first
	// stuck one.
	CurrentStep string
	// Running lists the steps whose action is running, in step order.
	Running     []string
	Completed   []string // steps whose action completed, in order
	Compensated []string // steps compensated, in the order they were undone
	// Pending lists the compensations still to run, in order.
	Pending   []string
	LastError *fsm.ErrorInfo
	Steps     []fsm.Step
	User      string
	// Meta is the free-form data recorded at Start (StartOptions.Meta).
	Meta      map[string]string
	CreatedAt time.Time
	UpdatedAt time.Time
	Deadline  time.Time // zero when none
	// HistoryDropped is the number of attempt records the history cap
	// dropped from History (see Options.HistoryCap); the seqs of the
	// first and the last of them are in Saga.HistoryDroppedFirst and
	// HistoryDroppedLast.
	HistoryDropped uint64
	Saga           *fsm.Saga // the full applied state (a copy the caller owns)
}

// newStatus builds a status from a saga the engine shares (its cache, a
// transition's result): the status gets its own copy.
func newStatus(sg *fsm.Saga) *Status { return statusOf(sg.DeepCopy()) }

// statusOf builds a status that takes sg over; for sagas the caller
// already owns (fsm.Store.Get returns a copy).
func statusOf(sg *fsm.Saga) *Status {
	st := &Status{
		ID: sg.ID, Definition: sg.Definition, Version: sg.Version, State: sg.State,
		LastError: sg.LastError, Steps: sg.Steps, User: sg.User, Meta: sg.Meta,
		CreatedAt: time.Unix(0, sg.CreatedAt), UpdatedAt: time.Unix(0, sg.UpdatedAt), Saga: sg,
		HistoryDropped: sg.HistoryDropped,
	}
	if sg.Deadline > 0 {
		st.Deadline = time.Unix(0, sg.Deadline)
	}
	if sg.Current >= 0 && sg.Current < len(sg.Steps) {
		st.CurrentStep = sg.Steps[sg.Current].Name
	}
	for _, i := range sg.Running() {
		st.Running = append(st.Running, sg.Steps[i].Name)
	}
	if sg.Parallel() && sg.State == fsm.StateInProgress {
		st.CurrentStep = strings.Join(st.Running, ", ")
	}
	for _, s := range sg.Steps {
		if s.EndedAt > 0 && (s.Status == fsm.StepDone || s.Status == fsm.StepCompensating || s.Status == fsm.StepCompensated) && !s.Uncertain {
			st.Completed = append(st.Completed, s.Name)
		}
	}
	var undone []int
	for i := len(sg.Steps) - 1; i >= 0; i-- {
		if sg.Steps[i].Status == fsm.StepCompensated {
			undone = append(undone, i)
		}
	}
	// In the order undone (parallel branches: by time).
	sort.SliceStable(undone, func(a, b int) bool { return sg.Steps[undone[a]].CompEndedAt < sg.Steps[undone[b]].CompEndedAt })
	for _, i := range undone {
		st.Compensated = append(st.Compensated, sg.Steps[i].Name)
	}
	for _, i := range fsm.Pending(sg) {
		st.Pending = append(st.Pending, sg.Steps[i].Name)
	}
	return st
}

// String is a one-line summary.
func (s *Status) String() string {
	out := s.ID + " " + s.Definition + "@v" + strconv.Itoa(s.Version) + " " + s.State.String()
	if s.CurrentStep != "" {
		out += " at " + s.CurrentStep
	}
	if s.LastError != nil {
		out += " (" + s.LastError.Error() + ")"
	}
	return out
}
