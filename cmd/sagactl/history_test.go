package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/internal/testctx"
)

// A saga whose compensation retried past its history cap shows how many
// attempts were summarised, where the history skips them, and the same
// summary in JSON.
func TestShowSummarisesTheAttemptsPastTheHistoryCap(t *testing.T) {
	ctx := testctx.New(t)
	dir := t.TempDir()
	reg := registry(false)
	fails := 0
	if err := reg.Register("undo_flaky", func(context.Context, compensation.Call) error {
		if fails++; fails <= 12 {
			return errors.New("refund service unavailable")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e, err := engine.Open(dir, engine.Options{Registry: reg, Logger: quiet, HistoryCap: 6, RemovalInterval: engine.ManualRemoval})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Define(ctx, engine.Definition{Name: "order", Steps: []engine.StepDef{
		{Name: "pay", Action: "ok", Compensation: "undo_flaky", CompensationRetry: engine.RetryPolicy{InitialBackoff: time.Microsecond}},
		{Name: "ship", Action: "boom"}}}); err != nil {
		t.Fatal(err)
	}
	st, err := e.Run(ctx, "order", nil, engine.StartOptions{ID: "retried-1"})
	if err != nil || st.HistoryDropped == 0 {
		t.Fatalf("run: %v, %v: want attempts dropped from the history", st, err)
	}
	dropped := st.HistoryDropped
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	c, out, se := runCLI("--dir", dir, "show", "retried-1")
	if c != exitOK {
		t.Fatalf("exit %d: %s", c, se)
	}
	for _, want := range []string{"earlier attempt records summarised (history cap)", "attempt records summarised", "compensation_completed"} {
		if !strings.Contains(out, want) {
			t.Errorf("show does not say %q:\n%s", want, out)
		}
	}
	c, out, _ = runCLI("-o", "json", "--dir", dir, "show", "retried-1")
	var rep admin.ShowReply
	if err := json.Unmarshal([]byte(out), &rep); c != exitOK || err != nil {
		t.Fatalf("json: exit %d, %v:\n%s", c, err, out)
	}
	if d := rep.Saga.HistoryDropped; d == nil || d.Count != dropped || d.FirstSeq == 0 || d.LastSeq < d.FirstSeq {
		t.Fatalf("history_dropped %+v, want %d records", d, dropped)
	}
}
