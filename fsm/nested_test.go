package fsm

import (
	"errors"
	"testing"
)

// completed returns a COMPLETED saga of two steps, a child of parent
// when parent is not "".
func completed(t *testing.T, parent string) *Saga {
	t.Helper()
	r := startRec("s", "", "a", "b")
	if parent != "" {
		r.Start.Parent, r.Start.Depth = parent, 1
	}
	s := mustApply(t, nil, r)
	s = mustApply(t, s, &Record{Kind: KindStepCompleted, At: 2, Step: 0})
	s = mustApply(t, s, &Record{Kind: KindStepCompleted, At: 3, Step: 1})
	if s.State != StateCompleted {
		t.Fatalf("state %s", s.State)
	}
	return s
}

func TestOnlyACompletedChildSagaLeavesCompletedByARevert(t *testing.T) {
	s := completed(t, "")
	var te *TransitionError
	if _, err := Apply(s, &Record{Kind: KindReverted, Saga: "s", At: 4}); !errors.As(err, &te) {
		t.Fatalf("revert of a top-level COMPLETED saga: %v, want a TransitionError", err)
	}
	c := completed(t, "p")
	n, err := Apply(c, &Record{Kind: KindReverted, Saga: "s", At: 4, Actor: "saga p"})
	if err != nil {
		t.Fatal(err)
	}
	if n.State != StateCompensating || n.Current != 1 || n.LastError.Kind != "reverted" {
		t.Fatalf("reverted child: %s current %d (%v), want COMPENSATING from the last step", n.State, n.Current, n.LastError)
	}
	if _, err := Apply(n, &Record{Kind: KindReverted, Saga: "s", At: 5}); !errors.As(err, &te) {
		t.Fatalf("second revert: %v, want a TransitionError", err)
	}
}

func TestAStartRecordNamesItsParentAtABoundedDepth(t *testing.T) {
	for _, tc := range []struct {
		parent string
		depth  int
		ok     bool
	}{{"", 0, true}, {"p", 1, true}, {"p", MaxDepth, true}, {"p", MaxDepth + 1, false}, {"p", 0, false}, {"", 1, false}, {"bad id!", 1, false}} {
		r := startRec("s", "", "a")
		r.Start.Parent, r.Start.Depth = tc.parent, tc.depth
		if err := r.Validate(); (err == nil) != tc.ok {
			t.Errorf("parent %q depth %d: %v, want ok=%v", tc.parent, tc.depth, err, tc.ok)
		}
	}
}

func TestChildFieldsSurviveTheCodec(t *testing.T) {
	r := startRec("s", "", "a")
	r.Start.Parent, r.Start.Depth = "p", 2
	r.Start.Steps = append(r.Start.Steps, StepDef{Name: "c", Child: "reserve"})
	raw, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	if back.Start.Parent != "p" || back.Start.Depth != 2 || back.Start.Steps[1].Child != "reserve" {
		t.Fatalf("decoded %+v", back.Start)
	}
	s := mustApply(t, nil, back)
	var s2 Saga
	if err := unmarshal(marshal(s, 256), &s2); err != nil {
		t.Fatal(err)
	}
	if s2.Parent != "p" || s2.Depth != 2 || s2.Steps[1].Child != "reserve" {
		t.Fatalf("saga decoded with parent %q depth %d child %q", s2.Parent, s2.Depth, s2.Steps[1].Child)
	}
}
