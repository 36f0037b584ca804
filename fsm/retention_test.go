package fsm

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// finishedSagas returns the records of a few sagas in every state: a
// COMPLETED parent with a COMPLETED child, a COMPLETED and a FAILED saga
// with idempotency keys, a STUCK one and a running one.
func finishedSagas() []*Record {
	parent := startRec("gone-parent", "key-gone-parent", "a")
	parent.Start.Steps = append(parent.Start.Steps, StepDef{Name: "c", Child: "reserve"})
	child := startRec("gone-parent.1", "", "x")
	child.Start.Definition, child.Start.Parent, child.Start.Depth = "reserve", "gone-parent", 1
	child.At = 3
	done, failed := startRec("gone-done", "key-gone-done", "pay"), startRec("gone-failed", "key-gone-failed", "pay")
	stuck, running := startRec("keep-stuck", "key-keep-stuck", "pay", "ship"), startRec("keep-run", "", "pay")
	return []*Record{
		parent,
		{Kind: KindStepCompleted, Saga: "gone-parent", Step: 0, At: 2},
		child,
		{Kind: KindStepCompleted, Saga: "gone-parent.1", Step: 0, At: 4},
		{Kind: KindStepCompleted, Saga: "gone-parent", Step: 1, At: 5},
		done,
		{Kind: KindStepCompleted, Saga: "gone-done", Step: 0, At: 6},
		failed,
		{Kind: KindStepFailed, Saga: "gone-failed", Step: 0, At: 7, Err: &ErrorInfo{Message: "no"}},
		stuck,
		{Kind: KindStepCompleted, Saga: "keep-stuck", Step: 0, At: 8},
		{Kind: KindStepFailed, Saga: "keep-stuck", Step: 1, At: 9, Err: &ErrorInfo{Message: "no"}},
		{Kind: KindCompStarted, Saga: "keep-stuck", Step: 0, Attempt: 1, At: 10},
		{Kind: KindCompFailed, Saga: "keep-stuck", Step: 0, Attempt: 1, At: 11, Final: true, Err: &ErrorInfo{Message: "down"}},
		running,
	}
}

func removal(keep bool, sagas ...string) *Record {
	return &Record{Kind: KindRemoved, At: 100, Remove: &Removal{Sagas: sagas, KeepKeys: keep}}
}

