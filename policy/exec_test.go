package policy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"

	"github.com/sagaengine/saga/internal/testctx"
)

// Regression tests for the findings of a review of this package.

func milestoneNames(s *Snapshot, op string) []string {
	var out []string
	for _, m := range s.ops[op].Milestones {
		out = append(out, m.Name)
	}
	return out
}

func TestSetCopiesTheCallersPolicy(t *testing.T) {
	m := newManager(t, Options{})
	op := &Operation{Milestones: []Milestone{{Name: "a"}, {Name: "b"}}}
	ops := []string{"x"}
	p := &Policy{EnableSaga: Bool(true), SagaOperations: []string{"x"},
		Operations: map[string]*Operation{"x": op},
		Users:      map[string]Override{"u": {SagaOperations: ops}}}
	must(t, m.Set(p))
	op.Milestones[0].Name = "bad name!"
	ops[0] = "y"
	if got := milestoneNames(m.Snapshot(), "x"); got[0] != "a" {
		t.Fatalf("caller mutation after Set changed the policy in force: %v", got)
	}
	if !m.Snapshot().Decide("x", UserContext{UserID: "u"}) {
		t.Fatal("caller mutation of an override changed the policy in force")
	}
	d := m.Explain("x", UserContext{})
	d.Spec.Milestones[0].Name = "changed"
	if got := milestoneNames(m.Snapshot(), "x"); got[0] != "a" {
		t.Fatal("Explain handed out the policy's own operation")
	}
}

func execFixture(t *testing.T, policyText string, reg *compensation.Registry) (*Manager, *Executor) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, policyText)
	m := newManager(t, Options{File: path, NoWatch: true, Registry: reg})
	return m, NewExecutor(m, memEngine(t, reg))
}

func TestSwallowedLastMilestoneFailureIsNotCompleted(t *testing.T) {
	var mu sync.Mutex
	var undone []string
	_, x := execFixture(t, ingestPolicy, ingestRegistry(t, &undone, &mu))
	res, err := x.ExecuteWithSaga(testctx.New(t), "data_ingest_pipeline", UserContext{}, nil, func(ctx context.Context, s Saga) error {
		for _, ms := range []string{"ingest", "parse", "embed"} {
			if err := s.Step(ctx, ms, stepNoop); err != nil {
				return err
			}
		}
		_ = s.Step(ctx, "expose", func(context.Context) ([]byte, error) { return nil, errors.New("boom") })
		return nil // the workflow ignores the failure
	})
	if !errors.Is(err, ErrIncomplete) || res.State != fsm.StateFailed {
		t.Fatalf("reported %s, %v", res.State, err)
	}
}

// A caller whose context ends in the middle still leaves a saga that the
// engine finishes: the failure and the abort are recorded regardless.
func TestCancelledCallerDoesNotStrandTheSaga(t *testing.T) {
	var mu sync.Mutex
	var undone []string
	_, x := execFixture(t, ingestPolicy, ingestRegistry(t, &undone, &mu))
	ctx, cancel := context.WithCancel(testctx.New(t))
	res, err := x.ExecuteWithSaga(ctx, "data_ingest_pipeline", UserContext{}, nil, func(ctx context.Context, s Saga) error {
		if err := s.Step(ctx, "ingest", stepNoop); err != nil {
			return err
		}
		return s.Step(ctx, "parse", func(ctx context.Context) ([]byte, error) {
			cancel() // the client went away while parse ran
			return nil, ctx.Err()
		})
	})
	if err == nil {
		t.Fatal("no error")
	}
	st, err := x.eng.Wait(testctx.New(t), res.SagaID)
	must(t, err)
	if st.State != fsm.StateFailed {
		t.Fatalf("saga after a cancelled caller: %s", st.State)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(undone) != 1 || undone[0] != "ingest" {
		t.Fatalf("compensated %v", undone)
	}
}

func TestPanickingWorkflowIsCompensated(t *testing.T) {
	var mu sync.Mutex
	var undone []string
	_, x := execFixture(t, ingestPolicy, ingestRegistry(t, &undone, &mu))
	var id string
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the panic was swallowed")
			}
		}()
		_, _ = x.ExecuteWithSaga(testctx.New(t), "data_ingest_pipeline", UserContext{}, nil, func(ctx context.Context, s Saga) error {
			id = s.ID()
			_ = s.Step(ctx, "ingest", stepNoop)
			panic("workflow bug")
		})
	}()
	st, err := x.eng.Wait(testctx.New(t), id)
	must(t, err)
	if st.State != fsm.StateFailed {
		t.Fatalf("saga after a panic: %s", st.State)
	}
}

