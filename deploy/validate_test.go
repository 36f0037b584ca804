package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
)

const (
	rulesFile     = "prometheus/saga-alerts.yaml"
	dashboardFile = "grafana/saga-dashboard.json"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// targetLabels are the labels Prometheus adds to every scraped series.
var targetLabels = []string{"instance", "job"}

// schema is what the Observer exports: every series name (a histogram's
// _bucket, _sum and _count) with its label names, and the values seen of
// the labels whose values are a closed set (state).
type schema struct {
	series map[string][]string // name -> label names
	values map[string][]string // label -> values ("state" only)
}

// countingRegisterer records what the Observer registers, so that the test
// knows how many metric families there must be.
type countingRegisterer struct {
	*prometheus.Registry
	descs int
}

func (r *countingRegisterer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	for range ch {
		r.descs++
	}
	return r.Registry.Register(c)
}

// observerSchema gathers an Observer's registry after an engine ran a
// saga that completed, one that failed and one that went STUCK, so that
// every labelled metric has a series. It fails if a registered metric
// stayed without a series: then the workload here must grow with it.
func observerSchema(t *testing.T) schema {
	t.Helper()
	reg := &countingRegisterer{Registry: prometheus.NewRegistry()}
	obs, err := admin.NewObserverWith(admin.ObserverOptions{Registerer: reg, Gatherer: reg.Registry})
	must(t, err)
	comps := compensation.NewRegistry()
	must(t, comps.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	must(t, comps.RegisterAction("boom", func(context.Context, compensation.Call) ([]byte, error) {
		return nil, compensation.Permanent(errors.New("declined"))
	}))
	must(t, comps.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	must(t, comps.Register("broken", func(context.Context, compensation.Call) error { return errors.New("down") }))
	e, err := engine.Open(t.TempDir(), engine.Options{Registry: comps, Logger: quiet, Hooks: obs.Hooks()})
	must(t, err)
	defer e.Close()
	obs.WatchStates(e)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, d := range []engine.Definition{
		{Name: "order", Steps: []engine.StepDef{{Name: "pay", Action: "ok", Compensation: "undo"}, {Name: "ship", Action: "ok"}}},
		{Name: "failing", Steps: []engine.StepDef{{Name: "pay", Action: "ok", Compensation: "undo"}, {Name: "ship", Action: "boom"}}},
		{Name: "stucky", Steps: []engine.StepDef{{Name: "pay", Action: "ok", Compensation: "broken",
			CompensationRetry: engine.RetryPolicy{MaxAttempts: 1}}, {Name: "ship", Action: "boom"}}},
	} {
		_, err := e.Define(ctx, d)
		must(t, err)
		_, err = e.Run(ctx, d.Name, nil, engine.StartOptions{})
		must(t, err)
	}
	mfs, err := reg.Gather()
	must(t, err)
	if len(mfs) != reg.descs {
		t.Fatalf("the Observer registers %d metrics but only %d have a series after the workload: make the workload produce the new ones", reg.descs, len(mfs))
	}
	s := schema{series: map[string][]string{}, values: map[string][]string{}}
	for _, mf := range mfs {
		var names []string
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if !slices.Contains(names, l.GetName()) {
					names = append(names, l.GetName())
				}
				if l.GetName() == "state" && !slices.Contains(s.values["state"], l.GetValue()) {
					s.values["state"] = append(s.values["state"], l.GetValue())
				}
			}
		}
		names = append(names, targetLabels...)
		name := mf.GetName()
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM:
			s.series[name+"_bucket"] = append(slices.Clone(names), "le")
			s.series[name+"_sum"] = names
			s.series[name+"_count"] = names
		case dto.MetricType_SUMMARY:
			s.series[name] = append(slices.Clone(names), "quantile")
			s.series[name+"_sum"] = names
			s.series[name+"_count"] = names
		default:
			s.series[name] = names
		}
	}
	return s
}

// checkExpr parses expr as PromQL and reports every selector that names
// a series the schema lacks, matches on a label that series has not, or
// wants a state that does not exist.
func checkExpr(s schema, expr string) []error {
	root, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return []error{fmt.Errorf("does not parse: %w", err)}
	}
	var errs []error
	parser.Inspect(root, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		if vs.Name == "" {
			errs = append(errs, fmt.Errorf("%s: a selector without a metric name", vs))
			return nil
		}
		have, ok := s.series[vs.Name]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: no metric %s (the Observer exports %s)", vs, vs.Name, strings.Join(sortedKeys(s.series), ", ")))
			return nil
		}
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName {
				continue
			}
			if !slices.Contains(have, m.Name) {
				errs = append(errs, fmt.Errorf("%s: %s has no label %s (it has %s)", vs, vs.Name, m.Name, strings.Join(have, ", ")))
				continue
			}
			if vals, closed := s.values[m.Name]; closed && !slices.ContainsFunc(vals, m.Matches) {
				errs = append(errs, fmt.Errorf("%s: no %s matches %s (the values are %s)", vs, m.Name, m, strings.Join(vals, ", ")))
			}
		}
		return nil
	})
	return errs
}

func TestAlertRules(t *testing.T) {
	s := observerSchema(t)
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, parser.NewParser(parser.Options{}), quiet)
	for _, err := range errs {
		t.Error(err)
	}
	if groups == nil {
		t.FailNow()
	}
	var alerts []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			name := r.Alert
			if name == "" {
				name = r.Record
			}
			for _, err := range checkExpr(s, r.Expr) {
				t.Errorf("%s: rule %s: %v", rulesFile, name, err)
			}
			if r.Alert == "" {
				continue
			}
			alerts = append(alerts, r.Alert)
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if r.Annotations[a] == "" {
					t.Errorf("%s: alert %s has no %s annotation", rulesFile, r.Alert, a)
				}
			}
			if r.Labels["severity"] == "" {
				t.Errorf("%s: alert %s has no severity label", rulesFile, r.Alert)
			}
		}
	}
	// Each alert is explained in the README section its runbook_url names.
	readme, err := os.ReadFile("../README.md")
	must(t, err)
	for _, a := range alerts {
		if !strings.Contains(string(readme), "`"+a+"`") {
			t.Errorf("README.md does not explain the alert %s (its runbook)", a)
		}
	}
	if !strings.Contains(string(readme), "### Dashboards and alerts") {
		t.Errorf("README.md lacks the section the runbook_url annotations point at")
	}
}

