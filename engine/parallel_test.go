package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// fanOut is a definition: root, then n branches after it, then join after
// every branch.
func fanOut(name string, n int) Definition {
	d := Definition{Name: name, Steps: []StepDef{{Name: "root", Action: "act", Compensation: "undo"}}}
	var branches []string
	for i := range n {
		b := fmt.Sprintf("b%d", i)
		branches = append(branches, b)
		d.Steps = append(d.Steps, StepDef{Name: b, Action: "act", Compensation: "undo", After: []string{"root"}})
	}
	d.Steps = append(d.Steps, StepDef{Name: "join", Action: "act", Compensation: "undo", After: branches})
	return d
}

// gate is an action that holds every call of a branch until want of them
// are in at once: it proves they run concurrently (a sequence would
// deadlock; the test context's deadline turns that into a failure).
type gate struct {
	mu      sync.Mutex
	in, max int
	want    int
	all     chan struct{}
	undone  []string
	fail    string
}

func (g *gate) act(ctx context.Context, c compensation.Call) ([]byte, error) {
	if c.Step == g.fail {
		return nil, compensation.Permanent(errors.New("refused"))
	}
	if !strings.HasPrefix(c.Step, "b") {
		return []byte(c.Step), nil
	}
	g.mu.Lock()
	g.in++
	g.max = max(g.max, g.in)
	if g.in == g.want {
		close(g.all)
	}
	g.mu.Unlock()
	defer func() { g.mu.Lock(); g.in--; g.mu.Unlock() }()
	select {
	case <-g.all:
		return []byte(c.Step), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (g *gate) undo(_ context.Context, c compensation.Call) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.undone = append(g.undone, c.Step)
	return nil
}

func gateRegistry(t *testing.T, g *gate) *compensation.Registry {
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("act", g.act))
	must(t, reg.Register("undo", g.undo))
	return reg
}

func TestParallelBranchesRunAtOnceAndJoinWaitsForAll(t *testing.T) {
	g := &gate{want: 8, all: make(chan struct{})}
	e := openT(t, t.TempDir(), Options{Registry: gateRegistry(t, g)})
	defer e.Close()
	_, err := e.Define(ctx, fanOut("fan", 8))
	must(t, err)
	st, err := e.Run(ctx, "fan", nil, StartOptions{})
	must(t, err)
	if st.State != fsm.StateCompleted || g.max != 8 {
		t.Fatalf("state %s, at most %d branches at once; want COMPLETED with 8", st.State, g.max)
	}
	join := st.Saga.Steps[len(st.Saga.Steps)-1]
	for _, s := range st.Saga.Steps[1:9] {
		if s.EndedAt > join.StartedAt {
			t.Fatalf("join started at %d, before branch %s ended at %d", join.StartedAt, s.Name, s.EndedAt)
		}
	}
}

func TestParallelStepsRespectTheSagaAndHandlerBounds(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want int
	}{
		{"per saga", Options{MaxParallelSteps: 3}, 3},
		{"per handler", Options{HandlerConcurrency: map[string]int{"act": 2}}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			in, peak := 0, 0
			reg := compensation.NewRegistry()
			must(t, reg.RegisterAction("act", func(context.Context, compensation.Call) ([]byte, error) {
				mu.Lock()
				in++
				peak = max(peak, in)
				mu.Unlock()
				// Let the others in if the bound allows them.
				for range 50 {
					mu.Lock()
					full := in >= tc.want+1
					mu.Unlock()
					if full {
						break
					}
					waitBriefly()
				}
				mu.Lock()
				in--
				mu.Unlock()
				return nil, nil
			}))
			must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
			tc.opts.Registry = reg
			e := openT(t, t.TempDir(), tc.opts)
			defer e.Close()
			_, err := e.Define(ctx, fanOut("fan", 8))
			must(t, err)
			st, err := e.Run(ctx, "fan", nil, StartOptions{})
			must(t, err)
			if st.State != fsm.StateCompleted || peak > tc.want {
				t.Fatalf("state %s, peak %d calls at once; want COMPLETED and at most %d", st.State, peak, tc.want)
			}
		})
	}
}

