package engine

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/compensation/fakeclock"
	"github.com/sagaengine/saga/fsm"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// journal records handler calls in order, safely across goroutines.
type journal struct {
	mu    sync.Mutex
	calls []string
}

func (j *journal) add(s string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.calls = append(j.calls, s)
}

func (j *journal) list() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]string(nil), j.calls...)
}

// registry registers undo_<step> handlers that journal their calls and
// do_<step> actions that fail for the steps in 'failing'.
func registry(t *testing.T, j *journal, steps []string, failing ...string) *compensation.Registry {
	reg := compensation.NewRegistry()
	for _, s := range steps {
		s := s
		must(t, reg.Register("undo_"+s, func(ctx context.Context, c compensation.Call) error {
			j.add(fmt.Sprintf("undo %s %s key=%s", c.SagaID, c.Step, c.IdempotencyKey))
			return nil
		}))
		must(t, reg.RegisterAction("do_"+s, func(ctx context.Context, c compensation.Call) ([]byte, error) {
			if slices.Contains(failing, s) {
				return nil, compensation.Permanent(errors.New(s + " refused"))
			}
			j.add(fmt.Sprintf("do %s %s", c.SagaID, c.Step))
			return []byte("out-" + s), nil
		}))
	}
	return reg
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func def(name string, steps ...string) Definition {
	d := Definition{Name: name}
	for _, s := range steps {
		d.Steps = append(d.Steps, StepDef{Name: s, Compensation: "undo_" + s, Action: "do_" + s})
	}
	return d
}

func openT(t testing.TB, dir string, opts Options) *Engine {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	e, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return e
}

// ctx is the context of this package's test calls. TestMain gives it the
// deadline of the test binary (-timeout) less a minute, so that a call a
// broken invariant would block fails with "context deadline exceeded" at
// the call, instead of go test killing the binary with a goroutine dump.
var ctx = context.Background()

// waitCtx bounds a call that waits for the engine to make progress on
// its own (Run, Wait): a minute, so that an engine that never settles
// fails that test alone, with a message, and leaves ctx to the others.
func waitCtx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(ctx, time.Minute)
	t.Cleanup(cancel)
	return c
}

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 2*time.Minute {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(context.Background(), d-time.Minute)
			code := m.Run()
			cancel()
			os.Exit(code)
		}
	}
	os.Exit(m.Run())
}

func TestManualSagaCompletes(t *testing.T) {
	j := &journal{}
	steps := []string{"ingest", "parse", "embed", "expose"}
	e := openT(t, t.TempDir(), Options{Registry: registry(t, j, steps)})
	defer e.Close()
	d, err := e.Define(ctx, def("ingest_pipeline", steps...))
	must(t, err)
	if d.Version != 1 {
		t.Fatalf("version %d", d.Version)
	}
	id, err := e.Start(ctx, "ingest_pipeline", []byte("file.pdf"), StartOptions{User: "user_123"})
	must(t, err)
	for _, s := range steps {
		st, err := e.Advance(ctx, id, StepResult{Step: s, Output: []byte(s + "-done")})
		must(t, err)
		_ = st
	}
	st, err := e.Status(ctx, id)
	must(t, err)
	if st.State != fsm.StateCompleted || !slices.Equal(st.Completed, steps) || st.User != "user_123" {
		t.Fatalf("status %+v", st)
	}
	if calls := j.list(); len(calls) != 0 {
		t.Fatalf("a completed manual saga ran handlers: %v", calls)
	}
	// Happy path cost: one record (and at most one fsync) per step.
	h, err := e.History(ctx, id)
	must(t, err)
	if len(h) != len(steps)+1 {
		t.Fatalf("%d transitions for %d steps", len(h), len(steps))
	}
}

