package engine

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// trail records, in order, the actions and compensations of every saga,
// as "saga-definition:step" (compensations prefixed "undo ").
type trail struct {
	mu   sync.Mutex
	log  []string
	fail map[string]bool // definition:step → the action fails permanently
}

func (tr *trail) add(s string) {
	tr.mu.Lock()
	tr.log = append(tr.log, s)
	tr.mu.Unlock()
}

func (tr *trail) entries() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Clone(tr.log)
}

func (tr *trail) registry(t *testing.T) *compensation.Registry {
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("act", func(_ context.Context, c compensation.Call) ([]byte, error) {
		name := c.Definition + ":" + c.Step
		if tr.fail[name] {
			tr.add("fail " + name)
			return nil, compensation.Permanent(errors.New("refused"))
		}
		tr.add(name)
		return []byte(name), nil
	}))
	must(t, reg.Register("undo", func(_ context.Context, c compensation.Call) error {
		tr.add("undo " + c.Definition + ":" + c.Step)
		return nil
	}))
	return reg
}

func steps(names ...string) []StepDef {
	var out []StepDef
	for _, n := range names {
		out = append(out, StepDef{Name: n, Action: "act", Compensation: "undo"})
	}
	return out
}

// nestedEngine defines reserve (r1, r2), order (pay, reserve as a child,
// ship) and returns the engine.
func nestedEngine(t *testing.T, tctx context.Context, tr *trail) *Engine {
	e := openT(t, t.TempDir(), Options{Registry: tr.registry(t)})
	_, err := e.Define(tctx, Definition{Name: "reserve", Steps: steps("r1", "r2")})
	must(t, err)
	order := Definition{Name: "order", Steps: steps("pay")}
	order.Steps = append(order.Steps, StepDef{Name: "stock", Child: "reserve"})
	order.Steps = append(order.Steps, steps("ship")...)
	_, err = e.Define(tctx, order)
	must(t, err)
	return e
}

func testCtx(t *testing.T) context.Context {
	tctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return tctx
}

func wantTrail(t *testing.T, tr *trail, want ...string) {
	t.Helper()
	if got := tr.entries(); !slices.Equal(got, want) {
		t.Fatalf("calls\n got %q\nwant %q", got, want)
	}
}

func TestAChildSagaRunsAsAStepAndCompletesWithItsParent(t *testing.T) {
	tctx := testCtx(t)
	tr := &trail{}
	e := nestedEngine(t, tctx, tr)
	defer e.Close()
	st, err := e.Run(tctx, "order", []byte("in"), StartOptions{ID: "o1", User: "ann"})
	must(t, err)
	if st.State != fsm.StateCompleted {
		t.Fatalf("parent %s, want COMPLETED", st.State)
	}
	wantTrail(t, tr, "order:pay", "reserve:r1", "reserve:r2", "order:ship")
	if out := string(st.Steps[1].Output); out != "reserve:r2" {
		t.Fatalf("child step output %q, want the child's last output", out)
	}
	child, err := e.Status(tctx, "o1.1")
	must(t, err)
	if child.State != fsm.StateCompleted || child.Saga.Parent != "o1" || child.Saga.Depth != 1 || child.User != "ann" || string(child.Saga.Input) != "in" {
		t.Fatalf("child %s parent %q depth %d user %q input %q", child.State, child.Saga.Parent, child.Saga.Depth, child.User, child.Saga.Input)
	}
}

func TestAFailingChildCompensatesItselfBeforeItsParent(t *testing.T) {
	tctx := testCtx(t)
	tr := &trail{fail: map[string]bool{"reserve:r2": true}}
	e := nestedEngine(t, tctx, tr)
	defer e.Close()
	st, err := e.Run(tctx, "order", nil, StartOptions{ID: "o2"})
	must(t, err)
	if st.State != fsm.StateFailed || st.Steps[1].Status != fsm.StepFailed {
		t.Fatalf("parent %s, child step %s; want FAILED, failed", st.State, st.Steps[1].Status)
	}
	wantTrail(t, tr, "order:pay", "reserve:r1", "fail reserve:r2", "undo reserve:r1", "undo order:pay")
	child, err := e.Status(tctx, "o2.1")
	must(t, err)
	if child.State != fsm.StateFailed {
		t.Fatalf("child %s, want FAILED", child.State)
	}
}

func TestALaterFailureRevertsACompletedChildAsAWhole(t *testing.T) {
	tctx := testCtx(t)
	tr := &trail{fail: map[string]bool{"order:ship": true}}
	e := nestedEngine(t, tctx, tr)
	defer e.Close()
	st, err := e.Run(tctx, "order", nil, StartOptions{ID: "o3"})
	must(t, err)
	if st.State != fsm.StateFailed || st.Steps[1].Status != fsm.StepCompensated {
		t.Fatalf("parent %s, child step %s; want FAILED, compensated", st.State, st.Steps[1].Status)
	}
	wantTrail(t, tr, "order:pay", "reserve:r1", "reserve:r2", "fail order:ship",
		"undo reserve:r2", "undo reserve:r1", "undo order:pay")
	child, err := e.Status(tctx, "o3.1")
	must(t, err)
	if child.State != fsm.StateFailed || child.LastError == nil || child.LastError.Kind != "reverted" {
		t.Fatalf("child %s (%v), want FAILED, reverted", child.State, child.LastError)
	}
	h, err := e.History(tctx, "o3.1")
	must(t, err)
	if !slices.ContainsFunc(h, func(h fsm.HistoryEntry) bool { return h.Record.Kind == fsm.KindReverted && h.Record.Actor == "saga o3" }) {
		t.Fatalf("child history has no reverted record by its parent")
	}
}

