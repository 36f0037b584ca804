package engine

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/wal"
)

// replayWorkload returns n records of a random mixed workload: definitions,
// starts (some with a reused idempotency key, some reusing an id, ids of
// the generated form in and out of order and of other forms), forward
// steps, failures, aborts, compensations that fail until STUCK, operator
// retries and resolutions, and records that the state machine rejects.
// Many sagas are in flight at once, so a saga's transitions are spread
// over many replay chunks.
func replayWorkload(rng *rand.Rand, n int) []*fsm.Record {
	model := map[string]*fsm.Saga{}
	var live []string
	var out []*fsm.Record
	defVersion := map[string]int{}
	nextID := 1 << 20
	steps := func() []fsm.StepDef {
		k := 1 + rng.IntN(4)
		s := make([]fsm.StepDef, k)
		for i := range s {
			s[i] = fsm.StepDef{Name: "s" + strconv.Itoa(i)}
			if rng.IntN(4) > 0 {
				s[i].Compensation = "undo"
			}
		}
		return s
	}
	emit := func(r *fsm.Record) {
		r.At = int64(len(out) + 1)
		if r.Kind != fsm.KindDefine {
			if next, err := fsm.Apply(model[r.Saga], r); err == nil {
				model[r.Saga] = next
			}
		}
		out = append(out, r)
	}
	for len(out) < n {
		switch p := rng.IntN(100); {
		case p < 2:
			name := "def" + strconv.Itoa(rng.IntN(3))
			v := defVersion[name] + 1
			if rng.IntN(5) == 0 {
				v++ // a version gap: rejected
			} else {
				defVersion[name] = v
			}
			emit(&fsm.Record{Kind: fsm.KindDefine, Def: &fsm.Definition{Name: name, Version: v, Steps: steps()}})
		case p < 20 || len(live) < 300:
			var id string
			switch q := rng.IntN(20); {
			case q == 0 && len(live) > 0:
				id = live[rng.IntN(len(live))] // an existing id: rejected
			case q == 1:
				id = fmt.Sprintf("%022x", nextID-rng.IntN(1000)-1) // generated form, below the max
			case q == 2:
				id = "order-" + strconv.Itoa(rng.IntN(1<<30))
			default:
				nextID += 1 + rng.IntN(3)
				id = fmt.Sprintf("%022x", nextID)
			}
			si := &fsm.StartInfo{Definition: "def" + strconv.Itoa(rng.IntN(3)), Version: 1, Steps: steps(),
				Driven: rng.IntN(2) == 0, Input: []byte("in" + strconv.Itoa(rng.IntN(9)))}
			if rng.IntN(3) == 0 {
				si.IdempotencyKey = "key" + strconv.Itoa(rng.IntN(n/20+1))
			}
			if rng.IntN(4) == 0 {
				si.Meta = map[string]string{"team": "t" + strconv.Itoa(rng.IntN(3)), "x": "y"}
			}
			if rng.IntN(2) == 0 { // indexed: the hash covers the query indexes
				si.User = "u" + strconv.Itoa(rng.IntN(5))
			}
			emit(&fsm.Record{Kind: fsm.KindSagaStarted, Saga: id, Start: si})
			if model[id] != nil && !model[id].State.Terminal() {
				live = append(live, id)
			}
		default:
			i := rng.IntN(len(live))
			id := live[i]
			sg := model[id]
			if sg == nil || sg.State.Terminal() {
				live[i] = live[len(live)-1]
				live = live[:len(live)-1]
				continue
			}
			cur := max(sg.Current, 0)
			r := &fsm.Record{Saga: id, Step: cur}
			errInfo := &fsm.ErrorInfo{Kind: "k", Message: "m" + strconv.Itoa(rng.IntN(5)), Retryable: rng.IntN(2) == 0}
			switch sg.State {
			case fsm.StateInProgress:
				switch q := rng.IntN(10); {
				case q < 6:
					r.Kind, r.Output = fsm.KindStepCompleted, []byte("out"+strconv.Itoa(rng.IntN(9)))
				case q < 7:
					r.Kind, r.Attempt = fsm.KindStepStarted, sg.Steps[cur].Attempts+1
				case q < 9:
					r.Kind, r.Err = fsm.KindStepFailed, errInfo
				default:
					r.Kind, r.Actor, r.Reason = fsm.KindAborted, "op", "test"
				}
			case fsm.StateCompensating:
				st := sg.Steps[cur]
				switch {
				case st.Status == fsm.StepDone || rng.IntN(3) == 0 && st.Status == fsm.StepCompensating && st.CompErr != nil:
					r.Kind, r.Attempt = fsm.KindCompStarted, st.CompAttempts+1
				case rng.IntN(2) == 0:
					r.Kind = fsm.KindCompCompleted
				default:
					r.Kind, r.Attempt, r.Err, r.Final = fsm.KindCompFailed, st.CompAttempts, errInfo, rng.IntN(3) == 0
				}
			case fsm.StateStuck:
				if rng.IntN(2) == 0 {
					r.Kind = fsm.KindRetried
				} else {
					r.Kind = fsm.KindResolved
				}
			}
			if rng.IntN(30) == 0 {
				r.Step++ // not the current step: rejected
			}
			emit(r)
		}
	}
	return out[:n]
}

