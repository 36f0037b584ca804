package engine

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// Nested sagas (see fsm/nested.go for the rules). A child step is an
// invocation like any other: its action is childAction, which starts the
// child saga and waits for it, and its compensation is childUndo, which
// brings the child to FAILED whatever state it is in. Both find the child
// by an id derived from the parent's id and the step, so they are safe to
// run again after a crash or a failover (the same child, never a second
// one), and the child's handlers get idempotency keys derived from the
// parent's in turn (compensation.IdempotencyKey of the child's id).

// ChildID is the id of the child saga that step i of saga parent runs:
// parent.i, or a hash of it where that would be over the id limit.
func ChildID(parent string, i int) string { return fsm.ChildID(parent, i) }

// hasChild reports whether any step runs a child saga.
func hasChild(steps []StepDef) bool {
	for i := range steps {
		if steps[i].Child != "" {
			return true
		}
	}
	return false
}

// checkChildren checks, at Define, that every child definition d names
// exists and that the sagas nested below d are at most fsm.MaxDepth deep
// (counting with the latest version of each definition, d as given). Every
// problem is named at once.
func (e *Engine) checkChildren(d *Definition) error {
	if !hasChild(d.Steps) {
		return nil
	}
	var probs []string
	// height returns how deep the sagas nested below def go (0: none),
	// stopping past the bound; path holds the names above, for cycles.
	var height func(def *Definition, path []string) int
	height = func(def *Definition, path []string) int {
		h := 0
		for _, s := range def.Steps {
			if s.Child == "" {
				continue
			}
			for _, p := range path {
				if p == s.Child {
					probs = append(probs, fmt.Sprintf("step %q of %s: child %s runs its own ancestor (a cycle)", s.Name, def.Name, s.Child))
					return fsm.MaxDepth + 1
				}
			}
			child := d
			if s.Child != d.Name {
				var err error
				if child, err = e.peekDefinition(s.Child, 0); err != nil {
					probs = append(probs, fmt.Sprintf("step %q of %s: child definition %s: %v", s.Name, def.Name, s.Child, err))
					continue
				}
			}
			for _, cs := range child.Steps {
				if cs.Action == "" && cs.Child == "" && child != d {
					probs = append(probs, fmt.Sprintf("step %q of %s: child %s has step %q without an action: a child saga is engine-driven", s.Name, def.Name, s.Child, cs.Name))
					break
				}
			}
			if len(path) > fsm.MaxDepth {
				return fsm.MaxDepth + 1
			}
			h = max(h, 1+height(child, append(path, s.Child)))
		}
		return h
	}
	if h := height(d, []string{d.Name}); h > fsm.MaxDepth {
		probs = append(probs, fmt.Sprintf("child sagas nest %d deep or more below it; the bound is %d", h, fsm.MaxDepth))
	}
	if len(probs) == 0 {
		return nil
	}
	return &fsm.DefinitionError{Name: d.Name, Problems: probs}
}

// childAction is the action of a child step: it starts the child saga
// (once: a second call finds it by its id) and waits for it to finish.
// The child's completion is the step's, with the output of the child's
// last step; its failure is the step's permanent failure, once it has
// compensated itself. A STUCK child holds the step until an operator
// settles it (or the step's timeout ends the wait).
func (e *Engine) childAction(parent *fsm.Saga, i int) compensation.Action {
	return func(ctx context.Context, c compensation.Call) ([]byte, error) {
		st := parent.Steps[i]
		if parent.Depth+1 > fsm.MaxDepth {
			return nil, compensation.Permanent(fmt.Errorf("child saga of %s would nest %d deep; the bound is %d", st.Child, parent.Depth+1, fsm.MaxDepth))
		}
		id := ChildID(parent.ID, i)
		_, _, err := e.start(ctx, st.Child, parent.Input, StartOptions{ID: id, User: parent.User,
			parent: parent.ID, depth: parent.Depth + 1}, true)
		if err != nil {
			var de *fsm.DefinitionError
			if errors.Is(err, fsm.ErrUnknownDefinition) || errors.Is(err, ErrInvalidArgument) || errors.Is(err, ErrNotDriven) ||
				errors.Is(err, compensation.ErrUnknownName) || errors.As(err, &de) {
				// The child cannot start in this process: no retry helps.
				return nil, compensation.Permanent(fmt.Errorf("child saga %s of %s: %w", id, st.Child, err))
			}
			return nil, err
		}
		// Kick it even if it existed: a first attempt whose start was
		// applied but not known to be (ErrOutcomeUnknown) left it undriven.
		// A kick starts only what is not in flight already.
		e.kick(id)
		sg, err := e.waitFinal(ctx, id, true)
		if err != nil {
			return nil, err
		}
		if sg.State == fsm.StateCompleted {
			return lastOutput(sg), nil
		}
		msg := "failed"
		if sg.LastError != nil {
			msg = sg.LastError.Error()
		}
		return nil, compensation.Permanent(fmt.Errorf("child saga %s (%s) failed and was compensated: %s", id, st.Child, msg))
	}
}

