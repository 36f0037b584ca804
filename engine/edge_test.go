package engine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/compensation/fakeclock"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/wal"
)

// Regression tests for the findings of a review of the engine.

// An oversized record is refused as "not applied" and stops nothing.
func TestOversizedRecordIsRefusedNotFatal(t *testing.T) {
	steps := []string{"a", "b"}
	e := openT(t, t.TempDir(), Options{Registry: registry(t, &journal{}, steps), WAL: wal.Options{MaxRecordSize: 4096}})
	defer e.Close()
	_, err := e.Define(ctx, def("p", steps...))
	must(t, err)
	id, err := e.Start(ctx, "p", nil, StartOptions{})
	must(t, err)
	_, err = e.Advance(ctx, id, StepResult{Step: "a", Output: make([]byte, 8192)})
	if !errors.Is(err, ErrInvalidArgument) || !errors.Is(err, wal.ErrRecordTooLarge) || !IsNotApplied(err) {
		t.Fatalf("oversized output: %v", err)
	}
	if _, err := e.Advance(ctx, id, StepResult{Step: "a", Output: []byte("small")}); err != nil {
		t.Fatalf("the same saga after a refused oversized Advance: %v", err)
	}
	if _, err := e.Start(ctx, "p", nil, StartOptions{}); err != nil {
		t.Fatalf("an unrelated Start after an oversized Advance: %v", err)
	}
}

// An action returning an oversized output fails its step (permanently)
// instead of poisoning the engine on every restart.
func TestOversizedActionOutputFailsTheStep(t *testing.T) {
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("big", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		return make([]byte, 8192), nil
	}))
	e := openT(t, t.TempDir(), Options{Registry: reg, WAL: wal.Options{MaxRecordSize: 4096}})
	defer e.Close()
	_, err := e.Define(ctx, Definition{Name: "d", Steps: []StepDef{{Name: "s", Action: "big", OnUncertain: fsm.UncertainRetry}}})
	must(t, err)
	st, err := e.Run(waitCtx(t), "d", nil, StartOptions{})
	must(t, err)
	if st.State != fsm.StateFailed || st.LastError == nil || !strings.Contains(st.LastError.Message, "output") {
		t.Fatalf("run with an oversized output: %s %+v", st.State, st.LastError)
	}
	if _, err := e.Start(ctx, "d", nil, StartOptions{}); err != nil {
		t.Fatalf("engine unusable afterwards: %v", err)
	}
}

// A huge handler error message is truncated, not a reason to stop.
func TestHugeErrorMessageIsTruncated(t *testing.T) {
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("loud", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		return nil, compensation.Permanent(errors.New(strings.Repeat("x", 1<<20)))
	}))
	e := openT(t, t.TempDir(), Options{Registry: reg, WAL: wal.Options{MaxRecordSize: 64 << 10}})
	defer e.Close()
	_, err := e.Define(ctx, Definition{Name: "d", Steps: []StepDef{{Name: "s", Action: "loud"}}})
	must(t, err)
	st, err := e.Run(waitCtx(t), "d", nil, StartOptions{})
	must(t, err)
	if st.State != fsm.StateFailed || len(st.LastError.Message) > maxErrorMessage+32 {
		t.Fatalf("state %s, message of %d bytes", st.State, len(st.LastError.Message))
	}
}

func TestConcurrentCloseIsSafe(t *testing.T) {
	for i := 0; i < 20; i++ {
		e := openT(t, t.TempDir(), Options{})
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for k := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[k] = e.Close()
			}()
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
			} else if !errors.Is(err, ErrClosed) {
				t.Fatalf("concurrent Close: %v", err)
			}
		}
		if ok != 1 {
			t.Fatalf("%d of 3 concurrent Close calls succeeded, want 1", ok)
		}
	}
}

// Sagas that finish before their deadline leave no in-memory run behind.
func TestNoRunsLeakAfterDeadlines(t *testing.T) {
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	steps := []string{"a"}
	e := openT(t, t.TempDir(), Options{Registry: registry(t, &journal{}, steps), Clock: clk})
	defer e.Close()
	d := def("p", steps...)
	d.Timeout = time.Minute
	_, err := e.Define(ctx, d)
	must(t, err)
	for i := 0; i < 100; i++ {
		id, err := e.Start(ctx, "p", nil, StartOptions{})
		must(t, err)
		_, err = e.Advance(ctx, id, StepResult{Step: "a"})
		must(t, err)
	}
	clk.Advance(2 * time.Minute) // every deadline fires, on completed sagas
	// The expiries run in driver goroutines; Close waits for them.
	must(t, e.Close())
	if n := len(e.runs); n != 0 {
		t.Fatalf("%d runs of COMPLETED sagas remain in memory", n)
	}
}

