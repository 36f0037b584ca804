package engine

import (
	"context"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// A child step whose wait ends by the step's timeout fails the parent's
// step; the child, still running, must not be left to complete behind a
// FAILED parent: it is brought to FAILED before the parent compensates
// the steps before it.
func TestAChildStepTimeoutDoesNotLeaveTheChildRunning(t *testing.T) {
	tctx := testCtx(t)
	tr := &trail{}
	reg := tr.registry(t)
	release := make(chan struct{})
	must(t, reg.RegisterAction("slow", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		tr.add(c.Definition + ":" + c.Step)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, nil
	}))
	e := openT(t, t.TempDir(), Options{Registry: reg})
	defer e.Close()
	_, err := e.Define(tctx, Definition{Name: "slowchild", Steps: []StepDef{{Name: "s1", Action: "slow", Compensation: "undo"}}})
	must(t, err)
	_, err = e.Define(tctx, Definition{Name: "p", Steps: []StepDef{
		{Name: "pay", Action: "act", Compensation: "undo"},
		{Name: "c", Child: "slowchild", Timeout: 100 * time.Millisecond, Retry: RetryPolicy{MaxAttempts: 1}},
	}})
	must(t, err)
	done := make(chan *Status, 1)
	go func() {
		st, err := e.Run(tctx, "p", nil, StartOptions{ID: "p1"})
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	var st *Status
	select {
	case st = <-done:
	case <-time.After(5 * time.Second):
		close(release)
		st = <-done
	}
	close(releaseOnce(release))
	if st.State != fsm.StateFailed {
		t.Fatalf("parent %s, want FAILED", st.State)
	}
	wctx, cancel := context.WithTimeout(tctx, 5*time.Second)
	defer cancel()
	child, err := e.Wait(wctx, ChildID("p1", 1))
	must(t, err)
	if child.State != fsm.StateFailed {
		t.Fatalf("child %s behind a FAILED parent, want FAILED", child.State)
	}
	// The child is undone whole before the parent's earlier step.
	wantTrail(t, tr, "p:pay", "slowchild:s1", "undo slowchild:s1", "undo p:pay")
}

func releaseOnce(ch chan struct{}) chan struct{} {
	select {
	case <-ch:
		return make(chan struct{})
	default:
		return ch
	}
}

// A saga whose id happens to be a parent's child id is not the child: the
// parent must not adopt it (take its output, or try to revert it).
func TestAChildStepDoesNotAdoptAnUnrelatedSagaWithItsID(t *testing.T) {
	tctx := testCtx(t)
	tr := &trail{fail: map[string]bool{"order:ship": true}}
	e := nestedEngine(t, tctx, tr)
	defer e.Close()
	// A caller cannot choose such an id (see
	// TestACallerIDOfAChildsFormIsRefusedAndWritesNothing); a child of
	// another parent can hold one, as can a data directory written
	// before that check.
	st, err := e.Run(tctx, "reserve", nil, StartOptions{ID: "o9.1", parent: "elsewhere", depth: 1})
	must(t, err)
	if st.State != fsm.StateCompleted {
		t.Fatalf("squatter %s", st.State)
	}
	ctx, cancel := context.WithTimeout(tctx, 3*time.Second)
	defer cancel()
	st, err = e.Run(ctx, "order", nil, StartOptions{ID: "o9"})
	if err != nil {
		t.Fatalf("parent: %v (stuck in its child's undo?)", err)
	}
	sq, err := e.Status(tctx, "o9.1")
	must(t, err)
	if sq.State != fsm.StateCompleted {
		t.Fatalf("an unrelated saga was changed by the parent: %s", sq.State)
	}
	t.Logf("parent %s, trail %q", st.State, tr.entries())
	if st.Steps[1].Status == fsm.StepCompensated || st.Steps[1].Status == fsm.StepDone {
		t.Fatalf("parent adopted an unrelated saga as its child step (step %s)", st.Steps[1].Status)
	}
}
