package policy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"

	"github.com/sagaengine/saga/internal/testctx"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func noEnv(string) (string, bool) { return "", false }

func envOf(kv ...string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i] == k {
				return kv[i+1], true
			}
		}
		return "", false
	}
}

const ingestPolicy = `enable_saga: true
saga_operations: [data_ingest_pipeline]
compensation_handlers:
  data_ingest_pipeline:
    ingest: delete_uploaded_file
    parse: mark_file_as_unparsed
    embed: delete_embeddings
    expose: remove_from_semantic_layer
  data_mapping:
    analyze_source: revert_source_analysis
    apply_mapping: revert_transformation
`

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Write then rename, as editors and config managers do.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newManager(t *testing.T, opts Options) *Manager {
	t.Helper()
	if opts.LookupEnv == nil {
		opts.LookupEnv = noEnv
	}
	opts.Logger = quiet
	m, err := New(opts)
	if err != nil {
		t.Fatalf("new manager: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestDefaultIsOff(t *testing.T) {
	m := newManager(t, Options{})
	d := m.Explain("data_ingest_pipeline", UserContext{})
	if d.Saga || !strings.Contains(d.String(), "enable_saga=false, set by default") {
		t.Fatalf("default policy: %s", d)
	}
}

func TestPrecedence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, ingestPolicy)
	uc := UserContext{}
	// file: ingest on, mapping off
	m := newManager(t, Options{File: path, NoWatch: true})
	if !m.Snapshot().Decide("data_ingest_pipeline", uc) || m.Snapshot().Decide("data_mapping", uc) {
		t.Fatal("file layer not applied")
	}
	// env beats file
	m = newManager(t, Options{File: path, NoWatch: true,
		LookupEnv: envOf(EnvOperations, "data_mapping , data_ingest_pipeline")})
	if !m.Snapshot().Decide("data_mapping", uc) {
		t.Fatal("environment did not override the file's saga_operations")
	}
	d := m.Explain("data_mapping", uc)
	if !strings.Contains(d.String(), "saga_operations (environment) lists data_mapping") ||
		!strings.Contains(d.String(), "enable_saga=true, set by file ("+path+")") {
		t.Fatalf("explain:\n%s", d)
	}
	// API beats env
	must(t, m.Set(&Policy{EnableSaga: Bool(false)}))
	if m.Snapshot().Decide("data_mapping", uc) {
		t.Fatal("API layer did not override")
	}
	if d := m.Explain("data_mapping", uc); !strings.Contains(d.String(), "enable_saga=false, set by api") {
		t.Fatalf("explain after Set:\n%s", d)
	}
	must(t, m.Set(nil)) // removing the API layer restores the env's view
	if !m.Snapshot().Decide("data_mapping", uc) {
		t.Fatal("removing the API layer did not restore the environment's policy")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestEnvParsing(t *testing.T) {
	for _, tc := range []struct {
		val  string
		want *bool
		ok   bool
	}{{"true", Bool(true), true}, {"1", Bool(true), true}, {"FALSE", Bool(false), true}, {" true ", Bool(true), true}, {"yes please", nil, false}} {
		p, err := FromEnv(envOf(EnvEnabled, tc.val))
		if (err == nil) != tc.ok {
			t.Fatalf("%s=%q: err %v", EnvEnabled, tc.val, err)
		}
		if err == nil && *p.EnableSaga != *tc.want {
			t.Fatalf("%s=%q: %v", EnvEnabled, tc.val, *p.EnableSaga)
		}
	}
	p, err := FromEnv(envOf(EnvOperations, " a, ,b ,"))
	if err != nil || !slices.Equal(p.SagaOperations, []string{"a", "b"}) {
		t.Fatalf("operations %v %v", p.SagaOperations, err)
	}
	p, _ = FromEnv(noEnv)
	if p.EnableSaga != nil || p.SagaOperations != nil {
		t.Fatal("unset variables must set nothing")
	}
	// A bad variable refuses to start.
	if _, err := New(Options{LookupEnv: envOf(EnvEnabled, "maybe"), Logger: quiet}); !errors.Is(err, ErrInvalidPolicy) {
		t.Fatalf("bad env: %v", err)
	}
}

func TestOverrides(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, ingestPolicy+`users:
  alice: {enable_saga: false}
  bob: {saga_operations: [data_mapping]}
tenants:
  acme: {saga_operations: [data_mapping, data_ingest_pipeline]}
`)
	m := newManager(t, Options{File: path, NoWatch: true})
	s := m.Snapshot()
	cases := []struct {
		uc        UserContext
		op        string
		want      bool
		explained string
	}{
		{UserContext{UserID: "carol"}, "data_ingest_pipeline", true, ""},
		{UserContext{UserID: "alice"}, "data_ingest_pipeline", false, "user override for alice: enable_saga=false"},
		{UserContext{UserID: "bob"}, "data_mapping", true, "user override for bob"},
		{UserContext{UserID: "bob"}, "data_ingest_pipeline", false, ""},
		{UserContext{UserID: "carol", TenantID: "acme"}, "data_mapping", true, "tenant override for acme"},
		{UserContext{UserID: "alice", TenantID: "acme"}, "data_mapping", false, "user override for alice"}, // user beats tenant
	}
	for _, c := range cases {
		if got := s.Decide(c.op, c.uc); got != c.want {
			t.Errorf("%+v %s: %v, want %v", c.uc, c.op, got, c.want)
		}
		if d := s.Explain(c.op, c.uc); !strings.Contains(d.String(), c.explained) || d.Saga != c.want {
			t.Errorf("explain %+v %s:\n%s", c.uc, c.op, d)
		}
	}
}

func TestValidationNamesEveryProblem(t *testing.T) {
	reg := compensation.NewRegistry()
	must(t, reg.Register("delete_uploaded_file", func(context.Context, compensation.Call) error { return nil }))
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, `enable_saga: true
saga_operations: [data_ingest_pipeline, roadmap_generation]
on_engine_unavailable: explode
compensation_handlers:
  data_ingest_pipeline:
    ingest: delete_uploaded_file
    parse: no_such_handler
    ingest: delete_uploaded_file
`)
	_, err := New(Options{File: path, NoWatch: true, LookupEnv: noEnv, Registry: reg, Logger: quiet})
	if !errors.Is(err, ErrInvalidPolicy) {
		t.Fatalf("want ErrInvalidPolicy, got %v", err)
	}
	for _, want := range []string{
		path + ":3: on_engine_unavailable \"explode\"",
		path + ":7: operation \"data_ingest_pipeline\" milestone \"parse\": unknown compensation handler \"no_such_handler\"",
		path + ":8: operation \"data_ingest_pipeline\": milestone \"ingest\" listed twice",
		"operation \"roadmap_generation\" is enabled but has no milestones",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	writeFile(t, path, "enable_saga: true\nsaga_operations: [a\n  b: c\n")
	_, err = New(Options{File: path, NoWatch: true, LookupEnv: noEnv, Logger: quiet})
	if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), "line") {
		t.Fatalf("bad YAML: %v", err)
	}
	writeFile(t, path, "enable_saga: sometimes\nsurprise: 1\n")
	_, err = New(Options{File: path, NoWatch: true, LookupEnv: noEnv, Logger: quiet})
	if err == nil || !strings.Contains(err.Error(), path+":1: enable_saga") || !strings.Contains(err.Error(), path+":2: unknown key \"surprise\"") {
		t.Fatalf("bad values: %v", err)
	}
}

func TestHotReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, ingestPolicy)
	changes := make(chan error, 16)
	m := newManager(t, Options{File: path, OnChange: func(_ uint64, err error) { changes <- err }})
	uc := UserContext{}
	if !m.Snapshot().Decide("data_ingest_pipeline", uc) {
		t.Fatal("initial policy")
	}
	next := func() error {
		select {
		case err := <-changes:
			return err
		case <-time.After(10 * time.Second): // a bound for a wedged watcher, not a timing assertion
			t.Fatal("no reload seen")
			return nil
		}
	}
	// A good edit takes effect (the watcher may reload more than once per
	// edit: wait for the change, not for a count of events).
	writeFile(t, path, strings.Replace(ingestPolicy, "saga_operations: [data_ingest_pipeline]", "saga_operations: [data_mapping]", 1))
	for !m.Snapshot().Decide("data_mapping", uc) {
		if err := next(); err != nil {
			t.Fatalf("good edit rejected: %v", err)
		}
	}
	if m.Snapshot().Decide("data_ingest_pipeline", uc) {
		t.Fatal("good edit only half in force")
	}
	// A bad edit is rejected whole; the last good policy stays.
	writeFile(t, path, "enable_saga: true\nsaga_operations: [data_mapping, nothing_defined]\n")
	var err error
	for err == nil {
		err = next()
	}
	if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), "nothing_defined") {
		t.Fatalf("bad edit: %v", err)
	}
	if !m.Snapshot().Decide("data_mapping", uc) || m.Snapshot().Decide("nothing_defined", uc) {
		t.Fatal("a rejected edit changed the policy in force")
	}
	if st := m.Stats(); st.Rejected == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// memEngine opens a real engine in a temp dir.