// A saga starts on the definition of the policy in force, even after
// another layer defined a different shape of the same operation.
func TestStartUsesTheDefinitionOfThePolicyInForce(t *testing.T) {
	var mu sync.Mutex
	var undone []string
	m, x := execFixture(t, ingestPolicy, ingestRegistry(t, &undone, &mu))
	ctx := testctx.New(t)
	var seen []string
	_, err := x.ExecuteWithSaga(ctx, "data_ingest_pipeline", UserContext{}, nil, ingestWorkflow("", &seen))
	must(t, err)
	must(t, m.Set(&Policy{Operations: map[string]*Operation{"data_ingest_pipeline": {Milestones: []Milestone{
		{Name: "ingest", Compensation: "delete_uploaded_file"}, {Name: "parse", Compensation: "mark_file_as_unparsed"}}}}}))
	_, err = x.ExecuteWithSaga(ctx, "data_ingest_pipeline", UserContext{}, nil, func(ctx context.Context, s Saga) error {
		must(t, s.Step(ctx, "ingest", stepNoop))
		return s.Step(ctx, "parse", stepNoop)
	})
	must(t, err)
	must(t, m.Set(nil))
	seen = nil
	if _, err := x.ExecuteWithSaga(ctx, "data_ingest_pipeline", UserContext{}, nil, ingestWorkflow("", &seen)); err != nil {
		t.Fatalf("back on the file's policy: %v", err)
	}
}

// A partial retry setting keeps a backoff and a bound.
func TestPartialRetryKeepsDefaults(t *testing.T) {
	p := retryPolicy(&Retry{MaxBackoff: time.Second})
	if p.InitialBackoff <= 0 || p.MaxElapsed <= 0 || p.MaxBackoff != time.Second {
		t.Fatalf("retry {max_backoff: 1s} became %+v", p)
	}
	if p := retryPolicy(&Retry{MaxAttempts: 3}); p.MaxAttempts != 3 || p.InitialBackoff <= 0 {
		t.Fatalf("retry {max_attempts: 3} became %+v", p)
	}
	var attempts atomic.Int64
	reg := compensation.NewRegistry()
	must(t, reg.Register("undo_a", func(context.Context, compensation.Call) error {
		attempts.Add(1)
		return errors.New("storage down")
	}))
	_, x := execFixture(t, `enable_saga: true
saga_operations: [op]
operations:
  op:
    milestones: [{name: a, compensation: undo_a}, b]
    retry: {max_attempts: 3, initial_backoff: 1ms}
`, reg)
	res, err := x.ExecuteWithSaga(testctx.New(t), "op", UserContext{}, nil, func(ctx context.Context, s Saga) error {
		must(t, s.Step(ctx, "a", stepNoop))
		return s.Step(ctx, "b", func(context.Context) ([]byte, error) { return nil, errors.New("fail") })
	})
	if err == nil || res.State != fsm.StateStuck || attempts.Load() != 3 {
		t.Fatalf("state %s after %d attempts (%v)", res.State, attempts.Load(), err)
	}
}

