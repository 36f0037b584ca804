package fsm

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// benchReplayLog returns n encoded log entries of the shape the benchmark
// harness replays (bench/internal/loggen): 4-step sagas with generated ids
// that complete, the first 'pending' of them stopping with a failed
// second step instead.
func benchReplayLog(tb testing.TB, n, pending int) []Entry {
	steps := []StepDef{{Name: "a", Compensation: "undo"}, {Name: "b", Compensation: "undo"},
		{Name: "c", Compensation: "undo"}, {Name: "d"}}
	var recs []*Record
	for sagas := 1; len(recs) < n; sagas++ {
		id := fmt.Sprintf("%022x", sagas)
		at := int64(sagas)
		recs = append(recs, &Record{Kind: KindSagaStarted, Saga: id, At: at,
			Start: &StartInfo{Definition: "bench", Version: 1, Steps: steps}})
		if sagas <= pending {
			recs = append(recs,
				&Record{Kind: KindStepCompleted, Saga: id, At: at, Step: 0},
				&Record{Kind: KindStepFailed, Saga: id, At: at, Step: 1, Err: &ErrorInfo{Message: "x"}})
			continue
		}
		for k := range steps {
			recs = append(recs, &Record{Kind: KindStepCompleted, Saga: id, At: at, Step: k})
		}
	}
	return entries(tb, 1, recs[:n]...)
}

// BenchmarkReplayer replays a log of the harness's shape (figure 6, the
// "recovery replay" target) into an empty store on disk, as the engine's
// recovery does: each entry decoded from its bytes into a reused record
// (by a Decoder),
// applied by a Replayer in chunks of 4096, then Finish. It reports
// transitions/s of the whole replay, Pebble's flushes and compactions that
// run meanwhile included (on a loaded machine, compare allocs/op and CPU
// profiles rather than the rate alone).
//
//	go test ./fsm -run '^$' -bench Replayer -benchtime 3x
//
// SAGA_REPLAY_N sets the number of transitions (default 1M).
func BenchmarkReplayer(b *testing.B) {
	const chunk = 4096
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("SAGA_REPLAY_N")); err == nil && v > 0 {
		n = v // a shorter run, for valgrind --tool=callgrind
	}
	log := benchReplayLog(b, n, 1000)
	recs := make([]Record, chunk)
	dec := NewDecoder()
	ents := make([]Entry, chunk)
	var cpu time.Duration
	var compactions int64
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		dir, err := os.MkdirTemp("", "fsm-replay-bench-")
		if err != nil {
			b.Fatal(err)
		}
		s, err := OpenStore(dir, StoreOptions{Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		cpu0 := cpuTime()
		r := s.NewReplayer()
		for i := 0; i < n; i += chunk {
			k := min(chunk, n-i)
			for j := range k {
				e := log[i+j]
				if err := dec.Decode(e.Raw, &recs[j]); err != nil {
					b.Fatal(err)
				}
				ents[j] = Entry{Index: e.Index, Rec: &recs[j], Raw: e.Raw}
			}
			if err := r.Apply(ents[:k]); err != nil {
				b.Fatal(err)
			}
		}
		if err := r.Finish(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		cpu += cpuTime() - cpu0
		m := s.db.Metrics()
		compactions += m.Compact.Count
		if os.Getenv("SAGA_BENCH_METRICS") != "" {
			b.Logf("%s", m)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		os.RemoveAll(dir)
		b.StartTimer()
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "transitions/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(n*b.N), "cpu-ns/transition")
	b.ReportMetric(float64(compactions)/float64(b.N), "compactions/op")
}

// cpuTime is the CPU time (user and system) the process has used: Pebble's
// flushes and compactions run in goroutines of their own, and on a shared
// machine the wall time of a replay says more about the neighbours.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
