package engine

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/wal"
)

func noopRegistry(b testing.TB) *compensation.Registry {
	reg := compensation.NewRegistry()
	must(b, reg.RegisterAction("noop", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	must(b, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	return reg
}

// BenchmarkRun4Steps runs 4-step no-op engine-driven sagas at several
// concurrencies and reports sagas/s and fsyncs per saga. With
// SAGA_BENCH_NOSYNC=1 the log skips fsync: the CPU-bound ceiling of
// everything but the disk (never a production setting).
func BenchmarkRun4Steps(b *testing.B) {
	for _, conc := range []int{1, 64, 256} {
		b.Run(fmt.Sprintf("c=%d", conc), func(b *testing.B) { run4Steps(b, conc, nil) })
	}
}

// BenchmarkRun4StepsTracing is BenchmarkRun4Steps with tracing off, on
// with spans made and dropped (a provider without a processor: sampled,
// never exported), on with every span exported (100% sampling through
// the SDK's batch processor, as in production) to a no-op exporter, and
// on with every span kept in memory (the same, into tracetest's
// in-memory exporter). "exported" is the engine's own cost with a
// realistic processor; "recorded" adds the in-memory exporter's, which
// copies every span and keeps it until the end of the run (b.N sagas, 5
// spans each, all live: a collector's, not the engine's, cost).
func BenchmarkRun4StepsTracing(b *testing.B) {
	for _, conc := range []int{1, 64} {
		for _, mode := range []string{"off", "dropped", "exported", "recorded"} {
			b.Run(fmt.Sprintf("c=%d/tracing=%s", conc, mode), func(b *testing.B) {
				var tp trace.TracerProvider
				switch mode {
				case "dropped":
					tp = sdktrace.NewTracerProvider()
				case "exported":
					tp = sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
				case "recorded":
					tp = sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewInMemoryExporter()))
				}
				run4Steps(b, conc, tp)
				if sdk, ok := tp.(*sdktrace.TracerProvider); ok {
					_ = sdk.Shutdown(context.Background())
				}
			})
		}
	}
}

func run4Steps(b *testing.B, conc int, tp trace.TracerProvider) {
	noSync := os.Getenv("SAGA_BENCH_NOSYNC") == "1"
	e := openT(b, b.TempDir(), Options{Registry: noopRegistry(b), WAL: wal.Options{NoSync: noSync}, TracerProvider: tp})
	defer e.Close()
	d := Definition{Name: "bench"}
	for k := 0; k < 4; k++ {
		d.Steps = append(d.Steps, StepDef{Name: fmt.Sprintf("s%d", k), Action: "noop", Compensation: "undo"})
	}
	_, err := e.Define(context.Background(), d)
	must(b, err)
	b.ReportAllocs()
	s0, s1 := runBench(b, e, conc)
	if syncs := s1.LogSyncs - s0.LogSyncs; syncs > 0 {
		b.ReportMetric(float64((s1.LogSyncTime-s0.LogSyncTime).Microseconds())/float64(syncs), "µs/fsync")
	}
}

// runBench runs b.N sagas of the definition "bench" from conc goroutines
// and reports sagas/s, fsyncs per saga and records per commit; it
// returns the engine's stats before and after.
func runBench(b *testing.B, e *Engine, conc int) (s0, s1 Stats) {
	s0 = e.Stats()
	var next atomic.Int64
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if _, err := e.Run(context.Background(), "bench", nil, StartOptions{}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	s1 = e.Stats()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sagas/s")
	b.ReportMetric(float64(s1.LogSyncs-s0.LogSyncs)/float64(b.N), "fsyncs/saga")
	b.ReportMetric(float64(s1.Records-s0.Records)/float64(s1.Commits-s0.Commits), "records/commit")
	return s0, s1
}

// BenchmarkRunFanOut8 runs root → 8 branches → join at c=1 (fanOut in
// parallel_test.go), the branches sleeping 1 ms (work=1ms, the harness's
// figure 1c) or doing nothing (work=0, for a CPU profile). It reports ms
// per saga, the log's fsyncs per saga (at c=1 all are the saga's: the
// fsyncs it is exposed to) and the record batches it waited for.
func BenchmarkRunFanOut8(b *testing.B) {
	noSync := os.Getenv("SAGA_BENCH_NOSYNC") == "1"
	for _, work := range []time.Duration{0, time.Millisecond} {
		b.Run(fmt.Sprintf("work=%v", work), func(b *testing.B) {
			reg := compensation.NewRegistry()
			must(b, reg.RegisterAction("act", func(_ context.Context, c compensation.Call) ([]byte, error) {
				if work > 0 && c.Step != "root" && c.Step != "join" {
					time.Sleep(work)
				}
				return nil, nil
			}))
			must(b, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
			e := openT(b, b.TempDir(), Options{Registry: reg, WAL: wal.Options{NoSync: noSync}})
			defer e.Close()
			_, err := e.Define(context.Background(), fanOut("bench", 8))
			must(b, err)
			s0 := e.Stats()
			b.ResetTimer()
			for range b.N {
				if _, err := e.Run(context.Background(), "bench", nil, StartOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			s1 := e.Stats()
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/saga")
			b.ReportMetric(float64(s1.LogSyncs-s0.LogSyncs)/float64(b.N), "fsyncs/saga")
			b.ReportMetric(float64(s1.SyncWaits-s0.SyncWaits)/float64(b.N), "waits/saga")
			if syncs := s1.LogSyncs - s0.LogSyncs; syncs > 0 {
				b.ReportMetric(float64((s1.LogSyncTime-s0.LogSyncTime).Microseconds())/float64(syncs), "µs/fsync")
			}
		})
	}
}

// BenchmarkRunDiamond runs root → (left, right) → join no-op sagas at c=64
// (the harness's figure 2b) and reports sagas/s and records per commit.
func BenchmarkRunDiamond(b *testing.B) {
	noSync := os.Getenv("SAGA_BENCH_NOSYNC") == "1"
	const conc = 64
	b.Run(fmt.Sprintf("c=%d", conc), func(b *testing.B) {
		e := openT(b, b.TempDir(), Options{Registry: noopRegistry(b), WAL: wal.Options{NoSync: noSync}})
		defer e.Close()
		_, err := e.Define(context.Background(), Definition{Name: "bench", Steps: []StepDef{
			{Name: "root", Action: "noop", Compensation: "undo"},
			{Name: "left", Action: "noop", Compensation: "undo", After: []string{"root"}},
			{Name: "right", Action: "noop", Compensation: "undo", After: []string{"root"}},
			{Name: "join", Action: "noop", Compensation: "undo", After: []string{"left", "right"}},
		}})
		must(b, err)
		runBench(b, e, conc)
	})
}
