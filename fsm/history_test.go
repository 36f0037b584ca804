package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// retryingSaga returns the records of a saga with steps a, b and c and
// the given history cap: step a is retried 3 times, then done; step b is
// retried stepRetries times, then done; step c fails; b's compensation
// fails compRetries times, the last Final (STUCK); an operator retries;
// two more failures; then it succeeds, and so does a's (FAILED). Each
// record has its own At.
func retryingSaga(id string, cap, stepRetries, compRetries int) []*Record {
	start := startRec(id, "", "a", "b", "c")
	start.Start.HistoryCap = cap
	recs := []*Record{start}
	for step, n := range []int{3, stepRetries} {
		for k := range n {
			recs = append(recs, &Record{Kind: KindStepStarted, Saga: id, Step: step, Attempt: k + 2})
		}
		recs = append(recs, &Record{Kind: KindStepCompleted, Saga: id, Step: step})
	}
	recs = append(recs, &Record{Kind: KindStepFailed, Saga: id, Step: 2, Err: &ErrorInfo{Message: "refused"}})
	down := &ErrorInfo{Message: "down", Retryable: true}
	attempt := 0
	fail := func(final bool) {
		attempt++
		recs = append(recs, &Record{Kind: KindCompStarted, Saga: id, Step: 1, Attempt: attempt},
			&Record{Kind: KindCompFailed, Saga: id, Step: 1, Attempt: attempt, Err: down, Final: final})
	}
	for k := range compRetries {
		fail(k == compRetries-1)
	}
	recs = append(recs, &Record{Kind: KindRetried, Saga: id, Actor: "alice", Reason: "back"})
	fail(false)
	fail(false)
	recs = append(recs, &Record{Kind: KindCompStarted, Saga: id, Step: 1, Attempt: attempt + 1},
		&Record{Kind: KindCompCompleted, Saga: id, Step: 1},
		&Record{Kind: KindCompStarted, Saga: id, Step: 0, Attempt: 1},
		&Record{Kind: KindCompCompleted, Saga: id, Step: 0})
	for i, r := range recs {
		r.At = int64(1000*len(id) + i + 1)
	}
	return recs
}

// historySeqs returns the seqs of a saga's history and its records by
// seq.
func historySeqs(t *testing.T, s *Store, id string) ([]uint64, map[uint64]*Record) {
	t.Helper()
	h, err := s.History(id)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	recs := map[uint64]*Record{}
	for _, he := range h {
		seqs = append(seqs, he.Seq)
		recs[he.Seq] = he.Record
	}
	return seqs, recs
}