func memEngine(t testing.TB, reg *compensation.Registry) *engine.Engine {
	e, err := engine.Open(t.TempDir(), engine.Options{Registry: reg, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func ingestRegistry(t testing.TB, undone *[]string, mu *sync.Mutex) *compensation.Registry {
	reg := compensation.NewRegistry()
	for _, h := range []string{"delete_uploaded_file", "mark_file_as_unparsed", "delete_embeddings",
		"remove_from_semantic_layer", "revert_source_analysis", "revert_transformation"} {
		if err := reg.Register(h, func(ctx context.Context, c compensation.Call) error {
			mu.Lock()
			*undone = append(*undone, c.Step)
			mu.Unlock()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return reg
}

func ingestWorkflow(failAt string, seen *[]string) func(ctx context.Context, s Saga) error {
	return func(ctx context.Context, s Saga) error {
		for _, ms := range []string{"ingest", "parse", "embed", "expose"} {
			err := s.Step(ctx, ms, func(ctx context.Context) ([]byte, error) {
				if ms == failAt {
					return nil, fmt.Errorf("%s failed", ms)
				}
				*seen = append(*seen, ms)
				return []byte(ms + "-out"), nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	}
}

func TestExecuteWithSaga(t *testing.T) {
	var mu sync.Mutex
	var undone []string
	reg := ingestRegistry(t, &undone, &mu)
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, ingestPolicy)
	m := newManager(t, Options{File: path, NoWatch: true, Registry: reg})
	eng := memEngine(t, reg)
	x := NewExecutor(m, eng)
	ctx := testctx.New(t)

	var seen []string
	res, err := x.ExecuteWithSaga(ctx, "data_ingest_pipeline", UserContext{UserID: "u1"}, []byte("doc"), ingestWorkflow("", &seen))
	must(t, err)
	if !res.Saga || res.SagaID == "" || res.State != fsm.StateCompleted || len(seen) != 4 {
		t.Fatalf("on, success: %+v %v", res, seen)
	}
	st, _ := eng.Status(ctx, res.SagaID)
	if st.User != "u1" || st.Saga.Meta["policy_version"] == "" {
		t.Fatalf("saga does not record its user and policy: %+v", st.Saga.Meta)
	}

	seen = nil
	res, err = x.ExecuteWithSaga(ctx, "data_ingest_pipeline", UserContext{}, nil, ingestWorkflow("embed", &seen))
	if err == nil || !strings.Contains(err.Error(), "embed failed") || res.State != fsm.StateFailed {
		t.Fatalf("on, failure: %+v %v", res, err)
	}
	mu.Lock()
	got := append([]string(nil), undone...)
	mu.Unlock()
	if !slices.Equal(got, []string{"parse", "ingest"}) {
		t.Fatalf("compensations %v, want parse then ingest", got)
	}

	// Off: the same workflow runs without a saga.
	must(t, m.Set(&Policy{EnableSaga: Bool(false)}))
	seen = nil
	res, err = x.ExecuteWithSaga(ctx, "data_ingest_pipeline", UserContext{}, nil, ingestWorkflow("", &seen))
	if err != nil || res.Saga || len(seen) != 4 {
		t.Fatalf("off: %+v %v %v", res, err, seen)
	}

	// Out of order milestones are refused, and what ran is undone.
	must(t, m.Set(nil))
	res, err = x.ExecuteWithSaga(ctx, "data_ingest_pipeline", UserContext{}, nil, func(ctx context.Context, s Saga) error {
		if err := s.Step(ctx, "ingest", func(context.Context) ([]byte, error) { return nil, nil }); err != nil {
			return err
		}
		return s.Step(ctx, "embed", func(context.Context) ([]byte, error) { return nil, nil })
	})
	if !errors.Is(err, ErrMilestoneOrder) || res.State != fsm.StateFailed {
		t.Fatalf("out of order: %+v %v", res, err)
	}
}

func TestEngineUnavailable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, ingestPolicy)
	m := newManager(t, Options{File: path, NoWatch: true})
	x := NewExecutor(m, nil)
	var seen []string
	res, err := x.ExecuteWithSaga(testctx.New(t), "data_ingest_pipeline", UserContext{}, nil, ingestWorkflow("", &seen))
	if err != nil || !res.Fallback || res.Saga || len(seen) != 4 || m.Stats().Fallbacks != 1 {
		t.Fatalf("run_without_saga: %+v %v %v %+v", res, err, seen, m.Stats())
	}
	must(t, m.Set(&Policy{OnEngineUnavailable: Fail}))
	seen = nil
	_, err = x.ExecuteWithSaga(testctx.New(t), "data_ingest_pipeline", UserContext{}, nil, ingestWorkflow("", &seen))
	if !errors.Is(err, ErrEngineUnavailable) || len(seen) != 0 {
		t.Fatalf("fail: %v %v", err, seen)
	}
}

// TestFlipWhileInFlight: 1,000 calls run while the policy flips; each runs
// wholly with or wholly without a saga, and none is lost.
func TestFlipWhileInFlight(t *testing.T) {
	var mu sync.Mutex
	var undone []string
	reg := ingestRegistry(t, &undone, &mu)
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, ingestPolicy)
	m := newManager(t, Options{File: path, NoWatch: true, Registry: reg})
	eng := memEngine(t, reg)
	x := NewExecutor(m, eng)
	ctx := testctx.New(t)
	const calls = 1000
	var wg sync.WaitGroup
	results := make([]Result, calls)
	consistent := make([]bool, calls)
	stop := make(chan struct{})
	flipped := make(chan struct{})
	go func() {
		defer close(flipped)
		on := false
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := m.Set(&Policy{EnableSaga: Bool(on)}); err != nil {
				t.Error(err)
				return
			}
			on = !on
		}
	}()
	sem := make(chan struct{}, 64)
	for i := 0; i < calls; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ids := map[string]bool{}
			var steps int
			res, err := x.ExecuteWithSaga(ctx, "data_ingest_pipeline", UserContext{}, nil, func(ctx context.Context, s Saga) error {
				for _, ms := range []string{"ingest", "parse", "embed", "expose"} {
					ids[s.ID()] = true
					if err := s.Step(ctx, ms, func(context.Context) ([]byte, error) { steps++; return nil, nil }); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Error(err)
				return
			}
			results[i] = res
			// One handle for the whole call; a saga iff the result says so.
			consistent[i] = len(ids) == 1 && steps == 4 && (res.Saga == !ids[""]) &&
				(!res.Saga || res.State == fsm.StateCompleted)
		}()
	}
	wg.Wait()
	close(stop)
	<-flipped
	with := 0
	for i := range results {
		if !consistent[i] {
			t.Fatalf("call %d ran partly with and partly without a saga: %+v", i, results[i])
		}
		if results[i].Saga {
			with++
		}
	}
	t.Logf("%d calls: %d with a saga, %d without (%d policy changes)", calls, with, calls-with, m.Stats().Changes)
	if m.Stats().Changes < 2 {
		t.Fatal("the policy never flipped during the calls")
	}
}

func directWorkflow(ctx context.Context, s Saga) error {
	return s.Step(ctx, "ingest", stepNoop)
}

func stepNoop(context.Context) ([]byte, error) { return nil, nil }

var workflowVar = directWorkflow

// TestDisabledPathDoesNotAllocate: the off path allocates nothing.
func TestDisabledPathDoesNotAllocate(t *testing.T) {
	m := newManager(t, Options{})
	x := NewExecutor(m, nil)
	ctx := testctx.New(t)
	allocs := testing.AllocsPerRun(1000, func() {
		_, _ = x.ExecuteWithSaga(ctx, "data_ingest_pipeline", UserContext{UserID: "u"}, nil, directWorkflow)
	})
	if allocs != 0 {
		t.Fatalf("disabled path allocates %.1f times per call", allocs)
	}
}

// BenchmarkDisabledPath compares a direct call of a workflow with the same
// workflow through ExecuteWithSaga while the policy is off (figure 4 of
// the bench report).
func BenchmarkDisabledPath(b *testing.B) {
	m, err := New(Options{LookupEnv: noEnv, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	x := NewExecutor(m, nil)
	ctx := testctx.New(b)
	b.Run("direct", func(b *testing.B) {
		// The workflow called as the application would without this
		// package: through a function value, with a handle.
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			_ = workflowVar(ctx, noSaga{})
		}
	})
	b.Run("policy-off", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			_, _ = x.ExecuteWithSaga(ctx, "data_ingest_pipeline", UserContext{UserID: "u"}, nil, directWorkflow)
		}
	})
}
