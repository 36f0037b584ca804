package policy

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/internal/testctx"
)

// fanOutPolicy is an operation whose milestones form a DAG: root, then
// three branches after it at once, then join after every branch.
const fanOutPolicy = `enable_saga: true
saga_operations: [fan]
operations:
  fan:
    milestones:
      - {name: root, compensation: undo}
      - {name: b1, compensation: undo, after: [root]}
      - {name: b2, compensation: undo, after: [root]}
      - {name: b3, compensation: undo, after: root}
      - {name: join, compensation: undo, after: [b1, b2, b3]}
`

// Bad dependencies are refused when the policy is loaded, every problem
// named at once, and the policy in force stays as it was.
func TestBadAfterIsATypedErrorThatChangesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, fanOutPolicy)
	m := newManager(t, Options{File: path, NoWatch: true})
	before := m.Snapshot()
	writeFile(t, path, `enable_saga: true
saga_operations: [fan]
operations:
  fan:
    milestones:
      - {name: a, after: [c]}
      - {name: b, after: [nope]}
      - {name: c, after: [a]}
      - {name: d, after: [d]}
`)
	err := m.Reload()
	var ve *ValidationError
	if !errors.Is(err, ErrInvalidPolicy) || !errors.As(err, &ve) {
		t.Fatalf("reload with bad after: %v; want a *ValidationError", err)
	}
	for _, want := range []string{`unknown step "nope"`, `cycle: "a" after "c" after "a"`, `"d": after itself`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not name %s:\n%v", want, err)
		}
	}
	if m.Snapshot() != before {
		t.Fatal("a refused policy replaced the one in force")
	}
	// The same through the Go API, and JSON field names in a file.
	bad := &Policy{Operations: map[string]*Operation{"fan": {Milestones: []Milestone{{Name: "x", After: []string{"y"}}}}}}
	if err := m.Set(bad); !errors.Is(err, ErrInvalidPolicy) || m.Snapshot() != before {
		t.Fatalf("Set with an unknown after: %v (snapshot replaced: %v)", err, m.Snapshot() != before)
	}
	p, err := Parse("f.json", []byte(`{"operations": {"op": {"milestones": [{"name": "a"}, {"name": "b", "after": ["a"]}], "durability": "pipelined"}}}`))
	must(t, err)
	if err := p.Validate("f.json", nil); !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), "pipelined") {
		t.Fatalf("pipelined durability with after: %v", err)
	}
	if got := p.Operations["op"].Milestones[1].After; len(got) != 1 || got[0] != "a" {
		t.Fatalf("after from JSON: %v", got)
	}
}

// undoLog is a registry whose handler "undo" records what it undid.
type undoLog struct {
	mu     sync.Mutex
	undone []string
}

func (u *undoLog) registry(t *testing.T) *compensation.Registry {
	reg := compensation.NewRegistry()
	must(t, reg.Register("undo", func(_ context.Context, c compensation.Call) error {
		u.mu.Lock()
		defer u.mu.Unlock()
		u.undone = append(u.undone, c.Step)
		return nil
	}))
	return reg
}

func (u *undoLog) list() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.undone...)
}

// barrier holds every caller until n of them are in at once: it proves
// they run concurrently (run one after another, they would wait for the
// context's deadline and fail).
type barrier struct {
	mu  sync.Mutex
	in  int
	n   int
	all chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, all: make(chan struct{})} }