func applyAll(t *testing.T, s *Store, recs []*Record) []Result {
	t.Helper()
	res, err := s.ApplyBatch(entries(t, s.AppliedIndex()+1, recs...))
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// A removal deletes a finished top-level saga with everything the store
// holds for it, and its children with it: afterwards no key of the store
// names it. Running and STUCK sagas, children listed on their own and
// unknown ids are skipped.
func TestRemovalLeavesNoKeyOfARemovedSagaAndKeepsUnfinishedOnes(t *testing.T) {
	s := openStoreT(t, vfs.NewMem())
	defer s.Close()
	recs := finishedSagas()
	applyAll(t, s, recs)
	for id, want := range map[string]SagaState{"gone-parent": StateCompleted, "gone-parent.1": StateCompleted,
		"gone-done": StateCompleted, "gone-failed": StateFailed, "keep-stuck": StateStuck, "keep-run": StateInProgress} {
		if sg, err := s.Get(id); err != nil || sg.State != want {
			t.Fatalf("%s before the removal: %v, %v; want %s", id, sg, err, want)
		}
	}
	// The child alone first: skipped while its parent exists.
	res := applyAll(t, s, []*Record{removal(false, "gone-parent.1"),
		removal(false, "gone-parent", "gone-done", "gone-failed", "keep-stuck", "keep-run", "no-such-saga")})
	if len(res[0].Removed) != 0 {
		t.Fatalf("a child listed on its own was removed: %v", res[0].Removed)
	}
	var ids []string
	for _, sg := range res[1].Removed {
		ids = append(ids, sg.ID)
	}
	if want := []string{"gone-parent", "gone-parent.1", "gone-done", "gone-failed"}; !slices.Equal(ids, want) {
		t.Fatalf("removed %v, want %v", ids, want)
	}
	for _, id := range ids {
		if _, err := s.Get(id); !errors.Is(err, ErrUnknownSaga) {
			t.Fatalf("removed saga %s: %v", id, err)
		}
	}
	it, err := s.db.NewIter(&pebble.IterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if bytes.Contains(it.Key(), []byte("gone-")) || bytes.Contains(it.Value(), []byte("gone-")) {
			t.Errorf("key %q (value %q) names a removed saga", it.Key(), it.Value())
		}
	}
	for _, id := range []string{"keep-stuck", "keep-run"} {
		if h, err := s.History(id); err != nil || len(h) == 0 {
			t.Fatalf("kept saga %s: history %d entries, %v", id, len(h), err)
		}
	}
	if owner, err := s.KeyOwner("key-gone-done"); err != nil || owner != "" {
		t.Fatalf("the key of a removed saga is still owned by %q (%v)", owner, err)
	}
	if n, err := s.Count(Query{}); err != nil || n != 2 {
		t.Fatalf("count after the removal: %d, %v; want 2", n, err)
	}
}

// Kept keys (KeepKeys) still refuse a second start and name the removed
// saga, until a later removal forgets them; then the key is free.
func TestKeptKeysRefuseAStartUntilTheirWindowEnds(t *testing.T) {
	s := openStoreT(t, vfs.NewMem())
	defer s.Close()
	applyAll(t, s, finishedSagas())
	applyAll(t, s, []*Record{removal(true, "gone-done", "gone-failed")})
	res := applyAll(t, s, []*Record{startRec("again", "key-gone-done", "pay")})
	var dk *DuplicateKeyError
	if !errors.As(res[0].Err, &dk) || dk.Existing != "gone-done" {
		t.Fatalf("a start with a kept key: %v, want a DuplicateKeyError naming gone-done", res[0].Err)
	}
	ks, err := s.ExpiredKeys(7, 10) // gone-done finished at 6, gone-failed at 7
	if err != nil || !slices.Equal(ks, []string{"key-gone-done"}) {
		t.Fatalf("expired keys before 7: %v, %v", ks, err)
	}
	forget := &Record{Kind: KindRemoved, At: 101, Remove: &Removal{Keys: []string{"key-gone-done", "key-keep-stuck", "no-such-key"}}}
	res = applyAll(t, s, []*Record{forget, startRec("again", "key-gone-done", "pay")})
	if res[1].Err != nil {
		t.Fatalf("a start with a forgotten key: %v", res[1].Err)
	}
	// A key whose saga exists is not forgotten, whatever a removal lists.
	if owner, _ := s.KeyOwner("key-keep-stuck"); owner != "keep-stuck" {
		t.Fatalf("the key of a STUCK saga was forgotten (owner %q)", owner)
	}
	if ks, _ := s.ExpiredKeys(1000, 10); !slices.Equal(ks, []string{"key-gone-failed"}) {
		t.Fatalf("kept keys left: %v", ks)
	}
}

// Expired lists the finished top-level sagas of one definition that
// finished before a time, oldest first, up to a limit: no child, no
// running or STUCK saga, no other definition.
func TestExpiredListsFinishedTopLevelSagasOldestFirst(t *testing.T) {
	s := openStoreT(t, vfs.NewMem())
	defer s.Close()
	recs := finishedSagas()
	other := startRec("other-def", "", "pay")
	other.Start.Definition = "invoice"
	recs = append(recs, other, &Record{Kind: KindStepCompleted, Saga: "other-def", Step: 0, At: 3})
	applyAll(t, s, recs)
	for _, c := range []struct {
		before int64
		limit  int
		want   []string
	}{
		{1000, 10, []string{"gone-parent", "gone-done", "gone-failed"}},
		{7, 10, []string{"gone-parent", "gone-done"}},
		{1000, 1, []string{"gone-parent"}},
		{5, 10, nil},
	} {
		got, err := s.Expired("order", 1, c.before, c.limit)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("Expired(order, %d, %d) = %v, %v; want %v", c.before, c.limit, got, err, c.want)
		}
	}
	if got, _ := s.Expired("reserve", 1, 1000, 10); len(got) != 0 {
		t.Errorf("children listed as expired: %v", got)
	}
}

