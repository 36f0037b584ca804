package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// gatedLog holds every append that carries a matching record until the
// gate is opened, and then lets it go on, or fails it with errDisk when
// fail is set.
type gatedLog struct {
	Log
	match   func(*fsm.Record) bool
	fail    bool
	open    chan struct{}
	durable func(*fsm.Record) // if set, called for each record once durable
}

func (g *gatedLog) Append(recs [][]byte) (uint64, error) {
	var dec []*fsm.Record
	for _, b := range recs {
		r, err := fsm.Decode(b)
		if err != nil {
			return 0, err
		}
		dec = append(dec, r)
	}
	for _, r := range dec {
		if g.match(r) {
			<-g.open
			if g.fail {
				return 0, errDisk
			}
			break
		}
	}
	first, err := g.Log.Append(recs)
	if err == nil && g.durable != nil {
		for _, r := range dec {
			g.durable(r)
		}
	}
	return first, err
}

func pipelinedDef(name string, n int) Definition {
	d := Definition{Name: name, Durability: DurabilityPipelined}
	for k := 0; k < n; k++ {
		d.Steps = append(d.Steps, StepDef{Name: fmt.Sprintf("s%d", k), Action: "act", Compensation: "undo"})
	}
	return d
}

func stepCompleted(step int) func(*fsm.Record) bool {
	return func(r *fsm.Record) bool { return r.Kind == fsm.KindStepCompleted && r.Step == step }
}

// A pipelined saga's step k+1 runs while "step k done, k+1 begins" is on
// its way to the disk, but step k+2 waits until that record is durable:
// the engine is never more than one step ahead of the log.
func TestPipelinedSagaRunsAtMostOneStepAheadOfTheLog(t *testing.T) {
	gate := &gatedLog{match: stepCompleted(0), open: make(chan struct{})}
	started := make(chan int, 8)
	var released atomic.Bool     // the held append of step 0's record may go on
	var releasedAtStart sync.Map // step -> whether it had when the step began
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("act", func(_ context.Context, c compensation.Call) ([]byte, error) {
		releasedAtStart.Store(c.StepIndex, released.Load())
		started <- c.StepIndex
		return []byte("out"), nil
	}))
	must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	e := openT(t, t.TempDir(), Options{Registry: reg, WrapLog: func(l Log) Log { gate.Log = l; return gate }})
	var once sync.Once
	release := func() { once.Do(func() { released.Store(true); close(gate.open) }) }
	defer e.Close()
	defer release() // before Close, which waits for the held append
	_, err := e.Define(ctx, pipelinedDef("p", 3))
	must(t, err)
	done := make(chan *Status, 1)
	go func() {
		st, err := e.Run(waitCtx(t), "p", nil, StartOptions{})
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	wctx := waitCtx(t)
	for want := 0; want <= 1; want++ {
		select {
		case got := <-started:
			if got != want {
				t.Fatalf("step %d started, want step %d", got, want)
			}
		case <-wctx.Done():
			t.Fatalf("step %d never started while step 0's completion record was held: the saga is not pipelined", want)
		}
	}
	if rel, _ := releasedAtStart.Load(1); rel != false {
		t.Fatal("step 1 began only after step 0's record could be durable: not pipelined")
	}
	// Step 1 returned and its own record is queued behind step 0's: give
	// a wrong engine the chance to start step 2 now.
	select {
	case <-started:
		t.Fatal("step 2 began while the record that began step 1 was not durable: two steps ahead of the log")
	case <-time.After(100 * time.Millisecond):
	}
	release()
	st := <-done
	if st == nil || st.State != fsm.StateCompleted {
		t.Fatalf("final state %+v", st)
	}
	if rel, _ := releasedAtStart.Load(2); rel != true {
		t.Fatal("step 2 began before the record that began step 1 was durable")
	}
	for _, s := range st.Steps {
		if string(s.Output) != "out" {
			t.Fatalf("step %s output %q: a pipelined record lost its output", s.Name, s.Output)
		}
	}
}

// After a crash, a pipelined saga's last durable intent and the step after
// it may both have run: recovery compensates both, as uncertain, before
// the steps done before them. Here the record "step 1 done, step 2 begins"
// never reaches the log (an I/O error) while step 2 has already run.
func TestPipelinedRecoveryCompensatesTheStepAfterTheLastDurableIntent(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var calls []string
	ran2 := make(chan struct{})
	durable0 := make(chan struct{}) // "step 0 done, step 1 begins" is durable
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("act", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		mu.Lock()
		calls = append(calls, fmt.Sprintf("do %s", c.Step))
		mu.Unlock()
		switch c.StepIndex {
		case 1:
			// Step 1's record is to fail alone, in its own append.
			select {
			case <-durable0:
			case <-ctx.Done():
			}
		case 2:
			close(ran2)
		}
		return nil, nil
	}))
	must(t, reg.Register("undo", func(_ context.Context, c compensation.Call) error {
		mu.Lock()
		calls = append(calls, fmt.Sprintf("undo %s uncertain=%v", c.Step, c.Uncertain))
		mu.Unlock()
		return nil
	}))
	// The append of "step 1 done, step 2 begins" fails once step 2 ran
	// (the failure stops the engine: it must not stop step 2 first).
	var once sync.Once
	gate := &gatedLog{match: stepCompleted(1), fail: true, open: ran2, durable: func(r *fsm.Record) {
		if stepCompleted(0)(r) {
			once.Do(func() { close(durable0) })
		}
	}}
	e := openT(t, dir, Options{Registry: reg, WrapLog: func(l Log) Log { gate.Log = l; return gate }})
	_, err := e.Define(ctx, pipelinedDef("p", 4))
	must(t, err)
	id, _, err := e.start(ctx, "p", nil, StartOptions{}, true)
	must(t, err)
	e.kick(id)
	select {
	case <-ran2:
	case <-waitCtx(t).Done():
		t.Fatal("step 2 never ran")
	}
	if err := e.Close(); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("close after the injected I/O error: %v", err)
	}
	mu.Lock()
	calls = nil
	mu.Unlock()

	e = openT(t, dir, Options{Registry: reg})
	defer e.Close()
	st, err := e.Wait(waitCtx(t), id)
	must(t, err)
	if st.State != fsm.StateFailed {
		t.Fatalf("state %s, want FAILED", st.State)
	}
	mu.Lock()
	got := slices.Clone(calls)
	mu.Unlock()
	want := []string{"undo s2 uncertain=true", "undo s1 uncertain=true", "undo s0 uncertain=false"}
	if !slices.Equal(got, want) {
		t.Fatalf("after recovery: %q, want %q", got, want)
	}
}

