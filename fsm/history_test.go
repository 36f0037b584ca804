package fsm

import (
	"fmt"
	"testing"
)

// BenchmarkStoreApplyHistory applies batches of 64 transitions of two
// shapes: "steps", sagas that start and complete their 4 steps (the
// common case, under any history cap); "retries", 32 sagas whose
// compensation fails again and again, a started/failed pair each per
// batch (the history that grows without a cap).
func BenchmarkStoreApplyHistory(b *testing.B) {
	const batch = 64
	b.Run("steps", func(b *testing.B) {
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
				recs = append(recs, benchStart(id, "a", "b", "c", "d"))
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
	})
	b.Run("retries", func(b *testing.B) {
		s, err := OpenStore(b.TempDir(), StoreOptions{Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		const sagas = batch / 2
		var setup []*Record
		for j := range sagas {
			id := fmt.Sprintf("r%d", j)
			setup = append(setup, benchStart(id, "a", "b"),
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
	})
}

// benchStart is the start of a saga with the given steps, each with a
// compensation.
func benchStart(id string, steps ...string) *Record {
	return startRec(id, "", steps...)
}