// childUndo is the compensation of a child step: it brings the child to
// FAILED. A completed child is reverted as a whole; a running one is
// aborted; one compensating is waited for; a STUCK one fails the attempt
// (the parent's compensation retries, and goes STUCK in turn, until an
// operator settles the child); one that never started has nothing to undo.
func (e *Engine) childUndo(parent *fsm.Saga, i int) compensation.Handler {
	return func(ctx context.Context, c compensation.Call) error {
		id := ChildID(parent.ID, i)
		actor := "saga " + parent.ID
		for {
			var sg *fsm.Saga
			err := e.read(func() (err error) { sg, err = e.store.Peek(id); return err })
			switch {
			case errors.Is(err, fsm.ErrUnknownSaga):
				return nil // the step never started its child (an uncertain step)
			case err != nil:
				return err
			case sg.Parent != parent.ID:
				return nil // not its child: the step never started one
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			switch sg.State {
			case fsm.StateFailed:
				return nil
			case fsm.StateStuck:
				return stuckChild(id)
			case fsm.StateCompleted:
				_, err = e.operator(ctx, id, fsm.KindReverted, actor, "its parent saga is compensating step "+strconv.Quote(c.Step))
			case fsm.StateInProgress:
				_, err = e.operator(ctx, id, fsm.KindAborted, actor, "its parent saga is compensating step "+strconv.Quote(c.Step))
			}
			var te *fsm.TransitionError
			if err != nil && !errors.As(err, &te) {
				return err
			}
			if err != nil {
				// Refused: the child moved meanwhile (look again), unless
				// it has not, and the refusal stands: then the attempt
				// fails, and the compensation's retry policy backs off.
				var now *fsm.Saga
				if perr := e.read(func() (err error) { now, err = e.store.Peek(id); return err }); perr != nil || now.Seq == sg.Seq {
					return fmt.Errorf("child saga %s: %w", id, err)
				}
				continue
			}
			if sg, err = e.waitFinal(ctx, id, false); err != nil {
				return err
			}
			if sg.State == fsm.StateFailed {
				return nil
			}
			if sg.State == fsm.StateStuck {
				return stuckChild(id)
			}
		}
	}
}

// lastOutput is the output of a completed saga's last step.
func lastOutput(sg *fsm.Saga) []byte {
	if len(sg.Steps) == 0 {
		return nil
	}
	return sg.Steps[len(sg.Steps)-1].Output
}

// waitFinal waits until saga id is COMPLETED or FAILED, or STUCK unless
// throughStuck, and returns it.
func (e *Engine) waitFinal(ctx context.Context, id string, throughStuck bool) (*fsm.Saga, error) {
	for {
		st, err := e.Wait(ctx, id)
		if err != nil {
			return nil, err
		}
		if st.State.Terminal() || !throughStuck {
			return st.Saga, nil
		}
		// STUCK, and Wait returns at once while it is: wait for the next
		// settlement instead (an operator's retry or resolve moves it on).
		if err := e.waitSettledAfter(ctx, id, st.Saga.Seq); err != nil {
			return nil, err
		}
	}
}

// waitSettledAfter waits until saga id settles (COMPLETED, FAILED, STUCK)
// by a transition after its seq-th.
func (e *Engine) waitSettledAfter(ctx context.Context, id string, seq uint64) error {
	ch := make(chan *fsm.Saga, 1)
	e.mu.Lock()
	e.watchers[id] = append(e.watchers[id], ch)
	e.mu.Unlock()
	defer e.unwatch(id, ch)
	var sg *fsm.Saga
	if err := e.read(func() (err error) { sg, err = e.store.Peek(id); return err }); err != nil {
		return err
	}
	if sg.Seq > seq && (sg.State.Terminal() || sg.State == fsm.StateStuck) {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-e.ctx.Done():
		return ErrClosed
	}
}

func stuckChild(id string) error {
	return fmt.Errorf("child saga %s is STUCK: retry or resolve it, then retry this saga", id)
}

// settleChild brings the child of step i to FAILED before the step fails
// for good (its wait ended by the step's timeout, or an error the retry
// policy gave up on): a failed step is not compensated, so a child left
// running would complete behind its failed parent. A STUCK child holds
// the step until an operator settles it. It reports false when ctx ended
// first (the saga was aborted, or the term ended): the step is then
// compensated as uncertain, or run again, which finds the same child.
func (e *Engine) settleChild(ctx context.Context, inv *invocation, sg *fsm.Saga, i int) bool {
	undo := e.childUndo(sg, i)
	call := e.call(sg, i, compensation.KindCompensation, sg.Steps[i].Attempts)
	for {
		err := undo(ctx, call)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		if _, werr := e.waitFinal(ctx, ChildID(sg.ID, i), true); werr != nil && ctx.Err() != nil {
			return false
		}
		if !e.sleep(ctx, inv.wake, 50*time.Millisecond) {
			return false
		}
	}
}