func TestAFailingBranchCompensatesDependentsFirst(t *testing.T) {
	g := &gate{want: 1 << 30, all: make(chan struct{}), fail: "join"}
	close(g.all)
	e := openT(t, t.TempDir(), Options{Registry: gateRegistry(t, g)})
	defer e.Close()
	_, err := e.Define(ctx, fanOut("fan", 4))
	must(t, err)
	st, err := e.Run(ctx, "fan", nil, StartOptions{})
	must(t, err)
	if st.State != fsm.StateFailed {
		t.Fatalf("state %s", st.State)
	}
	if len(g.undone) != 5 || g.undone[4] != "root" {
		t.Fatalf("compensated %v: want the 4 branches, then root", g.undone)
	}
	if len(st.Compensated) != 5 || st.Compensated[4] != "root" {
		t.Fatalf("status lists the compensated steps as %v", st.Compensated)
	}
}

func TestParallelDefinitionsAreValidatedAndRunStrict(t *testing.T) {
	g := &gate{}
	e := openT(t, t.TempDir(), Options{Registry: gateRegistry(t, g)})
	defer e.Close()
	bad := Definition{Name: "bad", Steps: []StepDef{
		{Name: "a", Action: "act", After: []string{"c"}},
		{Name: "b", Action: "act", After: []string{"nope"}},
		{Name: "c", Action: "act", After: []string{"a"}},
	}}
	_, err := e.Define(ctx, bad)
	var de *fsm.DefinitionError
	if !errors.As(err, &de) || len(de.Problems) != 2 {
		t.Fatalf("Define: %v; want the unknown name and the cycle", err)
	}
	if _, err := e.Definition(ctx, "bad", 0); !errors.Is(err, fsm.ErrUnknownDefinition) {
		t.Fatalf("a refused definition was stored: %v", err)
	}
	_, err = e.Define(ctx, fanOut("fan", 2))
	must(t, err)
	p := DurabilityPipelined
	if _, err := e.Start(ctx, "fan", nil, StartOptions{Durability: &p}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a pipelined start of parallel steps: %v", err)
	}
	n, err := e.store.CountByState()
	must(t, err)
	for s, c := range n {
		if c != 0 {
			t.Fatalf("a refused start left %d sagas %s", c, s)
		}
	}
}

// waitBriefly yields for the other calls to arrive: a bounded number of
// yields, not a timing assumption (a call that never comes costs them).
func waitBriefly() { runtime.Gosched() }

func TestResumptionsNameTheRunningParallelSteps(t *testing.T) {
	g := &gate{}
	e := openT(t, t.TempDir(), Options{Registry: gateRegistry(t, g)})
	defer e.Close()
	d := fanOut("fan", 2)
	for i := range d.Steps {
		d.Steps[i].Action = ""
	}
	_, err := e.Define(ctx, d)
	must(t, err)
	id, err := e.Start(ctx, "fan", nil, StartOptions{})
	must(t, err)
	_, err = e.Advance(ctx, id, StepResult{Step: "root"})
	must(t, err)
	rs, err := e.Resumptions(ctx)
	must(t, err)
	if len(rs) != 1 || rs[0].Action != "wait for the caller (steps b0, b1)" {
		t.Fatalf("resumptions %+v", rs)
	}
	if got := rs[0].Status.Running; len(got) != 2 || rs[0].Status.CurrentStep != "b0, b1" {
		t.Fatalf("status: running %v, current %q", got, rs[0].Status.CurrentStep)
	}
}

