package engine

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// callerDAG is a caller-driven DAG: roots a, y, b and x; c after a.
func callerDAG(name string) Definition {
	return Definition{Name: name, Steps: []StepDef{
		{Name: "a", Compensation: "undo"},
		{Name: "y", Compensation: "undo"},
		{Name: "b", Compensation: "undo"},
		{Name: "x", Compensation: "undo"},
		{Name: "c", Compensation: "undo", After: []string{"a"}},
	}}
}

func TestCallerDrivenDAGFailureCompensatesDoneBranchesAtOnce(t *testing.T) {
	wctx := waitCtx(t)
	j := &journal{}
	reg := compensation.NewRegistry()
	must(t, reg.Register("undo", func(_ context.Context, c compensation.Call) error {
		j.add(c.Step)
		return nil
	}))
	e := openT(t, t.TempDir(), Options{Registry: reg})
	defer e.Close()
	_, err := e.Define(wctx, callerDAG("dag"))
	must(t, err)
	id, err := e.Start(wctx, "dag", nil, StartOptions{})
	must(t, err)
	for _, s := range []string{"a", "y"} {
		_, err = e.Advance(wctx, id, StepResult{Step: s, Output: []byte(s)})
		must(t, err)
	}
	// b and c are running when x fails; the caller reports nothing more.
	st, err := e.Advance(wctx, id, StepResult{Step: "x", Err: errors.New("x broke")})
	must(t, err)
	if st.State != fsm.StateCompensating {
		t.Fatalf("after the failure: %s, want COMPENSATING", st)
	}
	for _, s := range []string{"b", "c"} {
		if k := stepNamed(st.Saga, s); !st.Saga.Steps[k].Uncertain {
			t.Fatalf("running step %s was not recorded uncertain: %+v", s, st.Saga.Steps[k])
		}
	}
	st, err = e.Wait(wctx, id)
	must(t, err)
	if st.State != fsm.StateFailed {
		t.Fatalf("saga %s, want FAILED without further reports", st)
	}
	got := j.list()
	if len(got) != 4 || got[3] != "a" || slices.Index(got, "c") > slices.Index(got, "a") {
		t.Fatalf("compensated %v: want y, b and c (any order), then a", got)
	}
}