// The same log gives the same state however it is cut into batches: one
// batch, one entry per batch, a replay. The log removes sagas finished in
// the same batch, reuses a removed id and forgets a key kept earlier in
// the batch.
func TestRemovalIsTheSameInAnyBatching(t *testing.T) {
	recs := append(finishedSagas(),
		removal(true, "gone-parent", "gone-done", "gone-failed"),
		startRec("gone-done", "", "pay"), // the id again: a new saga
		startRec("dup", "key-gone-done", "pay"),
		&Record{Kind: KindRemoved, At: 101, Remove: &Removal{Keys: []string{"key-gone-failed"}}},
		startRec("reuse", "key-gone-failed", "pay"),
	)
	var hashes [][]byte
	for name, apply := range map[string]func(*Store, []Entry) error{
		"one batch": func(s *Store, es []Entry) error { _, err := s.ApplyBatch(es); return err },
		"entry by entry": func(s *Store, es []Entry) error {
			for _, e := range es {
				if _, err := s.ApplyBatch([]Entry{e}); err != nil {
					return err
				}
			}
			return nil
		},
		"replay": func(s *Store, es []Entry) error {
			rp := s.NewReplayer()
			if err := rp.Apply(es); err != nil {
				return err
			}
			return rp.Finish()
		},
	} {
		s := openStoreT(t, vfs.NewMem())
		if err := apply(s, entries(t, 1, recs...)); err != nil {
			t.Fatal(name, err)
		}
		sg, err := s.Get("gone-done")
		if err != nil || sg.State != StateInProgress || sg.Seq != 1 {
			t.Fatalf("%s: the reused id: %v, %v", name, sg, err)
		}
		if h, _ := s.History("gone-done"); len(h) != 1 {
			t.Fatalf("%s: the reused id has %d history entries, want 1", name, len(h))
		}
		if _, err := s.Get("dup"); !errors.Is(err, ErrUnknownSaga) {
			t.Fatalf("%s: a start with a kept key was applied: %v", name, err)
		}
		if _, err := s.Get("reuse"); err != nil {
			t.Fatalf("%s: a start with a forgotten key: %v", name, err)
		}
		h, err := s.Hash()
		if err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, h)
		s.Close()
	}
	for _, h := range hashes[1:] {
		if !bytes.Equal(h, hashes[0]) {
			t.Fatalf("state hashes differ between batchings: %x", hashes)
		}
	}
}

// A removal record survives its encoding, and a malformed one is refused
// and changes nothing.
func TestRemovalRecordRoundTripsAndMalformedOnesAreRefused(t *testing.T) {
	r := &Record{Kind: KindRemoved, At: 5, Remove: &Removal{Sagas: []string{"a", "b"}, KeepKeys: true, Keys: []string{"k"}}}
	raw, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(raw)
	if err != nil || !slices.Equal(got.Remove.Sagas, r.Remove.Sagas) || !got.Remove.KeepKeys || !slices.Equal(got.Remove.Keys, r.Remove.Keys) {
		t.Fatalf("decoded %+v, %v", got.Remove, err)
	}
	s := openStoreT(t, vfs.NewMem())
	defer s.Close()
	applyAll(t, s, finishedSagas())
	for _, bad := range []*Removal{nil, {Sagas: []string{"bad id!"}}, {Keys: []string{""}}, {Sagas: make([]string, MaxRemoval+1)}} {
		res := applyAll(t, s, []*Record{{Kind: KindRemoved, At: 100, Remove: bad}})
		if !errors.Is(res[0].Err, ErrInvalidRecord) {
			t.Fatalf("removal %+v: %v, want ErrInvalidRecord", bad, res[0].Err)
		}
	}
	if _, err := Apply(nil, r); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("Apply of a removal: %v, want ErrInvalidRecord", err)
	}
	if sg, err := s.Get("gone-done"); err != nil || sg.State != StateCompleted {
		t.Fatalf("a refused removal changed the store: %v, %v", sg, err)
	}
}

// orphanable returns the records of a parent saga that an operator
// resolved to FAILED while its child is STUCK: the child's undo (step 1
// of the parent) could not bring the child to FAILED, the parent went
// STUCK on it, and the operator settled the parent's step by hand. The
// parent is finished, top-level and past any retention; its child is not
// finished.
func orphanable() []*Record {
	parent := startRec("op", "", "a")
	parent.Start.Steps = append(parent.Start.Steps, StepDef{Name: "c", Child: "reserve"})
	child := startRec("op.1", "key-op-child", "x", "y")
	child.Start.Definition, child.Start.Parent, child.Start.Depth = "reserve", "op", 1
	return []*Record{
		parent,
		{Kind: KindStepCompleted, Saga: "op", Step: 0, At: 2},
		child,
		{Kind: KindStepCompleted, Saga: "op.1", Step: 0, At: 3},
		{Kind: KindStepFailed, Saga: "op.1", Step: 1, At: 4, Err: &ErrorInfo{Message: "no"}},
		{Kind: KindCompStarted, Saga: "op.1", Step: 0, Attempt: 1, At: 5},
		{Kind: KindCompFailed, Saga: "op.1", Step: 0, Attempt: 1, At: 6, Final: true, Err: &ErrorInfo{Message: "down"}},
		{Kind: KindAborted, Saga: "op", Step: 1, At: 7, Reason: "operator"},
		{Kind: KindCompStarted, Saga: "op", Step: 1, Attempt: 1, At: 8},
		{Kind: KindCompFailed, Saga: "op", Step: 1, Attempt: 1, At: 9, Final: true, Err: &ErrorInfo{Message: "child op.1 is STUCK"}},
		{Kind: KindResolved, Saga: "op", Step: 1, At: 10, Actor: "ops"},
		{Kind: KindCompStarted, Saga: "op", Step: 0, Attempt: 1, At: 11},
		{Kind: KindCompCompleted, Saga: "op", Step: 0, Attempt: 1, At: 12},
	}
}