// An operation's policy chooses its durability mode (the seed plan's "WAL
// policy"), and a later source overrides it.
func TestPolicyChoosesTheDurabilityOfAnOperation(t *testing.T) {
	reg := compensation.NewRegistry()
	must(t, reg.Register("undo_a", func(context.Context, compensation.Call) error { return nil }))
	doc := `enable_saga: true
saga_operations: [op]
operations:
  op:
    milestones: [{name: a, compensation: undo_a}, b, c]
    durability: pipelined
`
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, doc)
	m := newManager(t, Options{File: path, NoWatch: true, Registry: reg})
	eng := memEngine(t, reg)
	x := NewExecutor(m, eng)
	ctx := testctx.New(t)
	run := func() engine.Durability {
		res, err := x.ExecuteWithSaga(ctx, "op", UserContext{}, nil, func(ctx context.Context, s Saga) error {
			for _, ms := range []string{"a", "b", "c"} {
				if err := s.Step(ctx, ms, stepNoop); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil || res.State != fsm.StateCompleted {
			t.Fatalf("state %s: %v", res.State, err)
		}
		st, err := eng.Status(ctx, res.SagaID)
		must(t, err)
		return st.Saga.Durability
	}
	if d := run(); d != engine.DurabilityPipelined {
		t.Fatalf("durability %s under a pipelined policy", d)
	}
	must(t, m.Set(&Policy{Operations: map[string]*Operation{"op": {Durability: "strict"}}}))
	if d := run(); d != engine.DurabilityStrict {
		t.Fatalf("durability %s after an API layer set strict", d)
	}
}

func TestStrictYAML(t *testing.T) {
	for _, doc := range []string{
		"", // empty: refused, not "sets nothing"
		"enable_saga: true\nenable_saga: false\n",
		"enable_saga: true\n---\nsurprise: 1\n",
		"on_engine_unavailable: [fail]\n",
		"operations:\n  op:\n    milestones:\n      - {name: a, compensaton: h}\n",
		"users:\n  u: {enable_sage: true}\n",
		"compensation_handlers:\n  op:\n    a: [h1, h2]\n",
		"operations:\n  \"bad name\":\n    milestones: [a]\n",
		"operations:\n  op:\n    milestones: [a]\n    timeout: soon\n",
		"operations:\n  op:\n    milestones: [a]\n    durability: eventually\n",
	} {
		p, err := Parse("f.yaml", []byte(doc))
		if err == nil {
			err = p.Validate("f.yaml", nil)
		}
		if !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("accepted:\n%s", doc)
		}
	}
}

// An empty file (a writer truncating before it writes) is rejected: the
// policy in force stays.
func TestEmptyFileIsRejectedOnReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, ingestPolicy)
	m := newManager(t, Options{File: path, NoWatch: true})
	must(t, os.WriteFile(path, nil, 0o640))
	if err := m.Reload(); !errors.Is(err, ErrInvalidPolicy) {
		t.Fatalf("reload of an empty file: %v", err)
	}
	if !m.Snapshot().Decide("data_ingest_pipeline", UserContext{}) {
		t.Fatal("an empty file switched sagas off")
	}
}

// Kubernetes ConfigMap volumes update by swapping a ..data symlink: no
// event names the policy file, yet the change must be seen.
func TestConfigMapSymlinkSwapIsSeen(t *testing.T) {
	dir := t.TempDir()
	mk := func(name, content string) {
		must(t, os.MkdirAll(filepath.Join(dir, name), 0o750))
		must(t, os.WriteFile(filepath.Join(dir, name, "policy.yaml"), []byte(content), 0o640))
	}
	mk("..v1", ingestPolicy)
	must(t, os.Symlink("..v1", filepath.Join(dir, "..data")))
	must(t, os.Symlink("..data/policy.yaml", filepath.Join(dir, "policy.yaml")))
	changed := make(chan error, 8)
	m := newManager(t, Options{File: filepath.Join(dir, "policy.yaml"), OnChange: func(_ uint64, err error) { changed <- err }})
	mk("..v2", strings.Replace(ingestPolicy, "enable_saga: true", "enable_saga: false", 1))
	must(t, os.Symlink("..v2", filepath.Join(dir, "..data_tmp")))
	must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	select {
	case err := <-changed:
		must(t, err)
	case <-time.After(10 * time.Second): // a bound for a wedged watcher, not a timing assertion
		t.Fatal("a ConfigMap-style update was never seen")
	}
	if m.Snapshot().Decide("data_ingest_pipeline", UserContext{}) {
		t.Fatal("the new policy is not in force")
	}
}

