package engine

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// The scheduler. Nothing runs per saga: the engine keeps, for each saga
// that is not terminal, a run (engine.go) whose lock r.mu guards every
// field of it, and starts a goroutine per handler invocation. The rule:
//
//   - kick looks at a saga's state under r.mu and starts every invocation
//     the state calls for that is not already in flight (r.calls), and
//     registers it there before letting go of the lock;
//   - an invocation runs its handler with no lock held, records the
//     outcome through transition (which takes r.mu), and when it ends it
//     leaves r.calls and kicks the saga again;
//   - every public call that makes a saga drivable (Run, Advance, abort,
//     retry, resolve, a deadline, recovery) kicks it after its transition;
//   - a saga with parallel steps (single-node) lets go of r.mu while its
//     records are synced, so that branches ending together share an fsync
//     (changeQueued); while any are queued, r.saga runs ahead of the log
//     and kick starts nothing from it, but notes (r.rekick) that the
//     change which ends the last of them must kick: persist before side
//     effect, and no kick lost while a branch keeps retrying.
//
// So a saga is never without an invocation while its state calls for one
// (whoever ends one kicks), and never has two for the same step (kick
// decides under the lock). A saga may have several invocations at once,
// one per step; a strict sequence has at most one: a compensation starts
// only once nothing else of its saga is in flight.

// invocation is one handler call in flight (with its retries), registered
// in its saga's run.
type invocation struct {
	cancel context.CancelFunc // ends the handler's context: abort
	wake   chan struct{}      // ends a backoff sleep early: abort
}

// work is what a saga's state calls for: an action or a compensation of a
// step.
type work struct {
	step int
	kind compensation.Kind
}

// due returns the invocations sg calls for, given those in flight (calls)
// and the bound on them (limit, for a saga with parallel steps).
func due(sg *fsm.Saga, calls map[int]*invocation, limit int) []work {
	if sg.Parallel() {
		return dueParallel(sg, calls, limit)
	}
	inFlight := len(calls)
	switch {
	case sg.State == fsm.StateInProgress && sg.Driven && sg.Current >= 0 && sg.Steps[sg.Current].Status == fsm.StepRunning:
		return []work{{step: sg.Current, kind: compensation.KindAction}}
	case sg.State == fsm.StateCompensating && inFlight == 0:
		// A compensation never overlaps another call of its saga (an
		// aborted action still running, say).
		return []work{{step: sg.Current, kind: compensation.KindCompensation}}
	}
	return nil
}

// dueParallel is due for a DAG saga: every running step's action (an
// engine-driven saga), or every compensation that its dependents no
// longer hold back and whose step has no call in flight (an action
// cancelled by the failure that began the compensation, say), up to limit
// calls in flight.
func dueParallel(sg *fsm.Saga, calls map[int]*invocation, limit int) []work {
	var out []work
	room := limit - len(calls)
	add := func(i int, k compensation.Kind) {
		if _, busy := calls[i]; !busy && len(out) < room {
			out = append(out, work{step: i, kind: k})
		}
	}
	switch sg.State {
	case fsm.StateInProgress:
		if sg.Driven {
			for _, i := range sg.Running() {
				add(i, compensation.KindAction)
			}
		}
	case fsm.StateCompensating:
		// Pending lists those ready first: once out is full, or past
		// them, the rest need no look (each look scans the steps).
		for _, i := range fsm.Pending(sg) {
			if len(out) >= room || !sg.CompensationReady(i) {
				break
			}
			add(i, compensation.KindCompensation)
		}
	}
	return out
}