// A parent resolved by hand can finish while its child is still STUCK.
// Removing the parent then must not strand the child: the child is
// never a removal candidate itself (children go with their parent), so a
// child left behind by its removed parent would stay in the store
// forever, even once an operator settles it. The tree stays whole until
// every saga in it is finished, and then goes together.
func TestARemovalKeepsAParentWhoseChildIsNotFinished(t *testing.T) {
	s := openStoreT(t, vfs.NewMem())
	defer s.Close()
	applyAll(t, s, orphanable())
	if sg, _ := s.Get("op"); sg == nil || sg.State != StateFailed {
		t.Fatalf("parent: %v, want FAILED", sg)
	}
	if sg, _ := s.Get("op.1"); sg == nil || sg.State != StateStuck {
		t.Fatalf("child: %v, want STUCK", sg)
	}
	res := applyAll(t, s, []*Record{removal(false, "op")})
	if len(res[0].Removed) != 0 {
		t.Fatalf("removed %d sagas of a tree whose child is STUCK", len(res[0].Removed))
	}
	if _, err := s.Get("op"); err != nil {
		t.Fatalf("the parent of a STUCK child was removed: %v", err)
	}
	// The operator settles the child; the next removal takes both.
	applyAll(t, s, []*Record{
		{Kind: KindResolved, Saga: "op.1", Step: 0, At: 13, Actor: "ops"},
	})
	if sg, _ := s.Get("op.1"); sg == nil || sg.State != StateFailed {
		t.Fatalf("child after resolve: %v, want FAILED", sg)
	}
	ids, err := s.Expired("order", 1, 1000, 10)
	if err != nil || !slices.Equal(ids, []string{"op"}) {
		t.Fatalf("expired: %v, %v; want [op]", ids, err)
	}
	res = applyAll(t, s, []*Record{removal(false, ids...)})
	if len(res[0].Removed) != 2 {
		t.Fatalf("removed %d sagas, want the parent and its child", len(res[0].Removed))
	}
	for _, id := range []string{"op", "op.1"} {
		if _, err := s.Get(id); !errors.Is(err, ErrUnknownSaga) {
			t.Fatalf("%s after the removal: %v", id, err)
		}
	}
}

// A tree kept for its unfinished child, then settled and removed, gives
// the same state in any batching (one batch, entry by entry, replicated
// commands, a replay).
func TestAKeptTreeIsTheSameInAnyBatching(t *testing.T) {
	recs := append(orphanable(),
		removal(true, "op"),
		&Record{Kind: KindResolved, Saga: "op.1", Step: 0, At: 13, Actor: "ops"},
		removal(true, "op"),
		startRec("op", "", "a"), // the id again: a new saga
	)
	var hashes [][]byte
	for _, c := range []struct {
		name  string
		apply func(*Store, []Entry) error
	}{
		{"one batch", func(s *Store, es []Entry) error { _, err := s.ApplyBatch(es); return err }},
		{"entry by entry", func(s *Store, es []Entry) error {
			for _, e := range es {
				if _, err := s.ApplyBatch([]Entry{e}); err != nil {
					return err
				}
			}
			return nil
		}},
		{"commands", func(s *Store, es []Entry) error {
			var cmds []Command
			for i, e := range es {
				cmds = append(cmds, Command{Source: uint64(i + 1), Entries: []Entry{e}})
			}
			_, err := s.ApplyCommands(cmds)
			return err
		}},
		{"replay", func(s *Store, es []Entry) error {
			rp := s.NewReplayer()
			if err := rp.Apply(es); err != nil {
				return err
			}
			return rp.Finish()
		}},
	} {
		s := openStoreT(t, vfs.NewMem())
		if err := c.apply(s, entries(t, 1, recs...)); err != nil {
			t.Fatal(c.name, err)
		}
		if _, err := s.Get("op.1"); !errors.Is(err, ErrUnknownSaga) {
			t.Fatalf("%s: the child after its tree's removal: %v", c.name, err)
		}
		if sg, err := s.Get("op"); err != nil || sg.State != StateInProgress || sg.Seq != 1 {
			t.Fatalf("%s: the reused id: %v, %v", c.name, sg, err)
		}
		h, err := s.Hash()
		if err != nil {
			t.Fatal(err)
		}
		if c.name != "commands" { // also holds the source index
			hashes = append(hashes, h)
		}
		s.Close()
	}
	for _, h := range hashes[1:] {
		if !bytes.Equal(h, hashes[0]) {
			t.Fatalf("state hashes differ between batchings: %x", hashes)
		}
	}
}
