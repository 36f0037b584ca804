package compensation

import (
	"context"
	"log/slog"
	"strconv"
	"sync"

	"go.opentelemetry.io/otel/trace"
)

// callKey is the context key of the call a context was made for.
type callKey struct{}

// callContext is a handler's context: its parent, plus what Logger needs
// to name the call. One value per attempt; the logger is built on first
// use, so a handler that does not log costs no more than this value (the
// trace and span ids, in particular, are formatted only then).
type callContext struct {
	context.Context
	base    *slog.Logger
	attrs   []any // extra attributes (trace and span ids), added after the call's
	saga    string
	step    string
	kind    Kind
	attempt int

	once   sync.Once
	logger *slog.Logger
}

func (c *callContext) Value(key any) any {
	if key == (callKey{}) {
		return c
	}
	return c.Context.Value(key)
}

func (c *callContext) String() string {
	return "compensation.Call(" + c.saga + "/" + c.step + "/" + string(c.kind) + "#" + strconv.Itoa(c.attempt) + ")"
}

// WithCall returns a context, a child of ctx, for one attempt of the
// call c: Logger of it (or of any context derived from it) returns base
// (slog.Default() when nil) with the attributes saga, step, kind and
// attempt of c, then trace_id and span_id when ctx carries a valid span
// context (an OpenTelemetry span: the attempt's, when the engine traces),
// then attrs (key-value pairs, as slog.Logger.With takes them). The engine hands every action and handler such a context; tests
// of a handler can make one the same way.
func WithCall(ctx context.Context, base *slog.Logger, c *Call, attrs ...any) context.Context {
	return &callContext{Context: ctx, base: base, attrs: attrs, saga: c.SagaID, step: c.Step, kind: c.Kind, attempt: c.Attempt}
}

// Logger returns the logger of the call ctx was made for (see WithCall):
// its records carry the saga id, the step, the kind and the attempt, so
// that a handler's logs line up with the engine's. Outside a call it
// returns slog.Default().
func Logger(ctx context.Context) *slog.Logger {
	c, ok := ctx.Value(callKey{}).(*callContext)
	if !ok {
		return slog.Default()
	}
	c.once.Do(func() {
		base := c.base
		if base == nil {
			base = slog.Default()
		}
		args := make([]any, 0, 12+len(c.attrs))
		args = append(args, "saga", c.saga, "step", c.step, "kind", string(c.kind), "attempt", c.attempt)
		if sc := trace.SpanContextFromContext(c.Context); sc.IsValid() {
			args = append(args, "trace_id", sc.TraceID().String(), "span_id", sc.SpanID().String())
		}
		c.logger = base.With(append(args, c.attrs...)...)
	})
	return c.logger
}
