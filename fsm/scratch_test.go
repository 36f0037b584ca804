package fsm

import (
	"reflect"
	"testing"
)

// TestApplyIntoMatchesApply walks a saga through a failure and its
// compensation, applying each record both ways: ApplyInto on a reused
// scratch state gives Apply's result and leaves the input untouched, and
// an illegal record is refused by both.
func TestApplyIntoMatchesApply(t *testing.T) {
	steps := []StepDef{{Name: "a", Compensation: "undo"}, {Name: "b", Compensation: "undo"}, {Name: "c", Compensation: "undo"}}
	cur, err := Apply(nil, &Record{Kind: KindSagaStarted, Saga: "s1", At: 1, Start: &StartInfo{Definition: "d", Version: 1, Steps: steps}})
	if err != nil {
		t.Fatal(err)
	}
	recs := []*Record{
		{Kind: KindStepCompleted, Saga: "s1", At: 2, Step: 0, Output: []byte("o0")},
		{Kind: KindStepCompleted, Saga: "s1", At: 3, Step: 1, Output: []byte("o1")},
		{Kind: KindStepFailed, Saga: "s1", At: 4, Step: 2, Err: &ErrorInfo{Message: "boom"}},
		{Kind: KindCompStarted, Saga: "s1", At: 5, Step: 1, Attempt: 1},
		{Kind: KindCompCompleted, Saga: "s1", At: 6, Step: 1},
	}
	scratch := new(Saga)
	for _, r := range recs {
		before := cur.DeepCopy()
		want, err := Apply(cur, r)
		if err != nil {
			t.Fatalf("%s: %v", r.Kind, err)
		}
		got, err := ApplyInto(scratch, cur, r)
		if err != nil {
			t.Fatalf("ApplyInto %s: %v", r.Kind, err)
		}
		if got != scratch {
			t.Fatalf("ApplyInto %s did not write into the scratch state", r.Kind)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("ApplyInto %s:\n got %+v\nwant %+v", r.Kind, got, want)
		}
		if !reflect.DeepEqual(cur, before) {
			t.Fatalf("ApplyInto %s changed its input", r.Kind)
		}
		// Retried is legal only for a STUCK saga: never in this walk.
		illegal := &Record{Kind: KindRetried, Saga: "s1", At: 9, Actor: "op"}
		if _, err := Apply(cur, illegal); err == nil {
			t.Fatal("Apply accepted a retry of a saga that is not STUCK")
		}
		if _, err := ApplyInto(scratch, cur, illegal); err == nil {
			t.Fatal("ApplyInto accepted a retry of a saga that is not STUCK")
		}
		scratch.Reset()
		if !reflect.DeepEqual(*scratch, Saga{Steps: scratch.Steps[:0]}) || cap(scratch.Steps) == 0 {
			t.Fatalf("Reset left %+v", scratch)
		}
		for _, st := range scratch.Steps[:cap(scratch.Steps)] {
			if st.StepDef != nil || st.Output != nil {
				t.Fatal("Reset kept a reference")
			}
		}
		cur = want
	}
}
