package engine_test

// Tests of the engine's replicated mode. They drive the engine with
// a fake Replicator whose leadership, barrier and commit timing the test
// controls, so that each interleaving below happens deterministically. The
// fake applies commands exactly as replication's state machine does
// (through the engine's fsm.Replica) and answers like a raft member:
// NotLeader when it does not lead.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"

	"github.com/sagaengine/saga/internal/testctx"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

type notLeader struct{}

func (notLeader) Error() string                { return "fake: not the leader" }
func (notLeader) NotLeader() (id, addr string) { return "other", "other:1" }

type fakeRep struct {
	mu     sync.Mutex // one applier, as raft's FSM goroutine
	store  fsm.Replica
	source uint64

	leader atomic.Bool
	ch     chan bool

	barrier chan struct{} // when set, Barrier waits for it to close
	// beforeBarrier, when set, runs as Barrier is called: commands of an
	// earlier term that reach this member only then.
	beforeBarrier func()

	// afterCommit, when set, is called with the records of each command
	// this member proposed, once it is committed and applied.
	afterCommit func([]*fsm.Record)
}

func newFake() *fakeRep { return &fakeRep{ch: make(chan bool, 1)} }

func (f *fakeRep) Start(replica fsm.Replica) error {
	f.store, f.source = replica, replica.SourceIndex()
	return nil
}

// setLeader is raft gaining or losing leadership: LeaderCh is a 1-buffered
// channel whose old value is overridden (raft's overrideNotifyBool).
func (f *fakeRep) setLeader(v bool) {
	f.leader.Store(v)
	select {
	case f.ch <- v:
	case <-f.ch:
		f.ch <- v
	}
}

