package engine

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

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

// openUndo opens an engine whose "undo" compensation does nothing, and
// returns it with a context of a bounded life; both end with the test.
func openUndo(t *testing.T) (context.Context, *Engine) {
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	t.Cleanup(cancel)
	reg := compensation.NewRegistry()
	must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	e := openT(t, t.TempDir(), Options{Registry: reg})
	t.Cleanup(func() { e.Close() })
	return tctx, e
}

// scribble changes every part of a definition a caller could reach.
func scribble(d *Definition) {
	d.Name, d.Version, d.Timeout = "scribbled", 99, time.Hour
	for i := range d.Steps {
		d.Steps[i].Name, d.Steps[i].Compensation = "x", "nope"
		for k := range d.Steps[i].After {
			d.Steps[i].After[k] = "x"
		}
	}
	d.Steps = append(d.Steps[:1], StepDef{Name: "extra"})
}

func TestDefinitionsHandedToCallersShareNothingWithTheEngine(t *testing.T) {
	tctx, e := openUndo(t)
	in := callerDAG("dag")
	want := callerDAG("dag")
	want.Version = 1
	got, err := e.Define(tctx, in)
	must(t, err)
	// The caller's value, changed after Define, is not what was stored.
	scribble(&in)
	check := func(what string) {
		t.Helper()
		d, err := e.Definition(tctx, "dag", 0)
		must(t, err)
		if !reflect.DeepEqual(*d, want) {
			t.Fatalf("after a caller changed %s, the engine holds %+v", what, d)
		}
		id, err := e.Start(tctx, "dag", nil, StartOptions{})
		must(t, err)
		st, err := e.Status(tctx, id)
		must(t, err)
		if st.Saga.Steps[4].Name != "c" || !slices.Equal(st.Saga.Steps[4].After, []string{"a"}) {
			t.Fatalf("after a caller changed %s, a new saga has step %+v", what, *st.Saga.Steps[4].StepDef)
		}
		// What Status hands out is the caller's too.
		scribble(&Definition{Steps: []StepDef{*st.Saga.Steps[4].StepDef}})
		st.Saga.Steps[4].After[0] = "x"
		again, err := e.Status(tctx, id)
		must(t, err)
		if !slices.Equal(again.Saga.Steps[4].After, []string{"a"}) {
			t.Fatalf("a change to a status changed the saga: after %v", again.Saga.Steps[4].After)
		}
	}
	check("its input")
	scribble(got)
	check("the result of a new Define")
	for _, c := range []struct {
		what string
		get  func() (*Definition, error)
	}{
		{"the result of an unchanged Define", func() (*Definition, error) { return e.Define(tctx, callerDAG("dag")) }},
		{"the result of Definition", func() (*Definition, error) { return e.Definition(tctx, "dag", 0) }},
		{"the result of Definition by version", func() (*Definition, error) { return e.Definition(tctx, "dag", 1) }},
		{"the result of Definitions", func() (*Definition, error) {
			all, err := e.Definitions(tctx)
			if err != nil {
				return nil, err
			}
			return all[0], nil
		}},
	} {
		d, err := c.get()
		must(t, err)
		scribble(d)
		check(c.what)
	}
}

func TestAdvanceErrorsOfADAGSagaNameTheStep(t *testing.T) {
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// A compensation that never ends keeps the saga COMPENSATING.
	block := make(chan struct{})
	defer close(block)
	reg := compensation.NewRegistry()
	must(t, reg.Register("undo", func(ctx context.Context, _ compensation.Call) error {
		select {
		case <-block:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}))
	e := openT(t, t.TempDir(), Options{Registry: reg})
	defer e.Close()
	_, err := e.Define(tctx, callerDAG("dag"))
	must(t, err)
	id, err := e.Start(tctx, "dag", nil, StartOptions{})
	must(t, err)
	index := map[string]int{"a": 0, "y": 1, "b": 2, "x": 3, "c": 4}
	refused := func(res StepResult, want string) {
		t.Helper()
		_, err := e.Advance(tctx, id, res)
		var te *TransitionError
		if !errors.As(err, &te) {
			t.Fatalf("Advance %s: %v, want a *TransitionError", res.Step, err)
		}
		if te.StepName != res.Step || te.Step != index[res.Step] || !strings.Contains(err.Error(), want) {
			t.Fatalf("Advance %s: %v (step %d %q), want it named, with %q", res.Step, err, te.Step, te.StepName, want)
		}
	}
	// Not ready: c waits for a.
	refused(StepResult{Step: "c"}, `step 4 "c"`)
	_, err = e.Advance(tctx, id, StepResult{Step: "a"})
	must(t, err)
	// Reported twice, differently.
	refused(StepResult{Step: "a", Output: []byte("other")}, `step 0 "a"`)
	_, err = e.Advance(tctx, id, StepResult{Step: "x", Err: errors.New("x broke")})
	must(t, err)
	// Not in progress any more.
	refused(StepResult{Step: "b"}, `step 2 "b"`)
	refused(StepResult{Step: "y", Err: errors.New("late")}, `step 1 "y"`)
}

// chain is a DAG definition of n steps, each after the one before.
func chain(name string, n int) Definition {
	d := Definition{Name: name}
	for i := range n {
		s := StepDef{Name: fmt.Sprintf("s%d", i), Compensation: "undo"}
		if i > 0 {
			s.After = []string{fmt.Sprintf("s%d", i-1)}
		}
		d.Steps = append(d.Steps, s)
	}
	return d
}

func TestDefineRefusesMoreThanMaxStepsWithEveryOtherProblem(t *testing.T) {
	tctx, e := openUndo(t)
	ok, err := e.Define(tctx, chain("long", MaxSteps))
	must(t, err)
	over := chain("long", MaxSteps+1)
	over.Timeout = -time.Second
	_, err = e.Define(tctx, over)
	var de *DefinitionError
	if !errors.Is(err, ErrTooManySteps) || !errors.As(err, &de) || len(de.Problems) != 2 {
		t.Fatalf("Define of %d steps and a negative timeout: %v; want ErrTooManySteps in a DefinitionError of 2 problems", MaxSteps+1, err)
	}
	over.Steps = over.Steps[:MaxSteps]
	if _, err := e.Define(tctx, over); !errors.As(err, &de) || errors.Is(err, ErrTooManySteps) {
		t.Fatalf("Define of %d steps and a negative timeout: %v; want only the timeout", MaxSteps, err)
	}
	latest, err := e.Definition(tctx, "long", 0)
	must(t, err)
	if latest.Version != ok.Version || len(latest.Steps) != MaxSteps {
		t.Fatalf("a refused redefinition changed the stored one: v%d with %d steps", latest.Version, len(latest.Steps))
	}
	if _, err := e.Define(tctx, chain("huge", 4*MaxSteps)); !errors.Is(err, ErrTooManySteps) {
		t.Fatalf("Define of %d steps: %v", 4*MaxSteps, err)
	}
	if _, err := e.Definition(tctx, "huge", 0); !errors.Is(err, ErrUnknownDefinition) {
		t.Fatalf("a refused definition was stored: %v", err)
	}
}