// kick starts what the saga's state calls for and is not in flight, unless
// the term (the engine's life, in single-node mode) has ended.
func (e *Engine) kick(id string) {
	t := e.curTerm()
	if t.ctx.Err() != nil {
		return
	}
	r := e.lockRun(id)
	defer r.mu.Unlock()
	if r.queued > 0 {
		// The state includes records not yet durable: the change that
		// makes the last of them durable kicks again.
		r.rekick = true
		return
	}
	if r.saga == nil {
		var sg *fsm.Saga
		err := e.read(func() (err error) { sg, err = e.store.Peek(id); return err })
		if err != nil {
			if !fatal(err) {
				// A transient failure (a store read, say) must not leave
				// the saga undriven until the next Open: try again.
				d := r.pause()
				e.opts.Logger.Warn("engine: saga could not be read to drive it; retrying", "saga", id, "in", d, "err", err)
				e.goDriver(func() {
					if e.sleep(t.ctx, nil, d) {
						e.kick(id)
					}
				})
			}
			return
		}
		r.saga = sg
	}
	for _, w := range due(r.saga, r.calls, e.opts.MaxParallelSteps) {
		if _, busy := r.calls[w.step]; !busy {
			e.launch(t, id, r, w)
		}
	}
	e.dropRunLocked(id, r)
}

// seed caches sg, just read from the store, as its saga's state unless
// one is cached: the kick that follows needs no read of its own.
func (e *Engine) seed(sg *fsm.Saga) {
	r := e.lockRun(sg.ID)
	if r.saga == nil {
		r.saga = sg
	}
	r.mu.Unlock()
}

// pause returns how long to wait before driving the saga again after a
// transient failure: from 1 s, doubling up to a minute. r.mu held.
func (r *run) pause() time.Duration {
	r.backoff = min(max(2*r.backoff, time.Second), time.Minute)
	return r.backoff
}

// launch registers and starts one invocation. r.mu held.
func (e *Engine) launch(t *term, id string, r *run, w work) {
	e.mu.Lock()
	if e.ctx.Err() != nil || t.ctx.Err() != nil {
		// Closing (Close waits for what runs) or the term ended (the next
		// one waits for this one's invocations): start nothing. Both are
		// cancelled under e.mu, so no Add follows their Wait.
		e.mu.Unlock()
		return
	}
	e.drivers.Add(1)
	t.wg.Add(1)
	e.mu.Unlock()
	// The invocation's context names its saga's run: a record proposed
	// from inside it (a child saga's start, a handler calling the
	// engine) tells the writer queue the saga is not coming back before
	// that record's write (enqueue).
	ctx, cancel := context.WithCancel(context.WithValue(t.ctx, invokerKey{}, r))
	inv := &invocation{cancel: cancel, wake: make(chan struct{}, 1)}
	if r.calls == nil {
		r.calls = map[int]*invocation{}
	}
	r.calls[w.step] = inv
	sg := r.saga
	e.workers.run(func() {
		defer e.drivers.Done()
		defer t.wg.Done()
		var last int
		var err error
		if w.kind == compensation.KindAction {
			last, err = e.act(t.ctx, ctx, inv, sg, w.step)
		} else {
			last, err = e.compensate(t.ctx, ctx, inv, r, sg, w.step)
		}
		cancel()
		e.finish(t.ctx, id, r, last, err)
	})
}

// finish takes an ended invocation out of its saga's run and kicks the
// saga again.
func (e *Engine) finish(tctx context.Context, id string, r *run, step int, err error) {
	var pause time.Duration
	r.mu.Lock()
	delete(r.calls, step)
	// A leader may be holding a write for this invocation's record, which
	// it may never make (it ended, or its record is durable already).
	e.wq.signal()
	switch {
	case err == nil:
		r.backoff = 0
	case tctx.Err() != nil, errors.Is(err, fsm.ErrIllegalTransition):
		// Closing, the term ended, or the saga moved under it (an abort,
		// a deadline): the kick below looks again.
	case fatal(err):
		r.mu.Unlock()
		e.opts.Logger.Error("engine: saga driver stopped", "saga", id, "err", err)
		return
	default:
		// A transient failure must not leave the saga undriven until the
		// next Open: try again after a pause.
		pause = r.pause()
	}
	r.mu.Unlock()
	if pause > 0 {
		e.opts.Logger.Warn("engine: saga driver failed; retrying", "saga", id, "in", pause, "err", err)
		if !e.sleep(tctx, nil, pause) {
			return
		}
	}
	e.kick(id)
}

// fatal reports whether a driver error means the engine cannot go on
// (poisoned, closed) or the saga does not exist.
func fatal(err error) bool {
	return errors.Is(err, ErrPoisoned) || errors.Is(err, ErrOutcomeUnknown) ||
		errors.Is(err, ErrClosed) || errors.Is(err, fsm.ErrUnknownSaga)
}

