package engine

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// ensureDriver starts the goroutine that moves a saga forward (engine-
// driven steps) or backward (compensations), unless one already runs.
func (e *Engine) ensureDriver(id string) {
	r := e.getRun(id)
	t := e.curTerm()
	e.mu.Lock()
	if r.driving || e.closed || t.ctx.Err() != nil {
		e.mu.Unlock()
		return
	}
	r.driving = true
	e.drivers.Add(1)
	t.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.drivers.Done()
		defer t.wg.Done()
		backoff := time.Second
		// A driver belongs to one term of leadership (the engine's whole
		// life in single-node mode): when the term ends it lets go of the
		// saga, and the next term's resume drives it afresh.
		tctx := t.ctx
		for {
			err := e.drive(tctx, id)
			if err != nil && tctx.Err() == nil {
				if fatal(err) {
					e.opts.Logger.Error("engine: saga driver stopped", "saga", id, "err", err)
				} else {
					// A transient failure (a store read, say) must not leave
					// the saga undriven until the next Open: try again.
					e.opts.Logger.Warn("engine: saga driver failed; retrying", "saga", id, "in", backoff, "err", err)
					if e.sleep(tctx, r, backoff) {
						backoff = min(2*backoff, time.Minute)
						continue
					}
				}
			}
			// A saga this driver saw terminal stays terminal: no transition
			// leaves COMPLETED or FAILED, so there is nothing to look up
			// (the lookup, a Pebble read and decode of a saga already
			// gone from the live cache, was 8% of the CPU at c=64).
			r.mu.Lock()
			done := r.saga != nil && r.saga.State.Terminal()
			r.mu.Unlock()
			if err == nil && done {
				e.mu.Lock()
				r.driving = false
				if e.runs[id] == r {
					delete(e.runs, id)
				}
				e.mu.Unlock()
				return
			}
			// A transition (an operator retry, an abort) may have made the
			// saga drivable again just as this driver decided to stop:
			// check once more under the lock before letting go.
			e.mu.Lock()
			sg, gerr := e.store.Get(id) // Close waits for drivers: the store is open
			again := err == nil && gerr == nil && tctx.Err() == nil && drivable(sg)
			if !again {
				r.driving = false
				if gerr == nil && sg.State.Terminal() && e.runs[id] == r {
					delete(e.runs, id)
				}
				e.mu.Unlock()
				return
			}
			e.mu.Unlock()
		}
	}()
}

// fatal reports whether a driver error means the engine cannot go on
// (poisoned, closed) or the saga does not exist.
func fatal(err error) bool {
	return errors.Is(err, ErrPoisoned) || errors.Is(err, ErrOutcomeUnknown) ||
		errors.Is(err, ErrClosed) || errors.Is(err, fsm.ErrUnknownSaga)
}

// drivable reports whether the driver has work to do on sg.
func drivable(sg *fsm.Saga) bool {
	switch sg.State {
	case fsm.StateCompensating:
		return true
	case fsm.StateInProgress:
		return sg.Driven
	}
	return false
}

// drive runs one saga until it is terminal, STUCK, waiting for its caller
// (a manual saga in progress), or the engine closes.
func (e *Engine) drive(tctx context.Context, id string) error {
	for tctx.Err() == nil {
		r := e.getRun(id)
		// Read the abort epoch before the state: an abort committed after
		// this read bumps it, and callCtx then refuses to start the action.
		epoch := e.abortEpoch(r)
		r.mu.Lock()
		sg := r.saga
		r.mu.Unlock()
		if sg == nil {
			var err error
			if sg, err = e.store.Get(id); err != nil { // Close waits for drivers
				return err
			}
		}
		if !drivable(sg) {
			return nil
		}
		var err error
		if sg.State == fsm.StateInProgress {
			err = e.runAction(tctx, r, sg, epoch)
		} else {
			err = e.runCompensation(tctx, sg)
		}
		if err != nil {
			if errors.Is(err, fsm.ErrIllegalTransition) {
				// The saga moved under us (an abort, a deadline): look again.
				continue
			}
			return err
		}
	}
	return nil
}