// A saga that retries far past its history cap keeps every record that
// is not an attempt (start, completions, failures, the final failure,
// the operator's retry), the last two attempt records of each run, and
// the attempts of an earlier run that stayed under the cap; the dropped
// ones, the oldest of each run past the cap, are counted in the saga.
func TestHistoryCapKeepsEssentialTransitionsAndSummarisesOldestAttempts(t *testing.T) {
	s := openStoreT(t, vfs.NewMem())
	defer s.Close()
	const cap = 20
	recs := retryingSaga("capped", cap, 100, 500)
	applyAll(t, s, recs)
	sg, err := s.Get("capped")
	if err != nil || sg.State != StateFailed || sg.Seq != uint64(len(recs)) {
		t.Fatalf("saga %+v, %v; want FAILED after %d transitions", sg, err, len(recs))
	}
	seqs, kept := historySeqs(t, s, "capped")
	if n := uint64(len(seqs)); n+sg.HistoryDropped != sg.Seq || sg.HistoryDropped == 0 {
		t.Fatalf("%d records kept and %d dropped of %d", n, sg.HistoryDropped, sg.Seq)
	}
	// The cap, plus the records never dropped that came past it (7), plus
	// at most the last two of each run that began past it (3).
	if len(seqs) > cap+7+3*HistoryKeepLast {
		t.Fatalf("%d records kept, cap %d", len(seqs), cap)
	}
	// Runs of attempt records, by seq (seq i+1 is recs[i]).
	var runs [][]uint64
	prevAttempt := false
	for i, r := range recs {
		seq := uint64(i + 1)
		// What the rule says may be dropped, spelled out here rather
		// than taken from attemptRecord.
		attempt := r.Kind == KindStepStarted || r.Kind == KindCompStarted || r.Kind == KindCompFailed && !r.Final
		if !attempt {
			if kept[seq] == nil || kept[seq].At != r.At {
				t.Errorf("record %d (%s) is not in the history", seq, r.Kind)
			}
			prevAttempt = false
			continue
		}
		if !prevAttempt {
			runs = append(runs, nil)
		}
		runs[len(runs)-1] = append(runs[len(runs)-1], seq)
		prevAttempt = true
	}
	if len(runs) != 5 {
		t.Fatalf("%d runs of attempts, want 5", len(runs))
	}
	for i, run := range runs {
		for _, seq := range run[max(0, len(run)-HistoryKeepLast):] {
			if kept[seq] == nil {
				t.Errorf("run %d: its attempt record %d, one of its last %d, was dropped", i, seq, HistoryKeepLast)
			}
		}
	}
	for _, seq := range runs[0] {
		if kept[seq] == nil {
			t.Errorf("the step retry %d, under the cap when written, was dropped", seq)
		}
	}
	// The dropped ones: the oldest of each run past the cap (the long one
	// keeps no more than the cap of its latest), as the summary says.
	var missing []uint64
	for i, run := range runs {
		n := 0
		for n < len(run) && kept[run[n]] == nil {
			n++
		}
		for _, seq := range run[n:] {
			if kept[seq] == nil {
				t.Errorf("run %d: record %d is dropped but not one before it", i, seq)
			}
		}
		missing = append(missing, run[:n]...)
	}
	for _, run := range runs[1:3] {
		if n := len(run) - cap; !slices.Contains(missing, run[n-1]) {
			t.Errorf("a long run kept more than its last %d records", cap)
		}
	}
	if uint64(len(missing)) != sg.HistoryDropped || sg.HistoryDroppedFirst != missing[0] || sg.HistoryDroppedLast != missing[len(missing)-1] {
		t.Fatalf("summary %d records, %d..%d; the history misses %d, %d..%d", sg.HistoryDropped,
			sg.HistoryDroppedFirst, sg.HistoryDroppedLast, len(missing), missing[0], missing[len(missing)-1])
	}
}

// A saga whose history stays under its cap keeps every record, and so
// does one without a cap however long it retries.
func TestHistoryUnderTheCapIsUntouched(t *testing.T) {
	s := openStoreT(t, vfs.NewMem())
	defer s.Close()
	under := retryingSaga("under", 0, 3, 20)
	under[0].Start.HistoryCap = len(under)
	applyAll(t, s, under)
	none := retryingSaga("none", 0, 3, 500)
	applyAll(t, s, none)
	for id, n := range map[string]int{"under": len(under), "none": len(none)} {
		sg, err := s.Get(id)
		if err != nil || sg.State != StateFailed {
			t.Fatalf("%s: %+v, %v", id, sg, err)
		}
		seqs, _ := historySeqs(t, s, id)
		want := make([]uint64, n)
		for i := range want {
			want[i] = uint64(i + 1)
		}
		if !slices.Equal(seqs, want) || sg.HistoryDropped != 0 || sg.HistoryDroppedFirst != 0 {
			t.Fatalf("%s: history seqs %v (dropped %d), want 1..%d", id, seqs, sg.HistoryDropped, n)
		}
	}
}

