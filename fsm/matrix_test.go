package fsm

import (
	"errors"
	"reflect"
	"testing"
)

// sagaIn returns a 3-step saga in the given state, reached through Apply.
func sagaIn(t *testing.T, st SagaState) *Saga {
	t.Helper()
	steps := []StepDef{{Name: "a", Compensation: "ua"}, {Name: "b", Compensation: "ub"}, {Name: "c", Compensation: "uc"}}
	recs := []*Record{{Kind: KindSagaStarted, Saga: "m", Start: &StartInfo{Definition: "d", Version: 1, Steps: steps}}}
	switch st {
	case StateInProgress:
		recs = append(recs, &Record{Kind: KindStepCompleted, Saga: "m", Step: 0})
	case StateCompleted:
		for k := 0; k < 3; k++ {
			recs = append(recs, &Record{Kind: KindStepCompleted, Saga: "m", Step: k})
		}
	case StateCompensating, StateStuck, StateFailed:
		recs = append(recs,
			&Record{Kind: KindStepCompleted, Saga: "m", Step: 0},
			&Record{Kind: KindStepFailed, Saga: "m", Step: 1, Err: &ErrorInfo{Message: "x"}},
			&Record{Kind: KindCompStarted, Saga: "m", Step: 0, Attempt: 1})
		if st == StateStuck {
			recs = append(recs, &Record{Kind: KindCompFailed, Saga: "m", Step: 0, Attempt: 1, Err: &ErrorInfo{Message: "y"}, Final: true})
		}
		if st == StateFailed {
			recs = append(recs, &Record{Kind: KindCompCompleted, Saga: "m", Step: 0})
		}
	}
	var s *Saga
	for _, r := range recs {
		var err error
		if s, err = Apply(s, r); err != nil {
			t.Fatalf("building %s: %v", st, err)
		}
	}
	if s.State != st {
		t.Fatalf("built %s, want %s", s.State, st)
	}
	return s
}

// TestTransitionMatrix applies every kind of record, well-formed for the
// saga's current step, in every state: the legal ones succeed, every other
// one is refused with a *TransitionError and changes nothing.
func TestTransitionMatrix(t *testing.T) {
	legal := map[SagaState][]Kind{
		StateInProgress:   {KindStepStarted, KindStepCompleted, KindStepFailed, KindAborted},
		StateCompensating: {KindCompStarted, KindCompFailed, KindCompCompleted},
		StateStuck:        {KindRetried, KindResolved},
		StateCompleted:    nil,
		StateFailed:       nil,
	}
	kinds := []Kind{KindStepStarted, KindStepCompleted, KindStepFailed, KindCompStarted, KindCompCompleted,
		KindCompFailed, KindAborted, KindRetried, KindResolved}
	for _, st := range States() {
		for _, k := range kinds {
			s := sagaIn(t, st)
			cur := max(s.Current, 0)
			r := &Record{Kind: k, Saga: "m", Step: cur, Err: &ErrorInfo{Message: "e"}, Actor: "op"}
			switch k {
			case KindStepStarted:
				r.Attempt = s.Steps[cur].Attempts + 1
			case KindCompStarted:
				r.Attempt = s.Steps[cur].CompAttempts + 1
			case KindCompFailed:
				r.Attempt = s.Steps[cur].CompAttempts
			}
			snapshot := s.Clone()
			next, err := Apply(s, r)
			want := false
			for _, l := range legal[st] {
				want = want || l == k
			}
			// A compensation may only complete or fail once it started.
			if st == StateCompensating && (k == KindCompCompleted || k == KindCompFailed) {
				want = s.Steps[cur].Status == StepCompensating
			}
			if want && err != nil {
				t.Errorf("%s in %s: refused: %v", k, st, err)
			}
			if !want {
				var te *TransitionError
				if err == nil || !errors.As(err, &te) || !errors.Is(err, ErrIllegalTransition) {
					t.Errorf("%s in %s: want *TransitionError, got %v (next %v)", k, st, err, next)
				}
				if next != nil {
					t.Errorf("%s in %s: a refused record returned a state", k, st)
				}
			}
			if !reflect.DeepEqual(s, snapshot) {
				t.Errorf("%s in %s: Apply mutated its input", k, st)
			}
		}
	}
}

// TestApplyIsDeterministic: the same records always give the same state.
func TestApplyIsDeterministic(t *testing.T) {
	for i := 0; i < 50; i++ {
		a, b := sagaIn(t, StateStuck), sagaIn(t, StateStuck)
		if !reflect.DeepEqual(a, b) {
			t.Fatal("two replays of the same records differ")
		}
	}
}