// callCtx returns the context for one action or compensation attempt: it
// ends when the engine closes, when the step's timeout passes, or when the
// saga is aborted (for actions).
//
// For an action (r != nil) it also registers the cancel function that an
// abort calls, and refuses (ok false) when an abort has happened since the
// driver read the saga at epoch.
func (e *Engine) callCtx(tctx context.Context, r *run, timeout time.Duration, epoch uint64) (ctx context.Context, cancel context.CancelFunc, ok bool) {
	ctx, cancelCause := context.WithCancelCause(tctx)
	cancel = func() { cancelCause(context.Canceled) }
	if r != nil {
		e.mu.Lock()
		if r.aborts != epoch {
			// Aborted since the driver read the state: do not start.
			e.mu.Unlock()
			cancel()
			return ctx, cancel, false
		}
		r.cancel = cancel
		e.mu.Unlock()
	}
	if timeout > 0 {
		t := e.opts.Clock.NewTimer(timeout)
		go func() {
			select {
			case <-t.C():
				cancelCause(errStepTimeout)
			case <-ctx.Done():
				t.Stop()
			}
		}()
	}
	return ctx, cancel, true
}

// abortEpoch returns the number of aborts seen by the saga's run.
func (e *Engine) abortEpoch(r *run) uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return r.aborts
}

var errStepTimeout = errors.New("step attempt timed out")

// timedOut reports whether the call's context ended by its step timeout.
func timedOut(ctx context.Context) bool { return errors.Is(context.Cause(ctx), errStepTimeout) }

