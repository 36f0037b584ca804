package admin

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/internal/testctx"
)

// A step's latency of a saga started under a trace carries the trace's id
// as an exemplar, and /metrics serves it in the OpenMetrics format.
func TestStepLatencyCarriesTheSagaTraceIDAsAnExemplar(t *testing.T) {
	ctx := testctx.New(t)
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) {
		time.Sleep(time.Millisecond) // a duration above 0
		return nil, nil
	}))
	obs := NewObserver()
	e, err := engine.Open(t.TempDir(), engine.Options{Logger: quiet, Registry: reg, Hooks: obs.Hooks(), TracerProvider: tp})
	must(t, err)
	defer e.Close()
	_, err = e.Define(ctx, engine.Definition{Name: "traced", Steps: []engine.StepDef{{Name: "a", Action: "ok"}}})
	must(t, err)
	cctx, span := tp.Tracer("test").Start(ctx, "caller")
	_, err = e.Run(cctx, "traced", nil, engine.StartOptions{})
	span.End()
	must(t, err)
	want := span.SpanContext().TraceID().String()
	mfs, err := obs.gatherer.Gather()
	must(t, err)
	var got []string
	for _, mf := range mfs {
		if mf.GetName() != "saga_step_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, b := range m.GetHistogram().GetBucket() {
				for _, l := range b.GetExemplar().GetLabel() {
					if l.GetName() == "trace_id" {
						got = append(got, l.GetValue())
					}
				}
			}
		}
	}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("step latency exemplars %v, want the trace id %s", got, want)
	}
	srv, err := New(e, obs, Options{Token: token, Logger: quiet})
	must(t, err)
	req := httptest.NewRequestWithContext(ctx, "GET", "/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, req)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `trace_id="`+want+`"`) {
		t.Fatalf("/metrics in the OpenMetrics format has no exemplar with the trace id: %d\n%s", rec.Code, rec.Body)
	}
}

// TestTraceIDOfATraceparent pins the parsing of the W3C header.
func TestTraceIDOfATraceparent(t *testing.T) {
	for tp, want := range map[string]string{
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01": "0af7651916cd43dd8448eb211c80319c",
		"00-00000000000000000000000000000000-b7ad6b7169203331-01": "",
		"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01": "",
		"garbage": "",
		"":        "",
	} {
		if got := traceID(tp); got != want {
			t.Errorf("traceID(%q) = %q, want %q", tp, got, want)
		}
	}
}
