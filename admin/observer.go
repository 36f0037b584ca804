package admin

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
)

// Observer turns engine hooks into Prometheus metrics and a live feed of
// transitions (watch). Create it before the engine and pass Hooks() in
// engine.Options; then give it to New.
//
// The metrics (all prefixed saga_, labelled by definition or state only,
// never by saga id):
//
//	saga_sagas_started_total, saga_sagas_completed_total,
//	saga_sagas_failed_total, saga_sagas_stuck_total   counters {definition}
//	saga_compensation_attempts_total                   counter {definition}
//	saga_step_duration_seconds                         histogram {definition}
//	saga_compensation_duration_seconds                 histogram {definition}
//	saga_wal_append_seconds                            histogram (write + fsync of one group commit)
//	saga_group_commit_records                          histogram (records per fsync)
//	saga_recovery_seconds                              gauge (the last Open)
//	saga_engine_fail_stopped                           gauge: 1 once an I/O error stopped the engine (engine.Hooks.OnPoisoned), 0 from its next Open
//	saga_sagas                                         gauge {state}, once WatchStates (or New) named the engine
type Observer struct {
	started, completed, failed, stuck *prometheus.CounterVec
	compAttempts                      *prometheus.CounterVec
	stepLatency, compLatency          *prometheus.HistogramVec
	appendLatency, batchSize          prometheus.Histogram
	recovery, failStopped             prometheus.Gauge
	states                            *stateGauges
	gatherer                          prometheus.Gatherer // what /metrics serves

	// totals mirror the counters above, summed over definitions, for
	// Counters; written by the engine's hooks, read by anyone.
	totals struct {
		started, completed, failed, stuck, compAttempts atomic.Uint64
		failStopped                                     atomic.Bool
		recovery                                        atomic.Int64 // ns
	}

	mu   sync.Mutex
	subs map[chan Event]struct{}
}

// Counters are the observer's counters summed over definitions, since it
// was created: what the web console computes rates from, without a
// Prometheus server.
type Counters struct {
	Started, Completed, Failed, Stuck, CompensationAttempts uint64
	// FailStopped is true once an I/O error stopped the engine, false
	// again from its next Open (saga_engine_fail_stopped).
	FailStopped bool
	// Recovery is the duration of the last Open.
	Recovery time.Duration
}

// Counters returns the counters now.
func (o *Observer) Counters() Counters {
	t := &o.totals
	return Counters{Started: t.started.Load(), Completed: t.completed.Load(), Failed: t.failed.Load(),
		Stuck: t.stuck.Load(), CompensationAttempts: t.compAttempts.Load(), FailStopped: t.failStopped.Load(),
		Recovery: time.Duration(t.recovery.Load())}
}

// ObserverOptions configures an Observer; the zero value works.
type ObserverOptions struct {
	// Registerer receives the saga metrics, so that the application serves
	// them on its own /metrics (prometheus.DefaultRegisterer, say).
	// Default: a registry of the observer's own.
	Registerer prometheus.Registerer
	// Gatherer is what the admin server's /metrics serves. Default:
	// Registerer if it is also a Gatherer (a *prometheus.Registry is), the
	// observer's own registry if Registerer is nil. Required when
	// Registerer is not a Gatherer (prometheus.WrapRegistererWith, say).
	Gatherer prometheus.Gatherer
}

// ErrRegisterMetrics: NewObserverWith could not register the saga metrics
// (the registerer already holds a metric of that name: another Observer,
// say). It wraps the prometheus error (a prometheus.AlreadyRegisteredError
// for a duplicate), and none of the observer's metrics stays registered.
var ErrRegisterMetrics = errors.New("admin: cannot register the saga metrics")

// stateGauges is saga_sagas{state}: the engine's state counts, read at
// scrape time (the engine keeps them current, so a scrape costs nothing).
// STUCK > 0 is what an alert watches. It reports nothing until an engine
// is set; the first one set stays.
type stateGauges struct {
	desc *prometheus.Desc
	e    atomic.Pointer[engine.Engine]
}

func (g *stateGauges) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g *stateGauges) Collect(ch chan<- prometheus.Metric) {
	e := g.e.Load()
	if e == nil {
		return
	}
	counts, err := e.StateCounts()
	for _, st := range fsm.States() {
		v := -1.0 // the counts are unavailable (a closed engine)
		if err == nil {
			v = float64(counts[st])
		}
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, v, st.String())
	}
}

