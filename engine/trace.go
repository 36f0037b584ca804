package engine

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// Tracing (Options.TracerProvider). The spans of one saga:
//
//	caller's span (at Start or Run)
//	└── saga <definition>            one per stretch of driving in one engine
//	    ├── step <name>              one per attempt of an action
//	    └── compensation <name>      one per attempt of a compensation
//
// The saga span is a child of the caller's span, not a new trace linked
// to it: the first question about a stuck saga is "which request started
// it, and what did its handlers do in the other services", and one trace
// id answers it in any backend, where a link must be followed by hand.
// The price is that a saga which runs for days stretches its caller's
// trace over days; sagas that long are rare, and their stretches of
// driving are separate spans (below), each short.
//
// The start record holds the W3C trace context (traceparent, tracestate,
// baggage) of the caller's context: fsm.StartInfo.Trace, kept on the
// saga. A saga span ends when the saga settles (COMPLETED, FAILED:
// status error; STUCK: status error), when the engine closes, or when
// its term of leadership ends. Whoever drives the saga next (after a
// crash and Open, a reopen, an operator's Retry or Resolve of a STUCK
// saga, a new leader) starts a new saga span with the recorded context as
// its parent and the attribute saga.resumed: the same trace, under the
// same parent span, whatever happened to the process that started it. So
// a crash loses only the spans the dead process had not exported (its
// open saga span among them: the attempt spans it did export then name a
// parent the backend never receives); everything after the crash hangs
// under the caller's span. When the caller's context has no span, the
// first saga span is the root of a new trace and the record names it
// instead, so that later stretches are its children.
//
// Handlers get a context that carries their attempt's span and the
// baggage recorded at the start. Operator actions (abort, retry,
// resolve) and the engine's own aborts (deadline, recovery) are events
// of the saga span, with who (saga.actor) and why (saga.reason).
//
// Off (a nil TracerProvider), e.tr is nil: nothing is recorded in the
// start record and no span is made; every method below returns at once
// without allocating.

const tracerName = "github.com/sagaengine/saga/engine"

// tracing is the engine's tracing state; nil when tracing is off.
type tracing struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	mu     sync.Mutex
	spans  map[string]sagaSpan // the open saga spans, by saga id; under mu
	names  spanNames
}

// sagaSpan is the open span of a saga's stretch of driving, with the
// baggage its handlers get.
type sagaSpan struct {
	span trace.Span
	bag  baggage.Baggage
}

func newTracing(tp trace.TracerProvider) *tracing {
	if tp == nil {
		return nil
	}
	return &tracing{
		tracer: tp.Tracer(tracerName),
		prop:   propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		spans:  map[string]sagaSpan{},
	}
}

// Attribute keys of the engine's spans.
const (
	attrSagaID         = attribute.Key("saga.id")
	attrDefinition     = attribute.Key("saga.definition")
	attrVersion        = attribute.Key("saga.version")
	attrState          = attribute.Key("saga.state")
	attrResumed        = attribute.Key("saga.resumed")
	attrStep           = attribute.Key("saga.step")
	attrKind           = attribute.Key("saga.call.kind")
	attrAttempt        = attribute.Key("saga.attempt")
	attrIdempotencyKey = attribute.Key("saga.idempotency_key")
	attrUncertain      = attribute.Key("saga.uncertain")
	attrActor          = attribute.Key("saga.actor")
	attrReason         = attribute.Key("saga.reason")
)

// stateAttrs are the saga.state attributes that end a saga span, by
// state: made once, where a SetAttributes call would allocate its
// variadic slice at every end.
var stateAttrs = func() (a [fsm.StateStuck + 1][]attribute.KeyValue) {
	for _, st := range fsm.States() {
		a[st] = []attribute.KeyValue{attrState.String(st.String())}
	}
	return a
}()

// begin starts the span of a saga about to start, a child of ctx's span,
// and returns the trace context to record in its start record (nil if
// there is none to record).
func (t *tracing) begin(ctx context.Context, id string, si *fsm.StartInfo) (trace.Span, baggage.Baggage, map[string]string) {
	if t == nil {
		return nil, baggage.Baggage{}, nil
	}
	a := sagaAttrsPool.Get().(*startAttrs)
	a.kv[0], a.kv[1], a.kv[2] = attrSagaID.String(id), attrDefinition.String(si.Definition), attrVersion.Int(si.Version)
	_, span := t.tracer.Start(ctx, t.names.get(prefixSaga, si.Definition), a.opts...)
	a.put(sagaAttrsPool)
	pctx := ctx
	if !trace.SpanContextFromContext(ctx).IsValid() {
		pctx = trace.ContextWithSpan(ctx, span) // no caller's span: later stretches hang under this one
	}
	carrier := propagation.MapCarrier{}
	t.prop.Inject(pctx, carrier)
	if len(carrier) == 0 {
		carrier = nil
	}
	return span, baggage.FromContext(ctx), carrier
}

