package engine

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation/fakeclock"
	"github.com/sagaengine/saga/fsm"
)

// A compensation that fails for twelve days of virtual time, backing off
// up to an hour, keeps a bounded history: the start, the step completion
// and failure, the completion of the compensation and its last attempts
// are there, the oldest attempts are summarised in the status, and a
// recovery from a crash image replays to the same history.
func TestCompensationRetryingForDaysKeepsABoundedHistory(t *testing.T) {
	const cap, fails = 16, 300
	dir := t.TempDir()
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	o := Options{Registry: flaky(t, &journal{}, fails, 0), Clock: clk, Rand: func() float64 { return 0 },
		RemovalInterval: ManualRemoval, HistoryCap: cap}
	e := openT(t, dir, o)
	_, err := e.Define(ctx, Definition{Name: "r", Steps: []StepDef{
		{Name: "a", Action: "do_a", Compensation: "undo_a",
			CompensationRetry: RetryPolicy{InitialBackoff: time.Second, Multiplier: 2, MaxBackoff: time.Hour}},
		{Name: "b", Action: "do_fail"},
	}})
	must(t, err)
	id, _, err := e.start(ctx, "r", nil, StartOptions{}, true)
	must(t, err)
	e.kick(id)
	st := settle(t, e, clk, id)
	if st.State != fsm.StateFailed || st.Steps[0].CompAttempts != fails+1 {
		t.Fatalf("state %s after %d compensation attempts, want FAILED after %d", st.State, st.Steps[0].CompAttempts, fails+1)
	}
	if elapsed := clk.Now().Sub(time.Unix(1_700_000_000, 0)); elapsed < 10*24*time.Hour {
		t.Fatalf("virtual time advanced only %v", elapsed)
	}
	h, err := e.History(ctx, id)
	must(t, err)
	if st.HistoryDropped == 0 || uint64(len(h))+st.HistoryDropped != st.Saga.Seq {
		t.Fatalf("%d history records and %d dropped of %d transitions", len(h), st.HistoryDropped, st.Saga.Seq)
	}
	if len(h) > cap+fsm.HistoryKeepLast+2 {
		t.Fatalf("%d history records, cap %d", len(h), cap)
	}
	kinds := map[fsm.Kind]int{}
	for _, he := range h {
		kinds[he.Record.Kind]++
	}
	for _, k := range []fsm.Kind{fsm.KindSagaStarted, fsm.KindStepCompleted, fsm.KindStepFailed, fsm.KindCompCompleted} {
		if kinds[k] != 1 {
			t.Errorf("%d %s records in the history, want 1", kinds[k], k)
		}
	}
	if last := h[len(h)-2].Record; last.Kind != fsm.KindCompStarted || last.Attempt != fails+1 {
		t.Errorf("the record before the completion is %s attempt %d, want the successful attempt's start", last.Kind, last.Attempt)
	}
	if first := h[1].Seq; first != 2 || st.Saga.HistoryDroppedFirst <= 3 {
		t.Errorf("history seqs begin %d, %d; dropped from %d", h[0].Seq, first, st.Saga.HistoryDroppedFirst)
	}

	img := crashImage(t, e, dir)
	e2 := openT(t, img, o)
	defer e2.Close()
	h2, err := e2.History(ctx, id)
	must(t, err)
	st2, err := e2.Status(ctx, id)
	must(t, err)
	if !reflect.DeepEqual(h2, h) || st2.HistoryDropped != st.HistoryDropped {
		t.Fatalf("after recovery: %d history records, %d dropped; before: %d, %d", len(h2), st2.HistoryDropped, len(h), st.HistoryDropped)
	}
}

// Options.HistoryCap: the default goes into each start record, and
// UnlimitedHistory records no cap; other negative values are refused.
func TestHistoryCapTravelsInTheStartRecord(t *testing.T) {
	if err := (&Options{HistoryCap: -2}).Validate(); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("HistoryCap -2: %v, want ErrInvalidOptions", err)
	}
	for _, c := range []struct{ opt, want int }{{0, DefaultHistoryCap}, {7, 7}, {UnlimitedHistory, 0}} {
		e := openT(t, t.TempDir(), Options{Registry: registry(t, &journal{}, []string{"a"}), RemovalInterval: ManualRemoval, HistoryCap: c.opt})
		_, err := e.Define(ctx, def("d", "a"))
		must(t, err)
		id, err := e.Start(ctx, "d", nil, StartOptions{})
		must(t, err)
		h, err := e.History(ctx, id)
		must(t, err)
		if got := h[0].Record.Start.HistoryCap; got != c.want {
			t.Errorf("Options.HistoryCap %d: the start record's cap is %d, want %d", c.opt, got, c.want)
		}
		must(t, e.Close())
	}
}