// The same log yields the same state, history keys included, applied in
// one batch, entry by entry, in random batches, or by a Replayer.
func TestHistoryCapIsTheSameInAnyBatching(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 14))
	// Three capped sagas and one without a cap, interleaved at random.
	sagas := [][]*Record{retryingSaga("c1", 8, 12, 60), retryingSaga("c22", 5, 0, 40),
		retryingSaga("c333", 30, 40, 10), retryingSaga("n4444", 0, 5, 30)}
	var recs []*Record
	for len(sagas) > 0 {
		i := rng.IntN(len(sagas))
		recs = append(recs, sagas[i][0])
		if sagas[i] = sagas[i][1:]; len(sagas[i]) == 0 {
			sagas = slices.Delete(sagas, i, i+1)
		}
	}
	log := entries(t, 1, recs...)
	var hashes [][]byte
	var names []string
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
		"random batches": func(s *Store, es []Entry) error {
			for i := 0; i < len(es); {
				k := min(1+rng.IntN(40), len(es)-i)
				if _, err := s.ApplyBatch(es[i : i+k]); err != nil {
					return err
				}
				i += k
			}
			return nil
		},
		"replay": func(s *Store, es []Entry) error {
			s.replayBatch = 16 << 10 // several commits
			rp := s.NewReplayer()
			for i := 0; i < len(es); {
				k := min(1+rng.IntN(100), len(es)-i)
				if err := rp.Apply(es[i : i+k]); err != nil {
					return err
				}
				i += k
			}
			return rp.Finish()
		},
	} {
		s := openStoreT(t, vfs.NewMem())
		if err := apply(s, log); err != nil {
			t.Fatal(name, err)
		}
		for _, id := range []string{"c1", "c22", "c333"} {
			if sg, err := s.Get(id); err != nil || sg.State != StateFailed || sg.HistoryDropped == 0 {
				t.Fatalf("%s: %s: %+v, %v; want FAILED with dropped attempts", name, id, sg, err)
			}
		}
		h, err := s.Hash()
		if err != nil {
			t.Fatal(err)
		}
		hashes, names = append(hashes, h), append(names, name)
		s.Close()
	}
	for i := range hashes[1:] {
		if !bytes.Equal(hashes[i+1], hashes[0]) {
			t.Fatalf("state hash after %q differs from %q (seed %d)", names[i+1], names[0], seed)
		}
	}
}

// The cap and the summary survive their encoding; values without them
// keep the encoding of the writers before them (TestCodecGolden), and a
// negative cap is refused.
func TestHistoryCapFieldsRoundTrip(t *testing.T) {
	sg := fullSaga()
	sg.HistoryCap, sg.HistoryRun, sg.HistoryDropped, sg.HistoryDroppedFirst, sg.HistoryDroppedLast = 1000, 1300, 297, 5, 1299
	var back Saga
	if err := unmarshal(marshal(sg, 0), &back); err != nil || !reflect.DeepEqual(&back, sg) {
		t.Fatalf("saga: decoded %+v, %v", back, err)
	}
	r := startRec("s1", "", "a")
	r.Start.HistoryCap = 1000
	raw, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(raw)
	if err != nil || got.Start.HistoryCap != 1000 {
		t.Fatalf("start: decoded %+v, %v", got.Start, err)
	}
	r.Start.HistoryCap = -1
	if _, err := Apply(nil, r); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("a negative cap: %v, want ErrInvalidRecord", err)
	}
}

// BenchmarkStoreApplyHistory applies batches of 64 transitions of two
// shapes: "steps", sagas that start and complete their 4 steps (the
// common case, under any history cap); "retries", 32 sagas whose
// compensation fails again and again, a started/failed pair each per
// batch (the history that grows without a cap). Each without a history
// cap and with one (the engine's default for steps, which they stay
// under; 16 for retries, which run past it at once: a delete per record).
func BenchmarkStoreApplyHistory(b *testing.B) {
	for _, cap := range []int{0, 1000} {
		b.Run(fmt.Sprintf("steps/cap=%d", cap), func(b *testing.B) { benchSteps(b, cap) })
	}
	for _, cap := range []int{0, 16} {
		b.Run(fmt.Sprintf("retries/cap=%d", cap), func(b *testing.B) { benchRetries(b, cap) })
	}
}