func (b *barrier) enter(ctx context.Context) ([]byte, error) {
	b.mu.Lock()
	if b.in++; b.in == b.n {
		close(b.all)
	}
	b.mu.Unlock()
	select {
	case <-b.all:
		return []byte("ok"), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// fanOutWorkflow runs the fan-out policy's milestones in one group:
// root, the three branches at once (through the barrier), then join,
// which checks that every branch had ended.
func fanOutWorkflow(b *barrier, joined *atomic.Bool) func(ctx context.Context, s Saga) error {
	return func(ctx context.Context, s Saga) error {
		var branches atomic.Int32
		g := s.Group(ctx)
		g.Go("root", stepNoop)
		for _, name := range []string{"b1", "b2", "b3"} {
			g.Go(name, func(ctx context.Context) ([]byte, error) {
				out, err := b.enter(ctx)
				branches.Add(1)
				return out, err
			})
		}
		g.Go("join", func(context.Context) ([]byte, error) {
			if n := branches.Load(); n != 3 {
				return nil, errors.New("join ran before every branch ended")
			}
			joined.Store(true)
			return nil, nil
		})
		return g.Wait()
	}
}

func TestFanOutRunsItsBranchesAtOnceWithAndWithoutASaga(t *testing.T) {
	var u undoLog
	m, x := execFixture(t, fanOutPolicy, u.registry(t))
	for _, on := range []bool{true, false} {
		must(t, m.Set(&Policy{EnableSaga: Bool(on)}))
		ctx, cancel := context.WithTimeout(testctx.New(t), 30*time.Second) // a bound for a deadlock, not a timing assertion
		var joined atomic.Bool
		res, err := x.ExecuteWithSaga(ctx, "fan", UserContext{}, nil, fanOutWorkflow(newBarrier(3), &joined))
		cancel()
		if err != nil || !joined.Load() || res.Saga != on {
			t.Fatalf("saga %v: %+v, joined %v: %v", on, res, joined.Load(), err)
		}
		if on && res.State != fsm.StateCompleted {
			t.Fatalf("a fan-out saga ended %s", res.State)
		}
	}
	if got := u.list(); len(got) != 0 {
		t.Fatalf("compensated %v after successes", got)
	}
	if r := m.Explain("fan", UserContext{}).String(); !strings.Contains(r, "join (after b1, b2, b3)") {
		t.Fatalf("Explain does not show the dependencies:\n%s", r)
	}
}

// One failing branch: no milestone starts after it, the branch still
// running is cancelled through its context, and the completed ones are
// compensated dependents first (the branches, then root).
func TestFailingBranchCancelsTheOthersAndCompensatesDependentsFirst(t *testing.T) {
	var u undoLog
	_, x := execFixture(t, fanOutPolicy, u.registry(t))
	ctx, cancel := context.WithTimeout(testctx.New(t), 30*time.Second) // bounds b2 if nothing cancels it
	defer cancel()
	boom := errors.New("b3 failed")
	b1Done, b2In := make(chan struct{}), make(chan struct{})
	var b2Cause error
	var joined atomic.Bool
	var afterErr error
	res, err := x.ExecuteWithSaga(ctx, "fan", UserContext{}, nil, func(ctx context.Context, s Saga) error {
		g := s.Group(ctx)
		g.Go("root", stepNoop)
		g.Go("b1", func(context.Context) ([]byte, error) { close(b1Done); return []byte("b1"), nil })
		// b2 runs in a group of its own: the failure of b3 must cancel it
		// through the saga, not only through b3's group.
		g2 := s.Group(ctx)
		g2.Go("b2", func(ctx context.Context) ([]byte, error) {
			close(b2In)
			<-ctx.Done() // only the failure of b3 ends it (or the test's deadline)
			b2Cause = context.Cause(ctx)
			return nil, ctx.Err()
		})
		g.Go("b3", func(ctx context.Context) ([]byte, error) {
			for _, c := range []chan struct{}{b1Done, b2In} {
				select {
				case <-c:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			return nil, boom
		})
		g.Go("join", func(context.Context) ([]byte, error) { joined.Store(true); return nil, nil })
		werr := g.Wait()
		if err := g2.Wait(); !errors.Is(err, context.Canceled) {
			t.Errorf("b2's group: %v, want the cancellation", err)
		}
		afterErr = s.Step(ctx, "join", stepNoop)
		return werr
	})
	if !errors.Is(err, boom) || errors.Is(err, ErrMilestoneOrder) || res.State != fsm.StateFailed {
		t.Fatalf("result %+v, err %v; want FAILED with b3's error", res, err)
	}
	if !errors.Is(b2Cause, boom) {
		t.Fatalf("b2 ended with cause %v, want b3's failure", b2Cause)
	}
	if joined.Load() || !errors.Is(afterErr, ErrMilestoneOrder) {
		t.Fatalf("a milestone started after the failure (join ran %v, Step after: %v)", joined.Load(), afterErr)
	}
	got := u.list()
	if len(got) != 3 || got[2] != "root" || !slices.Contains(got, "b1") || !slices.Contains(got, "b2") {
		t.Fatalf("compensated %v: want b1 and b2 (uncertain), then root; never b3 or join", got)
	}
}

// twoSinks ends in two milestones nothing depends on: either may be the
// last to succeed, whose record completes the saga.
const twoSinks = `enable_saga: true
saga_operations: [fork]
operations:
  fork:
    milestones:
      - {name: root, compensation: undo}
      - {name: left, compensation: undo, after: [root]}
      - {name: right, compensation: undo, after: [root]}
`

// The saga completes only when the workflow returns nil: after every
// milestone succeeded it is still in progress, with exactly one sink's
// success held back; a workflow that fails then has every milestone
// compensated.
func TestParallelSagaDoesNotCompleteBeforeTheWorkflowReturns(t *testing.T) {
	var u undoLog
	_, x := execFixture(t, twoSinks, u.registry(t))
	ctx := testctx.New(t)
	boom := errors.New("post-processing failed")
	for _, werr := range []error{nil, boom} {
		var seen *fsmStatus
		res, err := x.ExecuteWithSaga(ctx, "fork", UserContext{}, nil, func(ctx context.Context, s Saga) error {
			g := s.Group(ctx)
			for _, name := range []string{"root", "left", "right"} {
				g.Go(name, stepNoop)
			}
			must(t, g.Wait())
			st, err := x.eng.Status(ctx, s.ID())
			must(t, err)
			seen = &fsmStatus{state: st.State, completed: st.Completed, running: st.Running}
			return werr
		})
		if seen.state != fsm.StateInProgress || len(seen.completed) != 2 || len(seen.running) != 1 {
			t.Fatalf("before the workflow returned: %+v; want IN_PROGRESS, 2 done and 1 held back", seen)
		}
		if werr == nil && (err != nil || res.State != fsm.StateCompleted) {
			t.Fatalf("after the workflow returned nil: %s, %v", res.State, err)
		}
		if werr != nil && (!errors.Is(err, boom) || res.State != fsm.StateFailed) {
			t.Fatalf("after the workflow failed: %s, %v", res.State, err)
		}
	}
	if got := u.list(); len(got) != 3 || got[2] != "root" {
		t.Fatalf("compensated %v after the failed workflow: want left and right, then root", got)
	}
}

type fsmStatus struct {
	state     fsm.SagaState
	completed []string
	running   []string
}

// Step and Go keep the policy's shape: Step refuses a milestone whose
// dependencies are not done, Go one whose dependencies were never
// started, and Go a sequence's milestones.
func TestGroupAndStepKeepThePolicysShape(t *testing.T) {
	var u undoLog
	_, x := execFixture(t, strings.Replace(fanOutPolicy, "[fan]", "[fan, seq]", 1)+`      - {name: extra, after: [join]}
  seq:
    milestones: [{name: a, compensation: undo}, b]
`, u.registry(t))
	ctx := testctx.New(t)
	_, err := x.ExecuteWithSaga(ctx, "fan", UserContext{}, nil, func(ctx context.Context, s Saga) error {
		if err := s.Step(ctx, "b1", stepNoop); !errors.Is(err, ErrMilestoneOrder) {
			t.Errorf("Step before its dependency: %v", err)
		}
		g := s.Group(ctx)
		g.Go("join", stepNoop)
		if err := g.Wait(); !errors.Is(err, ErrMilestoneOrder) {
			t.Errorf("Go before its dependencies started: %v", err)
		}
		must(t, s.Step(ctx, "root", stepNoop))
		g = s.Group(ctx)
		for _, name := range []string{"b1", "b2", "b3"} {
			g.Go(name, stepNoop)
		}
		must(t, g.Wait())
		must(t, s.Step(ctx, "join", stepNoop))
		return s.Step(ctx, "extra", stepNoop)
	})
	must(t, err)
	_, err = x.ExecuteWithSaga(ctx, "seq", UserContext{}, nil, func(ctx context.Context, s Saga) error {
		g := s.Group(ctx)
		g.Go("a", stepNoop)
		return g.Wait()
	})
	if !errors.Is(err, ErrMilestoneOrder) {
		t.Fatalf("Go on a sequence: %v", err)
	}
}
