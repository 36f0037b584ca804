package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// A child step's action starts its child saga: the write of the child's
// start must not be held for the parent, which the previous write
// answered (its step's intent) and which comes back only once the child
// has finished, that is after that very write. With the window widened
// to seconds, a held child start would take them.
func TestAChildStartIsNotHeldForTheParentThatStartsIt(t *testing.T) {
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("act", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	e := openT(t, t.TempDir(), Options{Registry: reg})
	defer e.Close()
	for _, d := range []Definition{
		{Name: "kid", Steps: []StepDef{{Name: "k0", Action: "act", Compensation: "undo"}}},
		{Name: "mom", Steps: []StepDef{{Name: "m0", Action: "act", Compensation: "undo"}, {Name: "m1", Child: "kid"}}},
	} {
		_, err := e.Define(c, d)
		must(t, err)
	}
	widenHold(e, 2*time.Second) // a hold for returners lasts up to 4 s
	t0 := time.Now()
	st, err := e.Run(c, "mom", nil, StartOptions{})
	must(t, err)
	if st.State != fsm.StateCompleted {
		t.Fatalf("parent ended %s", st.State)
	}
	if n := e.wq.holdTimeouts.Load(); n != 0 {
		t.Fatalf("%d holds ended by their window (run took %v): a write was held for a parent that waits for it", n, time.Since(t0))
	}
}

// The hold for answered sagas is meant only for sagas that usually come
// back within it (returnersReady). Sagas whose steps take longer than
// the window come back after the next write was led (here a caller
// advancing its own saga keeps the log busy), and their comebacks must
// still count in the average: else it only ever sees the quick ones,
// never exceeds the window, and every write after one that answered a
// slow saga holds its full window for nothing.
func TestHoldsStopWhenAnsweredSagasComeBackAfterTheWindow(t *testing.T) {
	c, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("slow", func(context.Context, compensation.Call) ([]byte, error) {
		time.Sleep(40 * time.Millisecond)
		return nil, nil
	}))
	must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	e := openT(t, t.TempDir(), Options{Registry: reg})
	defer e.Close()
	d := Definition{Name: "slow"}
	for i := range 8 {
		d.Steps = append(d.Steps, StepDef{Name: fmt.Sprintf("s%d", i), Action: "slow", Compensation: "undo"})
	}
	manual := Definition{Name: "manual"}
	for i := range 8 {
		manual.Steps = append(manual.Steps, StepDef{Name: fmt.Sprintf("m%d", i)})
	}
	for _, d := range []Definition{d, manual} {
		_, err := e.Define(c, d)
		must(t, err)
	}
	widenHold(e, 5*time.Millisecond) // window ~ one write (the cycle), steps take 40 ms
	done := make(chan struct{})
	ticked := make(chan error, 1)
	go func() { // a caller-driven load: a write every moment
		var err error
		defer func() { ticked <- err }()
		for n := 0; err == nil; n++ {
			var id string
			if id, err = e.Start(c, "manual", nil, StartOptions{ID: fmt.Sprintf("tick-%d", n)}); err != nil {
				return
			}
			for _, st := range manual.Steps {
				select {
				case <-done:
					return
				default:
				}
				if _, err = e.Advance(c, id, StepResult{Step: st.Name}); err != nil {
					return
				}
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.Run(c, "slow", nil, StartOptions{}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(done)
	must(t, <-ticked)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d holds timed out, %d writes, comeback %v", e.wq.holdTimeouts.Load(), e.Stats().Commits, time.Duration(e.wq.comeback.Load()))
	if cb, w := time.Duration(e.wq.comeback.Load()), e.wq.returnWindow(); cb <= w {
		t.Errorf("comeback average %v after sagas that come back in 40 ms, want above the window %v: holds stay on", cb, w)
	}
}

// When the Pebble commit of a batch fails after its proposers were
// answered, a caller told its Start succeeded must not then be told by a
// read that the saga does not exist: reads refuse (the engine is
// poisoned and the state is behind what it acknowledged).
func TestAReadAfterAFailedCommitRefusesRatherThanShowTheStateBeforeTheAnswer(t *testing.T) {
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	e := openT(t, t.TempDir(), Options{})
	defer e.Close()
	_, err := e.Define(c, Definition{Name: "manual", Steps: []StepDef{{Name: "a"}}})
	must(t, err)
	e.commitErr = errors.New("injected commit failure")
	id, err := e.Start(c, "manual", nil, StartOptions{ID: "m1"})
	if err != nil {
		return // not acknowledged: nothing to contradict
	}
	st, err := e.Status(c, id)
	switch {
	case err == nil && st.State == fsm.StateInProgress:
	case errors.Is(err, ErrPoisoned):
	default:
		t.Fatalf("Start(%s) succeeded, then Status: %v, %v; want the saga or ErrPoisoned", id, st, err)
	}
	if _, err := e.Wait(c, id); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("Wait after a failed commit: %v, want ErrPoisoned", err)
	}
}
