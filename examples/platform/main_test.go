package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation/fakeclock"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/policy"

	"github.com/sagaengine/saga/internal/testctx"
)

// TestPoliciesMatchTheCode: the shipped policies name the milestones and
// handlers of the operations' code, in the same order.
func TestPoliciesMatchTheCode(t *testing.T) {
	for _, f := range []string{"critical.yaml", "off.yaml", "selected.yaml"} {
		p, err := policy.ParseFile(filepath.Join("policies", f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for name, spec := range p.Operations {
			op, ok := findOperation(name)
			if !ok {
				t.Fatalf("%s: unknown operation %s", f, name)
			}
			var got, want []string
			for _, m := range spec.Milestones {
				got = append(got, m.Name+"="+m.Compensation)
			}
			for _, m := range op.milestones {
				want = append(want, m.name+"="+m.handler)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%s: %s milestones %v, code has %v", f, name, got, want)
			}
		}
	}
}

// TestEveryFailureLeavesDataAsBefore runs each of the eight operations
// once successfully and then with a failure injected at each milestone,
// under the policy that switches all of them on: each failed run must
// leave the data directory exactly as it was before it.
func TestEveryFailureLeavesDataAsBefore(t *testing.T) {
	all := filepath.Join(t.TempDir(), "all.yaml")
	src, err := os.ReadFile(filepath.Join("policies", "critical.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// critical.yaml leaves interactive_sop_creation off; switch it on too.
	text := strings.Replace(string(src), "saga_operations:\n", "saga_operations:\n  - interactive_sop_creation\n", 1)
	if err := os.WriteFile(all, []byte(text), 0o640); err != nil {
		t.Fatal(err)
	}
	data, eng := t.TempDir(), t.TempDir()
	for _, op := range operations {
		// A successful run first, so shared index files already hold lines.
		if err := run(io.Discard, config{policy: all, op: op.name, data: data, engine: eng, user: "u",
			runID: op.name + "-ok"}); err != nil {
			t.Fatalf("%s: %v", op.name, err)
		}
		for _, ms := range op.milestones {
			before, _ := snapshot(data)
			var out strings.Builder
			err := run(&out, config{policy: all, op: op.name, failAt: ms.name, data: data, engine: eng, user: "u",
				runID: fmt.Sprintf("%s-fail-%s", op.name, ms.name)})
			if err != nil {
				t.Fatalf("%s fail at %s: %v", op.name, ms.name, err)
			}
			after, _ := snapshot(data)
			if n := diffCount(before, after); n != 0 {
				t.Errorf("%s with a failure at %s changed the data dir in %d place(s):\n%s\nbefore: %v\nafter:  %v",
					op.name, ms.name, n, out.String(), sortedPaths(before), sortedPaths(after))
			}
			if !strings.Contains(out.String(), "exactly as before") {
				t.Errorf("%s fail at %s: output\n%s", op.name, ms.name, out.String())
			}
		}
	}
}

// TestOffPolicyLeavesWork: with sagas off the same failure leaves the
// earlier milestones' files behind: the contrast the policy controls.
func TestOffPolicyLeavesWork(t *testing.T) {
	data := t.TempDir()
	var out strings.Builder
	err := run(&out, config{policy: filepath.Join("policies", "off.yaml"), op: "data_ingest_pipeline", failAt: "embed",
		data: data, engine: t.TempDir(), user: "u", runID: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "no saga: nothing compensated; ") {
		t.Fatalf("output:\n%s", out.String())
	}
	if _, err := os.Stat(filepath.Join(data, "parsed", "r1.json")); err != nil {
		t.Fatalf("without a saga the parse output should remain: %v", err)
	}
}

// TestUndoIsIdempotent: compensating twice, or a milestone that never
// ran, succeeds and changes nothing more.
func TestUndoIsIdempotent(t *testing.T) {
	p := &platform{root: t.TempDir()}
	if err := p.init(); err != nil {
		t.Fatal(err)
	}
	layout, _ := snapshot(p.root)
	if _, err := p.do("data_ingest_pipeline", "ingest", "r", []byte("x\n")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := p.undo("data_ingest_pipeline", "ingest", "r"); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.undo("roadmap_generation", "store_roadmap", "never"); err != nil {
		t.Fatal(err)
	}
	left, _ := snapshot(p.root)
	if diffCount(layout, left) != 0 {
		t.Fatalf("left behind: %v", sortedPaths(left))
	}
}

// Directories that existed before, even empty, survive a compensation.
func TestPreexistingDirectoriesSurvive(t *testing.T) {
	data := t.TempDir()
	for _, d := range []string{"storage", "parsed/keep-me"} {
		if err := os.MkdirAll(filepath.Join(data, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := snapshot(data)
	if err := run(io.Discard, config{policy: filepath.Join("policies", "critical.yaml"), op: "data_ingest_pipeline",
		failAt: "expose", data: data, engine: t.TempDir(), user: "u", runID: "r1"}); err != nil {
		t.Fatal(err)
	}
	after, _ := snapshot(data)
	for k := range before {
		if _, ok := after[k]; !ok {
			t.Fatalf("%s existed before the run and is gone", k)
		}
	}
}

// An index that does not end with a newline, or is empty, comes back as
// it was after do and undo (but for the separating newline added to the
// former).
func TestIndexEdgeCases(t *testing.T) {
	for name, content := range map[string]string{"empty": "", "lines": "a\tstore_roadmap\tx\n", "no final newline": "a\tstore_roadmap\tx"} {
		p := &platform{root: t.TempDir()}
		if err := p.init(); err != nil {
			t.Fatal(err)
		}
		idx := filepath.Join(p.root, "roadmap_generation", "index.txt")
		if err := os.WriteFile(idx, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
		if _, err := p.do("roadmap_generation", "store_roadmap", "r", nil); err != nil {
			t.Fatal(err)
		}
		if err := p.undo("roadmap_generation", "store_roadmap", "r"); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(idx)
		want := content
		if name == "no final newline" {
			want += "\n"
		}
		if string(got) != want {
			t.Errorf("%s: index %q after do+undo, want %q", name, got, want)
		}
	}
}

// A milestone that fails for real cleans up what it did before failing.
func TestFailingMilestoneLeavesNothing(t *testing.T) {
	p := &platform{root: t.TempDir()}
	if err := p.init(); err != nil {
		t.Fatal(err)
	}
	before, _ := snapshot(p.root)
	if _, err := p.do("data_ingest_pipeline", "embed", "r", nil); err == nil {
		t.Fatal("embed without a parse output must fail")
	}
	after, _ := snapshot(p.root)
	if diffCount(before, after) != 0 {
		t.Fatalf("failed milestone left %v", sortedPaths(after))
	}
}

// The process dies between a milestone's work and its record: after the
// restart the saga's deadline aborts it and the compensations restore the
// data dir, the uncertain milestone included.
func TestCrashMidOperationIsUndoneAtTheDeadline(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	data, engDir := t.TempDir(), t.TempDir()
	p := &platform{root: data}
	if err := p.init(); err != nil {
		t.Fatal(err)
	}
	reg, err := p.registry()
	if err != nil {
		t.Fatal(err)
	}
	pm, err := policy.New(policy.Options{File: filepath.Join("policies", "critical.yaml"), NoWatch: true, Registry: reg, Logger: quiet,
		LookupEnv: func(string) (string, bool) { return "", false }})
	if err != nil {
		t.Fatal(err)
	}
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	eng, err := engine.Open(engDir, engine.Options{Registry: reg, Logger: quiet, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := snapshot(data)
	op, _ := findOperation("data_ingest_pipeline")
	res, _ := policy.NewExecutor(pm, eng).ExecuteWithSaga(testctx.New(t), op.name, policy.UserContext{}, []byte("r1"),
		func(ctx context.Context, s policy.Saga) error {
			if err := s.Step(ctx, "ingest", func(context.Context) ([]byte, error) { return p.do(op.name, "ingest", "r1", []byte("x\n")) }); err != nil {
				return err
			}
			return s.Step(ctx, "parse", func(context.Context) ([]byte, error) {
				out, err := p.do(op.name, "parse", "r1", nil)
				eng.Close() // the process dies here
				return out, err
			})
		})
	eng, err = engine.Open(engDir, engine.Options{Registry: reg, Logger: quiet, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	clk.Advance(2 * policy.DefaultTimeout)
	wctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := eng.Wait(wctx, res.SagaID)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := snapshot(data)
	if st.State != fsm.StateFailed || diffCount(before, after) != 0 {
		t.Fatalf("after the deadline saga is %s; data dir differs in %d place(s): %v", st.State, diffCount(before, after), sortedPaths(after))
	}
}
