package fsm

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// randomLog returns n encoded entries of interleaved sagas that complete,
// fail and compensate, get stuck and are retried, plus records the state
// machine rejects (a reused id or key, a step that is not current).
func randomLog(t *testing.T, rng *rand.Rand, n int) []Entry {
	model := map[string]*Saga{}
	var live []string
	var recs []*Record
	for len(recs) < n {
		if len(live) < 200 || rng.IntN(5) == 0 {
			id := fmt.Sprintf("%022x", len(recs)+1)
			if rng.IntN(20) == 0 && len(live) > 0 {
				id = live[rng.IntN(len(live))]
			}
			key := ""
			if rng.IntN(3) == 0 {
				key = "k" + strconv.Itoa(rng.IntN(n/10+1))
			}
			r := startRec(id, key, "a", "b", "c")
			r.Start.Steps[1].Compensation = ""
			recs = append(recs, r)
			if next, err := Apply(model[id], r); err == nil {
				model[id] = next
				live = append(live, id)
			}
			continue
		}
		i := rng.IntN(len(live))
		sg := model[live[i]]
		if sg.State.Terminal() {
			live[i] = live[len(live)-1]
			live = live[:len(live)-1]
			continue
		}
		r := &Record{Saga: sg.ID, Step: sg.Current}
		e := &ErrorInfo{Message: "e" + strconv.Itoa(rng.IntN(3))}
		switch sg.State {
		case StateInProgress:
			if rng.IntN(4) == 0 {
				r.Kind, r.Err = KindStepFailed, e
			} else {
				r.Kind, r.Output = KindStepCompleted, []byte{byte(rng.IntN(256))}
			}
		case StateCompensating:
			st := sg.Steps[sg.Current]
			switch {
			case st.Status == StepDone:
				r.Kind, r.Attempt = KindCompStarted, 1
			case rng.IntN(2) == 0:
				r.Kind = KindCompCompleted
			default:
				r.Kind, r.Attempt, r.Err, r.Final = KindCompFailed, st.CompAttempts, e, true
			}
		case StateStuck:
			r.Kind = KindRetried
		}
		if rng.IntN(40) == 0 {
			r.Step++
		}
		recs = append(recs, r)
		if next, err := Apply(sg, r); err == nil {
			model[sg.ID] = next
		}
	}
	for i, r := range recs {
		r.At = int64(i + 1)
	}
	return entries(t, 1, recs[:n]...)
}

// TestReplayerMatchesApplyBatch: a Replayer committing many batches (and
// changing sagas in place within each) yields the state ApplyBatch does
// in small batches.
func TestReplayerMatchesApplyBatch(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	log := randomLog(t, rng, 20000)

	live := openStoreT(t, vfs.NewMem())
	defer live.Close()
	for i := 0; i < len(log); {
		k := min(1+rng.IntN(50), len(log)-i)
		if _, err := live.ApplyBatch(log[i : i+k]); err != nil {
			t.Fatal(err)
		}
		i += k
	}
	want, err := live.Hash()
	if err != nil {
		t.Fatal(err)
	}

	for _, limit := range []int{1, 64 << 10, 1 << 20, 0} {
		t.Run(fmt.Sprintf("limit=%d", limit), func(t *testing.T) {
			s := openStoreT(t, vfs.NewMem())
			defer s.Close()
			if limit > 0 {
				s.replayBatch = limit
			}
			r := s.NewReplayer()
			for i := 0; i < len(log); {
				k := min(1+rng.IntN(3000), len(log)-i)
				if err := r.Apply(log[i : i+k]); err != nil {
					t.Fatal(err)
				}
				i += k
			}
			if err := r.Finish(); err != nil {
				t.Fatal(err)
			}
			if s.AppliedIndex() != uint64(len(log)) {
				t.Fatalf("applied index %d, want %d", s.AppliedIndex(), len(log))
			}
			got, err := s.Hash()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("state hash %x after the Replayer, %x after ApplyBatch (seed %d)", got, want, seed)
			}
		})
	}
}

// TestReplayerRefusesAGap: entries that do not follow the applied index
// are refused and change nothing.
func TestReplayerRefusesAGap(t *testing.T) {
	s := openStoreT(t, vfs.NewMem())
	defer s.Close()
	r := s.NewReplayer()
	if err := r.Apply(entries(t, 2, startRec("a1", "", "x"))); err == nil {
		t.Fatal("an entry at index 2 of an empty store was accepted")
	}
	if err := r.Finish(); err != nil || s.AppliedIndex() != 0 {
		t.Fatalf("finish: %v, applied index %d", err, s.AppliedIndex())
	}
}