// Layers merge field by field: an override or an operation setting only
// some fields keeps the others from below.
func TestLayersMergeFieldByField(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, ingestPolicy+"users:\n  bob: {saga_operations: [data_mapping]}\n")
	m := newManager(t, Options{File: path, NoWatch: true})
	must(t, m.Set(&Policy{
		Users:      map[string]Override{"bob": {EnableSaga: Bool(true)}},
		Operations: map[string]*Operation{"data_ingest_pipeline": {Timeout: time.Minute}},
	}))
	if !m.Snapshot().Decide("data_mapping", UserContext{UserID: "bob"}) {
		t.Fatalf("bob's saga_operations from the file was dropped:\n%s", m.Explain("data_mapping", UserContext{UserID: "bob"}))
	}
	op := m.Snapshot().ops["data_ingest_pipeline"]
	if len(op.Milestones) != 4 || op.Timeout != time.Minute {
		t.Fatalf("operation after a timeout-only layer: %+v", op)
	}
}

func runIngest(t *testing.T, x *Executor, uc UserContext, upTo int, werr error) (Result, int, error) {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ran := 0
	res, err := x.ExecuteWithSaga(c, "data_ingest_pipeline", uc, nil, func(ctx context.Context, s Saga) error {
		ran++
		for _, ms := range []string{"ingest", "parse", "embed", "expose"}[:upTo] {
			if err := s.Step(ctx, ms, stepNoop); err != nil {
				return err
			}
		}
		return werr
	})
	return res, ran, err
}