const benchBatch = 64

func benchSteps(b *testing.B, cap int) {
	const batch = benchBatch
	s, err := OpenStore(b.TempDir(), StoreOptions{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	idx := uint64(1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		recs := make([]*Record, 0, batch)
		for j := 0; len(recs) < batch; j++ {
			id := fmt.Sprintf("b%d-%d", i, j)
			recs = append(recs, benchStart(id, cap, "a", "b", "c", "d"))
			for k := range 3 {
				recs = append(recs, &Record{Kind: KindStepCompleted, Saga: id, Step: k, At: int64(2 + k)})
			}
		}
		es := entries(b, idx, recs...)
		idx += uint64(len(es))
		if _, err := s.ApplyBatch(es); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
}

func benchRetries(b *testing.B, cap int) {
	const batch = benchBatch
	s, err := OpenStore(b.TempDir(), StoreOptions{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const sagas = batch / 2
	var setup []*Record
	for j := range sagas {
		id := fmt.Sprintf("r%d", j)
		setup = append(setup, benchStart(id, cap, "a", "b"),
			&Record{Kind: KindStepCompleted, Saga: id, Step: 0, At: 2},
			&Record{Kind: KindStepFailed, Saga: id, Step: 1, At: 3, Err: &ErrorInfo{Message: "no"}})
	}
	if _, err := s.ApplyBatch(entries(b, 1, setup...)); err != nil {
		b.Fatal(err)
	}
	idx := uint64(len(setup) + 1)
	down := &ErrorInfo{Kind: "unavailable", Message: "the payment service is down", Retryable: true}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		recs := make([]*Record, 0, batch)
		for j := range sagas {
			id := fmt.Sprintf("r%d", j)
			recs = append(recs, &Record{Kind: KindCompStarted, Saga: id, Step: 0, Attempt: i + 1, At: int64(4 + 2*i)},
				&Record{Kind: KindCompFailed, Saga: id, Step: 0, Attempt: i + 1, At: int64(5 + 2*i), Err: down})
		}
		es := entries(b, idx, recs...)
		idx += uint64(len(es))
		res, err := s.ApplyBatch(es)
		if err != nil {
			b.Fatal(err)
		}
		if res[0].Err != nil {
			b.Fatal(res[0].Err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
}

// benchStart is the start of a saga with the given history cap and
// steps, each with a compensation.
func benchStart(id string, cap int, steps ...string) *Record {
	r := startRec(id, "", steps...)
	r.Start.HistoryCap = cap
	return r
}

// The history cap and the trace context, both appended to the start
// record and the saga, round-trip together and each alone.
func TestHistoryCapAndTraceRoundTripTogether(t *testing.T) {
	tc := map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	for _, c := range []struct {
		cap   int
		trace map[string]string
	}{{1000, tc}, {0, tc}, {1000, nil}} {
		sg := fullSaga()
		sg.HistoryCap, sg.HistoryDropped, sg.Trace = c.cap, uint64(c.cap/10), c.trace
		var back Saga
		if err := unmarshal(marshal(sg, 0), &back); err != nil || !reflect.DeepEqual(&back, sg) {
			t.Fatalf("saga with cap %d and trace %v: decoded %+v, %v", c.cap, c.trace, back, err)
		}
		r := startRec("s1", "", "a")
		r.Start.HistoryCap, r.Start.Trace = c.cap, c.trace
		raw, err := Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(raw)
		if err != nil || got.Start.HistoryCap != c.cap || !reflect.DeepEqual(got.Start.Trace, c.trace) {
			t.Fatalf("start with cap %d and trace %v: decoded %+v, %v", c.cap, c.trace, got.Start, err)
		}
	}
}