// A start may choose the durability of its saga, whatever its definition's.
func TestStartOptionsChooseTheDurability(t *testing.T) {
	e := openT(t, t.TempDir(), Options{Registry: noopRegistry(t)})
	defer e.Close()
	_, err := e.Define(ctx, Definition{Name: "d", Steps: []StepDef{{Name: "a", Action: "noop"}, {Name: "b", Action: "noop"}}})
	must(t, err)
	p := DurabilityPipelined
	st, err := e.Run(waitCtx(t), "d", nil, StartOptions{Durability: &p})
	must(t, err)
	if st.Saga.Durability != DurabilityPipelined || st.State != fsm.StateCompleted {
		t.Fatalf("durability %s, state %s", st.Saga.Durability, st.State)
	}
	bad := Durability(7)
	if _, err := e.Run(waitCtx(t), "d", nil, StartOptions{Durability: &bad}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("unknown durability: %v", err)
	}
}

// A caller-driven pipelined saga: a report returns while its record is on
// its way to the disk, and the next report waits until that record is
// durable, so the caller is never more than one step ahead of the log.
func TestPipelinedAdvanceIsNeverMoreThanOneStepAhead(t *testing.T) {
	gate := &gatedLog{match: stepCompleted(0), open: make(chan struct{})}
	e := openT(t, t.TempDir(), Options{Registry: noopRegistry(t), WrapLog: func(l Log) Log { gate.Log = l; return gate }})
	var once sync.Once
	release := func() { once.Do(func() { close(gate.open) }) }
	defer e.Close()
	defer release()
	_, err := e.Define(ctx, Definition{Name: "m", Durability: DurabilityPipelined,
		Steps: []StepDef{{Name: "a", Compensation: "undo"}, {Name: "b", Compensation: "undo"}, {Name: "c"}}})
	must(t, err)
	id, err := e.Start(ctx, "m", nil, StartOptions{})
	must(t, err)
	first := make(chan error, 1)
	go func() { _, err := e.Advance(waitCtx(t), id, StepResult{Step: "a"}); first <- err }()
	select {
	case err := <-first:
		must(t, err)
	case <-waitCtx(t).Done():
		t.Fatal("Advance of step a waited for its record to be durable: not pipelined")
	}
	second := make(chan error, 1)
	go func() { _, err := e.Advance(waitCtx(t), id, StepResult{Step: "b"}); second <- err }()
	select {
	case err := <-second:
		t.Fatalf("Advance of step b returned (%v) before the record that began it was durable", err)
	case <-time.After(100 * time.Millisecond): // the chance for a wrong engine to answer
	}
	release()
	must(t, <-second)
	st, err := e.Advance(waitCtx(t), id, StepResult{Step: "c"})
	must(t, err)
	if st.State != fsm.StateCompleted {
		t.Fatalf("state %s", st.State)
	}
	// The finish is acknowledged after apply: the store has it.
	got, err := e.Status(ctx, id)
	must(t, err)
	if got.State != fsm.StateCompleted {
		t.Fatalf("stored state %s after the last Advance returned", got.State)
	}
}

// Stats.SyncWaits counts the waits for the disk a saga exposes: 5 for a
// strict 4-step saga, 2 (start and finish) for a pipelined one whose
// steps outlast the fsync of the record that began them.
func TestPipelinedSagaWaitsForTwoFsyncs(t *testing.T) {
	var e *Engine
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("act", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		// A step that lasts until the record that began it is durable.
		e.mu.Lock()
		r := e.runs[c.SagaID]
		e.mu.Unlock()
		r.mu.Lock()
		f := r.ahead
		r.mu.Unlock()
		if f != nil {
			select {
			case <-f.done:
			case <-ctx.Done():
			}
		}
		return nil, nil
	}))
	must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	e = openT(t, t.TempDir(), Options{Registry: reg})
	defer e.Close()
	strict := pipelinedDef("s", 4)
	strict.Durability = DurabilityStrict
	for _, d := range []Definition{strict, pipelinedDef("p", 4)} {
		_, err := e.Define(ctx, d)
		must(t, err)
	}
	for _, c := range []struct {
		def  string
		want uint64
	}{{"s", 5}, {"p", 2}} {
		before := e.Stats().SyncWaits
		st, err := e.Run(waitCtx(t), c.def, nil, StartOptions{})
		must(t, err)
		if st.State != fsm.StateCompleted {
			t.Fatalf("%s: state %s", c.def, st.State)
		}
		if got := e.Stats().SyncWaits - before; got != c.want {
			t.Errorf("%s: a 4-step saga waited for the disk %d times, want %d", c.def, got, c.want)
		}
	}
}
