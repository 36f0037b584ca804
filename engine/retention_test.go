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
	"github.com/sagaengine/saga/compensation/fakeclock"
	"github.com/sagaengine/saga/fsm"
)

// retentionEngine opens an engine on a fake clock with no removal loop
// (RemoveExpired is called by the test), with definitions:
//   - ok: one step that succeeds;
//   - fails: a step that succeeds, then one that fails (FAILED);
//   - stuck: as fails, with a compensation that always fails once (STUCK);
//   - driven: a step the caller reports (stays IN_PROGRESS);
//   - slow: as ok, kept 3h; forever: as ok, kept forever;
//   - nest: a child saga of ok, then a step that succeeds.
func retentionEngine(t *testing.T, o Options) (*Engine, *fakeclock.Clock) {
	t.Helper()
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	must(t, reg.RegisterAction("no", func(context.Context, compensation.Call) ([]byte, error) {
		return nil, compensation.Permanent(errors.New("refused"))
	}))
	must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	must(t, reg.Register("undo_broken", func(context.Context, compensation.Call) error {
		return compensation.Permanent(errors.New("broken"))
	}))
	o.Registry, o.Clock, o.RemovalInterval = reg, clk, ManualRemoval
	e := openT(t, t.TempDir(), o)
	t.Cleanup(func() { _ = e.Close() })
	once := RetryPolicy{MaxAttempts: 1}
	for _, d := range []Definition{
		{Name: "ok", Steps: []StepDef{{Name: "a", Action: "ok", Compensation: "undo"}}},
		{Name: "fails", Steps: []StepDef{{Name: "a", Action: "ok", Compensation: "undo"}, {Name: "b", Action: "no"}}},
		{Name: "stuck", Steps: []StepDef{{Name: "a", Action: "ok", Compensation: "undo_broken", CompensationRetry: once}, {Name: "b", Action: "no"}}},
		{Name: "driven", Steps: []StepDef{{Name: "a", Compensation: "undo"}}},
		{Name: "slow", Retention: 3 * time.Hour, Steps: []StepDef{{Name: "a", Action: "ok"}}},
		{Name: "forever", Retention: KeepForever, Steps: []StepDef{{Name: "a", Action: "ok"}}},
		{Name: "nest", Steps: []StepDef{{Name: "c", Child: "ok"}, {Name: "b", Action: "ok"}}},
	} {
		if _, err := e.Define(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	return e, clk
}

func runAs(t *testing.T, e *Engine, def, id string, o StartOptions) *Status {
	t.Helper()
	o.ID = id
	st, err := e.Run(waitCtx(t), def, nil, o)
	if err != nil {
		t.Fatalf("run %s: %v", id, err)
	}
	return st
}

// present returns which of ids exist.
func present(t *testing.T, e *Engine, ids ...string) []string {
	t.Helper()
	var out []string
	for _, id := range ids {
		_, err := e.Status(ctx, id)
		switch {
		case err == nil:
			out = append(out, id)
		case !errors.Is(err, ErrUnknownSaga):
			t.Fatal(err)
		}
	}
	return out
}

// Exactly the finished sagas past their retention are removed: the
// engine's for most definitions, a definition's own where it sets one,
// never with KeepForever; STUCK and running sagas are kept however old,
// and a child goes with its parent.
func TestRetentionRemovesExactlyTheFinishedSagasPastTheirRetention(t *testing.T) {
	e, clk := retentionEngine(t, Options{Retention: time.Hour})
	if st := runAs(t, e, "ok", "done-0", StartOptions{}); st.State != fsm.StateCompleted {
		t.Fatalf("done-0: %s", st.State)
	}
	if st := runAs(t, e, "fails", "failed-0", StartOptions{}); st.State != fsm.StateFailed {
		t.Fatalf("failed-0: %s", st.State)
	}
	if st := runAs(t, e, "stuck", "stuck-0", StartOptions{}); st.State != fsm.StateStuck {
		t.Fatalf("stuck-0: %s", st.State)
	}
	if _, err := e.Start(ctx, "driven", nil, StartOptions{ID: "running-0"}); err != nil {
		t.Fatal(err)
	}
	runAs(t, e, "slow", "slow-0", StartOptions{})
	runAs(t, e, "forever", "forever-0", StartOptions{})
	runAs(t, e, "nest", "nest-0", StartOptions{})
	clk.Advance(30 * time.Minute)
	runAs(t, e, "ok", "done-30m", StartOptions{})
	if _, err := e.StateCounts(); err != nil { // counted from here on, incrementally
		t.Fatal(err)
	}
	all := []string{"done-0", "failed-0", "stuck-0", "running-0", "slow-0", "forever-0", "nest-0", "nest-0.0", "done-30m"}

	// At 59 minutes nothing is old enough.
	clk.Advance(29 * time.Minute)
	if st, err := e.RemoveExpired(ctx); err != nil || st.Sagas != 0 {
		t.Fatalf("at 59m: removed %+v, %v", st, err)
	}
	clk.Advance(2 * time.Minute) // 61m
	st, err := e.RemoveExpired(ctx)
	if err != nil || st.Sagas != 4 {
		t.Fatalf("at 61m: removed %+v, %v; want done-0, failed-0, nest-0 and its child", st, err)
	}
	if got, want := present(t, e, all...), []string{"stuck-0", "running-0", "slow-0", "forever-0", "done-30m"}; !slices.Equal(got, want) {
		t.Fatalf("at 61m left %v, want %v", got, want)
	}
	clk.Advance(30 * time.Minute) // 91m
	if _, err := e.RemoveExpired(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := present(t, e, all...), []string{"stuck-0", "running-0", "slow-0", "forever-0"}; !slices.Equal(got, want) {
		t.Fatalf("at 91m left %v, want %v", got, want)
	}
	clk.Advance(100 * 24 * time.Hour)
	if _, err := e.RemoveExpired(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := present(t, e, all...), []string{"stuck-0", "running-0", "forever-0"}; !slices.Equal(got, want) {
		t.Fatalf("after 100 days left %v, want %v", got, want)
	}
	if n, err := e.CountQuery(ctx, fsm.Query{}); err != nil || n != 3 {
		t.Fatalf("count %d, %v; want 3", n, err)
	}
	scanned, err := e.Count(ctx)
	must(t, err)
	kept, err := e.StateCounts()
	must(t, err)
	for _, s := range fsm.States() {
		if scanned[s] != kept[s] {
			t.Fatalf("state counts kept %v, counted %v", kept, scanned)
		}
	}
}

// With a dedupe window longer than the retention, an idempotency key
// outlives its saga: a second start with it returns the removed saga's
// id and starts nothing, until the window ends; then the key is free.
func TestIdempotencyKeysAreHonouredForTheDedupeWindow(t *testing.T) {
	e, clk := retentionEngine(t, Options{Retention: time.Hour, DedupeWindow: 2 * time.Hour})
	first := runAs(t, e, "ok", "", StartOptions{IdempotencyKey: "order-7"})
	clk.Advance(61 * time.Minute)
	if st, err := e.RemoveExpired(ctx); err != nil || st.Sagas != 1 || st.Keys != 0 {
		t.Fatalf("at 61m: %+v, %v", st, err)
	}
	id, err := e.Start(ctx, "ok", nil, StartOptions{IdempotencyKey: "order-7"})
	if err != nil || id != first.ID {
		t.Fatalf("a start inside the window: %q, %v; want the removed saga's id %s", id, err, first.ID)
	}
	if _, err := e.Status(ctx, id); !errors.Is(err, ErrUnknownSaga) {
		t.Fatalf("the removed saga: %v", err)
	}
	if _, err := e.Run(ctx, "ok", nil, StartOptions{IdempotencyKey: "order-7"}); !errors.Is(err, ErrRemoved) || !errors.Is(err, ErrUnknownSaga) {
		t.Fatalf("Run with the kept key: %v, want ErrRemoved", err)
	}
	clk.Advance(60 * time.Minute) // 121m
	if st, err := e.RemoveExpired(ctx); err != nil || st.Keys != 1 {
		t.Fatalf("at 121m: %+v, %v; want the key forgotten", st, err)
	}
	id, err = e.Start(ctx, "ok", nil, StartOptions{IdempotencyKey: "order-7"})
	if err != nil || id == first.ID {
		t.Fatalf("a start after the window: %q, %v; want a new saga", id, err)
	}
}

// With the default window (the retention), the key goes with the saga.
func TestTheDefaultDedupeWindowIsTheRetention(t *testing.T) {
	e, clk := retentionEngine(t, Options{Retention: time.Hour})
	first := runAs(t, e, "ok", "", StartOptions{IdempotencyKey: "order-8"})
	clk.Advance(59 * time.Minute)
	if id, _ := e.Start(ctx, "ok", nil, StartOptions{IdempotencyKey: "order-8"}); id != first.ID {
		t.Fatalf("inside the retention a start with the key gave %s, want %s", id, first.ID)
	}
	clk.Advance(2 * time.Minute)
	if _, err := e.RemoveExpired(ctx); err != nil {
		t.Fatal(err)
	}
	if id, err := e.Start(ctx, "ok", nil, StartOptions{IdempotencyKey: "order-8"}); err != nil || id == first.ID {
		t.Fatalf("after the retention: %q, %v; want a new saga", id, err)
	}
}

// recordingArchiver keeps what it was given; it can be made to fail.
type recordingArchiver struct {
	mu   sync.Mutex
	e    *Engine
	got  []string
	fail error
	// present: whether each saga still existed when Archive was called.
	present []bool
	// during, if set, runs (once, unlocked) in the next Archive call.
	during func()
}

func (a *recordingArchiver) Archive(_ context.Context, sagas []ArchivedSaga) error {
	a.mu.Lock()
	if f := a.during; f != nil {
		a.during = nil
		a.mu.Unlock()
		f()
		a.mu.Lock()
	}
	defer a.mu.Unlock()
	if a.fail != nil {
		return a.fail
	}
	for _, s := range sagas {
		a.got = append(a.got, s.Status.ID)
		_, err := a.e.Status(ctx, s.Status.ID)
		a.present = append(a.present, err == nil && len(s.History) > 0)
	}
	return nil
}

// A saga is handed to the archiver, with its history and its children,
// while it still exists, and is removed only once the archiver returned;
// a failed archive removes nothing.
func TestArchiveComesBeforeRemovalAndAFailedArchiveRemovesNothing(t *testing.T) {
	a := &recordingArchiver{fail: errors.New("disk full")}
	e, clk := retentionEngine(t, Options{Retention: time.Hour, Archiver: a})
	a.mu.Lock()
	a.e = e
	a.mu.Unlock()
	runAs(t, e, "ok", "done-0", StartOptions{})
	runAs(t, e, "nest", "nest-0", StartOptions{})
	clk.Advance(2 * time.Hour)
	st, err := e.RemoveExpired(ctx)
	if err == nil || st.Sagas != 0 {
		t.Fatalf("with a failing archiver: %+v, %v; want an error and nothing removed", st, err)
	}
	if got := present(t, e, "done-0", "nest-0", "nest-0.0"); len(got) != 3 {
		t.Fatalf("a failed archive removed sagas: left %v", got)
	}
	a.mu.Lock()
	a.fail = nil
	a.mu.Unlock()
	if st, err = e.RemoveExpired(ctx); err != nil || st.Sagas != 3 || st.Archived != 3 {
		t.Fatalf("%+v, %v; want 3 archived and removed", st, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// By definition (nest, ok), each parent before its children.
	if want := []string{"nest-0", "nest-0.0", "done-0"}; !slices.Equal(a.got, want) {
		t.Fatalf("archived %v, want %v", a.got, want)
	}
	for i, ok := range a.present {
		if !ok {
			t.Fatalf("%s was archived after its removal (or without its history)", a.got[i])
		}
	}
	if got := present(t, e, "done-0", "nest-0", "nest-0.0"); len(got) != 0 {
		t.Fatalf("left %v after the archive", got)
	}
}

// Removals are in the log: a reopened engine has the same sagas removed,
// and a saga removed in one life stays removed.
func TestRemovalsSurviveAReopen(t *testing.T) {
	dir := t.TempDir()
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	o := Options{Registry: reg, Clock: clk, Retention: time.Hour, RemovalInterval: ManualRemoval}
	e := openT(t, dir, o)
	_, err := e.Define(ctx, Definition{Name: "ok", Steps: []StepDef{{Name: "a", Action: "ok"}}})
	must(t, err)
	runAs(t, e, "ok", "old", StartOptions{})
	clk.Advance(2 * time.Hour)
	runAs(t, e, "ok", "new", StartOptions{})
	if st, err := e.RemoveExpired(ctx); err != nil || st.Sagas != 1 {
		t.Fatalf("%+v, %v", st, err)
	}
	must(t, e.Close())
	e = openT(t, dir, o)
	defer e.Close()
	if got := present(t, e, "old", "new"); !slices.Equal(got, []string{"new"}) {
		t.Fatalf("after a reopen: %v", got)
	}
}

// The removal loop runs on its own every RemovalInterval.
func TestTheRemovalLoopRemovesOnItsOwn(t *testing.T) {
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	e := openT(t, t.TempDir(), Options{Registry: reg, Clock: clk, Retention: time.Hour, RemovalInterval: time.Minute})
	defer e.Close()
	_, err := e.Define(ctx, Definition{Name: "ok", Steps: []StepDef{{Name: "a", Action: "ok"}}})
	must(t, err)
	runAs(t, e, "ok", "old", StartOptions{})
	clk.Advance(2 * time.Hour)
	for deadline := time.Now().Add(time.Minute); len(present(t, e, "old")) > 0; {
		if time.Now().After(deadline) {
			t.Fatal("the loop never removed the expired saga")
		}
		changed := clk.Changed()
		if !clk.AdvanceToNext() {
			select {
			case <-changed:
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// Bad retention options are refused at Open, every one named.
func TestRetentionOptionsAreValidated(t *testing.T) {
	for _, o := range []Options{
		{Retention: -5 * time.Second},
		{DedupeWindow: -5 * time.Second},
		{Retention: 2 * time.Hour, DedupeWindow: time.Hour},
		{Retention: KeepForever, DedupeWindow: time.Hour},
		{RemovalInterval: -3 * time.Second},
		{RemovalBatch: fsm.MaxRemoval + 1},
	} {
		o.Logger = quiet
		if _, err := Open(t.TempDir(), o); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("Open with %+v: %v, want ErrInvalidOptions", o, err)
		}
	}
	e, _ := retentionEngine(t, Options{})
	if _, err := e.Define(ctx, Definition{Name: "bad", Retention: -2, Steps: []StepDef{{Name: "a", Action: "ok"}}}); err == nil {
		t.Fatal("a definition with a negative retention was accepted")
	}
}

// resolvedParent opens a retention engine (Retention 1h) with an archiver
// and two sagas of definition parent, each running a child saga: p, which
// an operator resolved to FAILED while its child p.0 is STUCK, and q, a
// minute later, COMPLETED with its child q.0. The clock is then 2h on.
func resolvedParent(t *testing.T, o Options) (*Engine, *recordingArchiver) {
	t.Helper()
	a := &recordingArchiver{}
	o.Retention, o.Archiver = time.Hour, a
	e, clk := retentionEngine(t, o)
	a.mu.Lock()
	a.e = e
	a.mu.Unlock()
	must(t, e.opts.Registry.RegisterAction("maybe", func(_ context.Context, c compensation.Call) ([]byte, error) {
		if string(c.Input) == "fail" {
			return nil, compensation.Permanent(errors.New("refused"))
		}
		return nil, nil
	}))
	once := RetryPolicy{MaxAttempts: 1}
	for _, d := range []Definition{
		{Name: "maybe", Steps: []StepDef{{Name: "a", Action: "ok", Compensation: "undo_broken", CompensationRetry: once}, {Name: "b", Action: "maybe"}}},
		{Name: "parent", Steps: []StepDef{{Name: "c", Child: "maybe", CompensationRetry: once}}},
	} {
		if _, err := e.Define(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	wctx := waitCtx(t)
	go func() { _, _ = e.Run(wctx, "parent", []byte("fail"), StartOptions{ID: "p"}) }()
	// The child goes STUCK; the parent's step waits through it.
	for {
		st, err := e.Status(ctx, "p.0")
		if err == nil && st.State == fsm.StateStuck {
			time.Sleep(10 * time.Millisecond) // the parent's step waits through it
			break
		}
		if wctx.Err() != nil {
			t.Fatalf("child p.0: %v, %v", st, err)
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := e.Abort(ctx, "p", "ops", "give up"); err != nil {
		t.Fatal(err)
	}
	if st, err := e.Wait(wctx, "p"); err != nil || st.State != fsm.StateStuck {
		t.Fatalf("parent after the abort: %v, %v; want STUCK on its STUCK child", st, err)
	}
	if st, err := e.Resolve(ctx, "p", "ops", "undone by hand"); err != nil || st.State != fsm.StateFailed {
		t.Fatalf("parent resolved: %v, %v; want FAILED", st, err)
	}
	clk.Advance(time.Minute)
	if st, err := e.Run(wctx, "parent", []byte("ok"), StartOptions{ID: "q"}); err != nil || st.State != fsm.StateCompleted {
		t.Fatalf("q: %v, %v", st, err)
	}
	clk.Advance(2 * time.Hour)
	return e, a
}

// A parent an operator resolved while its child is STUCK has finished
// before its child. Its removal waits for the child (a child goes with
// its parent, never alone, and is no candidate of its own: left behind,
// it would stay forever). Such a parent neither stalls a pass nor keeps
// the sagas after it from going, and is not archived while it waits.
// Once the child is settled, both go.
func TestAParentWaitsForItsUnfinishedChildAndStallsNoPass(t *testing.T) {
	e, a := resolvedParent(t, Options{RemovalBatch: 1})
	pass, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := e.RemoveExpired(pass)
	if err != nil || st.Sagas != 2 {
		t.Fatalf("first pass: %+v, %v; want q and its child removed", st, err)
	}
	if got := present(t, e, "p", "p.0", "q", "q.0"); !slices.Equal(got, []string{"p", "p.0"}) {
		t.Fatalf("after the first pass left %v, want p and its STUCK child", got)
	}
	a.mu.Lock()
	if want := []string{"q", "q.0"}; !slices.Equal(a.got, want) {
		t.Errorf("archived %v, want %v", a.got, want)
	}
	a.mu.Unlock()
	if st, err := e.Resolve(ctx, "p.0", "ops", "undone by hand"); err != nil || st.State != fsm.StateFailed {
		t.Fatalf("child resolved: %v, %v; want FAILED", st, err)
	}
	if st, err = e.RemoveExpired(pass); err != nil || st.Sagas != 2 {
		t.Fatalf("second pass: %+v, %v; want p and its child removed", st, err)
	}
	if got := present(t, e, "p", "p.0"); len(got) != 0 {
		t.Fatalf("left %v", got)
	}
}

// A tree the archive skipped (its child was STUCK) is not removed by the
// record that follows, even if the child finished in between: only what
// was archived is removed.
func TestATreeSettledDuringTheArchiveIsNotRemovedUnarchived(t *testing.T) {
	e, a := resolvedParent(t, Options{RemovalBatch: 2})
	a.mu.Lock()
	a.during = func() {
		if _, err := e.Resolve(ctx, "p.0", "ops", "undone by hand"); err != nil {
			t.Errorf("resolve p.0 during the archive: %v", err)
		}
	}
	a.mu.Unlock()
	if _, err := e.RemoveExpired(ctx); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	archived := slices.Clone(a.got)
	a.mu.Unlock()
	for _, id := range []string{"p", "p.0", "q", "q.0"} {
		if len(present(t, e, id)) == 0 && !slices.Contains(archived, id) {
			t.Errorf("%s was removed without being archived (archived %v)", id, archived)
		}
	}
}

// Idempotency keys in a log written before MaxIdempotencyKey are as long
// as a start record allowed: the removal records that forget them are cut
// to fit the log's record size, so that long keys are still forgotten when
// their window ends (rather than every pass failing with a record over the
// limit).
func TestLongKeysAreForgottenInRecordsThatFitTheLog(t *testing.T) {
	startTextCheck = func(StartOptions) error { return nil } // the log of an older version
	t.Cleanup(func() { startTextCheck = checkStartText })
	o := Options{Retention: time.Hour, DedupeWindow: 2 * time.Hour}
	o.WAL.MaxRecordSize = 64 << 10
	e, clk := retentionEngine(t, o)
	var keys []string
	for i := range 4 {
		k := strings.Repeat(string(rune('a'+i)), 24<<10)
		keys = append(keys, k)
		runAs(t, e, "ok", "", StartOptions{IdempotencyKey: k})
	}
	clk.Advance(61 * time.Minute)
	if st, err := e.RemoveExpired(ctx); err != nil || st.Sagas != 4 {
		t.Fatalf("at 61m: %+v, %v; want the 4 sagas removed", st, err)
	}
	clk.Advance(60 * time.Minute)
	if st, err := e.RemoveExpired(ctx); err != nil || st.Keys != 4 {
		t.Fatalf("at 121m: %+v, %v; want the 4 keys forgotten", st, err)
	}
	for _, k := range keys {
		if _, created, err := e.start(ctx, "ok", nil, StartOptions{IdempotencyKey: k}, false); err != nil || !created {
			t.Fatalf("a start with a forgotten key: created %v, %v", created, err)
		}
	}
}

// A saga keeps the retention of the definition version it started with:
// redefining the definition with another retention changes it for new
// sagas only.
func TestASagaKeepsTheRetentionOfItsDefinitionVersion(t *testing.T) {
	e, clk := retentionEngine(t, Options{Retention: time.Hour})
	_, err := e.Define(ctx, Definition{Name: "kept", Retention: KeepForever, Steps: []StepDef{{Name: "a", Action: "ok"}}})
	must(t, err)
	runAs(t, e, "kept", "v1-saga", StartOptions{})
	d, err := e.Define(ctx, Definition{Name: "kept", Steps: []StepDef{{Name: "a", Action: "ok"}}})
	must(t, err)
	if d.Version != 2 {
		t.Fatalf("redefined as version %d, want 2", d.Version)
	}
	runAs(t, e, "kept", "v2-saga", StartOptions{})
	clk.Advance(2 * time.Hour)
	if _, err := e.RemoveExpired(ctx); err != nil {
		t.Fatal(err)
	}
	if got := present(t, e, "v1-saga", "v2-saga"); !slices.Equal(got, []string{"v1-saga"}) {
		t.Fatalf("left %v, want the version-1 saga only (kept forever)", got)
	}
}