// cancelAction stops the action of an aborted saga: the one running, one
// about to start (callCtx sees the epoch move), or a backoff sleep.
func (e *Engine) cancelAction(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.runs[id]
	if !ok {
		return
	}
	r.aborts++
	if r.cancel != nil {
		r.cancel()
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// sleep waits d on the engine's clock, or until the saga is aborted
// (r.wake); false if the engine closed.
func (e *Engine) sleep(tctx context.Context, r *run, d time.Duration) bool {
	if d <= 0 {
		return tctx.Err() == nil
	}
	t := e.opts.Clock.NewTimer(d)
	select {
	case <-t.C():
		return true
	case <-r.wake:
		t.Stop()
		return true
	case <-tctx.Done():
		t.Stop()
		return false
	}
}

func (e *Engine) call(sg *fsm.Saga, i int, kind compensation.Kind, attempt int) compensation.Call {
	st := sg.Steps[i]
	c := compensation.Call{
		SagaID: sg.ID, Definition: sg.Definition, Step: st.Name, StepIndex: i, Kind: kind,
		Input: sg.Input, Attempt: attempt, User: sg.User,
		IdempotencyKey: compensation.IdempotencyKey(sg.ID, st.Name, kind),
	}
	if kind == compensation.KindCompensation {
		c.Output, c.Uncertain = st.Output, st.Uncertain
	}
	return c
}

// runAction performs one attempt of the current step of an engine-driven
// saga. The record saying it runs (saga started, previous step completed,
// or step started for a retry) is already durable.
func (e *Engine) runAction(tctx context.Context, r *run, sg *fsm.Saga, epoch uint64) error {
	i := sg.Current
	st := sg.Steps[i]
	action, ok := e.opts.Registry.Action(st.Action)
	if !ok {
		// Registered at start; a restarted process may have forgotten it.
		// Fail the step so the saga is compensated rather than hang.
		return e.failStep(tctx, sg, i, &fsm.ErrorInfo{Kind: "unregistered",
			Message: fmt.Sprintf("action %q is not registered in this process", st.Action)})
	}
	ctx, cancel, ok := e.callCtx(tctx, r, st.Timeout, epoch)
	if !ok {
		return nil // aborted meanwhile: the driver looks at the state again
	}
	if tctx.Err() != nil {
		cancel()
		return nil // the term ended: the next leader runs the step
	}
	out, err := safeAction(ctx, action, e.call(sg, i, compensation.KindAction, st.Attempts))
	timeout := timedOut(ctx)
	cancel()
	if tctx.Err() != nil {
		// Closing, or no longer the leader: the step stays running,
		// uncertain at the next Open or on the next leader.
		return nil
	}
	if err == nil && len(out) > e.opts.WAL.MaxRecordSize/2 {
		return e.failStep(tctx, sg, i, &fsm.ErrorInfo{Kind: "permanent", Message: fmt.Sprintf(
			"action %q returned %d bytes of output, over the limit of %d (half of Options.WAL.MaxRecordSize)",
			st.Action, len(out), e.opts.WAL.MaxRecordSize/2)})
	}
	if err == nil {
		out = bytes.Clone(out) // the action may reuse its buffer
		_, terr := e.transition(tctx, sg.ID, func(cur *fsm.Saga) ([]*fsm.Record, error) {
			return []*fsm.Record{{Kind: fsm.KindStepCompleted, Saga: sg.ID, At: e.now(), Step: i, Output: out}}, nil
		})
		return terr
	}
	ei := errorInfo(err)
	if timeout {
		ei = &fsm.ErrorInfo{Kind: "timeout", Message: fmt.Sprintf("attempt exceeded the step timeout %v: %v", st.Timeout, err), Retryable: true}
	}
	policy := compensation.Policy(st.Retry)
	elapsed := time.Duration(e.now() - st.StartedAt)
	delay, retry := policy.Next(st.Attempts, elapsed, e.opts.Rand())
	if compensation.IsPermanent(err) || !retry {
		return e.failStep(tctx, sg, i, ei)
	}
	if !e.sleep(tctx, r, delay) {
		return nil
	}
	_, terr := e.transition(tctx, sg.ID, func(cur *fsm.Saga) ([]*fsm.Record, error) {
		return []*fsm.Record{{Kind: fsm.KindStepStarted, Saga: sg.ID, At: e.now(), Step: i, Attempt: cur.Steps[i].Attempts + 1}}, nil
	})
	return terr
}

func (e *Engine) failStep(tctx context.Context, sg *fsm.Saga, i int, ei *fsm.ErrorInfo) error {
	_, err := e.transition(tctx, sg.ID, func(cur *fsm.Saga) ([]*fsm.Record, error) {
		return []*fsm.Record{{Kind: fsm.KindStepFailed, Saga: sg.ID, At: e.now(), Step: i, Err: ei}}, nil
	})
	return err
}

// runCompensation performs one attempt of the current compensation:
// first a durable "compensation started" record, then the handler, then
// "completed" (joined with the next compensation's "started" in one
// record batch) or "failed" (final when the retry budget is spent: STUCK).
// A compensation found already started (before a restart, or before a
// failed attempt) is uncertain: it gets a new attempt record and runs again.
func (e *Engine) runCompensation(tctx context.Context, sg *fsm.Saga) error {
	i := sg.Current
	next, err := e.transition(tctx, sg.ID, func(cur *fsm.Saga) ([]*fsm.Record, error) {
		return []*fsm.Record{{Kind: fsm.KindCompStarted, Saga: sg.ID, At: e.now(), Step: i, Attempt: cur.Steps[i].CompAttempts + 1}}, nil
	})
	if err != nil {
		return err
	}
	return e.compensateStarted(tctx, next)
}

// compensateStarted runs the handler of the current step of sg, whose
// "compensation started" record is durable, and records the outcome.
func (e *Engine) compensateStarted(tctx context.Context, sg *fsm.Saga) error {
	r := e.getRun(sg.ID)
	i := sg.Current
	st := sg.Steps[i]
	h, ok := e.opts.Registry.Handler(st.Compensation)
	var err error
	if tctx.Err() != nil {
		return nil // closing or the term ended: the next Open or leader runs it
	}
	if !ok {
		err = fmt.Errorf("compensation handler %q is not registered in this process", st.Compensation)
	} else {
		ctx, cancel, _ := e.callCtx(tctx, nil, st.Timeout, 0)
		err = safeHandler(ctx, h, e.call(sg, i, compensation.KindCompensation, st.CompAttempts))
		cancel()
	}
	if tctx.Err() != nil {
		return nil // closing or no longer leading: re-run at next Open or by the next leader
	}
	if err == nil {
		next, terr := e.transition(tctx, sg.ID, func(cur *fsm.Saga) ([]*fsm.Record, error) {
			recs := []*fsm.Record{{Kind: fsm.KindCompCompleted, Saga: sg.ID, At: e.now(), Step: i}}
			// Join "k compensated" with "k-1 compensation started": one fsync.
			after, aerr := fsm.Apply(cur, recs[0])
			if aerr == nil && after.State == fsm.StateCompensating {
				j := after.Current
				recs = append(recs, &fsm.Record{Kind: fsm.KindCompStarted, Saga: sg.ID, At: recs[0].At, Step: j,
					Attempt: after.Steps[j].CompAttempts + 1})
			}
			return recs, nil
		})
		if terr != nil {
			return terr
		}
		if next.State == fsm.StateCompensating {
			return e.compensateStarted(tctx, next)
		}
		return nil
	}
	ei := errorInfo(err)
	policy := compensation.Policy(st.CompensationRetry)
	attempts := st.CompAttempts - st.CompRoundBase
	elapsed := time.Duration(e.now() - st.CompRoundStart)
	delay, retry := policy.Next(attempts, elapsed, e.opts.Rand())
	if !ok {
		retry = false
	}
	next, terr := e.transition(tctx, sg.ID, func(cur *fsm.Saga) ([]*fsm.Record, error) {
		return []*fsm.Record{{Kind: fsm.KindCompFailed, Saga: sg.ID, At: e.now(), Step: i,
			Attempt: cur.Steps[i].CompAttempts, Err: ei, Final: !retry}}, nil
	})
	if terr != nil {
		return terr
	}
	if next.State == fsm.StateStuck {
		e.opts.Logger.Error("engine: saga STUCK: a compensation exhausted its retry budget; an operator must retry or resolve it",
			"saga", sg.ID, "step", st.Name, "handler", st.Compensation, "attempts", next.Steps[i].CompAttempts, "err", ei.Error())
		return nil
	}
	e.sleep(tctx, r, delay)
	return nil
}

// safeAction and safeHandler turn a panic in user code into an error, so
// one bad handler cannot take the engine down with half-written state.
func safeAction(ctx context.Context, a compensation.Action, c compensation.Call) (out []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("action %s panicked: %v", c.Step, p)
		}
	}()
	return a(ctx, c)
}