// callCtx returns the context for one attempt of a handler: it ends when
// the invocation's does (engine closed, term ended, abort) or when the
// step's timeout passes. Without a timeout it is the invocation's own
// context: a context per attempt would only cost allocations (and a
// child registered with the invocation's) on every step.
func (e *Engine) callCtx(parent context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout <= 0 {
		return parent, func() {}
	}
	ctx, cancelCause := context.WithCancelCause(parent)
	cancel := func() { cancelCause(context.Canceled) }
	t := e.opts.Clock.NewTimer(timeout)
	go func() {
		select {
		case <-t.C():
			cancelCause(errStepTimeout)
		case <-ctx.Done():
			t.Stop()
		}
	}()
	return ctx, cancel
}

var errStepTimeout = errors.New("step attempt timed out")

func handlerLimits(bounds map[string]int) map[string]chan struct{} {
	m := make(map[string]chan struct{}, len(bounds))
	for name, n := range bounds {
		m[name] = make(chan struct{}, n)
	}
	return m
}

// acquire waits for a slot of the named handler's concurrency bound
// (Options.HandlerConcurrency) and returns its release; false if ctx
// ended first. A name without a bound takes no slot.
func (e *Engine) acquire(ctx context.Context, name string) (release func(), ok bool) {
	sem, bounded := e.limits[name]
	if !bounded {
		return func() {}, true
	}
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, true
	case <-ctx.Done():
		return nil, false
	}
}

// timedOut reports whether the call's context ended by its step timeout.
func timedOut(ctx context.Context) bool { return errors.Is(context.Cause(ctx), errStepTimeout) }

// cancelCalls stops the invocations of a saga just aborted: a handler
// running sees its context end, a backoff sleep ends, and a retry that
// follows finds the saga compensating (an illegal transition) and stops.
// It runs under r.mu in the abort's own transition (as its then), so that
// only actions are in flight: the abort's compensation starts after it.
func cancelCalls(r *run, _ *fsm.Saga) {
	for _, inv := range r.calls {
		inv.cancel()
		select {
		case inv.wake <- struct{}{}:
		default:
		}
	}
}

// sleep waits d on the engine's clock, or until wake (an abort); false if
// ctx ended first.
func (e *Engine) sleep(ctx context.Context, wake <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := e.opts.Clock.NewTimer(d)
	select {
	case <-t.C():
		return true
	case <-wake:
		t.Stop()
		return true
	case <-ctx.Done():
		t.Stop()
		return false
	}
}

func (e *Engine) call(sg *fsm.Saga, i int, kind compensation.Kind, attempt int) compensation.Call {
	st := sg.Steps[i]
	c := compensation.Call{
		SagaID: sg.ID, Definition: sg.Definition, Version: sg.Version, Step: st.Name, StepIndex: i, Kind: kind,
		Input: sg.Input, Attempt: attempt, User: sg.User,
		IdempotencyKey: compensation.IdempotencyKey(sg.ID, st.Name, kind),
	}
	if kind == compensation.KindCompensation {
		c.Output, c.Uncertain = st.Output, st.Uncertain
	}
	return c
}

