package engine_test

import (
	"context"
	"errors"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/internal/testctx"
)

// TestFailoverContinuesTheSagaTraceUnderTheCallersSpan: a leader is
// deposed while it compensates; the new leader resumes the compensation
// in a saga span whose parent is the caller's span recorded at the start
// (replicated with the saga), in the caller's trace, and the deposed
// leader's saga span ends saying why.
func TestFailoverContinuesTheSagaTraceUnderTheCallersSpan(t *testing.T) {
	ctx := testctx.New(t)
	registry := func(undoA compensation.Handler) *compensation.Registry {
		reg := compensation.NewRegistry()
		noop := func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }
		must := func(err error) {
			if err != nil {
				t.Fatal(err)
			}
		}
		must(reg.RegisterAction("do_a", noop))
		must(reg.RegisterAction("do_b", func(context.Context, compensation.Call) ([]byte, error) {
			return nil, compensation.Permanent(errors.New("b refused"))
		}))
		must(reg.Register("undo_a", undoA))
		must(reg.Register("undo_b", func(context.Context, compensation.Call) error { return nil }))
		return reg
	}
	compensating := make(chan struct{}, 1)
	regA := registry(func(ctx context.Context, _ compensation.Call) error {
		compensating <- struct{}{}
		<-ctx.Done() // until deposed
		return ctx.Err()
	})
	regB := registry(func(context.Context, compensation.Call) error { return nil })
	open := func(f *fakeRep, reg *compensation.Registry, tp trace.TracerProvider) *engine.Engine {
		e, err := engine.Open(t.TempDir(), engine.Options{Replicator: f, Registry: reg, Logger: quietLog, TracerProvider: tp})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		return e
	}
	srA, srB := tracetest.NewSpanRecorder(), tracetest.NewSpanRecorder()
	tpA := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(srA))
	fA, fB := newFake(), newFake()
	fA.afterCommit = func(recs []*fsm.Record) { fB.commit(t, recs) } // raft replicates to B
	eA := open(fA, regA, tpA)
	eB := open(fB, regB, sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(srB)))
	fA.setLeader(true)
	waitFor(t, "A to lead", func() bool { return leading(eA) })
	if _, err := eA.Define(ctx, drivenDef("a", "b")); err != nil {
		t.Fatal(err)
	}
	cctx, req := tpA.Tracer("test").Start(ctx, "request")
	rctx, cancel := context.WithTimeout(cctx, 10*time.Second)
	defer cancel()
	go func() { _, _ = eA.Run(rctx, "driven", nil, engine.StartOptions{ID: "s1"}) }()
	select {
	case <-compensating:
	case <-ctx.Done():
		t.Fatal("A never compensated")
	}
	fA.setLeader(false)
	waitFor(t, "A's term to end", func() bool { return !leading(eA) })
	fB.setLeader(true)
	waitFor(t, "B to lead", func() bool { return leading(eB) })
	st, err := eB.Wait(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != engine.StateFailed {
		t.Fatalf("saga is %s on the new leader, want FAILED", st.State)
	}
	req.End()

	var sagaB, compB sdktrace.ReadOnlySpan
	for _, s := range srB.Ended() {
		if s.SpanContext().TraceID() != req.SpanContext().TraceID() {
			t.Errorf("the new leader's span %q is in trace %s, not the caller's %s", s.Name(), s.SpanContext().TraceID(), req.SpanContext().TraceID())
		}
		switch s.Name() {
		case "saga driven":
			sagaB = s
		case "compensation a":
			compB = s
		}
	}
	if sagaB == nil || compB == nil {
		t.Fatalf("the new leader recorded %d spans, without the resumed saga span or a's compensation", len(srB.Ended()))
	}
	if sagaB.Parent().SpanID() != req.SpanContext().SpanID() {
		t.Errorf("the resumed saga span's parent is %s, want the caller's span %s", sagaB.Parent().SpanID(), req.SpanContext().SpanID())
	}
	if compB.Parent().SpanID() != sagaB.SpanContext().SpanID() {
		t.Error("a's compensation on the new leader is not a child of its saga span")
	}
	released := false
	for _, s := range srA.Ended() {
		if s.Name() == "saga driven" {
			for _, ev := range s.Events() {
				released = released || ev.Name == "saga.released"
			}
		}
	}
	if !released {
		t.Error("the deposed leader's saga span did not end with a saga.released event")
	}
}