// joinLog holds the fsync of the branch completions of a diamond to set
// up the race a join must not win: branch a's completion is being synced
// while branch b's completion is queued behind it, and b's sync is held
// until the engine either starts the join (wrong: b's completion is not
// durable) or puts off the kick that would (right).
type joinLog struct {
	Log
	e        *Engine
	aSyncing chan struct{}
	joinIn   chan struct{}
	bDurable atomic.Bool
	t        *testing.T
	deadline time.Time
}

// until polls cond on the saga's run until it holds or the test's
// deadline passes (an error, then).
func (l *joinLog) until(id, what string, cond func(r *run) bool) {
	for !time.Now().After(l.deadline) {
		r := l.e.lockRun(id)
		ok := cond(r)
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-l.joinIn:
			return
		case <-time.After(time.Millisecond):
		}
	}
	l.t.Errorf("timed out waiting for %s", what)
}

func (l *joinLog) Append(recs [][]byte) (uint64, error) {
	for _, b := range recs {
		rec, err := fsm.Decode(b)
		if err != nil || rec.Kind != fsm.KindStepCompleted {
			continue
		}
		switch rec.Step {
		case 1: // a: let b finish and queue its completion behind this sync
			close(l.aSyncing)
			l.until(rec.Saga, "b's completion to queue", func(r *run) bool { return r.queued >= 2 })
		case 2: // b: hold its sync until the engine has decided about the join
			l.until(rec.Saga, "the kick after a's completion", func(r *run) bool { return r.rekick })
			first, err := l.Log.Append(recs)
			l.bDurable.Store(err == nil)
			return first, err
		}
	}
	return l.Log.Append(recs)
}

// TestAJoinStartsOnlyOnceEveryBranchCompletionIsDurable: persist before
// side effect across branches. Branch completions share fsyncs, so the
// saga's state in memory runs ahead of the log; the join must not start
// from a state whose branch completion is still queued.
func TestAJoinStartsOnlyOnceEveryBranchCompletionIsDurable(t *testing.T) {
	tctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dl, _ := tctx.Deadline()
	jl := &joinLog{aSyncing: make(chan struct{}), joinIn: make(chan struct{}), t: t, deadline: dl}
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("act", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		switch c.Step {
		case "b":
			select {
			case <-jl.aSyncing:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		case "join":
			if !jl.bDurable.Load() {
				t.Errorf("join started before b's completion was durable")
			}
			close(jl.joinIn)
		}
		return nil, nil
	}))
	e := openT(t, t.TempDir(), Options{Registry: reg, WrapLog: func(l Log) Log { jl.Log = l; return jl }})
	defer e.Close()
	jl.e = e
	_, err := e.Define(tctx, Definition{Name: "diamond", Steps: []StepDef{
		{Name: "root", Action: "act"},
		{Name: "a", Action: "act", After: []string{"root"}},
		{Name: "b", Action: "act", After: []string{"root"}},
		{Name: "join", Action: "act", After: []string{"a", "b"}},
	}})
	must(t, err)
	st, err := e.Run(tctx, "diamond", nil, StartOptions{})
	must(t, err)
	if st.State != fsm.StateCompleted {
		t.Fatalf("state %s, want COMPLETED", st.State)
	}
}

// widenHold makes a leader's hold for sibling records last up to w, as on
// a disk whose fsync takes an hour, for the test's duration.
func widenHold(e *Engine, w time.Duration) {
	e.wq.maxHold = w
	e.wq.cycle.Store(int64(time.Hour))
}

// The completions of a fan-out's branches that end together share one
// write: the first to end finds the log idle and holds its write for its
// siblings' records (they are still running), rather than syncing alone
// and leaving the other seven to a second fsync.
func TestFanOutCompletionsThatEndTogetherShareOneWrite(t *testing.T) {
	g := &gate{want: 8, all: make(chan struct{})}
	e := openT(t, t.TempDir(), Options{Registry: gateRegistry(t, g)})
	defer e.Close()
	_, err := e.Define(ctx, fanOut("fan", 8))
	must(t, err)
	widenHold(e, 10*time.Second)
	s0 := e.Stats()
	st, err := e.Run(waitCtx(t), "fan", nil, StartOptions{})
	must(t, err)
	if st.State != fsm.StateCompleted {
		t.Fatalf("state %s, want COMPLETED", st.State)
	}
	// start; root done; the 8 branch completions; join done.
	if commits := e.Stats().Commits - s0.Commits; commits != 4 {
		t.Fatalf("%d writes for the saga, want 4: the 8 branch completions in one", commits)
	}
}