// started keeps the span begin made as its saga's, once the start is
// applied (created); a start that failed, or found its saga existing,
// ends it.
func (t *tracing) started(id string, span trace.Span, bag baggage.Baggage, created bool, err error) {
	if !created {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "start failed")
		} else {
			span.SetAttributes(attribute.Bool("saga.existing", true))
		}
		span.End()
		return
	}
	t.mu.Lock()
	if old, ok := t.spans[id]; ok {
		old.span.End() // cannot happen: a new saga has no span yet
	}
	t.spans[id] = sagaSpan{span: span, bag: bag}
	t.mu.Unlock()
}

// sagaSpanLocked returns the open span of sg, starting one (a child of
// the context recorded at its start) if none is open. t.mu held.
func (t *tracing) sagaSpanLocked(sg *fsm.Saga) sagaSpan {
	if ss, ok := t.spans[sg.ID]; ok {
		return ss
	}
	ctx := t.prop.Extract(context.Background(), propagation.MapCarrier(sg.Trace))
	_, span := t.tracer.Start(ctx, t.names.get(prefixSaga, sg.Definition), trace.WithAttributes(
		attrSagaID.String(sg.ID), attrDefinition.String(sg.Definition), attrVersion.Int(sg.Version), attrResumed.Bool(true)))
	ss := sagaSpan{span: span, bag: baggage.FromContext(ctx)}
	t.spans[sg.ID] = ss
	return ss
}

// handlerCtx returns the context of one attempt of call c of saga sg: ctx
// with the call's logger (compensation.Logger) and, when tracing, the
// attempt's span (a child of the saga's) and the saga's baggage. End the
// span (nil when not tracing) with endAttempt.
func (e *Engine) handlerCtx(ctx context.Context, sg *fsm.Saga, c *compensation.Call) (context.Context, trace.Span) {
	t := e.tr
	if t == nil {
		return compensation.WithCall(ctx, e.opts.Logger, c), nil
	}
	t.mu.Lock()
	if _, open := t.spans[sg.ID]; !open && ctx.Err() != nil {
		// The term ended (or the engine is closing) after the driver's
		// last check: endAll, which runs after the term's context is
		// cancelled, may have passed already, and a saga span opened now
		// would stay open on a deposed node. The attempt goes untraced.
		t.mu.Unlock()
		return compensation.WithCall(ctx, e.opts.Logger, c), nil
	}
	ss := t.sagaSpanLocked(sg)
	t.mu.Unlock()
	if ss.bag.Len() > 0 || baggage.FromContext(ctx).Len() > 0 {
		// (Without baggage on either side, the handler's would be empty
		// either way: skip the two allocations.)
		ctx = baggage.ContextWithBaggage(ctx, ss.bag)
	}
	ctx = trace.ContextWithSpan(ctx, ss.span)
	prefix := prefixStep
	if c.Kind == compensation.KindCompensation {
		prefix = prefixCompensation
	}
	a := attemptAttrsPool.Get().(*startAttrs)
	copy(a.kv, []attribute.KeyValue{
		attrSagaID.String(c.SagaID), attrDefinition.String(c.Definition), attrVersion.Int(sg.Version),
		attrStep.String(c.Step), attrKind.String(string(c.Kind)),
		attrAttempt.Int(c.Attempt), attrIdempotencyKey.String(c.IdempotencyKey), attrUncertain.Bool(c.Uncertain)})
	ctx, span := t.tracer.Start(ctx, t.names.get(prefix, c.Step), a.opts...)
	a.put(attemptAttrsPool)
	// The logger's trace_id and span_id come from ctx's span, formatted
	// only if the handler asks for its logger (compensation.Logger).
	return compensation.WithCall(ctx, e.opts.Logger, c), span
}

// startAttrs is the attribute option of a span's start, reused through
// a pool (newStartAttrsPool): made anew, trace.WithAttributes' variadic
// slice, the option boxing it and the options slice are three
// allocations per span. opts[0] is trace.WithAttributes(kv...), boxed
// once: it sees whatever kv holds when Start reads it. Reuse after Start
// returns is safe with any TracerProvider that reads its options in
// Start, as the SDK's does: an option can be read only through
// trace.NewSpanStartConfig, which copies the attributes into the span
// config it returns.
type startAttrs struct {
	kv   []attribute.KeyValue
	opts []trace.SpanStartOption
}