// commit applies a committed command on this member, as the raft FSM does.
func (f *fakeRep) commit(t testing.TB, recs []*fsm.Record) []fsm.Result {
	raw := make([][]byte, len(recs))
	for i, r := range recs {
		b, err := fsm.Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		raw[i] = b
	}
	res, err := f.apply(raw)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func (f *fakeRep) apply(raw [][]byte) ([]fsm.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	next := f.store.AppliedIndex() + 1
	ents := make([]fsm.Entry, len(raw))
	recs := make([]*fsm.Record, len(raw))
	for i, b := range raw {
		r, err := fsm.Decode(b)
		if err != nil {
			return nil, err
		}
		ents[i] = fsm.Entry{Index: next + uint64(i), Rec: r, Raw: b}
		recs[i] = r
	}
	f.source += 2 // raft leaves gaps (no-ops, barriers)
	res, err := f.store.ApplyCommands([]fsm.Command{{Source: f.source, Entries: ents}})
	if err != nil {
		return nil, err
	}
	return res[0], nil
}

func (f *fakeRep) Propose(ctx context.Context, raw [][]byte) ([]fsm.Result, error) {
	if !f.leader.Load() {
		return nil, notLeader{}
	}
	res, err := f.apply(raw)
	if err != nil {
		return nil, err
	}
	if h := f.afterCommit; h != nil {
		recs := make([]*fsm.Record, len(raw))
		for i, b := range raw {
			recs[i], _ = fsm.Decode(b)
		}
		h(recs)
	}
	return res, nil
}

func (f *fakeRep) Leadership() <-chan bool { return f.ch }

func (f *fakeRep) Barrier(ctx context.Context) error {
	if h := f.beforeBarrier; h != nil {
		h()
	}
	if b := f.barrier; b != nil {
		select {
		case <-b:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if !f.leader.Load() {
		return notLeader{}
	}
	return nil
}

func (f *fakeRep) Leader() (string, string) { return "", "" }
func (f *fakeRep) Close() error             { return nil }

func openFake(t *testing.T, f *fakeRep, reg *compensation.Registry) *engine.Engine {
	t.Helper()
	e, err := engine.Open(t.TempDir(), engine.Options{Replicator: f, Registry: reg, Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func leading(e *engine.Engine) bool { _, _, self := e.Leader(); return self }

type calls struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *calls) add(s string) { c.mu.Lock(); c.n[s]++; c.mu.Unlock() }
func (c *calls) get(s string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[s]
}

func driveRegistry(t *testing.T, c *calls, failing string) *compensation.Registry {
	reg := compensation.NewRegistry()
	for _, s := range []string{"a", "b", "c"} {
		s := s
		if err := reg.RegisterAction("do_"+s, func(ctx context.Context, call compensation.Call) ([]byte, error) {
			c.add("do_" + s)
			if s == failing {
				return nil, compensation.Permanent(errors.New("boom"))
			}
			return []byte("ok"), nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := reg.Register("undo_"+s, func(ctx context.Context, call compensation.Call) error {
			// A handler that starts its side effect without looking at ctx
			// (an HTTP call with a context that is already cancelled may
			// still have been sent; many handlers never look).
			c.add("undo_" + s)
			if ctx.Err() != nil {
				c.add("undo_" + s + "/ctx-cancelled")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return reg
}

func drivenDef(steps ...string) engine.Definition {
	d := engine.Definition{Name: "driven"}
	for _, s := range steps {
		d.Steps = append(d.Steps, engine.StepDef{Name: s, Action: "do_" + s, Compensation: "undo_" + s})
	}
	return d
}

// A saga started on the new leader after raft made it leader but before the
// engine's term has scanned for unfinished sagas (here: while beginTerm
// waits on the barrier) is taken for a saga a previous leader left running:
// resumeAll records it as uncertain and, by the default policy, aborts and
// compensates it, although its first action never ran. Run returns FAILED.
func TestSagaStartedWhileTermBeginsIsNotTakenForAnUncertainOne(t *testing.T) {
	c := &calls{n: map[string]int{}}
	f := newFake()
	f.barrier = make(chan struct{})
	e := openFake(t, f, driveRegistry(t, c, ""))

	f.setLeader(true) // raft leads; the engine's beginTerm now waits on the barrier
	ctx := testctx.New(t)
	// Until the term has resumed what earlier leaders left, public writes
	// are refused as on a follower: retryable, nothing applied.
	if _, err := e.Define(ctx, drivenDef("a", "b")); !errors.Is(err, engine.ErrNotLeader) {
		t.Fatalf("Define before the term began: %v, want ErrNotLeader", err)
	}
	close(f.barrier) // the barrier returns: the term begins
	waitFor(t, "the term", func() bool { return leading(e) })
	if _, err := e.Define(ctx, drivenDef("a", "b")); err != nil {
		t.Fatal(err)
	}
	type out struct {
		st  *engine.Status
		err error
	}
	var o out
	o.st, o.err = e.Run(ctx, "driven", nil, engine.StartOptions{ID: "s1"})
	if o.err != nil {
		t.Fatal(o.err)
	}
	if o.st.State != fsm.StateCompleted {
		t.Fatalf("a saga started at the start of a term ended %s (%v); actions run: a=%d b=%d, compensations: a=%d",
			o.st.State, o.st.LastError, c.get("do_a"), c.get("do_b"), c.get("undo_a"))
	}
}

// A driver whose proposal committed just before this member lost leadership
// goes on to the next compensation under the ended term: compensateStarted
// recurses into the next handler without looking at its term context, so a
// deposed leader runs a compensation that the new leader runs too.
func TestDeposedLeaderRunsNoFurtherCompensation(t *testing.T) {
	c := &calls{n: map[string]int{}}
	f := newFake()
	e := openFake(t, f, driveRegistry(t, c, "c"))
	f.setLeader(true)
	waitFor(t, "the term", func() bool { return leading(e) })
	ctx := testctx.New(t)
	if _, err := e.Define(ctx, drivenDef("a", "b", "c")); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	f.afterCommit = func(recs []*fsm.Record) {
		for _, r := range recs {
			if r.Kind == fsm.KindCompCompleted && r.Saga == "s1" {
				// "b compensated, a's compensation started" is committed;
				// raft deposes this member before its driver goes on.
				once.Do(func() {
					f.setLeader(false)
					waitFor(t, "the term to end", func() bool { return !leading(e) })
				})
			}
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, _ = e.Run(rctx, "driven", nil, engine.StartOptions{ID: "s1"})
	time.Sleep(100 * time.Millisecond)
	if n := c.get("undo_a"); n != 0 {
		t.Fatalf("the deposed member invoked compensation undo_a %d time(s) after its term ended (with a cancelled context: %d)",
			n, c.get("undo_a/ctx-cancelled"))
	}
}

// A member caches a saga (run.saga) while it leads; after it is deposed the
// saga moves on under another leader, but the cache is only dropped when
// this member leads again. Meanwhile a write sent to it is judged against the
// stale cache: a valid request is refused as an illegal transition instead
// of being redirected with NotLeaderError.
func TestFollowerRedirectsWritesInsteadOfJudgingThemOnItsCache(t *testing.T) {
	reg := compensation.NewRegistry()
	f := newFake()
	e := openFake(t, f, reg)
	f.setLeader(true)
	waitFor(t, "the term", func() bool { return leading(e) })
	ctx := testctx.New(t)
	if _, err := e.Define(ctx, engine.Definition{Name: "manual", Steps: []engine.StepDef{{Name: "s1"}, {Name: "s2"}, {Name: "s3"}}}); err != nil {
		t.Fatal(err)
	}
	id, err := e.Start(ctx, "manual", nil, engine.StartOptions{ID: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Advance(ctx, id, engine.StepResult{Step: "s1"}); err != nil {
		t.Fatal(err)
	}
	f.setLeader(false)
	waitFor(t, "the term to end", func() bool { return !leading(e) })
	// Another leader commits "s2 completed"; this member applies it.
	f.commit(t, []*fsm.Record{{Kind: fsm.KindStepCompleted, Saga: id, At: time.Now().UnixNano(), Step: 1}})
	if st, _ := e.Status(ctx, id); st.CurrentStep != "s3" {
		t.Fatalf("status: current step %q", st.CurrentStep)
	}
	_, err = e.Advance(ctx, id, engine.StepResult{Step: "s3"})
	if !errors.Is(err, engine.ErrNotLeader) {
		t.Fatalf("Advance of the current step on a follower: got %v, want a NotLeaderError", err)
	}
}

// StateCounts' first call counts a snapshot of the store and adds the
// deltas applied meanwhile. Commands committed while first counts run, on
// a replicated member, are each counted once: the engine's one apply path
// changes the store and the counts under one lock. (Before it, the
// replicator changed the store before the engine's callback took that
// lock, and a count taken in between counted a transition twice.)
func TestStateCountsCountEachReplicatedTransitionOnce(t *testing.T) {
	f := newFake()
	e := openFake(t, f, compensation.NewRegistry())
	f.setLeader(true)
	waitFor(t, "the term", func() bool { return leading(e) })
	ctx := testctx.New(t)
	if _, err := e.Define(ctx, engine.Definition{Name: "manual", Steps: []engine.StepDef{{Name: "s1"}}}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if _, err := e.Start(ctx, "manual", nil, engine.StartOptions{ID: fmt.Sprintf("m%d-%03d", g, i)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for k := 0; k < 20; k++ {
		if _, err := e.StateCounts(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	got, err := e.StateCounts()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := e.Count(ctx)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("StateCounts %v, the store counts %v", got, want)
	}
}

// A driver of an ended term that lets go of a saga after the next term has
// begun carries on under the new term (ensureDriver's loop). It then races
// with that term's resumeAll, which treats the same saga as uncertain and
// applies its policy: here UncertainCompensate (the default), so the step
// must not run again. But the carried-over driver reads the saga during
// resumeAll's scan, before the "aborted (uncertain)" record, and runs the
// action a second time; resumeAll's abort does not cancel it.
func TestUncertainStepRunsNoMoreAfterANewTerm(t *testing.T) {
	c := &calls{n: map[string]int{}}
	release := make(chan struct{})
	started := make(chan struct{})
	reg := compensation.NewRegistry()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	var first atomic.Bool
	first.Store(true)
	must(reg.RegisterAction("do_a", func(ctx context.Context, call compensation.Call) ([]byte, error) {
		c.add("do_a")
		if first.Swap(false) {
			close(started)
			<-release // finishes its work whatever ctx says
		}
		return []byte("ok"), nil
	}))
	must(reg.RegisterAction("do_b", func(ctx context.Context, call compensation.Call) ([]byte, error) {
		c.add("do_b")
		return []byte("ok"), nil
	}))
	must(reg.Register("undo_a", func(ctx context.Context, call compensation.Call) error { c.add("undo_a"); return nil }))
	must(reg.Register("undo_b", func(ctx context.Context, call compensation.Call) error { c.add("undo_b"); return nil }))

	f := newFake()
	e := openFake(t, f, reg)
	f.setLeader(true)
	waitFor(t, "the term", func() bool { return leading(e) })
	ctx := testctx.New(t)
	if _, err := e.Define(ctx, drivenDef("a", "b")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Define(ctx, engine.Definition{Name: "manual", Steps: []engine.StepDef{{Name: "s1"}}}); err != nil {
		t.Fatal(err)
	}
	// Other work in progress, so that resumeAll's scan takes a little while.
	for i := 0; i < 3000; i++ {
		if _, err := e.Start(ctx, "manual", nil, engine.StartOptions{ID: fmt.Sprintf("m%05d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	done := make(chan *engine.Status, 1)
	go func() { st, _ := e.Run(rctx, "driven", nil, engine.StartOptions{ID: "s1"}); done <- st }()
	<-started
	f.setLeader(false) // deposed while do_a runs
	waitFor(t, "the term to end", func() bool { return !leading(e) })
	f.setLeader(true) // and elected again: the term waits for the old driver
	close(release)    // do_a (of the old term) returns
	waitFor(t, "the next term", func() bool { return leading(e) })
	st := <-done
	if st == nil {
		t.Fatal("Run did not settle")
	}
	if n := c.get("do_a"); n != 1 {
		t.Fatalf("step a was uncertain with policy %q, yet its action ran %d times; saga %s (%v)",
			fsm.UncertainCompensate, n, st.State, st.LastError)
	}
}

// A member that gains leadership must apply every command committed in
// earlier terms before it resumes unfinished sagas (beginTerm's barrier).
// Here the previous leader committed "step b failed" but this member has
// not applied it yet when raft makes it leader: without the barrier it
// would take b for a step left in flight, record it uncertain and
// compensate it, though b failed and changed nothing.
func TestNewTermResumesOnlyAfterEarlierTermsAreApplied(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The previous leader: its saga's step b fails; every command it
	// commits is recorded, in order.
	var mu sync.Mutex
	var committed [][]*fsm.Record
	prev := newFake()
	prev.afterCommit = func(recs []*fsm.Record) { mu.Lock(); committed = append(committed, recs); mu.Unlock() }
	pe := openFake(t, prev, driveRegistry(t, &calls{n: map[string]int{}}, "b"))
	prev.setLeader(true)
	waitFor(t, "the previous leader's term", func() bool { return leading(pe) })
	if _, err := pe.Define(ctx, drivenDef("a", "b")); err != nil {
		t.Fatal(err)
	}
	if st, err := pe.Run(ctx, "driven", nil, engine.StartOptions{ID: "s1"}); err != nil || st.State != fsm.StateFailed {
		t.Fatalf("previous leader's saga: %v %v", st, err)
	}
	mu.Lock()
	cmds := slices.Clone(committed)
	mu.Unlock()
	failed := -1
	for i, recs := range cmds {
		for _, r := range recs {
			if r.Kind == fsm.KindStepFailed && failed < 0 {
				failed = i
			}
		}
	}
	if failed < 0 {
		t.Fatal("the previous leader committed no step_failed record")
	}

	// This member applied everything before "b failed"; that command is
	// committed but reaches it only through the barrier.
	c := &calls{n: map[string]int{}}
	f := newFake()
	e := openFake(t, f, driveRegistry(t, c, ""))
	for _, recs := range cmds[:failed] {
		f.commit(t, recs)
	}
	if st, err := e.Status(ctx, "s1"); err != nil || st.State != fsm.StateInProgress || st.CurrentStep != "b" {
		t.Fatalf("before the term: %+v %v, want IN_PROGRESS at b", st, err)
	}
	var barriers atomic.Int32
	f.beforeBarrier = func() { // on the engine's goroutine: no t.Fatal here
		barriers.Add(1)
		raw := make([][]byte, len(cmds[failed]))
		for i, r := range cmds[failed] {
			raw[i], _ = fsm.Encode(r)
		}
		if _, err := f.apply(raw); err != nil {
			t.Errorf("applying the earlier term's command: %v", err)
		}
	}
	f.setLeader(true)
	waitFor(t, "the new term", func() bool { return leading(e) })
	waitFor(t, "s1 to settle", func() bool {
		st, err := e.Status(ctx, "s1")
		return err == nil && st.State.Terminal()
	})
	st, err := e.Status(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if barriers.Load() == 0 || c.get("undo_b") != 0 || c.get("do_b") != 0 || c.get("undo_a") != 1 || st.State != fsm.StateFailed {
		t.Fatalf("after the new term (barriers %d): saga %s; do_b ran %d times, undo_b %d, undo_a %d; want only undo_a once",
			barriers.Load(), st.State, c.get("do_b"), c.get("undo_b"), c.get("undo_a"))
	}
}

// Nested sagas in replicated mode: a child saga is started, waited for
// and reverted through proposals like any other transition, so a later
// failure of the parent reverts its completed child on the leader.
func TestReplicatedParentRevertsItsCompletedChild(t *testing.T) {
	c := &calls{n: map[string]int{}}
	f := newFake()
	e := openFake(t, f, driveRegistry(t, c, "c"))
	f.setLeader(true)
	waitFor(t, "the term", func() bool { return leading(e) })
	ctx := testctx.New(t)
	child := drivenDef("a", "b")
	child.Name = "child"
	if _, err := e.Define(ctx, child); err != nil {
		t.Fatal(err)
	}
	parent := engine.Definition{Name: "parent", Steps: []engine.StepDef{
		{Name: "kid", Child: "child"}, {Name: "c", Action: "do_c", Compensation: "undo_c"}}}
	if _, err := e.Define(ctx, parent); err != nil {
		t.Fatal(err)
	}
	st, err := e.Run(ctx, "parent", nil, engine.StartOptions{ID: "p"})
	if err != nil {
		t.Fatal(err)
	}
	kid, err := e.Status(ctx, engine.ChildID("p", 0))
	if err != nil {
		t.Fatal(err)
	}
	if st.State != fsm.StateFailed || kid.State != fsm.StateFailed || kid.LastError == nil || kid.LastError.Kind != "reverted" ||
		c.get("undo_a") != 1 || c.get("undo_b") != 1 {
		t.Fatalf("parent %s, child %s (%v); undo a=%d b=%d: want both FAILED, the child reverted, each step undone once",
			st.State, kid.State, kid.LastError, c.get("undo_a"), c.get("undo_b"))
	}
}

// OpenReplicator runs once Open holds the data directory's lock, so that a
// replicator whose files live in the directory is never opened by a
// second process that Open would refuse. Its error is Open's, with the
// lock released and a directory Open made removed.
func TestOpenReplicatorRunsUnderTheDirectoryLock(t *testing.T) {
	dir := t.TempDir()
	f := newFake()
	held := false
	e, err := engine.Open(dir, engine.Options{Registry: compensation.NewRegistry(), Logger: quietLog,
		OpenReplicator: func() (engine.Replicator, error) {
			_, err := engine.LockDir(dir)
			held = errors.Is(err, engine.ErrLocked)
			return f, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if !held {
		t.Fatal("OpenReplicator ran while the data directory was not locked")
	}
	opened := false
	_, err = engine.Open(dir, engine.Options{Registry: compensation.NewRegistry(), Logger: quietLog,
		OpenReplicator: func() (engine.Replicator, error) { opened = true; return newFake(), nil }})
	if !errors.Is(err, engine.ErrLocked) || opened {
		t.Fatalf("a second Open of a held directory: %v, replicator opened %v", err, opened)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	fresh := t.TempDir() + "/member"
	boom := errors.New("bind: address already in use")
	_, err = engine.Open(fresh, engine.Options{Registry: compensation.NewRegistry(), Logger: quietLog,
		OpenReplicator: func() (engine.Replicator, error) { return nil, boom }})
	if !errors.Is(err, boom) {
		t.Fatalf("Open with a failing OpenReplicator: %v", err)
	}
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Fatalf("a refused Open left the directory it made: %v", err)
	}
	if _, err := engine.Open(dir, engine.Options{Replicator: f, OpenReplicator: func() (engine.Replicator, error) { return f, nil }}); !errors.Is(err, engine.ErrInvalidOptions) {
		t.Fatalf("both Replicator and OpenReplicator: %v", err)
	}
}