// A hold lasts its window at most: a branch that is still running when
// its siblings end does not keep their completions from the log.
func TestAHoldForSiblingsEndsAtItsWindow(t *testing.T) {
	release := make(chan struct{})
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("act", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		if c.Step == "b7" {
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return nil, nil
	}))
	must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	e := openT(t, t.TempDir(), Options{Registry: reg})
	defer e.Close()
	_, err := e.Define(ctx, fanOut("fan", 8))
	must(t, err)
	widenHold(e, 20*time.Millisecond)
	id, _, err := e.Launch(ctx, "fan", nil, StartOptions{})
	must(t, err)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := e.Status(ctx, id)
		must(t, err)
		done := 0
		for _, s := range st.Steps {
			if strings.HasPrefix(s.Name, "b") && s.Status == fsm.StepDone {
				done++
			}
		}
		if done == 7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of the 7 ended branches are recorded done while b7 runs: a hold waited past its window", done)
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	if st, err := e.Wait(waitCtx(t), id); err != nil || st.State != fsm.StateCompleted {
		t.Fatalf("after b7 ends: %+v, %v", st, err)
	}
}

// A hold ends as soon as the siblings it waits for are out of the saga's
// calls, even when the last of them leaves without a record: a branch
// whose completion is durable is still in r.calls until its invocation
// finishes, and the join can end (and lead a write) before then. Its
// finish must wake the hold; without that the join's completion waited
// the whole window (TestFanOutCompletionsThatEndTogetherShareOneWrite hit
// its minute now and then).
func TestAHoldEndsWhenTheLastSiblingFinishesWithoutARecord(t *testing.T) {
	joinIn, joinGo := make(chan struct{}), make(chan struct{})
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("act", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		if c.Step == "join" {
			close(joinIn)
			<-joinGo
		}
		return nil, nil
	}))
	must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	e := openT(t, t.TempDir(), Options{Registry: reg})
	defer e.Close()
	_, err := e.Define(ctx, fanOut("fan", 2))
	must(t, err)
	widenHold(e, 10*time.Second)
	id, _, err := e.Launch(ctx, "fan", nil, StartOptions{})
	must(t, err)
	<-joinIn
	// b0 (step 1) ended and its completion is durable, but its invocation
	// has not finished yet: the state the join's completion finds when the
	// branch's goroutine is slower than the join's.
	e.mu.Lock()
	r := e.runs[id]
	e.mu.Unlock()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		r.mu.Lock()
		if len(r.calls) == 1 { // the join alone: both branches finished
			r.calls[1] = &invocation{cancel: func() {}, wake: make(chan struct{}, 1)}
			r.mu.Unlock()
			break
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("the branches' invocations never finished")
		}
	}
	c0 := e.Stats().Commits
	close(joinGo)
	// The join's completion leads a write and holds it for b0.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		e.wq.mu.Lock()
		n := len(e.wq.queue)
		e.wq.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the join's completion was never queued")
		}
	}
	time.Sleep(20 * time.Millisecond)
	if c := e.Stats().Commits; c != c0 {
		t.Fatalf("%d writes while b0 is in the saga's calls, want the join's completion held", c-c0)
	}
	e.finish(e.curTerm().ctx, id, r, 1, nil)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if st, err := e.Wait(wctx, id); err != nil || st.State != fsm.StateCompleted {
		t.Fatalf("after b0's invocation finished: %+v, %v: the hold did not end with it", st, err)
	}
}