// act runs the action of step i of an engine-driven saga, whose record
// saying it runs (saga started, previous step completed, or step started
// for a retry) is durable, with its retries, and records the outcome.
// tctx is the term's context (the engine's, in single-node mode); ctx is
// the invocation's, which an abort ends too.
//
// The invocation goes on with the next step once "step i done, i+1
// begins" is durable (strict) or has its place in the log (pipelined:
// then before step i+2 begins it waits for that record to be durable,
// never more than one step ahead of the log). A saga's last completion is
// durable before the invocation ends. It returns the step it ended on.
func (e *Engine) act(tctx, ctx context.Context, inv *invocation, sg *fsm.Saga, i int) (int, error) {
	for {
		st := sg.Steps[i]
		action, ok := e.opts.Registry.Action(st.Action)
		if st.Child != "" {
			action, ok = e.childAction(sg, i), true
		}
		if !ok {
			// Registered at start; a restarted process may have forgotten
			// it. Fail the step so the saga is compensated rather than hang.
			return i, e.failStep(tctx, sg.ID, i, &fsm.ErrorInfo{Kind: "unregistered",
				Message: fmt.Sprintf("action %q is not registered in this process", st.Action)})
		}
		if ctx.Err() != nil {
			// Aborted before it started, or the term ended: the next
			// leader (or Open) runs it, or it is compensated as uncertain.
			return i, nil
		}
		release, ok := e.acquire(ctx, st.Action)
		if !ok {
			return i, nil // aborted, or the term ended, while waiting for a slot: never started
		}
		cctx, cancel := e.callCtx(ctx, st.Timeout)
		if ctx.Err() != nil {
			cancel()
			release()
			return i, nil // aborted while the call was prepared: never started
		}
		c := e.call(sg, i, compensation.KindAction, st.Attempts)
		hctx, span := e.handlerCtx(cctx, sg, &c)
		out, err := safeAction(hctx, action, c)
		release()
		timeout := timedOut(cctx)
		endAttempt(span, err, timeout)
		cancel()
		if tctx.Err() != nil {
			// Closing, or no longer the leader: the step stays running,
			// uncertain at the next Open or on the next leader.
			return i, nil
		}
		if err == nil && len(out) > e.opts.WAL.MaxRecordSize/2 {
			return i, e.failStep(tctx, sg.ID, i, &fsm.ErrorInfo{Kind: "permanent", Message: fmt.Sprintf(
				"action %q returned %d bytes of output, over the limit of %d (half of Options.WAL.MaxRecordSize)",
				st.Action, len(out), e.opts.WAL.MaxRecordSize/2)})
		}
		if err == nil {
			out = bytes.Clone(out) // the action may reuse its buffer
			done := func(*fsm.Saga) ([]*fsm.Record, error) {
				return []*fsm.Record{{Kind: fsm.KindStepCompleted, Saga: sg.ID, At: e.now(), Step: i, Output: out}}, nil
			}
			next, prev, terr := e.transitionAhead(tctx, sg.ID, done, func(r *run, next *fsm.Saga) {
				if next.State == fsm.StateInProgress && !next.Parallel() {
					// This invocation goes on with the next step.
					delete(r.calls, i)
					r.calls[next.Current] = inv
				}
			})
			if terr != nil {
				return i, terr
			}
			if next.State != fsm.StateInProgress || next.Parallel() {
				// Done, or parallel steps: the kick that follows starts
				// every step this one made ready.
				return i, nil
			}
			// Never more than one step ahead of the log: the record that
			// began the step just done must be durable before the next
			// begins (pipelined mode; in strict mode it is).
			if err := e.waitDurable(prev); err != nil {
				return next.Current, err
			}
			sg, i = next, next.Current
			continue
		}
		ei := errorInfo(err)
		if timeout {
			ei = &fsm.ErrorInfo{Kind: "timeout", Message: fmt.Sprintf("attempt exceeded the step timeout %v: %v", st.Timeout, err), Retryable: true}
		}
		policy := compensation.Policy(st.Retry)
		elapsed := time.Duration(e.now() - st.StartedAt)
		delay, retry := policy.Next(st.Attempts, elapsed, e.opts.Rand())
		if compensation.IsPermanent(err) || !retry {
			if st.Child != "" && !e.settleChild(ctx, inv, sg, i) {
				return i, nil
			}
			return i, e.failStep(tctx, sg.ID, i, ei)
		}
		if !e.sleep(tctx, inv.wake, delay) {
			return i, nil
		}
		// An abort meanwhile makes this an illegal transition: the
		// invocation ends and the saga is compensated.
		next, terr := e.transition(tctx, sg.ID, func(cur *fsm.Saga) ([]*fsm.Record, error) {
			return []*fsm.Record{{Kind: fsm.KindStepStarted, Saga: sg.ID, At: e.now(), Step: i, Attempt: cur.Steps[i].Attempts + 1}}, nil
		})
		if terr != nil {
			return i, terr
		}
		sg = next
	}
}

