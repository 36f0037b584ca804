package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sagaengine/saga/policy"
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
	if len(left) != 1 { // the root itself
		t.Fatalf("left behind: %v", sortedPaths(left))
	}
	_ = context.Background
}