func safeHandler(ctx context.Context, h compensation.Handler, c compensation.Call) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("compensation of %s panicked: %v", c.Step, p)
		}
	}()
	return h(ctx, c)
}

// deadline is one saga's deadline in the scheduler's heap.
type deadline struct {
	at int64
	id string
}

type deadlineHeap []deadline

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h deadlineHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *deadlineHeap) Push(x any)        { *h = append(*h, x.(deadline)) }
func (h *deadlineHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// armDeadline schedules the abort of an in-progress saga at its deadline
// (unix ns). One goroutine and one timer serve every saga.
func (e *Engine) armDeadline(id string, at int64) {
	e.dlMu.Lock()
	heap.Push(&e.dl, deadline{at: at, id: id})
	e.dlMu.Unlock()
	select {
	case e.dlWake <- struct{}{}:
	default:
	}
}

// deadlineLoop fires deadlines in time order on the engine's clock.
func (e *Engine) deadlineLoop() {
	defer e.bg.Done()
	for {
		e.dlMu.Lock()
		var timer compensation.Timer
		var timerC <-chan time.Time
		if len(e.dl) > 0 {
			timer = e.opts.Clock.NewTimer(time.Duration(e.dl[0].at - e.now()))
			timerC = timer.C()
		}
		e.dlMu.Unlock()
		select {
		case <-e.ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return
		case <-e.dlWake:
			if timer != nil {
				timer.Stop()
			}
		case <-timerC:
			now := e.now()
			e.dlMu.Lock()
			var due []string
			for len(e.dl) > 0 && e.dl[0].at <= now {
				due = append(due, heap.Pop(&e.dl).(deadline).id)
			}
			e.dlMu.Unlock()
			for _, id := range due {
				tctx := e.termCtx()
				e.goDriver(func() { e.expire(tctx, id) })
			}
		}
	}
}

// goDriver runs f in a goroutine that Close waits for, unless the engine
// is closing.
func (e *Engine) goDriver(f func()) {
	e.mu.Lock()
	if e.ctx.Err() != nil {
		e.mu.Unlock()
		return
	}
	e.drivers.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.drivers.Done()
		f()
	}()
}