// failStep records that step i failed. In the same transition, under the
// saga's lock, it cancels the saga's other calls: parallel steps still
// running are now uncertain and compensated (a sequence has none).
func (e *Engine) failStep(tctx context.Context, id string, i int, ei *fsm.ErrorInfo) error {
	_, _, err := e.change(tctx, id, func(*fsm.Saga) ([]*fsm.Record, error) {
		return []*fsm.Record{{Kind: fsm.KindStepFailed, Saga: id, At: e.now(), Step: i, Err: ei}}, nil
	}, false, cancelCalls)
	return err
}

// compensate runs the compensation of step i of sg: first a durable
// "compensation started" record, then the handler, then "completed"
// (joined with the next compensation's "started" in one record batch, after
// which it goes on with that one) or "failed" (final when the retry budget
// is spent: STUCK). A compensation found already started (before a
// restart, or before a failed attempt) is uncertain: it gets a new attempt
// record and runs again. It returns the step it ended on.
func (e *Engine) compensate(tctx, ctx context.Context, inv *invocation, r *run, sg *fsm.Saga, i int) (int, error) {
	next, err := e.transition(tctx, sg.ID, func(cur *fsm.Saga) ([]*fsm.Record, error) {
		return []*fsm.Record{{Kind: fsm.KindCompStarted, Saga: sg.ID, At: e.now(), Step: i, Attempt: cur.Steps[i].CompAttempts + 1}}, nil
	})
	for err == nil {
		sg = next
		st := sg.Steps[i]
		h, ok := e.opts.Registry.Handler(st.Compensation)
		if st.Child != "" {
			h, ok = e.childUndo(sg, i), true
		}
		if ctx.Err() != nil {
			return i, nil // closing or the term ended: the next Open or leader runs it
		}
		var herr error
		if !ok {
			herr = fmt.Errorf("compensation handler %q is not registered in this process", st.Compensation)
		} else {
			release, ok := e.acquire(ctx, st.Compensation)
			if !ok {
				return i, nil // closing or the term ended: as above
			}
			cctx, cancel := e.callCtx(ctx, st.Timeout)
			c := e.call(sg, i, compensation.KindCompensation, st.CompAttempts)
			hctx, span := e.handlerCtx(cctx, sg, &c)
			herr = safeHandler(hctx, h, c)
			endAttempt(span, herr, timedOut(cctx))
			cancel()
			release()
		}
		if tctx.Err() != nil {
			return i, nil // closing or no longer leading: re-run at next Open or by the next leader
		}
		if herr != nil {
			return i, e.compensationFailed(tctx, inv, sg, i, herr, ok)
		}
		next, err = e.transition(tctx, sg.ID, func(cur *fsm.Saga) ([]*fsm.Record, error) {
			recs := []*fsm.Record{{Kind: fsm.KindCompCompleted, Saga: sg.ID, At: e.now(), Step: i}}
			// Join "k compensated" with "k-1 compensation started": one fsync.
			after, aerr := fsm.Apply(cur, recs[0])
			if aerr == nil && after.State == fsm.StateCompensating && !after.Parallel() {
				j := after.Current
				recs = append(recs, &fsm.Record{Kind: fsm.KindCompStarted, Saga: sg.ID, At: recs[0].At, Step: j,
					Attempt: after.Steps[j].CompAttempts + 1})
			}
			return recs, nil
		})
		if err != nil || next.State != fsm.StateCompensating || next.Parallel() {
			// Parallel steps: the kick that follows starts every
			// compensation this one made ready.
			break
		}
		// Go on with the step before, under the same registration.
		r.mu.Lock()
		delete(r.calls, i)
		i = next.Current
		r.calls[i] = inv
		r.mu.Unlock()
	}
	return i, err
}

