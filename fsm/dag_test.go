package fsm

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func TestParallelStepsRoundTripTheirDependenciesAndStuckMarks(t *testing.T) {
	s := &Saga{ID: "s1", Definition: "d", Version: 1, State: StateStuck, Current: 1, Steps: []Step{
		{StepDef: &StepDef{Name: "a", Compensation: "ua"}, Status: StepDone},
		{StepDef: &StepDef{Name: "b", Compensation: "ub", After: []string{"a"}}, Status: StepCompensating, Stuck: true},
	}}
	b, err := msgpack.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var got Saga
	if err := msgpack.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, &got) {
		t.Fatalf("round trip:\n%+v\n%+v", s.Steps[1], got.Steps[1])
	}
	// A step without the new fields keeps the older encoding.
	plain, _ := msgpack.Marshal(&StepDef{Name: "a"})
	withAfter, _ := msgpack.Marshal(&StepDef{Name: "a", After: []string{"x"}})
	if plain[0] != 0x97 || withAfter[0] != 0x98 {
		t.Fatalf("array headers %x and %x, want 97 (7 fields) and 98", plain[0], withAfter[0])
	}
}

func TestParallelDefinitionRefusesPipelinedDurability(t *testing.T) {
	d := &Definition{Name: "d", Durability: DurabilityPipelined, Steps: []StepDef{{Name: "a"}, {Name: "b", After: []string{"a"}}}}
	err := d.Validate()
	var de *DefinitionError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "pipelined durability is for sequences") {
		t.Fatalf("got %v", err)
	}
	d.Durability = DurabilityStrict
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
}

// A sequence is a DAG in which each step is after the one before: the
// same records lead to the same step statuses in both forms.
func TestSequenceAndItsChainDAGAgree(t *testing.T) {
	seq := []StepDef{{Name: "a", Compensation: "ua"}, {Name: "b", Compensation: "ub"}, {Name: "c", Compensation: "uc"}}
	dag := []StepDef{{Name: "a", Compensation: "ua"}, {Name: "b", Compensation: "ub", After: []string{"a"}}, {Name: "c", Compensation: "uc", After: []string{"b"}}}
	recs := []*Record{
		{Kind: KindStepCompleted, Step: 0}, {Kind: KindStepFailed, Step: 1, Err: &ErrorInfo{Message: "x"}},
		{Kind: KindCompStarted, Step: 0, Attempt: 1}, {Kind: KindCompCompleted, Step: 0},
	}
	run := func(steps []StepDef) []StepStatus {
		s, err := Apply(nil, &Record{Kind: KindSagaStarted, Saga: "s", Start: &StartInfo{Definition: "d", Version: 1, Steps: steps}})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			r.Saga = "s"
			if s, err = Apply(s, r); err != nil {
				t.Fatalf("%s: %v", r.Kind, err)
			}
		}
		if s.State != StateFailed {
			t.Fatalf("state %s", s.State)
		}
		var out []StepStatus
		for _, st := range s.Steps {
			out = append(out, st.Status)
		}
		return out
	}
	if a, b := run(seq), run(dag); !reflect.DeepEqual(a, b) {
		t.Fatalf("sequence %v, chain %v", a, b)
	}
}

// The bound is for new definitions: a define record already in a log
// replays, whatever its size.
func TestMaxStepsBoundsNewDefinitionsNotReplay(t *testing.T) {
	d := &Definition{Name: "d", Version: 1}
	for i := range MaxSteps + 1 {
		d.Steps = append(d.Steps, StepDef{Name: fmt.Sprintf("s%d", i)})
	}
	if err := d.ValidateNew(); !errors.Is(err, ErrTooManySteps) || !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("ValidateNew of %d steps: %v", len(d.Steps), err)
	}
	if _, err := ApplyDefinition(nil, &Record{Kind: KindDefine, Def: d}); err != nil {
		t.Fatalf("a logged definition of %d steps no longer replays: %v", len(d.Steps), err)
	}
	d.Steps = d.Steps[:MaxSteps]
	if err := d.ValidateNew(); err != nil {
		t.Fatalf("ValidateNew of %d steps: %v", MaxSteps, err)
	}
}

// A retry policy's multiplier or jitter that is NaN or infinite is refused
// for a new definition, naming the step and the policy (NaN passes every
// comparison), and a definition already logged with one still replays.
func TestNonFiniteRetryFactorsAreRefusedForNewDefinitionsOnly(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*StepDef)
		want string
	}{
		{"nan multiplier", func(s *StepDef) { s.Retry.Multiplier = math.NaN() }, `step "a": retry policy`},
		{"inf multiplier", func(s *StepDef) { s.Retry.Multiplier = math.Inf(1) }, `step "a": retry policy`},
		{"nan jitter", func(s *StepDef) { s.Retry.Jitter = math.NaN() }, `step "a": retry policy`},
		{"nan compensation jitter", func(s *StepDef) { s.CompensationRetry.Jitter = math.NaN() }, `step "a": compensation retry policy`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &Definition{Name: "d", Version: 1, Steps: []StepDef{{Name: "a"}, {Name: "b"}}}
			tc.set(&d.Steps[0])
			err := d.ValidateNew()
			if !errors.Is(err, ErrInvalidRecord) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "not a finite number") {
				t.Fatalf("ValidateNew: %v, want a definition error naming %s", err, tc.want)
			}
			if _, err := ApplyDefinition(nil, &Record{Kind: KindDefine, Def: d}); err != nil {
				t.Fatalf("a logged definition no longer replays: %v", err)
			}
		})
	}
	ok := &Definition{Name: "d", Version: 1, Steps: []StepDef{{Name: "a", Retry: RetryPolicy{Multiplier: 2, Jitter: 0.5}}}}
	if err := ok.ValidateNew(); err != nil {
		t.Fatalf("finite factors refused: %v", err)
	}
}
