package fsm

import (
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// A staged batch has its results at once and shows readers nothing until
// Commit: the saga, its history and the applied index appear together.
// Discard leaves the store as it was, and a batch commits once.
func TestStagedBatchIsInvisibleUntilCommitAndDiscardLeavesNothing(t *testing.T) {
	s := openStoreT(t, vfs.NewMem())
	defer s.Close()

	dropped, err := s.StageBatch(entries(t, 1, startRec("gone", "", "pay")))
	if err != nil {
		t.Fatal(err)
	}
	if r := dropped.Results(); len(r) != 1 || r[0].Err != nil || r[0].Saga.ID != "gone" {
		t.Fatalf("staged results: %+v", r)
	}
	dropped.Discard()
	if _, err := s.Get("gone"); !errors.Is(err, ErrUnknownSaga) {
		t.Fatalf("discarded saga: %v, want ErrUnknownSaga", err)
	}
	if s.AppliedIndex() != 0 {
		t.Fatalf("applied index %d after a discard, want 0", s.AppliedIndex())
	}

	st, err := s.StageBatch(entries(t, 1,
		startRec("a1", "k1", "pay", "ship"),
		&Record{Kind: KindStepCompleted, Saga: "a1", Step: 0, At: 2}))
	if err != nil {
		t.Fatal(err)
	}
	if r := st.Results(); r[1].Err != nil || r[1].Saga.Current != 1 {
		t.Fatalf("staged results: %+v", r)
	}
	if _, err := s.Get("a1"); !errors.Is(err, ErrUnknownSaga) {
		t.Fatalf("saga of a staged batch: %v, want ErrUnknownSaga before Commit", err)
	}
	if h, _ := s.History("a1"); len(h) != 0 || s.AppliedIndex() != 0 {
		t.Fatalf("before Commit: %d history entries, applied %d; want none", len(h), s.AppliedIndex())
	}
	if err := st.Commit(); err != nil {
		t.Fatal(err)
	}
	sg, err := s.Get("a1")
	if err != nil || sg.Current != 1 {
		t.Fatalf("after Commit: %+v, %v", sg, err)
	}
	if h, _ := s.History("a1"); len(h) != 2 || s.AppliedIndex() != 2 {
		t.Fatalf("after Commit: %d history entries, applied %d; want 2, 2", len(h), s.AppliedIndex())
	}
	if err := st.Commit(); err == nil {
		t.Fatal("a second Commit of the same batch succeeded")
	}
}