// grafanaVar matches a dashboard variable: $name, ${name} or ${name:fmt}.
var grafanaVar = regexp.MustCompile(`\$\{(\w+)(?::\w+)?\}|\$(\w+)`)

// substitute replaces the dashboard's variables by what Grafana would put
// there: a duration for its interval variables, ".*" (the All value) for
// the dashboard's own. It reports a variable the dashboard does not define.
func substitute(expr string, defined []string) (string, error) {
	var unknown []string
	out := grafanaVar.ReplaceAllStringFunc(expr, func(v string) string {
		m := grafanaVar.FindStringSubmatch(v)
		name := m[1] + m[2]
		switch {
		case strings.HasPrefix(name, "__"): // $__rate_interval, $__interval, $__range
			return "5m"
		case slices.Contains(defined, name):
			return ".*"
		}
		unknown = append(unknown, v)
		return v
	})
	if len(unknown) > 0 {
		return "", fmt.Errorf("undefined variables %v", unknown)
	}
	return out, nil
}

type dashboard struct {
	Title      string
	Templating struct {
		List []struct {
			Name       string
			Type       string
			Query      json.RawMessage
			Datasource json.RawMessage
		}
	}
	Panels []panel
}

type panel struct {
	Title      string
	Type       string
	Datasource json.RawMessage
	Targets    []struct {
		Expr       string
		Datasource json.RawMessage
	}
	Panels []panel // a collapsed row's
}

var labelValues = regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`)

func TestDashboard(t *testing.T) {
	s := observerSchema(t)
	raw, err := os.ReadFile(dashboardFile)
	must(t, err)
	var d dashboard
	must(t, json.Unmarshal(raw, &d))
	var vars []string
	hasDatasource := false
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
		if v.Type == "datasource" {
			hasDatasource = v.Name == "datasource"
			continue
		}
		checkDatasource(t, "variable "+v.Name, v.Datasource)
		if v.Type != "query" {
			continue
		}
		// The query is an object {query: "label_values(metric, label)"}
		// or, in older dashboards, the string itself.
		var q struct{ Query string }
		if json.Unmarshal(v.Query, &q) != nil {
			must(t, json.Unmarshal(v.Query, &q.Query))
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(metric, label)", v.Name, q.Query)
			continue
		}
		for _, err := range checkExpr(s, fmt.Sprintf("%s{%s!=\"\"}", m[1], m[2])) {
			t.Errorf("variable %s: %v", v.Name, err)
		}
	}
	if !hasDatasource {
		t.Errorf("%s has no datasource variable named datasource: the dashboard could not be pointed at another Prometheus", dashboardFile)
	}
	exprs := 0
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			checkDatasource(t, "panel "+p.Title, p.Datasource)
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				checkDatasource(t, "panel "+p.Title, tg.Datasource)
				exprs++
				expr, err := substitute(tg.Expr, vars)
				if err != nil {
					t.Errorf("panel %q: %s: %v", p.Title, tg.Expr, err)
					continue
				}
				for _, err := range checkExpr(s, expr) {
					t.Errorf("panel %q: %v", p.Title, err)
				}
			}
		}
	}
	walk(d.Panels)
	if exprs < 10 {
		t.Fatalf("only %d queries in %s", exprs, dashboardFile)
	}
}

// checkDatasource wants every query on the datasource variable, never on
// the uid of one Grafana's data source.
func checkDatasource(t *testing.T, where string, raw json.RawMessage) {
	t.Helper()
	if len(raw) == 0 {
		return
	}
	var ds struct{ UID string }
	if json.Unmarshal(raw, &ds) != nil || ds.UID != "${datasource}" {
		t.Errorf("%s: datasource %s, want {\"uid\": \"${datasource}\"}", where, raw)
	}
}

// TestCheckRejectsWhatTheObserverLacks: the check above is not vacuous.
func TestCheckRejectsWhatTheObserverLacks(t *testing.T) {
	s := observerSchema(t)
	for _, c := range []struct{ expr, want string }{
		{`saga_sagas_stuck > 0`, "no metric saga_sagas_stuck"},
		{`rate(saga_wal_append_seconds[5m])`, "no metric saga_wal_append_seconds"}, // a histogram has _bucket, _sum, _count
		{`saga_sagas{state="STUCKED"} > 0`, "no state matches"},
		{`saga_sagas{saga_id="x"}`, "has no label saga_id"},
		{`sum(rate(saga_sagas_started_total[5m])`, "does not parse"},
		{`{__name__=~"saga_.*"}`, "without a metric name"},
	} {
		errs := checkExpr(s, c.expr)
		if len(errs) == 0 || !strings.Contains(errors.Join(errs...).Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.expr, errs, c.want)
		}
	}
	for _, ok := range []string{
		`saga_sagas{state="STUCK", instance=~".*"} > 0`,
		`histogram_quantile(0.99, sum by (le) (rate(saga_wal_append_seconds_bucket[5m])))`,
		`saga_engine_fail_stopped == 1`,
	} {
		if errs := checkExpr(s, ok); len(errs) > 0 {
			t.Errorf("%s: %v, want no error", ok, errs)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