func TestManualFailureCompensatesInReverse(t *testing.T) {
	j := &journal{}
	steps := []string{"ingest", "parse", "embed", "expose"}
	e := openT(t, t.TempDir(), Options{Registry: registry(t, j, steps)})
	defer e.Close()
	_, err := e.Define(ctx, def("p", steps...))
	must(t, err)
	id, err := e.Start(ctx, "p", nil, StartOptions{})
	must(t, err)
	for _, s := range steps[:3] {
		_, err := e.Advance(ctx, id, StepResult{Step: s})
		must(t, err)
	}
	st, err := e.Advance(ctx, id, StepResult{Step: "expose", Err: errors.New("index unavailable")})
	must(t, err)
	if st.State != fsm.StateCompensating && st.State != fsm.StateFailed {
		t.Fatalf("after failure: %s", st.State)
	}
	st, err = e.Wait(waitCtx(t), id)
	must(t, err)
	if st.State != fsm.StateFailed {
		t.Fatalf("final state %s", st.State)
	}
	want := []string{
		"undo " + id + " embed key=" + id + "/embed/compensation",
		"undo " + id + " parse key=" + id + "/parse/compensation",
		"undo " + id + " ingest key=" + id + "/ingest/compensation",
	}
	if got := j.list(); !slices.Equal(got, want) {
		t.Fatalf("compensations:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !slices.Equal(st.Compensated, []string{"embed", "parse", "ingest"}) || st.LastError == nil ||
		!strings.Contains(st.LastError.Message, "index unavailable") {
		t.Fatalf("status %+v", st)
	}
}

func TestBadInputsChangeNothing(t *testing.T) {
	j := &journal{}
	e := openT(t, t.TempDir(), Options{Registry: registry(t, j, []string{"a", "b"})})
	defer e.Close()
	// Unknown handler names are refused when defining, not when failing.
	bad := def("x", "a", "b")
	bad.Steps[1].Compensation = "undo_missing"
	if _, err := e.Define(ctx, bad); !errors.Is(err, compensation.ErrUnknownName) {
		t.Fatalf("unknown handler: %v", err)
	}
	// Malformed definitions list every problem.
	_, err := e.Define(ctx, Definition{Name: "bad name", Steps: []StepDef{{Name: "a"}, {Name: "a"}}})
	var de *fsm.DefinitionError
	if !errors.As(err, &de) || len(de.Problems) != 2 {
		t.Fatalf("malformed definition: %v", err)
	}
	if _, err := e.Start(ctx, "nope", nil, StartOptions{}); !errors.Is(err, fsm.ErrUnknownDefinition) {
		t.Fatalf("unknown definition: %v", err)
	}
	_, err = e.Define(ctx, def("x", "a", "b"))
	must(t, err)
	if _, err := e.Start(ctx, "x", nil, StartOptions{ID: "has/slash"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad id: %v", err)
	}
	// A timeout whose deadline would wrap past int64 nanoseconds (a
	// deadline in 1700: never armed) is refused, not taken as none.
	if _, err := e.Start(ctx, "x", nil, StartOptions{ID: "forever", Timeout: time.Duration(math.MaxInt64)}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a timeout whose deadline overflows: %v", err)
	}
	id, err := e.Start(ctx, "x", nil, StartOptions{ID: "order-1"})
	must(t, err)
	if _, err := e.Start(ctx, "x", nil, StartOptions{ID: "order-1"}); !errors.Is(err, fsm.ErrSagaExists) {
		t.Fatalf("duplicate id: %v", err)
	}
	before, _ := e.History(ctx, id)
	if _, err := e.Advance(ctx, id, StepResult{Step: "b"}); !errors.Is(err, fsm.ErrIllegalTransition) {
		t.Fatalf("out-of-order step: %v", err)
	}
	if _, err := e.Advance(ctx, "missing", StepResult{Step: "a"}); !errors.Is(err, fsm.ErrUnknownSaga) {
		t.Fatalf("unknown saga: %v", err)
	}
	if _, err := e.Retry(ctx, id, "ops", "why"); !errors.Is(err, fsm.ErrIllegalTransition) {
		t.Fatalf("retry of an in-progress saga: %v", err)
	}
	if _, err := e.Abort(ctx, id, "", "no actor"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("abort without actor: %v", err)
	}
	after, _ := e.History(ctx, id)
	if len(after) != len(before) {
		t.Fatalf("rejected calls wrote %d transitions", len(after)-len(before))
	}
	if _, err := e.Run(waitCtx(t), "x", nil, StartOptions{}); err != nil {
		t.Fatalf("x has actions, Run must work: %v", err)
	}
	manual := Definition{Name: "manual", Steps: []StepDef{{Name: "a"}}}
	_, err = e.Define(ctx, manual)
	must(t, err)
	if _, err := e.Run(waitCtx(t), "manual", nil, StartOptions{}); !errors.Is(err, ErrNotDriven) {
		t.Fatalf("Run of a definition without actions: %v", err)
	}
}

func TestDefineVersions(t *testing.T) {
	reg := registry(t, &journal{}, []string{"a", "b"})
	dir := t.TempDir()
	e := openT(t, dir, Options{Registry: reg})
	d1, err := e.Define(ctx, def("v", "a"))
	must(t, err)
	again, err := e.Define(ctx, def("v", "a"))
	must(t, err)
	d2, err := e.Define(ctx, def("v", "a", "b"))
	must(t, err)
	if d1.Version != 1 || again.Version != 1 || d2.Version != 2 {
		t.Fatalf("versions %d %d %d", d1.Version, again.Version, d2.Version)
	}
	id, err := e.Start(ctx, "v", nil, StartOptions{Version: 1})
	must(t, err)
	must(t, e.Close())
	e = openT(t, dir, Options{Registry: reg})
	defer e.Close()
	latest, err := e.Definition(ctx, "v", 0)
	must(t, err)
	st, err := e.Status(ctx, id)
	must(t, err)
	if latest.Version != 2 || st.Version != 1 || len(st.Steps) != 1 {
		t.Fatalf("after reopen: latest v%d, saga on v%d with %d steps", latest.Version, st.Version, len(st.Steps))
	}
}

func TestIdempotencyKey(t *testing.T) {
	e := openT(t, t.TempDir(), Options{Registry: registry(t, &journal{}, []string{"a"})})
	defer e.Close()
	_, err := e.Define(ctx, def("k", "a"))
	must(t, err)
	var wg sync.WaitGroup
	ids := make([]string, 16)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := e.Start(ctx, "k", nil, StartOptions{IdempotencyKey: "order-42"})
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] || id == "" {
			t.Fatalf("concurrent starts with one key gave different sagas: %v", ids)
		}
	}
	counts, _ := e.Count(ctx)
	if counts[fsm.StateInProgress] != 1 {
		t.Fatalf("%d sagas started for one key", counts[fsm.StateInProgress])
	}
}

func TestRunDrivesStepsAndCompensates(t *testing.T) {
	j := &journal{}
	steps := []string{"order", "payment", "inventory", "shipping"}
	e := openT(t, t.TempDir(), Options{Registry: registry(t, j, steps, "shipping")})
	defer e.Close()
	_, err := e.Define(ctx, def("checkout", steps...))
	must(t, err)
	st, err := e.Run(waitCtx(t), "checkout", nil, StartOptions{ID: "c1"})
	must(t, err)
	if st.State != fsm.StateFailed {
		t.Fatalf("state %s", st.State)
	}
	want := []string{"do c1 order", "do c1 payment", "do c1 inventory",
		"undo c1 inventory key=c1/inventory/compensation",
		"undo c1 payment key=c1/payment/compensation",
		"undo c1 order key=c1/order/compensation"}
	if got := j.list(); !slices.Equal(got, want) {
		t.Fatalf("calls:\n%s", strings.Join(got, "\n"))
	}
	if st.LastError == nil || st.LastError.Kind != "permanent" {
		t.Fatalf("last error %+v", st.LastError)
	}
}

// flaky returns a registry whose compensation "undo_a" fails the first
// 'fails' times, and whose action "do_a" fails the first 'actionFails' times.
func flaky(t *testing.T, j *journal, fails, actionFails int) *compensation.Registry {
	reg := compensation.NewRegistry()
	var mu sync.Mutex
	n, m := 0, 0
	must(t, reg.Register("undo_a", func(ctx context.Context, c compensation.Call) error {
		mu.Lock()
		defer mu.Unlock()
		n++
		j.add(fmt.Sprintf("undo a attempt=%d", c.Attempt))
		if n <= fails {
			return errors.New("storage down")
		}
		return nil
	}))
	must(t, reg.RegisterAction("do_a", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		m++
		j.add(fmt.Sprintf("do a attempt=%d", c.Attempt))
		if m <= actionFails {
			return nil, errors.New("flaky")
		}
		return nil, nil
	}))
	must(t, reg.RegisterAction("do_fail", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		return nil, compensation.Permanent(errors.New("no"))
	}))
	return reg
}

