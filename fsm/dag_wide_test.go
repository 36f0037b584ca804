package fsm

import (
	"fmt"
	"slices"
	"testing"
)

// fanout is root, n steps after root (every third without a
// compensation), and sink after all of them: wide enough (> 16 steps)
// for the name index of dagTransition and heldBack.
func fanout(n int) []StepDef {
	steps := []StepDef{{Name: "root", Compensation: "u"}}
	var mids []string
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("m%d", i)
		mids = append(mids, name)
		comp := "u"
		if i%3 == 0 {
			comp = ""
		}
		steps = append(steps, StepDef{Name: name, Compensation: comp, After: []string{"root"}})
	}
	steps = append(steps, StepDef{Name: "sink", Compensation: "u", After: mids})
	return steps
}

func mustApply(t testing.TB, s *Saga, r *Record) *Saga {
	t.Helper()
	r.Saga = "s"
	n, err := Apply(s, r)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A wide fan-in: the sink starts with the last of its dependencies, not
// before; on its failure every fanned-out step is compensated before
// root, those without a handler settled at once.
func TestWideFanInAndItsCompensation(t *testing.T) {
	const n = 40
	s := mustApply(t, nil, &Record{Kind: KindSagaStarted, Start: &StartInfo{Definition: "d", Version: 1, Steps: fanout(n)}})
	s = mustApply(t, s, &Record{Kind: KindStepCompleted, Step: 0})
	if got := len(s.Running()); got != n {
		t.Fatalf("%d running after root, want %d", got, n)
	}
	for i := n; i >= 1; i-- { // in reverse: the sink is after the last one listed first
		s = mustApply(t, s, &Record{Kind: KindStepCompleted, Step: i})
		if want := map[bool]StepStatus{true: StepRunning, false: StepPending}[i == 1]; s.Steps[n+1].Status != want {
			t.Fatalf("after %d completions the sink is %s, want %s", n-i+1, s.Steps[n+1].Status, want)
		}
	}
	s = mustApply(t, s, &Record{Kind: KindStepFailed, Step: n + 1, Err: &ErrorInfo{Message: "x"}})
	var want []int
	for i := n; i >= 1; i-- {
		if (i-1)%3 == 0 {
			if s.Steps[i].Status != StepCompensated {
				t.Fatalf("step %d without a handler is %s", i, s.Steps[i].Status)
			}
		} else {
			want = append(want, i)
		}
	}
	want = append(want, 0)
	if got := Pending(s); !slices.Equal(got, want) {
		t.Fatalf("pending %v, want %v", got, want)
	}
	if s.CompensationReady(0) {
		t.Fatal("root ready before the steps after it")
	}
	for _, i := range want[:len(want)-1] {
		s = mustApply(t, s, &Record{Kind: KindCompStarted, Step: i, Attempt: 1})
		s = mustApply(t, s, &Record{Kind: KindCompCompleted, Step: i})
	}
	if !s.CompensationReady(0) {
		t.Fatal("root not ready once the steps after it are compensated")
	}
	s = mustApply(t, s, &Record{Kind: KindCompStarted, Step: 0, Attempt: 1})
	s = mustApply(t, s, &Record{Kind: KindCompCompleted, Step: 0})
	if s.State != StateFailed {
		t.Fatalf("state %s", s.State)
	}
}

// BenchmarkWideFanIn: before the name index, a completion in a fan-in of
// 2000 steps took about 5 ms (a scan of the steps per dependency of every
// pending step), and Pending 40 ms.
func BenchmarkWideFanIn(b *testing.B) {
	const n = 2000
	steps := fanout(n)
	for b.Loop() {
		s := mustApply(b, nil, &Record{Kind: KindSagaStarted, Start: &StartInfo{Definition: "d", Version: 1, Steps: steps}})
		for i := 0; i <= n; i++ {
			s = mustApply(b, s, &Record{Kind: KindStepCompleted, Step: i})
		}
		s = mustApply(b, s, &Record{Kind: KindStepFailed, Step: n + 1, Err: &ErrorInfo{Message: "x"}})
		_ = Pending(s)
	}
}

// BenchmarkValidateWideFanIn: before the reverse edges, validating a
// fan-in of 20000 steps took about 2 s (Kahn's order scanned every step's
// dependencies for each step reached); every start record is validated,
// on replay too.
func BenchmarkValidateWideFanIn(b *testing.B) {
	d := &Definition{Name: "d", Steps: fanout(20000)}
	for b.Loop() {
		if err := d.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}
