package engine

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// TestAttemptSpanAllocations: the context of one attempt costs, tracing
// off, what compensation.WithCall costs (1 allocation: nothing for
// tracing); tracing on, the attempt span's own allocations in the SDK
// (the span, its config's and its attributes, the context carrying it:
// 4), the saga span in the context and WithCall: 6 (the logger's trace
// ids are made only if the handler asks for its logger). Ending the span
// into a batch processor adds the SDK's snapshot (1).
func TestAttemptSpanAllocations(t *testing.T) {
	if raceOn {
		t.Skip("the race detector makes sync.Pool drop items: allocation counts are not exact")
	}
	sg := &fsm.Saga{ID: "s1", Definition: "d", Version: 1}
	c := compensation.Call{SagaID: "s1", Definition: "d", Step: "a", Kind: compensation.KindAction, Attempt: 1,
		IdempotencyKey: compensation.IdempotencyKey("s1", "a", compensation.KindAction)}
	ctx := context.Background()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		name string
		tp   *sdktrace.TracerProvider
		want float64
	}{
		{"off", nil, 1},
		{"dropped", sdktrace.NewTracerProvider(), 6},
		{"exported", sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter())), 7},
	} {
		e := &Engine{}
		if tc.tp != nil {
			e.tr = newTracing(tc.tp)
			defer func() { _ = tc.tp.Shutdown(ctx) }()
		}
		e.opts.Logger = logger
		got := testing.AllocsPerRun(1000, func() {
			hctx, span := e.handlerCtx(ctx, sg, &c)
			endAttempt(span, nil, false)
			_ = hctx
		})
		t.Logf("tracing %s: %.1f allocations per attempt", tc.name, got)
		if got > tc.want {
			t.Errorf("tracing %s: %.1f allocations per attempt, want at most %.0f", tc.name, got, tc.want)
		}
	}
}

// TestSpanNames: a span name is made once per name and found again by
// concurrent callers; past maxSpanNames names are still right, only
// uncached.
func TestSpanNames(t *testing.T) {
	var sn spanNames
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < maxSpanNames+10; i++ {
				name := fmt.Sprint("s", i)
				if got := sn.get(prefixStep, name); got != "step "+name {
					t.Errorf("get(%q, %q) = %q", prefixStep, name, got)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := len(*sn.m.Load()); n != maxSpanNames {
		t.Errorf("%d names cached, want %d", n, maxSpanNames)
	}
	if got := sn.get(prefixCompensation, "s1"); got != "compensation s1" {
		t.Errorf("compensation name %q", got)
	}
	if testing.AllocsPerRun(100, func() { sn.get(prefixStep, "s1") }) != 0 {
		t.Error("a cached name allocates")
	}
}
