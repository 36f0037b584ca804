package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// A write held for the sagas the last write answered ends when the last
// of them is back with its record, or is known not to come back (its
// saga settled, caller-driven, or with a record queued already), never by
// its window. With the window widened to a minute, a mixed load runs to
// the end within the test's deadline and no hold times out: sequences, a
// failure that compensates, fan-outs, pipelined sagas, a step retried at
// once, and caller-driven sagas advanced by the test.
func TestAHoldForAnsweredSagasEndsWhenTheyAreBack(t *testing.T) {
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var flaky atomic.Int64
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("act", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	must(t, reg.RegisterAction("boom", func(context.Context, compensation.Call) ([]byte, error) {
		return nil, compensation.Permanent(errors.New("boom"))
	}))
	must(t, reg.RegisterAction("flaky", func(_ context.Context, call compensation.Call) ([]byte, error) {
		if call.Attempt == 1 {
			flaky.Add(1)
			return nil, errors.New("once")
		}
		return nil, nil
	}))
	must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	e := openT(t, t.TempDir(), Options{Registry: reg})
	defer e.Close()
	seq := func(name string, actions ...string) Definition {
		d := Definition{Name: name}
		for i, a := range actions {
			d.Steps = append(d.Steps, StepDef{Name: fmt.Sprintf("s%d", i), Action: a, Compensation: "undo",
				Retry: RetryPolicy{InitialBackoff: time.Microsecond, MaxAttempts: 3}})
		}
		return d
	}
	pipelined := seq("pipelined", "act", "act", "act", "act")
	pipelined.Durability = DurabilityPipelined
	for _, d := range []Definition{
		seq("happy", "act", "act", "act", "act"),
		seq("failing", "act", "act", "boom"),
		seq("retried", "act", "flaky", "act"),
		pipelined,
		fanOut("fan", 4),
		{Name: "manual", Steps: []StepDef{{Name: "a"}, {Name: "b"}, {Name: "c"}}},
	} {
		_, err := e.Define(c, d)
		must(t, err)
	}
	// Widened once the definitions are in: every hold from here on would
	// last a minute if it waited for a saga that never comes back.
	widenHold(e, 30*time.Second)

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 8 {
		for _, name := range []string{"happy", "failing", "retried", "pipelined", "fan"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				st, err := e.Run(c, name, nil, StartOptions{})
				want := fsm.StateCompleted
				if name == "failing" {
					want = fsm.StateFailed
				}
				if err == nil && st.State != want {
					err = fmt.Errorf("%s saga %s ended %s, want %s", name, st.ID, st.State, want)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := e.Start(c, "manual", nil, StartOptions{ID: fmt.Sprintf("manual-%d", i)})
			for _, step := range []string{"a", "b", "c"} {
				if err == nil {
					_, err = e.Advance(c, id, StepResult{Step: step})
				}
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if flaky.Load() == 0 {
		t.Error("no step was retried")
	}
	if n := e.wq.holdTimeouts.Load(); n != 0 {
		t.Fatalf("%d holds ended by their window, want every one to end when what it waited for came", n)
	}
}

// A proposer is answered before its batch is in Pebble, but no read the
// engine makes sees the state from before: a Status asked by a caller
// that Start answered waits for the commit, then finds the saga. The
// OnTransition hook has seen the transition before its caller is
// answered, as Hooks documents. (The
// leader's own proposal is answered when its write ends; the others in
// its batch are answered before the commit: two Starts queue behind a
// write marked in flight, and the test leads their batch.)
func TestAReadAfterAnAnswerWaitsForTheCommitThatHoldsIt(t *testing.T) {
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var hooked sync.Map
	e := openT(t, t.TempDir(), Options{Hooks: Hooks{OnTransition: func(ev TransitionEvent) { hooked.Store(ev.Record.Saga, true) }}})
	defer e.Close()
	_, err := e.Define(c, Definition{Name: "manual", Steps: []StepDef{{Name: "a"}}})
	must(t, err)
	e.wq.mu.Lock()
	e.wq.writing = true // as if a leader were writing: the Starts queue
	e.wq.mu.Unlock()
	started := make(chan error, 2)
	for _, id := range []string{"m1", "m2"} {
		go func() {
			_, err := e.Start(c, "manual", nil, StartOptions{ID: id})
			started <- err
		}()
	}
	for {
		e.wq.mu.Lock()
		n := len(e.wq.queue)
		e.wq.mu.Unlock()
		if n == 2 {
			break
		}
		if c.Err() != nil {
			t.Fatal("the Starts never queued")
		}
		time.Sleep(time.Millisecond)
	}
	inCommit, release := make(chan struct{}), make(chan struct{})
	e.beforeCommit = func() {
		close(inCommit)
		<-release
	}
	go e.lead()
	<-inCommit
	// Both are answered (the test leads), neither is committed.
	for range 2 {
		must(t, <-started)
	}
	for _, id := range []string{"m1", "m2"} {
		if _, ok := hooked.Load(id); !ok {
			t.Errorf("Start of %s answered before OnTransition saw it", id)
		}
	}
	// Stats and LogInfo too: an applied index below the records a caller
	// was answered for would say they are not applied.
	want := e.store.AppliedIndex() + 2
	indexes := make(chan [2]uint64, 1)
	go func() {
		li, _ := e.LogInfo()
		indexes <- [2]uint64{e.Stats().AppliedIndex, li.AppliedIndex}
	}()
	got := make(chan error, 1)
	go func() {
		st, err := e.Status(c, "m2")
		if err == nil && st.State != fsm.StateInProgress {
			err = fmt.Errorf("state %s, want IN_PROGRESS", st.State)
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("Status returned before the commit: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-got:
		must(t, err)
	case <-c.Done():
		t.Fatal("Status never returned after the commit")
	}
	select {
	case got := <-indexes:
		if got[0] < want || got[1] < want {
			t.Errorf("after both Starts were answered, Stats and LogInfo gave applied index %d and %d, want at least %d", got[0], got[1], want)
		}
	case <-c.Done():
		t.Fatal("Stats never returned after the commit")
	}
	e.beforeCommit = nil
}

// An OnCommit hook that reads the engine does not wait for the commit
// that waits for it: the hook runs before its batch is staged, not while
// readers wait for the batch's Pebble commit (awaitVisible). Hooks asks
// hooks not to call back into the engine; one that reads anyway must not
// stop it.
func TestAnOnCommitHookThatReadsTheEngineDoesNotStopIt(t *testing.T) {
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var eng atomic.Pointer[Engine]
	var reads atomic.Int64
	e := openT(t, t.TempDir(), Options{Hooks: Hooks{OnCommit: func(int, time.Duration) {
		if e := eng.Load(); e != nil {
			_, _ = e.Status(c, "m1")
			reads.Add(1)
		}
	}}})
	defer e.Close()
	eng.Store(e)
	_, err := e.Define(c, Definition{Name: "manual", Steps: []StepDef{{Name: "a"}}})
	must(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := e.Start(c, "manual", nil, StartOptions{ID: "m1"})
		done <- err
	}()
	select {
	case err := <-done:
		must(t, err)
	case <-c.Done():
		t.Fatal("Start never returned: the hook's read waited for the commit")
	}
	if reads.Load() == 0 {
		t.Fatal("the hook never read")
	}
}

// A saga whose next record is still in the writer queue when a write
// takes one of its records is not among the sagas that write's successor
// holds for: its record is back already, and counting it would hold the
// next write for its whole window for a saga that cannot come back
// sooner. Two branches of one saga end together, their records queue
// behind a write in progress, and a write of one record (MaxBatch 1)
// takes the first.
func TestASagaWithARecordStillQueuedIsNotHeldFor(t *testing.T) {
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	entered, release := make(chan string, 2), make(chan struct{})
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("act", func(_ context.Context, call compensation.Call) ([]byte, error) {
		if call.Step == "b0" || call.Step == "b1" {
			entered <- call.Step
			<-release
		}
		return nil, nil
	}))
	must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	e := openT(t, t.TempDir(), Options{Registry: reg, MaxBatch: 1})
	defer e.Close()
	// Set before any write (leaders read it); armed for the test's own.
	var armed atomic.Bool
	returning := make(chan int64, 1)
	e.beforeCommit = func() {
		if armed.CompareAndSwap(true, false) {
			returning <- e.wq.returning.Load()
		}
	}
	_, err := e.Define(c, fanOut("two", 2))
	must(t, err)
	id, _, err := e.Launch(c, "two", nil, StartOptions{})
	must(t, err)
	for range 2 {
		select {
		case <-entered:
		case <-c.Done():
			t.Fatal("the branches never ran")
		}
	}
	// As if a leader were writing (once the log is idle): the branches'
	// records queue, and the test leads.
	for {
		e.wq.mu.Lock()
		idle := !e.wq.writing
		if idle {
			e.wq.writing = true
		}
		e.wq.mu.Unlock()
		if idle {
			break
		}
		if c.Err() != nil {
			t.Fatal("the log never went idle")
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	for {
		e.wq.mu.Lock()
		n := len(e.wq.queue)
		e.wq.mu.Unlock()
		if n == 2 {
			break
		}
		if c.Err() != nil {
			t.Fatal("the branches' records never queued")
		}
		time.Sleep(time.Millisecond)
	}
	armed.Store(true)
	e.lead() // the first branch's record; the second's leads next
	if got := <-returning; got != 0 {
		t.Errorf("after a write of one of the saga's two queued records, %d sagas are expected back, want 0 (its other record is queued)", got)
	}
	st, err := e.Wait(c, id)
	must(t, err)
	if st.State != fsm.StateCompleted {
		t.Fatalf("saga %s, want COMPLETED", st.State)
	}
}