// blockingClock blocks the first NewTimer of duration d until released.
type blockingClock struct {
	compensation.Clock
	d       time.Duration
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (c *blockingClock) NewTimer(d time.Duration) compensation.Timer {
	if d == c.d {
		c.once.Do(func() { close(c.entered); <-c.release })
	}
	return c.Clock.NewTimer(d)
}

// An abort that lands while the driver prepares an action's call reaches
// that call: it is cancelled (or never started), never left to run on.
func TestAbortReachesAnActionBeingStarted(t *testing.T) {
	clk := &blockingClock{Clock: compensation.RealClock{}, d: 7 * time.Second, entered: make(chan struct{}), release: make(chan struct{})}
	reg := compensation.NewRegistry()
	ran := make(chan string, 1)
	must(t, reg.RegisterAction("act", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		select {
		case <-ctx.Done():
			ran <- "cancelled"
			return nil, ctx.Err()
		case <-time.After(30 * time.Second): // never reached when the abort is honoured
			ran <- "ran to completion"
			return []byte("created-thing-42"), nil
		}
	}))
	must(t, reg.Register("undo", func(ctx context.Context, c compensation.Call) error { return nil }))
	e := openT(t, t.TempDir(), Options{Registry: reg, Clock: clk})
	defer e.Close()
	_, err := e.Define(ctx, Definition{Name: "d", Steps: []StepDef{{Name: "s", Action: "act", Compensation: "undo", Timeout: 7 * time.Second}}})
	must(t, err)
	id, _, err := e.start(ctx, "d", nil, StartOptions{}, true)
	must(t, err)
	e.kick(id)
	<-clk.entered // the driver is preparing the call
	_, err = e.Abort(ctx, id, "op", "stop")
	must(t, err)
	close(clk.release)
	fin, err := e.Wait(waitCtx(t), id)
	must(t, err)
	if fin.State != fsm.StateFailed {
		t.Fatalf("final state %s", fin.State)
	}
	select {
	case got := <-ran:
		if got != "cancelled" {
			t.Fatalf("action after a durable abort: %s", got)
		}
	default: // never started: fine
	}
}

// The engine owns copies of what callers pass: reusing a buffer after
// Advance changes neither the state nor the log.
func TestCallerBuffersAreCopied(t *testing.T) {
	dir := t.TempDir()
	steps := []string{"a", "b", "c"}
	reg := registry(t, &journal{}, steps)
	e := openT(t, dir, Options{Registry: reg})
	_, err := e.Define(ctx, def("p", steps...))
	must(t, err)
	in := []byte("input-1")
	meta := map[string]string{"k": "v"}
	id, err := e.Start(ctx, "p", in, StartOptions{Meta: meta})
	must(t, err)
	copy(in, "XXXXXXX")
	meta["k"] = "changed"
	buf := []byte("file-123")
	st, err := e.Advance(ctx, id, StepResult{Step: "a", Output: buf})
	must(t, err)
	copy(buf, "XXXXXXXX")
	st.Steps[0].Output[0] = 'Z' // a returned status is the caller's to scribble on
	_, err = e.Advance(ctx, id, StepResult{Step: "b"})
	must(t, err)
	must(t, e.Close())
	e = openT(t, dir, Options{Registry: reg})
	defer e.Close()
	st, err = e.Status(ctx, id)
	must(t, err)
	if string(st.Steps[0].Output) != "file-123" || string(st.Saga.Input) != "input-1" || st.Saga.Meta["k"] != "v" {
		t.Fatalf("stored output %q input %q meta %v", st.Steps[0].Output, st.Saga.Input, st.Saga.Meta)
	}
}

// Run returning early still tells the caller the saga exists.
func TestRunContextEndIsNotNotApplied(t *testing.T) {
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("slow", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}))
	e := openT(t, t.TempDir(), Options{Registry: reg})
	defer e.Close()
	_, err := e.Define(ctx, Definition{Name: "d", Steps: []StepDef{{Name: "s", Action: "slow"}}})
	must(t, err)
	// Ends while the action runs (the action never returns by itself).
	c, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	st, err := e.Run(c, "d", nil, StartOptions{ID: "early"})
	if err == nil || !errors.Is(err, ErrNotSettled) || IsNotApplied(err) || st == nil || st.ID != "early" {
		t.Fatalf("Run with an ended context: status %v, err %v", st, err)
	}
	if _, err := e.Status(ctx, "early"); err != nil {
		t.Fatal(err)
	}
}