// writeLog appends records to the log of the data directory dir.
func writeLog(t *testing.T, dir string, recs []*fsm.Record) [][]byte {
	t.Helper()
	w, err := wal.Open(filepath.Join(dir, "wal"), wal.Options{NoSync: true, Logger: quiet})
	must(t, err)
	raws := make([][]byte, len(recs))
	for i, r := range recs {
		raws[i], err = fsm.Encode(r)
		must(t, err)
	}
	for off := 0; off < len(raws); off += 1000 {
		_, err := w.Append(raws[off:min(off+1000, len(raws))])
		must(t, err)
	}
	must(t, w.Close())
	return raws
}

// applyLive applies entries [from, to) of raws to the store in batches of
// random sizes, as group commit does.
func applyLive(t *testing.T, s *fsm.Store, rng *rand.Rand, raws [][]byte, from, to int) {
	t.Helper()
	for i := from; i < to; {
		k := min(1+rng.IntN(64), to-i)
		batch := make([]fsm.Entry, k)
		for j := range batch {
			rec, err := fsm.Decode(raws[i+j])
			must(t, err)
			batch[j] = fsm.Entry{Index: uint64(i + j + 1), Rec: rec, Raw: raws[i+j]}
		}
		_, err := s.ApplyBatch(batch)
		must(t, err)
		i += k
	}
}

// TestReplayMatchesLiveApply: replaying a log, from the start or from a
// state that applied part of it, yields the state (its hash) that
// applying the same entries live, in small batches, does.
func TestReplayMatchesLiveApply(t *testing.T) {
	seed := rand.Uint64()
	if s := os.Getenv("SAGA_REPLAY_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (SAGA_REPLAY_SEED)", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	const n = 30000 // several replay chunks
	recs := replayWorkload(rng, n)
	dir := t.TempDir()
	raws := writeLog(t, dir, recs)

	liveStore, err := fsm.OpenStore(filepath.Join(t.TempDir(), "live"), fsm.StoreOptions{Logger: quiet})
	must(t, err)
	applyLive(t, liveStore, rng, raws, 0, n)
	want, err := liveStore.Hash()
	must(t, err)
	must(t, liveStore.Close())

	for _, applied := range []int{0, 1 + rng.IntN(n-1)} {
		t.Run(fmt.Sprintf("applied=%d", applied), func(t *testing.T) {
			if applied > 0 {
				// The state took the first entries live and was closed
				// (flushed): replay starts after them with a cold cache.
				s, err := fsm.OpenStore(filepath.Join(dir, "state"), fsm.StoreOptions{Logger: quiet})
				must(t, err)
				applyLive(t, s, rng, raws, 0, applied)
				must(t, s.Close())
			}
			e := openT(t, dir, Options{Inspect: true})
			defer e.Close()
			if got := e.Stats().Recovery.Replayed; got != uint64(n-applied) {
				t.Fatalf("replayed %d entries, want %d", got, n-applied)
			}
			got, err := e.StateHash()
			must(t, err)
			if !bytes.Equal(got, want) {
				t.Fatalf("the replayed state's hash %x differs from the live state's %x (seed %d)", got, want, seed)
			}
		})
	}
}