// A workflow that fails after its last milestone leaves no COMPLETED saga:
// every milestone is compensated, in reverse, and the caller gets the
// workflow's own error with the final state.
func TestWorkflowErrorAfterLastMilestoneCompensatesEveryMilestone(t *testing.T) {
	var mu sync.Mutex
	var undone []string
	_, x := execFixture(t, ingestPolicy, ingestRegistry(t, &undone, &mu))
	boom := errors.New("post-processing failed")
	res, _, err := runIngest(t, x, UserContext{}, 4, boom)
	if !errors.Is(err, boom) || res.State != fsm.StateFailed {
		t.Fatalf("result %+v, err %v; want FAILED and the workflow's error", res, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(undone, ",") != "expose,embed,parse,ingest" {
		t.Fatalf("compensated %v, want every milestone in reverse", undone)
	}
}

// A workflow that fails between milestones: the next milestone never
// started, so only the completed ones are compensated.
func TestMilestoneThatNeverStartedIsNotCompensated(t *testing.T) {
	var mu sync.Mutex
	var undone []string
	_, x := execFixture(t, ingestPolicy, ingestRegistry(t, &undone, &mu))
	boom := errors.New("between milestones")
	res, _, err := runIngest(t, x, UserContext{}, 2, boom)
	if !errors.Is(err, boom) || res.State != fsm.StateFailed {
		t.Fatalf("result %+v, err %v", res, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(undone, ",") != "parse,ingest" {
		t.Fatalf("compensated %v, want parse,ingest (embed never started)", undone)
	}
}

// Only an unavailable engine may make run_without_saga drop the
// guarantees; a definition the engine refuses (here: a handler it does not
// have) fails the call, and the workflow does not run.
func TestRefusedDefinitionFailsTheCallInsteadOfFallingBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, ingestPolicy+"on_engine_unavailable: run_without_saga\n")
	m := newManager(t, Options{File: path, NoWatch: true}) // no registry: the policy is not checked
	x := NewExecutor(m, memEngine(t, compensation.NewRegistry()))
	res, ran, err := runIngest(t, x, UserContext{}, 4, nil)
	if err == nil || res.Fallback || ran != 0 || !errors.Is(err, compensation.ErrUnknownName) {
		t.Fatalf("result %+v, err %v, workflow ran %d time(s); want a typed error and no run", res, err, ran)
	}
}

// A call re-sent with the same idempotency key runs no second saga.
func TestIdempotencyKeyRunsTheWorkflowOnce(t *testing.T) {
	var mu sync.Mutex
	var undone []string
	_, x := execFixture(t, ingestPolicy, ingestRegistry(t, &undone, &mu))
	uc := UserContext{UserID: "u", IdempotencyKey: "upload-42"}
	first, _, err := runIngest(t, x, uc, 4, nil)
	must(t, err)
	again, ran, err := runIngest(t, x, uc, 4, nil)
	if err != nil || ran != 0 || !again.Duplicate || again.SagaID != first.SagaID || again.State != fsm.StateCompleted {
		t.Fatalf("re-sent call: %+v, %v, workflow ran %d time(s)", again, err, ran)
	}
	failing, _, err := runIngest(t, x, UserContext{IdempotencyKey: "upload-43"}, 1, errors.New("no"))
	if failing.State != fsm.StateFailed || err == nil {
		t.Fatalf("failing call: %+v %v", failing, err)
	}
	if _, ran, err := runIngest(t, x, UserContext{IdempotencyKey: "upload-43"}, 4, nil); !errors.Is(err, ErrDuplicateCall) || ran != 0 {
		t.Fatalf("re-sent failed call: %v, ran %d", err, ran)
	}
}

// An engine whose log failed under a start may have recorded the saga: the
// call fails rather than run the workflow without it (the saga would later
// compensate that work). Once the engine is known stopped, run_without_saga
// applies.
func TestOutcomeUnknownStartDoesNotFallBack(t *testing.T) {
	var mu sync.Mutex
	var undone []string
	reg := ingestRegistry(t, &undone, &mu)
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, ingestPolicy+"on_engine_unavailable: run_without_saga\n")
	m := newManager(t, Options{File: path, NoWatch: true, Registry: reg})
	dir := t.TempDir()
	e, err := engine.Open(dir, engine.Options{Registry: reg, Logger: quiet})
	must(t, err)
	defer e.Close()
	x := NewExecutor(m, e)
	_, _, err = runIngest(t, x, UserContext{}, 4, nil)
	must(t, err)
	segs, _ := filepath.Glob(filepath.Join(dir, "wal", "0*"))
	for _, s := range segs {
		must(t, os.Remove(s))
	}
	res, ran, err := runIngest(t, x, UserContext{}, 4, nil)
	if !errors.Is(err, engine.ErrOutcomeUnknown) || ran != 0 || res.Fallback {
		t.Fatalf("start with an unknown outcome: %+v, %v, workflow ran %d time(s)", res, err, ran)
	}
	res, ran, err = runIngest(t, x, UserContext{}, 4, nil)
	if err != nil || !res.Fallback || ran != 1 {
		t.Fatalf("a stopped engine: %+v, %v, ran %d; want the run_without_saga fallback", res, err, ran)
	}
}

// The abort that records a workflow's failure after its last milestone
// (or its panic) carries the workflow's error as its reason: an error
// longer than the engine's bound on a reason (engine.MaxReason), or not
// UTF-8, must still abort the saga and compensate every milestone, not
// leave it in progress until its timeout.
func TestAWorkflowErrorOverTheReasonLimitStillCompensates(t *testing.T) {
	for name, msg := range map[string]string{
		"long":     strings.Repeat("x", engine.MaxReason+1),
		"not utf8": "bad \xff byte",
	} {
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			var undone []string
			_, x := execFixture(t, ingestPolicy, ingestRegistry(t, &undone, &mu))
			boom := errors.New(msg)
			res, _, err := runIngest(t, x, UserContext{}, 4, boom)
			if !errors.Is(err, boom) || res.State != fsm.StateFailed {
				t.Fatalf("result %+v, err %.300v; want FAILED and the workflow's error", res, err)
			}
			mu.Lock()
			defer mu.Unlock()
			if strings.Join(undone, ",") != "expose,embed,parse,ingest" {
				t.Fatalf("compensated %v, want every milestone in reverse", undone)
			}
		})
	}
}
