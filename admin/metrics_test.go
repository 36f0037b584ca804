package admin

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"

	"github.com/sagaengine/saga/internal/testctx"
)

// sagaFamilies lists the saga_ metric families g holds.
func sagaFamilies(t *testing.T, g prometheus.Gatherer) map[string]bool {
	t.Helper()
	mfs, err := g.Gather()
	must(t, err)
	out := map[string]bool{}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "saga_") {
			out[mf.GetName()] = true
		}
	}
	return out
}

func TestMetricsGoToTheCallersRegistryAndAdminServesThem(t *testing.T) {
	reg := prometheus.NewRegistry()
	app := prometheus.NewCounter(prometheus.CounterOpts{Name: "app_requests_total", Help: "The application's own."})
	reg.MustRegister(app)
	obs, err := NewObserverWith(ObserverOptions{Registerer: reg})
	must(t, err)
	e, err := engine.Open(t.TempDir(), engine.Options{Logger: quiet, Hooks: obs.Hooks()})
	must(t, err)
	defer e.Close()
	srv, err := New(e, obs, Options{Token: token, Logger: quiet})
	must(t, err)
	got := sagaFamilies(t, reg)
	for _, name := range []string{"saga_recovery_seconds", "saga_sagas", "saga_wal_append_seconds", "saga_group_commit_records"} {
		if !got[name] {
			t.Errorf("the caller's registry lacks %s (it has %v)", name, got)
		}
	}
	rec := call(srv.Handler(), "GET", "/metrics", "Bearer "+token, "")
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `saga_sagas{state="STUCK"} 0`) || !strings.Contains(rec.Body.String(), "app_requests_total 0") {
		t.Fatalf("/metrics on the caller's registry: %d\n%s", rec.Code, rec.Body)
	}
}

func TestRegisteringTwiceIsAnErrorNotAPanic(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, err := NewObserverWith(ObserverOptions{Registerer: reg})
	must(t, err)
	before := sagaFamilies(t, reg)
	_, err = NewObserverWith(ObserverOptions{Registerer: reg})
	var dup prometheus.AlreadyRegisteredError
	if !errors.Is(err, ErrRegisterMetrics) || !errors.As(err, &dup) {
		t.Fatalf("a second observer on the same registry: %v, want ErrRegisterMetrics wrapping AlreadyRegisteredError", err)
	}
	if after := sagaFamilies(t, reg); len(after) != len(before) {
		t.Fatalf("the failed registration changed the registry: %v, was %v", after, before)
	}
}

func TestAConflictLeavesNoSagaMetricRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	// Another saga_sagas (a registry never forgets a name's help and
	// labels, so it has ours), found after most of ours were registered.
	foreign := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "saga_sagas", Help: "Sagas per state."}, []string{"state"})
	reg.MustRegister(foreign)
	_, err := NewObserverWith(ObserverOptions{Registerer: reg})
	if !errors.Is(err, ErrRegisterMetrics) {
		t.Fatalf("a saga_sagas already there: %v, want ErrRegisterMetrics", err)
	}
	// Once the conflict is gone, a retry registers everything: the failed
	// attempt left none of its metrics behind.
	reg.Unregister(foreign)
	if _, err := NewObserverWith(ObserverOptions{Registerer: reg}); err != nil {
		t.Fatalf("retry after the conflict was removed: %v", err)
	}
}

func TestARegistererThatIsNoGathererNeedsAGatherer(t *testing.T) {
	reg := prometheus.NewRegistry()
	wrapped := prometheus.WrapRegistererWith(prometheus.Labels{"member": "n1"}, reg)
	if _, err := NewObserverWith(ObserverOptions{Registerer: wrapped}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("wrapped registerer without a Gatherer: %v, want ErrInvalidOptions", err)
	}
	obs, err := NewObserverWith(ObserverOptions{Registerer: wrapped, Gatherer: reg})
	must(t, err)
	obs.recovery.Set(1)
	n, err := testutil.GatherAndCount(obs.gatherer, "saga_recovery_seconds")
	must(t, err)
	if n != 1 {
		t.Fatalf("the Gatherer serves %d saga_recovery_seconds, want 1", n)
	}
}

// TestMetricNamesFollowPrometheusConventions lints every saga metric the
// fixture's sagas produced (units in names, _total counters, ...) and
// keeps their labels bounded: definition and state only, never a saga id.
func TestMetricNamesFollowPrometheusConventions(t *testing.T) {
	_, obs, _ := fixture(t)
	problems, err := testutil.GatherAndLint(obs.gatherer)
	must(t, err)
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	mfs, err := obs.gatherer.Gather()
	must(t, err)
	if len(mfs) < 11 {
		t.Fatalf("only %d metric families to check", len(mfs))
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "saga_") {
			t.Errorf("%s lacks the saga_ prefix", mf.GetName())
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() != "definition" && l.GetName() != "state" {
					t.Errorf("%s has the label %s: labels must stay bounded (definition, state)", mf.GetName(), l.GetName())
				}
			}
		}
	}
}

// failingLog fails every append once fail is set, as a full or broken
// disk would.
type failingLog struct {
	engine.Log
	fail atomic.Bool
}

var errDisk = errors.New("injected: no space left on device")

func (l *failingLog) Append(recs [][]byte) (uint64, error) {
	if l.fail.Load() {
		return 0, errDisk
	}
	return l.Log.Append(recs)
}

// TestFailStopShowsInAGauge: saga_engine_fail_stopped is 0 while the
// engine runs, 1 once a log write failed and poisoned it, and 0 again
// when the directory is reopened with the same observer.
func TestFailStopShowsInAGauge(t *testing.T) {
	dir := t.TempDir()
	obs := NewObserver()
	fl := &failingLog{}
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	e, err := engine.Open(dir, engine.Options{Registry: reg, Logger: quiet, Hooks: obs.Hooks(),
		WrapLog: func(l engine.Log) engine.Log { fl.Log = l; return fl }})
	must(t, err)
	ctx := testctx.New(t)
	def := engine.Definition{Name: "d", Steps: []engine.StepDef{{Name: "s", Action: "ok"}}}
	if got := testutil.ToFloat64(obs.failStopped); got != 0 {
		t.Fatalf("saga_engine_fail_stopped on a healthy engine: %v, want 0", got)
	}
	fl.fail.Store(true)
	if _, err := e.Define(ctx, def); !errors.Is(err, engine.ErrOutcomeUnknown) {
		t.Fatalf("Define on a failing log: %v, want ErrOutcomeUnknown", err)
	}
	if got := testutil.ToFloat64(obs.failStopped); got != 1 {
		t.Fatalf("saga_engine_fail_stopped after a failed append: %v, want 1", got)
	}
	if _, err := e.Define(ctx, def); !errors.Is(err, engine.ErrPoisoned) {
		t.Fatalf("Define on the poisoned engine: %v, want ErrPoisoned", err)
	}
	if got := testutil.ToFloat64(obs.failStopped); got != 1 {
		t.Fatalf("saga_engine_fail_stopped stays until a reopen: %v, want 1", got)
	}
	if err := e.Close(); !errors.Is(err, engine.ErrPoisoned) {
		t.Fatalf("Close of the poisoned engine: %v, want ErrPoisoned", err)
	}
	e, err = engine.Open(dir, engine.Options{Registry: reg, Logger: quiet, Hooks: obs.Hooks()})
	must(t, err)
	defer e.Close()
	if got := testutil.ToFloat64(obs.failStopped); got != 0 {
		t.Fatalf("saga_engine_fail_stopped after the reopen: %v, want 0", got)
	}
}