// hashTree maps every file under dir to its content.
func hashTree(t *testing.T, dir string) map[string]string {
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// An inspection sees the replayed state yet leaves the state's files and
// the log exactly as they were.
func TestInspectChangesNoFile(t *testing.T) {
	dir := t.TempDir()
	reg := registry(t, &journal{}, []string{"a", "b"})
	e := openT(t, dir, Options{Registry: reg})
	_, err := e.Define(ctx, def("x", "a", "b"))
	must(t, err)
	must(t, e.Close())
	// Transitions the state has not seen: written, then a "crash" (the
	// engine is closed without flushing by the poisoned path below).
	e = openT(t, dir, Options{Registry: reg})
	id, err := e.Start(ctx, "x", nil, StartOptions{})
	must(t, err)
	e.mu.Lock()
	e.poison = errors.New("simulated crash: no flush")
	e.mu.Unlock()
	_ = e.Close()
	before := hashTree(t, dir)
	in := openT(t, dir, Options{Registry: reg, Inspect: true})
	st, err := in.Status(ctx, id)
	if err != nil || st.State != fsm.StateInProgress {
		t.Fatalf("inspection does not see the replayed saga: %v %v", st, err)
	}
	if _, err := in.Start(ctx, "x", nil, StartOptions{}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("start during inspection: %v", err)
	}
	if _, err := in.Define(ctx, def("x", "a", "b")); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("define during inspection: %v", err)
	}
	must(t, in.Close())
	after := hashTree(t, dir)
	for p, b := range before {
		if after[p] != b {
			t.Errorf("inspection changed %s", p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("inspection created %s", p)
		}
	}
}

// An abort cancels the actions of its saga in flight, never the
// compensation that follows it: here the action returns while the abort
// holds the saga's lock, so its compensation may start at once. (An abort
// that cancelled every call after its transition cancelled that
// compensation too: with a one-attempt budget the saga went STUCK.)
func TestAbortNeverCancelsItsOwnCompensation(t *testing.T) {
	for iter := 0; iter < 50; iter++ {
		reg := compensation.NewRegistry()
		actEntered, release := make(chan struct{}), make(chan struct{})
		must(t, reg.RegisterAction("act", func(ctx context.Context, c compensation.Call) ([]byte, error) {
			close(actEntered)
			<-release
			return []byte("x"), nil
		}))
		must(t, reg.Register("undo", func(ctx context.Context, c compensation.Call) error {
			select {
			case <-ctx.Done():
				return ctx.Err() // interrupted half-way
			case <-time.After(5 * time.Millisecond):
				return nil
			}
		}))
		hooks := Hooks{OnTransition: func(ev TransitionEvent) {
			if ev.Record.Kind == fsm.KindAborted {
				close(release) // the action returns while the abort holds the saga's lock
			}
		}}
		e := openT(t, t.TempDir(), Options{Registry: reg, Hooks: hooks})
		_, err := e.Define(ctx, Definition{Name: "d", Steps: []StepDef{{Name: "s", Action: "act", Compensation: "undo",
			CompensationRetry: RetryPolicy{MaxAttempts: 1}}}})
		must(t, err)
		id, _, err := e.start(ctx, "d", nil, StartOptions{}, true)
		must(t, err)
		e.kick(id)
		<-actEntered
		_, err = e.Abort(ctx, id, "op", "stop")
		must(t, err)
		st, err := e.Wait(waitCtx(t), id)
		must(t, err)
		must(t, e.Close())
		if st.State != fsm.StateFailed || st.Steps[0].CompAttempts != 1 {
			t.Fatalf("round %d: state %s after %d compensation attempts (%v): the abort cancelled its own compensation",
				iter, st.State, st.Steps[0].CompAttempts, st.LastError)
		}
	}
}

// A handler's error message is kept as valid UTF-8: truncation cuts at a
// character boundary, and invalid bytes become U+FFFD.
func TestErrorMessagesAreKeptAsValidUTF8(t *testing.T) {
	long := strings.Repeat("é", maxErrorMessage) // two bytes each: the limit falls inside one
	for _, msg := range []string{long, "bad \xff byte", "x" + long} {
		got := truncate(msg)
		if !utf8.ValidString(got) || len(got) > maxErrorMessage+len("… (truncated)") {
			t.Fatalf("truncate of %d bytes: %d bytes, valid UTF-8 %v", len(msg), len(got), utf8.ValidString(got))
		}
	}
	if got := truncate("bad \xff byte"); got != "bad \uFFFD byte" {
		t.Fatalf("invalid bytes: %q", got)
	}
}