// WatchStates serves saga_sagas{state} from e's state counts. New calls
// it; call it when the metrics are served without the admin server. Only
// the first engine counts.
func (o *Observer) WatchStates(e *engine.Engine) {
	if e != nil {
		o.states.e.CompareAndSwap(nil, e)
	}
}

// Event is one transition as the watch feed sends it.
type Event struct {
	Index      uint64 `json:"index"`
	Saga       string `json:"saga"`
	Definition string `json:"definition"`
	Kind       string `json:"kind"`
	Step       string `json:"step,omitempty"`
	State      string `json:"state"`
	Actor      string `json:"actor,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Error      string `json:"error,omitempty"`
	At         string `json:"at"`
}

// NewObserver creates the metrics in a registry of their own, served by
// the admin server's /metrics.
func NewObserver() *Observer {
	o, err := NewObserverWith(ObserverOptions{})
	if err != nil {
		panic(err) // a fresh registry holds nothing to conflict with
	}
	return o
}

// NewObserverWith creates the metrics in opts.Registerer. Errors:
// ErrInvalidOptions (a Registerer that is no Gatherer, without Gatherer),
// ErrRegisterMetrics.
func NewObserverWith(opts ObserverOptions) (*Observer, error) {
	o := &Observer{subs: map[chan Event]struct{}{}, gatherer: opts.Gatherer}
	reg := opts.Registerer
	if reg == nil {
		own := prometheus.NewRegistry()
		reg = own
		if o.gatherer == nil {
			o.gatherer = own
		}
	}
	if o.gatherer == nil {
		g, ok := reg.(prometheus.Gatherer)
		if !ok {
			return nil, fmt.Errorf("%w: ObserverOptions.Registerer (%T) is not a Gatherer: set Gatherer to what /metrics serves", ErrInvalidOptions, reg)
		}
		o.gatherer = g
	}
	var all []prometheus.Collector
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "saga", Name: name, Help: help}, labels)
		all = append(all, c)
		return c
	}
	o.started = counter("sagas_started_total", "Sagas started.", "definition")
	o.completed = counter("sagas_completed_total", "Sagas completed.", "definition")
	o.failed = counter("sagas_failed_total", "Sagas failed and fully compensated.", "definition")
	o.stuck = counter("sagas_stuck_total", "Sagas that became STUCK (a compensation exhausted its retries).", "definition")
	o.compAttempts = counter("compensation_attempts_total", "Compensation attempts started.", "definition")
	buckets := prometheus.ExponentialBuckets(0.0001, 4, 12) // 100µs .. ~7min
	o.stepLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "saga", Name: "step_duration_seconds",
		Help: "Time from a step's start to its completion.", Buckets: buckets}, []string{"definition"})
	o.compLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "saga", Name: "compensation_duration_seconds",
		Help: "Time from a compensation's first attempt to its completion.", Buckets: buckets}, []string{"definition"})
	o.appendLatency = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "saga", Name: "wal_append_seconds",
		Help: "Time of one group commit's log append (write + fsync).", Buckets: prometheus.ExponentialBuckets(0.00001, 2, 16)})
	o.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "saga", Name: "group_commit_records",
		Help: "Records per group commit (per fsync).", Buckets: prometheus.ExponentialBuckets(1, 2, 13)})
	o.recovery = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "saga", Name: "recovery_seconds",
		Help: "Duration of the last Open (replay and resume)."})
	o.failStopped = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "saga", Name: "engine_fail_stopped",
		Help: "1 once an I/O error stopped the engine (fail-stop: nothing commits until it is closed and reopened), 0 from its next Open."})
	o.states = &stateGauges{desc: prometheus.NewDesc("saga_sagas", "Sagas per state.", []string{"state"}, nil)}
	all = append(all, o.stepLatency, o.compLatency, o.appendLatency, o.batchSize, o.recovery, o.failStopped, o.states)
	for i, c := range all {
		if err := reg.Register(c); err != nil {
			for _, done := range all[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("%w: %w", ErrRegisterMetrics, err)
		}
	}
	return o, nil
}

// Hooks returns the engine hooks that feed the observer.
func (o *Observer) Hooks() engine.Hooks {
	return engine.Hooks{
		OnTransition: o.onTransition,
		OnCommit: func(records int, d time.Duration) {
			o.batchSize.Observe(float64(records))
			o.appendLatency.Observe(d.Seconds())
		},
		OnRecovered: func(rs engine.RecoveryStats) {
			o.recovery.Set(rs.Duration.Seconds())
			o.totals.recovery.Store(int64(rs.Duration))
			o.failStopped.Set(0) // an engine reopened with this observer runs again
			o.totals.failStopped.Store(false)
		},
		// The engine calls it once, from the commit path, when it poisons
		// itself; it stays poisoned until closed, so the gauge stays 1.
		OnPoisoned: func(error) {
			o.failStopped.Set(1)
			o.totals.failStopped.Store(true)
		},
	}
}

func (o *Observer) onTransition(ev engine.TransitionEvent) {
	sg, r := ev.Saga, ev.Record
	if sg == nil {
		return
	}
	def := sg.Definition
	switch r.Kind {
	case fsm.KindSagaStarted:
		o.started.WithLabelValues(def).Inc()
		o.totals.started.Add(1)
	case fsm.KindCompStarted:
		o.compAttempts.WithLabelValues(def).Inc()
		o.totals.compAttempts.Add(1)
	case fsm.KindStepCompleted:
		if st := sg.Steps[r.Step]; st.StartedAt > 0 && st.EndedAt >= st.StartedAt {
			observe(o.stepLatency.WithLabelValues(def), time.Duration(st.EndedAt-st.StartedAt).Seconds(), sg)
		}
	case fsm.KindCompCompleted:
		if st := sg.Steps[r.Step]; st.CompRoundStart > 0 && st.CompEndedAt >= st.CompRoundStart {
			observe(o.compLatency.WithLabelValues(def), time.Duration(st.CompEndedAt-st.CompRoundStart).Seconds(), sg)
		}
	}
	if ev.Prev != sg.State {
		switch sg.State {
		case fsm.StateCompleted:
			o.completed.WithLabelValues(def).Inc()
			o.totals.completed.Add(1)
		case fsm.StateFailed:
			o.failed.WithLabelValues(def).Inc()
			o.totals.failed.Add(1)
		case fsm.StateStuck:
			o.stuck.WithLabelValues(def).Inc()
			o.totals.stuck.Add(1)
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.subs) == 0 {
		return
	}
	e := Event{Index: ev.Index, Saga: sg.ID, Definition: def, Kind: r.Kind.String(), State: sg.State.String(),
		Actor: r.Actor, Reason: r.Reason, At: time.Unix(0, r.At).UTC().Format(time.RFC3339Nano)}
	if r.Step < len(sg.Steps) && r.Kind != fsm.KindSagaStarted {
		e.Step = sg.Steps[r.Step].Name
	}
	if r.Err != nil {
		e.Error = r.Err.Error()
	}
	for ch := range o.subs {
		select {
		case ch <- e:
		default: // a slow watcher misses events rather than slowing the engine
		}
	}
}

// Subscribe returns a feed of the engine's transitions from now on and
// its cancel function, which the caller must call. A subscriber that
// does not keep up misses events (the feed never slows the engine): a
// reader that must not miss a change re-reads the state after one.
func (o *Observer) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 1024)
	o.mu.Lock()
	o.subs[ch] = struct{}{}
	o.mu.Unlock()
	return ch, func() {
		o.mu.Lock()
		delete(o.subs, ch)
		o.mu.Unlock()
	}
}

// observe records a latency, with the saga's trace id as an exemplar when
// the saga was started under a trace (engine.Options.TracerProvider
// records the W3C traceparent in the start record): a slow bucket then
// links to a trace that shows why. Exemplars are served in the
// OpenMetrics format (/metrics with Accept: application/openmetrics-text).
func observe(h prometheus.Observer, v float64, sg *fsm.Saga) {
	if id := traceID(sg.Trace["traceparent"]); id != "" {
		if eo, ok := h.(prometheus.ExemplarObserver); ok {
			eo.ObserveWithExemplar(v, prometheus.Labels{"trace_id": id})
			return
		}
	}
	h.Observe(v)
}

// traceID is the trace id of a W3C traceparent (version-traceid-spanid-
// flags), "" if it is not one.
func traceID(tp string) string {
	if len(tp) < 55 || tp[2] != '-' || tp[35] != '-' {
		return ""
	}
	id := tp[3:35]
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return ""
		}
	}
	if id == "00000000000000000000000000000000" {
		return ""
	}
	return id
}
