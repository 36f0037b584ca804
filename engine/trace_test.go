package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaengine/saga/compensation"
)

func recorder() (*tracetest.SpanRecorder, *sdktrace.TracerProvider) {
	sr := tracetest.NewSpanRecorder()
	return sr, sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
}

// callerCtx is a caller's context: a span of the request that starts
// the saga, and baggage.
func callerCtx(t *testing.T, parent context.Context, tp trace.TracerProvider) (context.Context, trace.Span) {
	t.Helper()
	m, err := baggage.NewMember("tenant", "acme")
	must(t, err)
	bag, err := baggage.New(m)
	must(t, err)
	return tp.Tracer("test").Start(baggage.ContextWithBaggage(parent, bag), "request")
}

func attr(s sdktrace.ReadOnlySpan, key attribute.Key) attribute.Value {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// spanLine names a span for a comparison: its name, attempt and status.
func spanLine(s sdktrace.ReadOnlySpan) string {
	line := s.Name()
	if a := attr(s, attrAttempt); a.Type() != attribute.EMPTY {
		line += fmt.Sprintf(" #%d", a.AsInt64())
	}
	if s.Status().Code == codes.Error {
		line += " error"
	}
	return line
}

// checkTree fails unless every span's parent is among the spans or is
// root (no orphans), and returns the spans by start time.
func checkTree(t *testing.T, spans []sdktrace.ReadOnlySpan, root trace.SpanContext) []sdktrace.ReadOnlySpan {
	t.Helper()
	ids := map[trace.SpanID]bool{}
	for _, s := range spans {
		ids[s.SpanContext().SpanID()] = true
	}
	for _, s := range spans {
		if s.SpanContext().TraceID() != root.TraceID() {
			t.Errorf("span %q is in trace %s, not the caller's %s", s.Name(), s.SpanContext().TraceID(), root.TraceID())
		}
		if p := s.Parent().SpanID(); s.SpanContext().SpanID() != root.SpanID() && !ids[p] && p != root.SpanID() {
			t.Errorf("span %q is an orphan: its parent %s is not recorded", s.Name(), p)
		}
	}
	out := slices.Clone(spans)
	sort.SliceStable(out, func(i, j int) bool { return out[i].StartTime().Before(out[j].StartTime()) })
	return out
}

// tracedRegistry: actions do_<s> (c fails), compensations undo_<s>
// (undo_b fails its first attempt). Every call checks that its context
// carries its own span, the caller's baggage and its logger, whose
// records name that span (logged to seen under the key "log").
func tracedRegistry(t *testing.T, seen *sync.Map) *compensation.Registry {
	reg := compensation.NewRegistry()
	check := func(ctx context.Context, c compensation.Call) {
		sc := trace.SpanContextFromContext(ctx)
		if !sc.IsValid() {
			t.Errorf("%s of %s: the handler's context carries no span", c.Kind, c.Step)
		}
		seen.Store(sc.SpanID(), baggage.FromContext(ctx).Member("tenant").Value())
		if compensation.Logger(ctx) == nil {
			t.Errorf("%s of %s: no logger", c.Kind, c.Step)
		}
		ids := "trace_id=" + sc.TraceID().String() + " span_id=" + sc.SpanID().String()
		compensation.Logger(ctx).Info("handler", "want", ids)
	}
	for _, s := range []string{"a", "b", "c"} {
		must(t, reg.RegisterAction("do_"+s, func(ctx context.Context, c compensation.Call) ([]byte, error) {
			check(ctx, c)
			if s == "c" {
				return nil, compensation.Permanent(errors.New("c refused"))
			}
			return nil, nil
		}))
		must(t, reg.Register("undo_"+s, func(ctx context.Context, c compensation.Call) error {
			check(ctx, c)
			if s == "b" && c.Attempt == 1 {
				return errors.New("b's service is down")
			}
			return nil
		}))
	}
	return reg
}

func fastUndo(d Definition) Definition {
	for i := range d.Steps {
		d.Steps[i].CompensationRetry = RetryPolicy{InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond, Multiplier: 1}
	}
	return d
}

// TestTraceOfFailedSagaHangsEveryAttemptUnderItsSagaSpan: a saga whose
// step c fails and whose compensation of b fails once makes one saga
// span, a child of the caller's, with a span per attempt under it in the
// order they ran, errors recorded, every attribute set and no orphan;
// each handler's context carries its own span and the caller's baggage;
// the start record holds the caller's trace context.
func TestTraceOfFailedSagaHangsEveryAttemptUnderItsSagaSpan(t *testing.T) {
	sr, tp := recorder()
	var seen sync.Map
	var logs lockedBuffer
	e := openT(t, t.TempDir(), Options{Registry: tracedRegistry(t, &seen), TracerProvider: tp,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	defer e.Close()
	_, err := e.Define(ctx, fastUndo(def("order", "a", "b", "c")))
	must(t, err)
	cctx, req := callerCtx(t, waitCtx(t), tp)
	st, err := e.Run(cctx, "order", nil, StartOptions{ID: "o1"})
	must(t, err)
	req.End()
	if st.State != StateFailed {
		t.Fatalf("saga is %s, want FAILED", st.State)
	}
	spans := checkTree(t, sr.Ended(), req.SpanContext())
	var lines []string
	var sagaSpan sdktrace.ReadOnlySpan
	for _, s := range spans {
		lines = append(lines, spanLine(s))
		if s.Name() == "saga order" {
			sagaSpan = s
		}
	}
	want := []string{"request", "saga order error", "step a #1", "step b #1", "step c #1 error",
		"compensation b #1 error", "compensation b #2", "compensation a #1"}
	if !slices.Equal(lines, want) {
		t.Fatalf("spans by start time:\n  %s\nwant\n  %s", strings.Join(lines, "\n  "), strings.Join(want, "\n  "))
	}
	if sagaSpan.Parent().SpanID() != req.SpanContext().SpanID() {
		t.Error("the saga span is not a child of the caller's span")
	}
	for _, s := range spans[2:] {
		if s.Parent().SpanID() != sagaSpan.SpanContext().SpanID() {
			t.Errorf("span %q is not a child of the saga span", spanLine(s))
		}
		if v, ok := seen.Load(s.SpanContext().SpanID()); !ok || v != "acme" {
			t.Errorf("span %q: the handler's context did not carry it with the caller's baggage (got %v)", spanLine(s), v)
		}
		wantKind := "action"
		if strings.HasPrefix(s.Name(), "compensation") {
			wantKind = "compensation"
		}
		step := strings.Fields(s.Name())[1]
		for k, v := range map[attribute.Key]string{attrSagaID: "o1", attrDefinition: "order", attrStep: step,
			attrKind: wantKind, attrIdempotencyKey: compensation.IdempotencyKey("o1", step, compensation.Kind(wantKind))} {
			if got := attr(s, k).AsString(); got != v {
				t.Errorf("span %q: %s = %q, want %q", spanLine(s), k, got, v)
			}
		}
		if attr(s, attrVersion).AsInt64() != 1 || attr(s, attrUncertain).Type() != attribute.BOOL {
			t.Errorf("span %q: version or uncertain missing", spanLine(s))
		}
		if s.Status().Code == codes.Error && (len(s.Events()) == 0 || s.Events()[0].Name != "exception") {
			t.Errorf("span %q: error not recorded as an exception event", spanLine(s))
		}
	}
	handlerLogs := 0
	for _, l := range strings.Split(logs.String(), "\n") {
		if !strings.Contains(l, "msg=handler") {
			continue
		}
		handlerLogs++
		_, want, _ := strings.Cut(l, `want="`)
		want, _, _ = strings.Cut(want, `"`)
		if !strings.Contains(l, " "+want+" ") {
			t.Errorf("a handler's log names another span than the handler's (%s): %s", want, l)
		}
	}
	if handlerLogs != len(spans)-2 {
		t.Errorf("%d handler log records, want one per attempt (%d)", handlerLogs, len(spans)-2)
	}
	h, err := e.History(ctx, "o1")
	must(t, err)
	tc := h[0].Record.Start.Trace
	if want := fmt.Sprintf("00-%s-%s-01", req.SpanContext().TraceID(), req.SpanContext().SpanID()); tc["traceparent"] != want {
		t.Errorf("recorded traceparent %q, want the caller's %q", tc["traceparent"], want)
	}
	if tc["baggage"] != "tenant=acme" {
		t.Errorf("recorded baggage %q, want tenant=acme", tc["baggage"])
	}
}

// lockedBuffer is a bytes.Buffer that handlers log to concurrently.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestOperatorActionsAreEventsOfTheSagaSpan: an abort, and the retry and
// resolve of a STUCK saga, are events with who and why; the STUCK saga's
// span ends with an error status, and the operator's retry continues the
// trace under the caller's span.
func TestOperatorActionsAreEventsOfTheSagaSpan(t *testing.T) {
	sr, tp := recorder()
	reg := compensation.NewRegistry()
	running := make(chan struct{}, 1)
	must(t, reg.RegisterAction("do_a", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	must(t, reg.RegisterAction("do_b", func(ctx context.Context, _ compensation.Call) ([]byte, error) {
		running <- struct{}{}
		<-ctx.Done() // until the abort
		return nil, ctx.Err()
	}))
	must(t, reg.Register("undo_a", func(context.Context, compensation.Call) error { return errors.New("down") }))
	must(t, reg.Register("undo_b", func(context.Context, compensation.Call) error { return nil }))
	e := openT(t, t.TempDir(), Options{Registry: reg, TracerProvider: tp})
	defer e.Close()
	d := def("op", "a", "b")
	d.Steps[0].CompensationRetry = RetryPolicy{MaxAttempts: 1}
	_, err := e.Define(ctx, d)
	must(t, err)
	cctx, req := callerCtx(t, waitCtx(t), tp)
	done := make(chan error, 1)
	go func() {
		_, err := e.Run(cctx, "op", nil, StartOptions{ID: "op1"})
		done <- err
	}()
	<-running
	_, err = e.Abort(ctx, "op1", "alice", "customer cancelled")
	must(t, err)
	must(t, <-done)
	if _, err := e.Retry(ctx, "op1", "bob", "service is back"); err != nil {
		t.Fatal(err)
	}
	st, err := e.Wait(waitCtx(t), "op1")
	must(t, err)
	if st.State != StateStuck {
		t.Fatalf("saga is %s, want STUCK again", st.State)
	}
	_, err = e.Resolve(ctx, "op1", "carol", "refunded by hand")
	must(t, err)
	req.End()
	var sagaSpans []sdktrace.ReadOnlySpan
	for _, s := range checkTree(t, sr.Ended(), req.SpanContext()) {
		if s.Name() == "saga op" {
			sagaSpans = append(sagaSpans, s)
		}
	}
	var got []string
	for _, s := range sagaSpans {
		if s.Parent().SpanID() != req.SpanContext().SpanID() {
			t.Errorf("a saga span is not a child of the caller's span")
		}
		if s.Status().Code != codes.Error || !strings.HasPrefix(s.Status().Description, "STUCK") && !strings.HasPrefix(s.Status().Description, "FAILED") {
			t.Errorf("saga span ended with status %v %q, want an error naming STUCK or FAILED", s.Status().Code, s.Status().Description)
		}
		for _, ev := range s.Events() {
			line := ev.Name
			for _, kv := range ev.Attributes {
				line += " " + kv.Value.AsString()
			}
			got = append(got, line)
		}
	}
	want := []string{"saga.aborted alice customer cancelled", "saga.retried bob service is back", "saga.resolved carol refunded by hand"}
	if !slices.Equal(got, want) {
		t.Fatalf("events of the saga spans:\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	if len(sagaSpans) != 3 {
		t.Errorf("%d saga spans, want 3: the first until STUCK, one for the retry until STUCK, one for the resolve", len(sagaSpans))
	}
}

// TestTracingOffRecordsNothing: without a TracerProvider a caller's span
// and baggage leave no trace context in the start record (its encoding
// is the one before tracing existed), handlers get no span, and the
// caller's span costs no allocation.
func TestTracingOffRecordsNothing(t *testing.T) {
	_, tp := recorder()
	var handlerSpan trace.SpanContext
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("do_a", func(ctx context.Context, _ compensation.Call) ([]byte, error) {
		handlerSpan = trace.SpanContextFromContext(ctx)
		return nil, nil
	}))
	must(t, reg.Register("undo_a", func(context.Context, compensation.Call) error { return nil }))
	e := openT(t, t.TempDir(), Options{Registry: reg})
	defer e.Close()
	_, err := e.Define(ctx, def("off", "a"))
	must(t, err)
	cctx, req := callerCtx(t, waitCtx(t), tp)
	defer req.End()
	_, err = e.Run(cctx, "off", nil, StartOptions{ID: "off1"})
	must(t, err)
	h, err := e.History(ctx, "off1")
	must(t, err)
	if h[0].Record.Start.Trace != nil {
		t.Errorf("tracing off recorded a trace context: %v", h[0].Record.Start.Trace)
	}
	if handlerSpan.IsValid() {
		t.Error("tracing off handed the handler a span")
	}
	bg := waitCtx(t)
	run := func(c context.Context) func() {
		return func() {
			if _, err := e.Run(c, "off", nil, StartOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	without := testing.AllocsPerRun(200, run(bg))
	with := testing.AllocsPerRun(200, run(cctx))
	t.Logf("allocations per saga, tracing off: %.1f from a plain context, %.1f from a caller's span", without, with)
	if with > without+1 {
		t.Errorf("tracing off: a caller's span costs %.1f allocations per saga (%.1f against %.1f)", with-without, with, without)
	}
}

const traceChildEnv = "SAGA_TRACE_CHILD_DIR"

// The caller's span of TestResumedCompensationContinuesTheStartTrace:
// fixed, so that the parent process knows what the child recorded.
var (
	crashTraceID, _ = trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	crashSpanID, _  = trace.SpanIDFromHex("00f067aa0ba902b7")
)

// TestTraceChild starts a saga under a fixed caller span and blocks in
// the compensation of its step a, until the parent kills it. It only runs
// under TestResumedCompensationContinuesTheStartTrace.
func TestTraceChild(t *testing.T) {
	dir := os.Getenv(traceChildEnv)
	if dir == "" {
		t.Skip("run by TestResumedCompensationContinuesTheStartTrace in a child process")
	}
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("do_a", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	must(t, reg.RegisterAction("do_b", func(context.Context, compensation.Call) ([]byte, error) {
		return nil, compensation.Permanent(errors.New("b refused"))
	}))
	must(t, reg.Register("undo_a", func(ctx context.Context, _ compensation.Call) error {
		must(t, os.WriteFile(filepath.Join(dir, "compensating"), nil, 0o640))
		<-ctx.Done() // until killed
		return ctx.Err()
	}))
	must(t, reg.Register("undo_b", func(context.Context, compensation.Call) error { return nil }))
	// The child records nothing: a provider without a processor still
	// makes the spans, and so the trace context recorded at the start.
	e := openT(t, filepath.Join(dir, "engine"), Options{Registry: reg, TracerProvider: sdktrace.NewTracerProvider()})
	_, err := e.Define(ctx, def("crash", "a", "b"))
	must(t, err)
	cctx := trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: crashTraceID, SpanID: crashSpanID, TraceFlags: trace.FlagsSampled, Remote: true}))
	m, _ := baggage.NewMember("tenant", "acme")
	bag, _ := baggage.New(m)
	_, _ = e.Run(baggage.ContextWithBaggage(cctx, bag), "crash", nil, StartOptions{ID: "c1"})
	select {} // killed while compensating
}

// TestResumedCompensationContinuesTheStartTrace: a process is killed
// with SIGKILL while compensating; the engine that reopens the directory
// resumes the compensation in a saga span whose parent is the caller's
// span recorded at the start, in the caller's trace, the compensation's
// span under it, its handler with the recorded baggage, and no orphan.
func TestResumedCompensationContinuesTheStartTrace(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestTraceChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), traceChildEnv+"="+dir)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	must(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.After(time.Minute)
	for compensating := false; !compensating; {
		select {
		case <-exited:
			t.Fatalf("the child exited before it compensated:\n%s", out.String())
		case <-deadline:
			_ = cmd.Process.Kill()
			<-exited
			t.Fatalf("the child never compensated:\n%s", out.String())
		case <-time.After(5 * time.Millisecond):
			_, err := os.Stat(filepath.Join(dir, "compensating"))
			compensating = err == nil
		}
	}
	_ = cmd.Process.Kill() // SIGKILL
	<-exited

	sr, tp := recorder()
	var seen sync.Map
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("do_a", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	must(t, reg.RegisterAction("do_b", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	must(t, reg.Register("undo_b", func(context.Context, compensation.Call) error { return nil }))
	must(t, reg.Register("undo_a", func(ctx context.Context, c compensation.Call) error {
		seen.Store(trace.SpanContextFromContext(ctx).SpanID(), baggage.FromContext(ctx).Member("tenant").Value())
		return nil
	}))
	e := openT(t, filepath.Join(dir, "engine"), Options{Registry: reg, TracerProvider: tp})
	defer e.Close()
	st, err := e.Wait(waitCtx(t), "c1")
	must(t, err)
	if st.State != StateFailed {
		t.Fatalf("saga is %s, want FAILED", st.State)
	}
	caller := trace.NewSpanContext(trace.SpanContextConfig{TraceID: crashTraceID, SpanID: crashSpanID})
	spans := checkTree(t, sr.Ended(), caller)
	var lines []string
	for _, s := range spans {
		lines = append(lines, spanLine(s))
	}
	if want := []string{"saga crash error", "compensation a #2"}; !slices.Equal(lines, want) {
		t.Fatalf("spans after the reopen:\n  %s\nwant\n  %s", strings.Join(lines, "\n  "), strings.Join(want, "\n  "))
	}
	sagaSpan, comp := spans[0], spans[1]
	if sagaSpan.Parent().SpanID() != crashSpanID || !attr(sagaSpan, attrResumed).AsBool() {
		t.Errorf("the resumed saga span's parent is %s (resumed=%v), want the caller's span %s recorded at the start",
			sagaSpan.Parent().SpanID(), attr(sagaSpan, attrResumed).AsBool(), crashSpanID)
	}
	if comp.Parent().SpanID() != sagaSpan.SpanContext().SpanID() {
		t.Error("the resumed compensation's span is not a child of the resumed saga span")
	}
	if v, _ := seen.Load(comp.SpanContext().SpanID()); v != "acme" {
		t.Errorf("the resumed handler got baggage tenant=%v, want the recorded acme", v)
	}
}

// TestChildSagaSpanHangsUnderItsParentsStep: a nested saga's span is a
// child of the span of the parent's step that runs it, so the whole tree
// is one trace under the caller's span.
func TestChildSagaSpanHangsUnderItsParentsStep(t *testing.T) {
	sr, tp := recorder()
	tctx := testCtx(t)
	tr := &trail{}
	e := openT(t, t.TempDir(), Options{Registry: tr.registry(t), TracerProvider: tp})
	defer e.Close()
	_, err := e.Define(tctx, Definition{Name: "reserve", Steps: steps("r1", "r2")})
	must(t, err)
	order := Definition{Name: "order", Steps: append(steps("pay"), StepDef{Name: "stock", Child: "reserve"})}
	_, err = e.Define(tctx, order)
	must(t, err)
	cctx, req := callerCtx(t, tctx, tp)
	st, err := e.Run(cctx, "order", nil, StartOptions{ID: "n1"})
	must(t, err)
	req.End()
	if st.State != StateCompleted {
		t.Fatalf("saga is %s, want COMPLETED", st.State)
	}
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range checkTree(t, sr.Ended(), req.SpanContext()) {
		byName[s.Name()] = s
	}
	for child, parent := range map[string]string{"saga order": "request", "step pay": "saga order", "step stock": "saga order",
		"saga reserve": "step stock", "step r1": "saga reserve", "step r2": "saga reserve"} {
		c, p := byName[child], byName[parent]
		if c == nil || p == nil {
			t.Fatalf("no span %q or %q among %d", child, parent, len(byName))
		}
		if c.Parent().SpanID() != p.SpanContext().SpanID() {
			t.Errorf("span %q is not a child of %q", child, parent)
		}
	}
}