// settle advances the fake clock until the saga is COMPLETED, FAILED or
// STUCK. It never sleeps: it waits for the saga to settle or for the
// engine to arm its next timer, then jumps to that timer.
func settle(t *testing.T, e *Engine, clk *fakeclock.Clock, id string) *Status {
	t.Helper()
	done := make(chan *Status, 1)
	go func() {
		st, err := e.Wait(waitCtx(t), id)
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	for {
		changed := clk.Changed()
		select {
		case st := <-done:
			return st
		default:
		}
		if clk.AdvanceToNext() {
			continue
		}
		select {
		case st := <-done:
			return st
		case <-changed:
		case <-time.After(10 * time.Second):
			// Not a timing assertion: a generous bound that only trips
			// when the engine is wedged.
			h, _ := e.History(ctx, id)
			for _, he := range h {
				t.Logf("%d %s step=%d attempt=%d err=%v", he.Index, he.Record.Kind, he.Record.Step, he.Record.Attempt, he.Record.Err)
			}
			t.Fatalf("saga %s wedged (timers waiting: %d)", id, clk.Waiting())
		}
	}
}

func TestRetryBackoffStuckAndOperatorRetry(t *testing.T) {
	j := &journal{}
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	e := openT(t, t.TempDir(), Options{Registry: flaky(t, j, 5, 2), Clock: clk, Rand: func() float64 { return 0 }})
	defer e.Close()
	_, err := e.Define(ctx, Definition{Name: "r", Steps: []StepDef{
		{Name: "a", Action: "do_a", Compensation: "undo_a",
			Retry:             RetryPolicy{InitialBackoff: time.Second, Multiplier: 2, MaxAttempts: 3},
			CompensationRetry: RetryPolicy{InitialBackoff: time.Second, Multiplier: 2, MaxAttempts: 3}},
		{Name: "b", Action: "do_fail"},
	}})
	must(t, err)
	id, _, err := e.start(ctx, "r", nil, StartOptions{}, true)
	must(t, err)
	e.kick(id)
	st := settle(t, e, clk, id)
	if st.State != fsm.StateStuck {
		t.Fatalf("state %s, want STUCK after 3 failed compensations", st.State)
	}
	if a := st.Steps[0]; a.Attempts != 3 || a.CompAttempts != 3 {
		t.Fatalf("attempts %d, compensation attempts %d", a.Attempts, a.CompAttempts)
	}
	// An operator retries: a fresh budget of 3; the 6th attempt succeeds.
	_, err = e.Retry(ctx, id, "alice", "storage is back")
	must(t, err)
	st = settle(t, e, clk, id)
	if st.State != fsm.StateFailed || st.Steps[0].CompAttempts != 6 {
		t.Fatalf("after retry: %s, %d compensation attempts", st.State, st.Steps[0].CompAttempts)
	}
	h, _ := e.History(ctx, id)
	var sawRetry bool
	for _, he := range h {
		if he.Record.Kind == fsm.KindRetried && he.Record.Actor == "alice" && he.Record.Reason == "storage is back" {
			sawRetry = true
		}
	}
	if !sawRetry {
		t.Fatal("the operator retry is not in the history with who and why")
	}
	// Virtual time passed: 1s+2s between action attempts, and backoff
	// between compensation attempts.
	if elapsed := clk.Now().Sub(time.Unix(1_700_000_000, 0)); elapsed < 3*time.Second {
		t.Fatalf("virtual time advanced only %v", elapsed)
	}
}

// A compensation returning a Permanent error is not retried: the saga is
// STUCK after one attempt, whatever its retry budget, and an operator's
// Retry runs it again.
func TestPermanentCompensationErrorIsStuckAtOnce(t *testing.T) {
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	reg := flaky(t, &journal{}, 0, 0)
	var calls atomic.Int32
	must(t, reg.Register("undo_refused", func(ctx context.Context, c compensation.Call) error {
		if calls.Add(1) == 1 {
			return compensation.Permanent(errors.New("400 bad request"))
		}
		return nil
	}))
	e := openT(t, t.TempDir(), Options{Registry: reg, Clock: clk})
	defer e.Close()
	_, err := e.Define(ctx, Definition{Name: "p", Steps: []StepDef{
		{Name: "a", Action: "do_a", Compensation: "undo_refused", CompensationRetry: RetryPolicy{InitialBackoff: time.Second, MaxAttempts: 10}},
		{Name: "b", Action: "do_fail"},
	}})
	must(t, err)
	id, _, err := e.start(ctx, "p", nil, StartOptions{}, true)
	must(t, err)
	e.kick(id)
	st := settle(t, e, clk, id)
	if st.State != fsm.StateStuck || st.Steps[0].CompAttempts != 1 || calls.Load() != 1 {
		t.Fatalf("state %s after %d compensation attempts (%d calls), want STUCK after 1", st.State, st.Steps[0].CompAttempts, calls.Load())
	}
	_, err = e.Retry(ctx, id, "alice", "fixed the request")
	must(t, err)
	if st = settle(t, e, clk, id); st.State != fsm.StateFailed {
		t.Fatalf("after retry: %s", st.State)
	}
}

func TestResolveStuck(t *testing.T) {
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	e := openT(t, t.TempDir(), Options{Registry: flaky(t, &journal{}, 100, 0), Clock: clk})
	defer e.Close()
	_, err := e.Define(ctx, Definition{Name: "r", Steps: []StepDef{
		{Name: "a", Action: "do_a", Compensation: "undo_a", CompensationRetry: RetryPolicy{MaxAttempts: 1}},
		{Name: "b", Action: "do_fail"},
	}})
	must(t, err)
	st, err := e.Run(waitCtx(t), "r", nil, StartOptions{})
	must(t, err)
	if st.State != fsm.StateStuck {
		t.Fatalf("state %s", st.State)
	}
	st, err = e.Resolve(ctx, st.ID, "bob", "deleted the file by hand")
	must(t, err)
	if st.State != fsm.StateFailed {
		t.Fatalf("after resolve: %s", st.State)
	}
}

func TestDeadlineCompensates(t *testing.T) {
	j := &journal{}
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	steps := []string{"a", "b", "c"}
	e := openT(t, t.TempDir(), Options{Registry: registry(t, j, steps), Clock: clk})
	defer e.Close()
	d := def("slow", steps...)
	d.Timeout = time.Minute
	_, err := e.Define(ctx, d)
	must(t, err)
	id, err := e.Start(ctx, "slow", nil, StartOptions{})
	must(t, err)
	_, err = e.Advance(ctx, id, StepResult{Step: "a"})
	must(t, err)
	clk.Advance(2 * time.Minute)
	st, err := e.Wait(waitCtx(t), id)
	must(t, err)
	if st.State != fsm.StateFailed || st.LastError == nil || !strings.Contains(st.LastError.Message, "deadline") {
		t.Fatalf("after the deadline: %+v", st)
	}
	// b was running: uncertain, so it is compensated too, before a.
	got := j.list()
	if len(got) != 2 || !strings.HasPrefix(got[0], "undo "+id+" b") || !strings.HasPrefix(got[1], "undo "+id+" a") {
		t.Fatalf("compensations %v", got)
	}
}

func TestOpenResumesCompensation(t *testing.T) {
	dir := t.TempDir()
	steps := []string{"a", "b", "c"}
	block := make(chan struct{})
	entered := make(chan struct{}, 10)
	j := &journal{}
	reg := compensation.NewRegistry()
	for _, s := range steps {
		must(t, reg.Register("undo_"+s, func(ctx context.Context, c compensation.Call) error {
			j.add("undo " + c.Step)
			if c.Step == "b" && c.Attempt == 1 {
				entered <- struct{}{}
				select { // hang until the engine closes
				case <-block:
				case <-ctx.Done():
				}
				return ctx.Err()
			}
			return nil
		}))
	}
	e := openT(t, dir, Options{Registry: reg})
	_, err := e.Define(ctx, Definition{Name: "m", Steps: []StepDef{
		{Name: "a", Compensation: "undo_a"}, {Name: "b", Compensation: "undo_b"}, {Name: "c", Compensation: "undo_c"}}})
	must(t, err)
	id, err := e.Start(ctx, "m", nil, StartOptions{})
	must(t, err)
	for _, s := range steps[:2] {
		_, err := e.Advance(ctx, id, StepResult{Step: s})
		must(t, err)
	}
	_, err = e.Advance(ctx, id, StepResult{Step: "c", Err: errors.New("boom")})
	must(t, err)
	<-entered
	must(t, e.Close()) // compensation of b in flight: uncertain
	st := func() *Status {
		e := openT(t, dir, Options{Registry: reg})
		defer e.Close()
		st, err := e.Wait(waitCtx(t), id)
		must(t, err)
		return st
	}()
	if st.State != fsm.StateFailed {
		t.Fatalf("after reopen: %s", st.State)
	}
	if got := j.list(); !slices.Equal(got, []string{"undo b", "undo b", "undo a"}) {
		t.Fatalf("compensations %v (b must run again, then a)", got)
	}
}

func TestGroupCommitSharesFsyncs(t *testing.T) {
	steps := []string{"a", "b", "c", "d"}
	e := openT(t, t.TempDir(), Options{Registry: registry(t, &journal{}, steps)})
	defer e.Close()
	_, err := e.Define(ctx, def("g", steps...))
	must(t, err)
	// Concurrency 1: a 4-step saga costs 5 records and 5 fsyncs.
	s0 := e.Stats()
	st, err := e.Run(waitCtx(t), "g", nil, StartOptions{})
	must(t, err)
	if st.State != fsm.StateCompleted {
		t.Fatal(st.State)
	}
	s1 := e.Stats()
	if recs, syncs := s1.Records-s0.Records, s1.LogSyncs-s0.LogSyncs; recs != 5 || syncs != 5 {
		t.Fatalf("one 4-step saga: %d records, %d fsyncs; want 5 and 5", recs, syncs)
	}
	// Concurrency 64: the same records share fsyncs.
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 5; k++ {
				if _, err := e.Run(waitCtx(t), "g", nil, StartOptions{}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	s2 := e.Stats()
	recs, syncs := s2.Records-s1.Records, s2.LogSyncs-s1.LogSyncs
	if recs != 64*5*5 {
		t.Fatalf("%d records for 320 sagas", recs)
	}
	if syncs*2 > recs {
		t.Fatalf("group commit did not batch: %d fsyncs for %d records", syncs, recs)
	}
	t.Logf("64 concurrent: %d records in %d fsyncs (%.1f per fsync)", recs, syncs, float64(recs)/float64(syncs))
}

func TestDirectoryLock(t *testing.T) {
	dir := t.TempDir()
	e := openT(t, dir, Options{})
	defer e.Close()
	if _, err := Open(dir, Options{Logger: quiet}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v", err)
	}
}

func TestCallsAfterCloseFailCleanly(t *testing.T) {
	e := openT(t, t.TempDir(), Options{Registry: registry(t, &journal{}, []string{"a"})})
	_, err := e.Define(ctx, def("c", "a"))
	must(t, err)
	id, err := e.Start(ctx, "c", nil, StartOptions{})
	must(t, err)
	must(t, e.Close())
	calls := map[string]func() error{
		"Status":  func() error { _, err := e.Status(ctx, id); return err },
		"List":    func() error { _, _, err := e.List(ctx, fsm.Query{}); return err },
		"History": func() error { _, err := e.History(ctx, id); return err },
		"Count":   func() error { _, err := e.Count(ctx); return err },
		"Start":   func() error { _, err := e.Start(ctx, "c", nil, StartOptions{}); return err },
		"Advance": func() error { _, err := e.Advance(ctx, id, StepResult{Step: "a"}); return err },
		"Abort":   func() error { _, err := e.Abort(ctx, id, "ops", "x"); return err },
		"Wait":    func() error { _, err := e.Wait(waitCtx(t), id); return err },
		"Define":  func() error { _, err := e.Define(ctx, def("d", "a")); return err },
		"Close":   e.Close,
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
}

// TestCheckpointTruncatesLog: after enough transitions the state is
// flushed and the log cut behind it; reopening needs no replay of the cut
// part and loses nothing.
func TestCheckpointTruncatesLog(t *testing.T) {
	dir := t.TempDir()
	reg := registry(t, &journal{}, []string{"a", "b"})
	opts := Options{Registry: reg, CheckpointEvery: 200, WAL: walOptions(2 << 10)}
	e := openT(t, dir, opts)
	_, err := e.Define(ctx, def("t", "a", "b"))
	must(t, err)
	var ids []string
	for i := 0; i < 300; i++ {
		st, err := e.Run(waitCtx(t), "t", nil, StartOptions{})
		must(t, err)
		ids = append(ids, st.ID)
	}
	first := e.log.FirstIndex()
	if first <= 1 {
		t.Fatalf("no truncation after %d records (first index %d)", e.log.LastIndex(), first)
	}
	if e.store.AppliedIndex()+1 < first {
		t.Fatalf("log truncated to %d beyond the applied index %d", first, e.store.AppliedIndex())
	}
	// Crash-like reopen: the state as last flushed plus the remaining log.
	must(t, e.Close())
	e = openT(t, dir, opts)
	defer e.Close()
	for _, id := range ids {
		st, err := e.Status(ctx, id)
		if err != nil || st.State != fsm.StateCompleted {
			t.Fatalf("saga %s after reopen: %v %v", id, st, err)
		}
	}
}

// TestManyDeadlinesOneTimer: deadlines are served by one scheduler, not a
// goroutine per saga.
func TestManyDeadlinesOneTimer(t *testing.T) {
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	e := openT(t, t.TempDir(), Options{Registry: registry(t, &journal{}, []string{"a", "b"}), Clock: clk})
	defer e.Close()
	d := def("dl", "a", "b")
	d.Timeout = time.Hour
	_, err := e.Define(ctx, d)
	must(t, err)
	before := runtime.NumGoroutine()
	var ids []string
	for i := 0; i < 500; i++ {
		id, err := e.Start(ctx, "dl", nil, StartOptions{Timeout: time.Duration(i+1) * time.Second})
		must(t, err)
		ids = append(ids, id)
	}
	if n := runtime.NumGoroutine() - before; n > 50 {
		t.Fatalf("500 sagas with deadlines added %d goroutines", n)
	}
	clk.Advance(2 * time.Hour)
	for _, id := range ids {
		st, err := e.Wait(waitCtx(t), id)
		must(t, err)
		if st.State != fsm.StateFailed {
			t.Fatalf("saga %s after its deadline: %s", id, st.State)
		}
	}
}

func TestStepTimeout(t *testing.T) {
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	reg := compensation.NewRegistry()
	j := &journal{}
	must(t, reg.RegisterAction("hang", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		<-ctx.Done() // a call that never answers
		return nil, ctx.Err()
	}))
	must(t, reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	must(t, reg.Register("undo", func(ctx context.Context, c compensation.Call) error {
		j.add("undo " + c.Step)
		return nil
	}))
	e := openT(t, t.TempDir(), Options{Registry: reg, Clock: clk})
	defer e.Close()
	_, err := e.Define(ctx, Definition{Name: "to", Steps: []StepDef{
		{Name: "first", Action: "ok", Compensation: "undo"},
		{Name: "slow", Action: "hang", Compensation: "undo", Timeout: time.Second, Retry: RetryPolicy{MaxAttempts: 2}},
	}})
	must(t, err)
	id, _, err := e.start(ctx, "to", nil, StartOptions{}, true)
	must(t, err)
	e.kick(id)
	st := settle(t, e, clk, id)
	if st.State != fsm.StateFailed || st.LastError == nil || st.LastError.Kind != "timeout" {
		t.Fatalf("after two timed-out attempts: %s %+v", st.State, st.LastError)
	}
	if st.Steps[1].Attempts != 2 {
		t.Fatalf("attempts %d, want 2", st.Steps[1].Attempts)
	}
	if got := j.list(); !slices.Equal(got, []string{"undo first"}) {
		t.Fatalf("compensations %v", got)
	}
}

// TestStateCountsFollowTransitions: the counts kept by the apply loop
// match a full count of the state index after a mixed workload.
func TestStateCountsFollowTransitions(t *testing.T) {
	steps := []string{"a", "b", "c"}
	e := openT(t, t.TempDir(), Options{Registry: registry(t, &journal{}, steps, "c")})
	defer e.Close()
	_, err := e.Define(ctx, def("mix", steps...))
	must(t, err)
	_, err = e.Define(ctx, Definition{Name: "ok", Steps: []StepDef{{Name: "a", Action: "do_a", Compensation: "undo_a"}}})
	must(t, err)
	if _, err := e.StateCounts(); err != nil { // start counting now
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		_, err := e.Run(waitCtx(t), "mix", nil, StartOptions{}) // fails at c, compensates
		must(t, err)
		_, err = e.Run(waitCtx(t), "ok", nil, StartOptions{})
		must(t, err)
		_, err = e.Start(ctx, "ok", nil, StartOptions{})
		must(t, err)
	}
	got, err := e.StateCounts()
	must(t, err)
	want, err := e.Count(ctx)
	must(t, err)
	for _, st := range fsm.States() {
		if got[st] != want[st] {
			t.Fatalf("%s: kept count %d, index count %d", st, got[st], want[st])
		}
	}
	if want[fsm.StateFailed] != 10 || want[fsm.StateCompleted] != 10 || want[fsm.StateInProgress] != 10 {
		t.Fatalf("counts %v", want)
	}
}

// A start that is refused (an id in use, an id a child saga could need)
// is refused before anything reaches the log: a bad request costs no
// durable write, and the log holds no record for Apply to turn down.
func TestARefusedStartWritesNothingToTheLog(t *testing.T) {
	e := openT(t, t.TempDir(), Options{Registry: registry(t, &journal{}, []string{"a", "b"})})
	defer e.Close()
	_, err := e.Define(ctx, def("x", "a", "b"))
	must(t, err)
	_, err = e.Start(ctx, "x", nil, StartOptions{ID: "order-1", IdempotencyKey: "k1"})
	must(t, err)
	before := e.Stats().Records
	for _, c := range []struct {
		o    StartOptions
		want error
	}{
		{StartOptions{ID: "order-1"}, ErrSagaExists},
		{StartOptions{ID: "order-1", IdempotencyKey: "k2"}, ErrSagaExists},
		{StartOptions{ID: "order.2"}, ErrInvalidArgument},
		{StartOptions{ID: "child.0123456789abcdef0123456789abcdef"}, ErrInvalidArgument},
	} {
		if _, err := e.Start(ctx, "x", nil, c.o); !errors.Is(err, c.want) {
			t.Errorf("start %+v: %v, want %v", c.o, err, c.want)
		}
	}
	// A re-send with the key answers from the key, also without a write.
	if id, err := e.Start(ctx, "x", nil, StartOptions{ID: "order-1", IdempotencyKey: "k1"}); err != nil || id != "order-1" {
		t.Errorf("re-send with the key: %q, %v", id, err)
	}
	if got := e.Stats().Records; got != before {
		t.Fatalf("refused starts logged %d records", got-before)
	}
	// Ids with dots that no child could have stay valid.
	for _, id := range []string{"v1.2a", "order.x", "a.b.c", "2026.12.03-7"} {
		if _, err := e.Start(ctx, "x", nil, StartOptions{ID: id}); err != nil {
			t.Errorf("start %s: %v", id, err)
		}
	}
}

// The caller's strings a saga records are bounded and valid UTF-8: a Start
// or an operator action over a limit is ErrInvalidArgument, names what is
// wrong and writes nothing; a string at its limit is accepted.
func TestOversizedOrInvalidStartAndOperatorStringsAreRefusedBeforeTheLog(t *testing.T) {
	e := openT(t, t.TempDir(), Options{Registry: registry(t, &journal{}, []string{"a", "b"})})
	defer e.Close()
	_, err := e.Define(ctx, def("x", "a", "b"))
	must(t, err)
	many := map[string]string{}
	for i := range MaxMetaPairs + 1 {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	long := func(n int) string { return strings.Repeat("a", n) }
	before := e.Stats().Records
	for _, c := range []struct {
		o    StartOptions
		want string
	}{
		{StartOptions{IdempotencyKey: long(MaxIdempotencyKey + 1)}, "idempotency key"},
		{StartOptions{IdempotencyKey: "k\xff"}, "idempotency key is not valid UTF-8"},
		{StartOptions{User: long(MaxUser + 1)}, "user"},
		{StartOptions{Meta: many}, "meta has 65 entries"},
		{StartOptions{Meta: map[string]string{"": "v"}}, "empty key"},
		{StartOptions{Meta: map[string]string{long(MaxMetaKey + 1): "v"}}, "meta key"},
		{StartOptions{Meta: map[string]string{"tenant": long(MaxMetaValue + 1)}}, `meta key "tenant"`},
	} {
		_, err := e.Start(ctx, "x", nil, c.o)
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("start naming %s: %v", c.want, err)
		}
	}
	if got := e.Stats().Records; got != before {
		t.Fatalf("refused starts logged %d records", got-before)
	}
	at := StartOptions{IdempotencyKey: long(MaxIdempotencyKey), User: long(MaxUser),
		Meta: map[string]string{long(MaxMetaKey): long(MaxMetaValue)}}
	id, err := e.Start(ctx, "x", nil, at)
	if err != nil {
		t.Fatalf("strings at their limits: %v", err)
	}
	before = e.Stats().Records
	if _, err := e.Abort(ctx, id, long(MaxActor+1), "why"); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "actor") {
		t.Errorf("abort with a long actor: %v", err)
	}
	if _, err := e.Abort(ctx, id, "ops", long(MaxReason+1)); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "reason") {
		t.Errorf("abort with a long reason: %v", err)
	}
	if got := e.Stats().Records; got != before {
		t.Fatalf("refused aborts logged %d records", got-before)
	}
	if st, err := e.Status(ctx, id); err != nil || st.State != fsm.StateInProgress {
		t.Fatalf("after refused aborts: %+v, %v", st, err)
	}
	if _, err := e.Abort(ctx, id, long(MaxActor), long(MaxReason)); err != nil {
		t.Fatalf("abort at the limits: %v", err)
	}
}