// expire aborts a saga whose deadline passed, if it is still in progress.
func (e *Engine) expire(tctx context.Context, id string) {
	sg, err := e.transition(tctx, id, func(cur *fsm.Saga) ([]*fsm.Record, error) {
		if cur.State != fsm.StateInProgress {
			return nil, errNothingToDo
		}
		return []*fsm.Record{{Kind: fsm.KindAborted, Saga: id, At: e.now(), Step: cur.Current,
			Actor: "engine", Reason: "deadline exceeded"}}, nil
	})
	if err != nil {
		if !errors.Is(err, errNothingToDo) && !errors.Is(err, fsm.ErrUnknownSaga) && tctx.Err() == nil {
			e.opts.Logger.Error("engine: deadline abort failed", "saga", id, "err", err)
		}
		return
	}
	e.cancelAction(id)
	if sg.State == fsm.StateCompensating {
		e.ensureDriver(id)
	}
}

var errNothingToDo = errors.New("engine: nothing to do")

// resumeAll resumes every non-terminal saga after replay: compensations
// continue (a compensation started but not recorded done runs again);
// engine-driven steps that were running are uncertain and handled by
// their policy; deadlines are re-armed; STUCK sagas wait for an operator.
// warnUnregistered logs, once per name, every handler or action that a
// saga about to resume names and the registry does not hold: such a saga
// cannot make progress (its calls fail with compensation.ErrUnknownName and
// are retried) until a process with the handler opens the directory.
func (e *Engine) warnUnregistered(lists ...[]*fsm.Saga) {
	missing := map[string][]string{} // name -> sagas (the first few)
	for _, list := range lists {
		for _, sg := range list {
			for _, st := range sg.Steps {
				if st.Compensation != "" {
					if _, ok := e.opts.Registry.Handler(st.Compensation); !ok && len(missing[st.Compensation]) < 5 {
						missing[st.Compensation] = append(missing[st.Compensation], sg.ID)
					}
				}
				if sg.Driven && st.Action != "" {
					if _, ok := e.opts.Registry.Action(st.Action); !ok && len(missing[st.Action]) < 5 {
						missing[st.Action] = append(missing[st.Action], sg.ID)
					}
				}
			}
		}
	}
	for name, ids := range missing {
		e.opts.Logger.Warn("engine: sagas to resume name a handler the registry does not have; they cannot progress until it is registered",
			"handler", name, "sagas", ids)
	}
}

func (e *Engine) resumeAll(tctx context.Context) (resumed, stuckN int, err error) {
	var compensating, inProgress []*fsm.Saga
	if err := e.store.Each(fsm.StateCompensating, func(sg *fsm.Saga) error {
		compensating = append(compensating, sg)
		return nil
	}); err != nil {
		return 0, 0, err
	}
	if err := e.store.Each(fsm.StateInProgress, func(sg *fsm.Saga) error {
		inProgress = append(inProgress, sg)
		return nil
	}); err != nil {
		return 0, 0, err
	}
	stuck, err := e.store.Count()
	if err != nil {
		return 0, 0, err
	}
	stuckN = stuck[fsm.StateStuck]
	e.warnUnregistered(compensating, inProgress)
	for _, sg := range compensating {
		e.ensureDriver(sg.ID)
		resumed++
	}
	for _, sg := range inProgress {
		if sg.Deadline > 0 {
			e.armDeadline(sg.ID, sg.Deadline)
		}
		if !sg.Driven {
			continue
		}
		resumed++
		st := sg.Steps[sg.Current]
		var rec *fsm.Record
		if st.OnUncertain == fsm.UncertainRetry {
			rec = &fsm.Record{Kind: fsm.KindStepStarted, Saga: sg.ID, At: e.now(), Step: sg.Current, Attempt: st.Attempts + 1}
		} else {
			rec = &fsm.Record{Kind: fsm.KindAborted, Saga: sg.ID, At: e.now(), Step: sg.Current,
				Actor: "recovery", Reason: fmt.Sprintf("step %q was running when the engine stopped (uncertain)", st.Name)}
		}
		// Proposed concurrently: one group commit covers them all.
		id := sg.ID
		e.goDriver(func() {
			if _, err := e.transition(tctx, id, func(*fsm.Saga) ([]*fsm.Record, error) {
				return []*fsm.Record{rec}, nil
			}); err != nil {
				if tctx.Err() == nil {
					e.opts.Logger.Error("engine: resume of uncertain step failed", "saga", id, "err", err)
				}
				return
			}
			e.ensureDriver(id)
		})
	}
	return resumed, stuckN, nil
}
