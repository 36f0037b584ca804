package admin

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
)

// Observer turns engine hooks into Prometheus metrics and a live feed of
// transitions (watch). Create it before the engine and pass Hooks() in
// engine.Options; then give it to New.
type Observer struct {
	started, completed, failed, stuck *prometheus.CounterVec
	compAttempts                      *prometheus.CounterVec
	stepLatency, compLatency          *prometheus.HistogramVec
	appendLatency, batchSize          prometheus.Histogram
	recovery                          prometheus.Gauge
	registry                          *prometheus.Registry

	mu     sync.Mutex
	subs   map[chan Event]struct{}
	gauges sync.Once
}

// watchStates registers the per-state gauges of e (saga_sagas{state}):
// STUCK > 0 is what an alert watches. The engine keeps the counts current,
// so a scrape costs nothing.
func (o *Observer) watchStates(e *engine.Engine) {
	o.gauges.Do(func() {
		for _, st := range fsm.States() {
			st := st
			o.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "saga", Name: "sagas",
				Help: "Sagas per state.", ConstLabels: prometheus.Labels{"state": st.String()}}, func() float64 {
				counts, err := e.StateCounts()
				if err != nil {
					return -1
				}
				return float64(counts[st])
			}))
		}
	})
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

// NewObserver creates the metrics in their own registry.
func NewObserver() *Observer {
	o := &Observer{registry: prometheus.NewRegistry(), subs: map[chan Event]struct{}{}}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "saga", Name: name, Help: help}, labels)
		o.registry.MustRegister(c)
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
	o.registry.MustRegister(o.stepLatency, o.compLatency, o.appendLatency, o.batchSize, o.recovery)
	return o
}

// Hooks returns the engine hooks that feed the observer.
func (o *Observer) Hooks() engine.Hooks {
	return engine.Hooks{
		OnTransition: o.onTransition,
		OnCommit: func(records int, d time.Duration) {
			o.batchSize.Observe(float64(records))
			o.appendLatency.Observe(d.Seconds())
		},
		OnRecovered: func(rs engine.RecoveryStats) { o.recovery.Set(rs.Duration.Seconds()) },
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
	case fsm.KindCompStarted:
		o.compAttempts.WithLabelValues(def).Inc()
	case fsm.KindStepCompleted:
		if st := sg.Steps[r.Step]; st.StartedAt > 0 && st.EndedAt >= st.StartedAt {
			o.stepLatency.WithLabelValues(def).Observe(time.Duration(st.EndedAt - st.StartedAt).Seconds())
		}
	case fsm.KindCompCompleted:
		if st := sg.Steps[r.Step]; st.CompRoundStart > 0 && st.CompEndedAt >= st.CompRoundStart {
			o.compLatency.WithLabelValues(def).Observe(time.Duration(st.CompEndedAt - st.CompRoundStart).Seconds())
		}
	}
	if ev.Prev != sg.State {
		switch sg.State {
		case fsm.StateCompleted:
			o.completed.WithLabelValues(def).Inc()
		case fsm.StateFailed:
			o.failed.WithLabelValues(def).Inc()
		case fsm.StateStuck:
			o.stuck.WithLabelValues(def).Inc()
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

// subscribe returns a channel of events and its cancel function.
func (o *Observer) subscribe() (chan Event, func()) {
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