// compensationFailed records a failed attempt (final when the retry
// budget is spent, the error is permanent or the handler is not
// registered: STUCK) and waits the
// backoff before the next attempt.
func (e *Engine) compensationFailed(tctx context.Context, inv *invocation, sg *fsm.Saga, i int, herr error, registered bool) error {
	st := sg.Steps[i]
	ei := errorInfo(herr)
	policy := compensation.Policy(st.CompensationRetry)
	attempts := st.CompAttempts - st.CompRoundBase
	elapsed := time.Duration(e.now() - st.CompRoundStart)
	delay, retry := policy.Next(attempts, elapsed, e.opts.Rand())
	// A permanent error (compensation.Permanent: a remote endpoint's 4xx,
	// say) will not heal by retrying: STUCK at once, for an operator.
	retry = retry && registered && !compensation.IsPermanent(herr)
	next, err := e.transition(tctx, sg.ID, func(cur *fsm.Saga) ([]*fsm.Record, error) {
		return []*fsm.Record{{Kind: fsm.KindCompFailed, Saga: sg.ID, At: e.now(), Step: i,
			Attempt: cur.Steps[i].CompAttempts, Err: ei, Final: !retry}}, nil
	})
	if err != nil {
		return err
	}
	if next.State == fsm.StateStuck {
		if retry {
			// Another branch's compensation made the saga STUCK: this one
			// stops after its attempt, until an operator retries.
			return nil
		}
		e.opts.Logger.Error("engine: saga STUCK: a compensation exhausted its retry budget; an operator must retry or resolve it",
			"saga", sg.ID, "step", st.Name, "handler", st.Compensation, "attempts", next.Steps[i].CompAttempts, "err", ei.Error())
		return nil
	}
	e.sleep(tctx, inv.wake, delay)
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

// dlMsg is a message to the deadline loop, which owns the heap: arm a
// deadline, or forget them all (a term of leadership ended).
type dlMsg struct {
	d     deadline
	clear bool
}

// armDeadline schedules the abort of an in-progress saga at its deadline
// (unix ns). One goroutine and one timer serve every saga.
func (e *Engine) armDeadline(id string, at int64) {
	select {
	case e.dlIn <- dlMsg{d: deadline{at: at, id: id}}:
	case <-e.ctx.Done():
	}
}

// clearDeadlines forgets every armed deadline; those armed after it stay.
func (e *Engine) clearDeadlines() {
	select {
	case e.dlIn <- dlMsg{clear: true}:
	case <-e.ctx.Done():
	}
}

// deadlineLoop fires deadlines in time order on the engine's clock. It
// alone owns the heap: others send it dlMsgs, handled in the order sent.
func (e *Engine) deadlineLoop() {
	defer e.bg.Done()
	var dl deadlineHeap
	handle := func(m dlMsg) {
		if m.clear {
			dl = dl[:0]
		} else {
			heap.Push(&dl, m.d)
		}
	}
	for {
		var timer compensation.Timer
		var timerC <-chan time.Time
		if len(dl) > 0 {
			timer = e.opts.Clock.NewTimer(time.Duration(dl[0].at - e.now()))
			timerC = timer.C()
		}
		select {
		case <-e.ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return
		case m := <-e.dlIn:
			if timer != nil {
				timer.Stop()
			}
			handle(m)
			// Take every message waiting (a resume arms thousands) before
			// the next timer.
			for more := true; more; {
				select {
				case m := <-e.dlIn:
					handle(m)
				default:
					more = false
				}
			}
		case <-timerC:
			now := e.now()
			var due []string
			for len(dl) > 0 && dl[0].at <= now {
				due = append(due, heap.Pop(&dl).(deadline).id)
			}
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
	sg, _, err := e.change(tctx, id, func(cur *fsm.Saga) ([]*fsm.Record, error) {
		if cur.State != fsm.StateInProgress {
			return nil, errNothingToDo
		}
		return []*fsm.Record{{Kind: fsm.KindAborted, Saga: id, At: e.now(), Step: max(cur.Current, 0),
			Actor: "engine", Reason: "deadline exceeded"}}, nil
	}, false, cancelCalls)
	if err != nil {
		if !errors.Is(err, errNothingToDo) && !errors.Is(err, fsm.ErrUnknownSaga) && tctx.Err() == nil {
			// Not applied: try again shortly, unless the engine cannot go on.
			if fatal(err) {
				e.opts.Logger.Error("engine: deadline abort failed", "saga", id, "err", err)
			} else {
				e.opts.Logger.Warn("engine: deadline abort failed; trying again in 1s", "saga", id, "err", err)
				e.armDeadline(id, e.now()+int64(time.Second))
			}
		}
		return
	}
	e.tr.event(sg, fsm.KindAborted, "engine", "deadline exceeded")
	if sg.State == fsm.StateCompensating {
		e.kick(id)
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
	stuck, err := e.store.CountByState()
	if err != nil {
		return 0, 0, err
	}
	stuckN = stuck[fsm.StateStuck]
	e.warnUnregistered(compensating, inProgress)
	for _, sg := range compensating {
		e.seed(sg)
		e.kick(sg.ID)
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
		var recs []*fsm.Record
		if sg.Parallel() {
			recs = e.resumeParallel(sg)
		} else if st := sg.Steps[sg.Current]; sg.Durability == fsm.DurabilityPipelined {
			// The step after the current one may have run too, before its
			// record was durable: both are compensated as uncertain.
			last := min(sg.Current+1, len(sg.Steps)-1)
			recs = []*fsm.Record{{Kind: fsm.KindAborted, Saga: sg.ID, At: e.now(), Step: last, Actor: "recovery",
				Reason: fmt.Sprintf("step %q (pipelined: and the one after it) was running when the engine stopped (uncertain)", st.Name)}}
		} else if st.OnUncertain == fsm.UncertainRetry {
			recs = []*fsm.Record{{Kind: fsm.KindStepStarted, Saga: sg.ID, At: e.now(), Step: sg.Current, Attempt: st.Attempts + 1}}
		} else {
			recs = []*fsm.Record{{Kind: fsm.KindAborted, Saga: sg.ID, At: e.now(), Step: sg.Current,
				Actor: "recovery", Reason: fmt.Sprintf("step %q was running when the engine stopped (uncertain)", st.Name)}}
		}
		// Proposed concurrently: one group commit covers them all.
		id := sg.ID
		e.goDriver(func() {
			for backoff := time.Second; ; backoff = min(2*backoff, time.Minute) {
				proposed := false
				next, err := e.transition(tctx, id, func(cur *fsm.Saga) ([]*fsm.Record, error) {
					if cur.Seq != sg.Seq {
						return nil, nil // moved meanwhile (an abort, a deadline): nothing uncertain left
					}
					proposed = true
					return recs, nil
				})
				switch {
				case err == nil:
					if r := recs[0]; proposed && r.Kind == fsm.KindAborted {
						e.tr.event(next, r.Kind, r.Actor, r.Reason)
					}
					e.kick(id)
					return
				case tctx.Err() != nil:
					return
				case fatal(err) || errors.Is(err, fsm.ErrIllegalTransition):
					e.opts.Logger.Error("engine: resume of uncertain step failed", "saga", id, "err", err)
					return
				}
				// Not applied (a store read, say): the saga must not stay
				// undriven until the next Open.
				e.opts.Logger.Warn("engine: resume of uncertain step failed; retrying", "saga", id, "in", backoff, "err", err)
				if !e.sleep(tctx, nil, backoff) {
					return
				}
			}
		})
	}
	return resumed, stuckN, nil
}

// resumeParallel is what recovery records for a DAG saga whose steps were
// running: a new attempt of each if every one of them says retry, else an
// abort that compensates them all as uncertain (one running step that
// must not run twice decides for the saga).
func (e *Engine) resumeParallel(sg *fsm.Saga) []*fsm.Record {
	var recs []*fsm.Record
	var names []string
	retry := true
	now := e.now()
	for _, i := range sg.Running() {
		st := sg.Steps[i]
		names = append(names, strconv.Quote(st.Name))
		retry = retry && st.OnUncertain == fsm.UncertainRetry
		recs = append(recs, &fsm.Record{Kind: fsm.KindStepStarted, Saga: sg.ID, At: now, Step: i, Attempt: st.Attempts + 1})
	}
	if retry {
		return recs
	}
	return []*fsm.Record{{Kind: fsm.KindAborted, Saga: sg.ID, At: now, Actor: "recovery",
		Reason: fmt.Sprintf("parallel steps %s were running when the engine stopped (uncertain)", strings.Join(names, ", "))}}
}
