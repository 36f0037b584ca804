package compensation

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

func TestRegistry(t *testing.T) {
	r := NewRegistry()
	noop := func(context.Context, Call) error { return nil }
	if err := r.Register("delete_file", noop); err != nil {
		t.Fatal(err)
	}
	if err := r.Register("delete_file", noop); !errors.Is(err, ErrDuplicateName) {
		t.Fatalf("second registration: %v", err)
	}
	for _, bad := range []string{"", "has space", "a/b", string(make([]byte, 129))} {
		if err := r.Register(bad, noop); !errors.Is(err, ErrInvalidName) {
			t.Fatalf("name %q: %v", bad, err)
		}
	}
	if err := r.Register("nil", nil); !errors.Is(err, ErrNilFunc) {
		t.Fatalf("nil handler: %v", err)
	}
	if err := r.RegisterAction("delete_file", func(context.Context, Call) ([]byte, error) { return nil, nil }); err != nil {
		t.Fatalf("actions have their own names: %v", err)
	}
	err := r.Check([]string{"delete_file", "", "unparse", "drop"}, []string{"delete_file", "upload"})
	var ue *UnknownNamesError
	if !errors.As(err, &ue) || !errors.Is(err, ErrUnknownName) {
		t.Fatalf("check: %v", err)
	}
	if len(ue.Handlers) != 2 || ue.Handlers[0] != "unparse" || len(ue.Actions) != 1 || ue.Actions[0] != "upload" {
		t.Fatalf("unknown names %+v", ue)
	}
	if err := r.Check([]string{"delete_file"}, nil); err != nil {
		t.Fatal(err)
	}
	if got := IdempotencyKey("s1", "pay", KindCompensation); got != "s1/pay/compensation" {
		t.Fatalf("key %q", got)
	}
}

func TestPolicyNext(t *testing.T) {
	p := Policy{InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2, MaxAttempts: 6}
	want := []time.Duration{100, 200, 400, 800, 1000}
	for i, w := range want {
		d, ok := p.Next(i+1, 0, 0)
		if !ok || d != w*time.Millisecond {
			t.Fatalf("after attempt %d: %v %v, want %v", i+1, d, ok, w*time.Millisecond)
		}
	}
	if _, ok := p.Next(6, 0, 0); ok {
		t.Fatal("attempt 7 allowed with MaxAttempts 6")
	}
	// Jitter shortens the delay by up to the fraction.
	pj := Policy{InitialBackoff: time.Second, Jitter: 0.5}
	if d, _ := pj.Next(1, 0, 0.999); d <= 500*time.Millisecond || d > time.Second {
		t.Fatalf("jittered delay %v", d)
	}
	// Elapsed budget.
	pe := Policy{InitialBackoff: time.Second, MaxElapsed: 10 * time.Second}
	if _, ok := pe.Next(3, 9500*time.Millisecond, 0); ok {
		t.Fatal("retry past MaxElapsed allowed")
	}
	if _, ok := pe.Next(3, 8*time.Second, 0); !ok {
		t.Fatal("retry inside MaxElapsed refused")
	}
	// Huge attempt counts must not overflow into negative delays.
	if d, ok := (Policy{InitialBackoff: time.Second, Multiplier: 10}).Next(500, 0, 0); !ok || d <= 0 {
		t.Fatalf("overflowing backoff: %v %v", d, ok)
	}
	if !IsPermanent(Permanent(errors.New("x"))) || IsPermanent(errors.New("x")) || Permanent(nil) != nil {
		t.Fatal("Permanent/IsPermanent")
	}
}

// TestLoggerNamesTheCall: a handler's logger carries the saga, step,
// kind and attempt of its call (then the trace and span ids of a span in
// its context, then extra attributes), also from a context derived from
// the handler's; outside a call it is slog.Default().
func TestLoggerNamesTheCall(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}}))
	c := Call{SagaID: "s1", Step: "pay", Kind: KindCompensation, Attempt: 3}
	ctx, cancel := context.WithCancel(WithCall(context.Background(), base, &c, "trace_id", "t1"))
	defer cancel()
	Logger(ctx).Info("refunded")
	want := "level=INFO msg=refunded saga=s1 step=pay kind=compensation attempt=3 trace_id=t1\n"
	if buf.String() != want {
		t.Fatalf("logged %q, want %q", buf.String(), want)
	}
	if Logger(context.Background()) != slog.Default() {
		t.Fatal("outside a call, Logger is not slog.Default()")
	}
	if Logger(WithCall(context.Background(), nil, &c)) == nil {
		t.Fatal("a call without a base logger has no logger")
	}

	// A span in the call's context: its trace and span ids follow the
	// call's attributes, before the extra ones.
	buf.Reset()
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:  trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7}, TraceFlags: trace.FlagsSampled})
	Logger(WithCall(trace.ContextWithSpanContext(context.Background(), sc), base, &c, "extra", 1)).Info("refunded")
	want = "level=INFO msg=refunded saga=s1 step=pay kind=compensation attempt=3 trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7 extra=1\n"
	if buf.String() != want {
		t.Fatalf("logged %q, want %q", buf.String(), want)
	}
}