func newStartAttrsPool(n int) *sync.Pool {
	return &sync.Pool{New: func() any {
		a := &startAttrs{kv: make([]attribute.KeyValue, n)}
		a.opts = []trace.SpanStartOption{trace.WithAttributes(a.kv...)}
		return a
	}}
}

// put returns a to pool, holding no strings while pooled.
func (a *startAttrs) put(pool *sync.Pool) {
	clear(a.kv)
	pool.Put(a)
}

var (
	// The 3 attributes of a new saga span: id, definition, version.
	sagaAttrsPool = newStartAttrsPool(3)
	// The 8 attributes of an attempt span, no more: when a span ends,
	// the SDK dedupes its attributes through a map sized to their
	// number, which stays off the heap up to 8 and costs 3 allocations
	// per span from 9. So the step's index is not one: the definition,
	// its version and the step's name fix it.
	attemptAttrsPool = newStartAttrsPool(8)
)

// Prefixes of span names (spanNames).
const (
	prefixSaga         = "saga "
	prefixStep         = "step "
	prefixCompensation = "compensation "
)

// maxSpanNames bounds the spanNames cache: span names are made of
// definition and step names, few; a process that defines without end
// gets no more.
const maxSpanNames = 1024

// spanNames caches span names ("saga <definition>", "step <name>",
// "compensation <name>"): made once per name rather than per span. Read
// without a lock (a map never written once published: each new name
// publishes a copy).
type spanNames struct {
	m  atomic.Pointer[map[spanName]string]
	mu sync.Mutex // serializes the copies
}

type spanName struct{ prefix, name string }

func (sn *spanNames) get(prefix, name string) string {
	k := spanName{prefix, name}
	if m := sn.m.Load(); m != nil {
		if n, ok := (*m)[k]; ok {
			return n
		}
	}
	n := prefix + name
	sn.mu.Lock()
	defer sn.mu.Unlock()
	m := map[spanName]string{}
	if old := sn.m.Load(); old != nil {
		if len(*old) >= maxSpanNames {
			return n
		}
		m = maps.Clone(*old)
	}
	m[k] = n
	sn.m.Store(&m)
	return n
}

// endAttempt ends an attempt's span (nil: not tracing), recording its
// error.
func endAttempt(span trace.Span, err error, timedOut bool) {
	if span == nil {
		return
	}
	if err != nil {
		span.RecordError(err)
		msg := err.Error()
		if timedOut {
			msg = "timed out: " + msg
		}
		span.SetStatus(codes.Error, msg)
	}
	span.End()
}

// settle ends the span of a saga that settled (COMPLETED, FAILED, STUCK).
func (t *tracing) settle(sg *fsm.Saga) {
	t.mu.Lock()
	ss, ok := t.spans[sg.ID]
	delete(t.spans, sg.ID)
	t.mu.Unlock()
	if ok {
		endSaga(ss.span, sg)
	}
}

func endSaga(span trace.Span, sg *fsm.Saga) {
	if int(sg.State) < len(stateAttrs) && stateAttrs[sg.State] != nil {
		span.SetAttributes(stateAttrs[sg.State]...)
	} else {
		span.SetAttributes(attrState.String(sg.State.String()))
	}
	switch sg.State {
	case fsm.StateFailed, fsm.StateStuck:
		msg := sg.State.String()
		if sg.State == fsm.StateStuck {
			msg += ": a compensation exhausted its retry budget; an operator must retry or resolve it"
		}
		if sg.LastError != nil {
			msg += ": " + sg.LastError.Error()
		}
		span.SetStatus(codes.Error, msg)
	}
	span.End()
}

// event adds to the saga's span the event of an abort, a retry or a
// resolve just applied (sg is the state after it): who and why. A saga
// it settled gets its span ended.
func (t *tracing) event(sg *fsm.Saga, kind fsm.Kind, actor, reason string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	ss := t.sagaSpanLocked(sg)
	settled := sg.State.Terminal() || sg.State == fsm.StateStuck
	if settled {
		delete(t.spans, sg.ID)
	}
	t.mu.Unlock()
	ss.span.AddEvent("saga."+kind.String(), trace.WithAttributes(attrActor.String(actor), attrReason.String(reason)))
	if settled {
		endSaga(ss.span, sg)
	}
}

// endAll ends every open saga span: the engine closes, or its term of
// leadership ended (another engine drives the sagas from here on).
func (t *tracing) endAll(why string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	spans := t.spans
	t.spans = map[string]sagaSpan{}
	t.mu.Unlock()
	for _, ss := range spans {
		ss.span.AddEvent("saga.released", trace.WithAttributes(attrReason.String(why)))
		ss.span.End()
	}
}