func TestChildSagasNestTwoDeepAndRevertFromTheBottomUp(t *testing.T) {
	tctx := testCtx(t)
	tr := &trail{fail: map[string]bool{"top:last": true}}
	e := nestedEngine(t, tctx, tr)
	defer e.Close()
	top := Definition{Name: "top", Steps: []StepDef{{Name: "order", Child: "order"}, {Name: "last", Action: "act", Compensation: "undo"}}}
	_, err := e.Define(tctx, top)
	must(t, err)
	st, err := e.Run(tctx, "top", nil, StartOptions{ID: "t"})
	must(t, err)
	if st.State != fsm.StateFailed {
		t.Fatalf("top %s, want FAILED", st.State)
	}
	wantTrail(t, tr, "order:pay", "reserve:r1", "reserve:r2", "order:ship", "fail top:last",
		"undo order:ship", "undo reserve:r2", "undo reserve:r1", "undo order:pay")
	for id, depth := range map[string]int{"t.0": 1, "t.0.1": 2} {
		c, err := e.Status(tctx, id)
		must(t, err)
		if c.State != fsm.StateFailed || c.Saga.Depth != depth {
			t.Fatalf("%s: %s at depth %d, want FAILED at %d", id, c.State, c.Saga.Depth, depth)
		}
	}
}

func TestParallelChildrenAreRevertedWhenTheJoinFails(t *testing.T) {
	tctx := testCtx(t)
	tr := &trail{fail: map[string]bool{"fan:join": true}}
	e := nestedEngine(t, tctx, tr)
	defer e.Close()
	_, err := e.Define(tctx, Definition{Name: "fan", Steps: []StepDef{
		{Name: "a", Child: "reserve"}, {Name: "b", Child: "reserve"},
		{Name: "join", Action: "act", Compensation: "undo", After: []string{"a", "b"}},
	}})
	must(t, err)
	st, err := e.Run(tctx, "fan", nil, StartOptions{ID: "f"})
	must(t, err)
	if st.State != fsm.StateFailed {
		t.Fatalf("fan %s, want FAILED", st.State)
	}
	for _, id := range []string{"f.0", "f.1"} {
		c, err := e.Status(tctx, id)
		must(t, err)
		if c.State != fsm.StateFailed || c.Compensated[0] != "r2" || c.Compensated[1] != "r1" {
			t.Fatalf("%s: %s, compensated %v; want FAILED, r2 then r1", id, c.State, c.Compensated)
		}
	}
}

func TestDefineRefusesBadChildStepsAndChangesNothing(t *testing.T) {
	tctx := testCtx(t)
	tr := &trail{}
	e := nestedEngine(t, tctx, tr)
	defer e.Close()
	// A chain of definitions whose sagas nest MaxDepth deep below the
	// top is the bound; one more is refused.
	prev := "reserve"
	for k := range fsm.MaxDepth {
		name := "chain" + string(rune('a'+k))
		_, err := e.Define(tctx, Definition{Name: name, Steps: []StepDef{{Name: "c", Child: prev}}})
		must(t, err)
		prev = name
	}
	_, err := e.Define(tctx, Definition{Name: "manual", Steps: []StepDef{{Name: "m", Compensation: "undo"}}})
	must(t, err)
	before, err := e.Definitions(tctx)
	must(t, err)
	for _, tc := range []struct {
		name string
		def  Definition
		want string
	}{
		{"unknown child", Definition{Name: "x", Steps: []StepDef{{Name: "c", Child: "nope"}}}, "child definition nope"},
		{"too deep", Definition{Name: "x", Steps: []StepDef{{Name: "c", Child: prev}}}, "the bound is"},
		{"action and child", Definition{Name: "x", Steps: []StepDef{{Name: "c", Child: "reserve", Action: "act"}}}, "no action or compensation of its own"},
		{"itself", Definition{Name: "x", Steps: []StepDef{{Name: "c", Child: "x"}}}, "cannot run itself"},
		{"a caller-driven child", Definition{Name: "x", Steps: []StepDef{{Name: "c", Child: "manual"}}}, "without an action"},
		{"a cycle through a redefinition", Definition{Name: "reserve", Steps: []StepDef{{Name: "c", Child: "order"}}}, "a cycle"},
	} {
		_, err := e.Define(tctx, tc.def)
		var de *fsm.DefinitionError
		if !errors.As(err, &de) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a definition error naming %q", tc.name, err, tc.want)
		}
	}
	after, err := e.Definitions(tctx)
	must(t, err)
	if len(after) != len(before) {
		t.Fatalf("definitions changed: %d before, %d after", len(before), len(after))
	}
	if _, err := e.Start(tctx, "order", nil, StartOptions{}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("caller-driven start of a definition with child steps: %v, want ErrInvalidArgument", err)
	}
	// A redefinition below the chain makes it one deeper than Define
	// allowed for it: the deepest child step fails when it would start
	// past the bound, and everything above is compensated.
	_, err = e.Define(tctx, Definition{Name: "leaf", Steps: steps("l")})
	must(t, err)
	_, err = e.Define(tctx, Definition{Name: "reserve", Steps: []StepDef{{Name: "r", Child: "leaf"}}})
	must(t, err)
	st, err := e.Run(tctx, prev, nil, StartOptions{ID: "deep"})
	must(t, err)
	if st.State != fsm.StateFailed || !strings.Contains(st.LastError.Error(), "the bound is") {
		t.Fatalf("a saga nesting past the bound: %s (%v), want FAILED naming the bound", st.State, st.LastError)
	}
}
