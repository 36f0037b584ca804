package main

import (
	"context"
	"fmt"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaengine/saga/engine"
)

// figTracing: what tracing costs at c=64. The same 4-step no-op
// workload with tracing off, on with every span exported to a no-op
// exporter, and on with every span (100% sampling) kept by an in-memory
// exporter; the three interleaved, several rounds, medians.
func figTracing() (Figure, []Target) {
	rounds, dur := 3, 3*time.Second
	if *quick {
		rounds, dur = 1, time.Second
	}
	const conc = 64
	fig := Figure{Name: fmt.Sprintf("14. Tracing cost: 4 no-op steps, c=%d, strict", conc),
		Method: fmt.Sprintf("engine-driven sagas for %s per point; off, on with a no-op exporter (batched), on with 100%% sampling into an "+
			"in-memory exporter (batched; reset after each point); the three interleaved, median of %d rounds; spans per saga: 1 saga + 4 steps", dur, rounds)}
	type mode struct {
		name string
		tp   func() (trace.TracerProvider, func())
	}
	modes := []mode{
		{"off", func() (trace.TracerProvider, func()) { return nil, func() {} }},
		{"no-op exporter", func() (trace.TracerProvider, func()) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
			return tp, func() { _ = tp.Shutdown(context.Background()) }
		}},
		{"100% sampled, in memory", func() (trace.TracerProvider, func()) {
			ex := tracetest.NewInMemoryExporter()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(ex))
			return tp, func() { _ = tp.Shutdown(context.Background()); ex.Reset() }
		}},
	}
	rates := map[string][]float64{}
	for round := 0; round < rounds; round++ {
		for _, m := range modes {
			progress("tracing: %s, round %d/%d", m.name, round+1, rounds)
			tp, stop := m.tp()
			r := newRigOpts(0, -1, engine.DurabilityStrict, engine.Options{TracerProvider: tp})
			t := time.Now()
			n, _, fails := r.runFor(conc, dur)
			rates[m.name] = append(rates[m.name], float64(n)/time.Since(t).Seconds())
			r.close()
			stop()
			if fails.n.Load() > 0 {
				row := map[string]any{"mode": m.name, "round": round + 1}
				fails.mark(row)
				fig.Rows = append(fig.Rows, row)
			}
		}
	}
	off := median(rates["off"])
	var cost100, costNoop float64
	for _, m := range modes {
		v := median(rates[m.name])
		cost := 0.0
		if off > 0 {
			cost = 100 * (1 - v/off)
		}
		switch m.name {
		case "100% sampled, in memory":
			cost100 = cost
		case "no-op exporter":
			costNoop = cost
		}
		fig.Rows = append(fig.Rows, map[string]any{"mode": m.name, "sagas_per_s": round(v), "cost_vs_off_pct": round2(cost)})
	}
	return fig, []Target{{Name: "tracing at 100% sampling (in-memory exporter), c=64: throughput cost against tracing off", Want: "≤ 5%",
		Measured: round2(cost100), Unit: "%", Pass: cost100 <= 5,
		Bound: fmt.Sprintf("making and ending every span, exported to a no-op exporter, costs %.1f%% in the same run: the rest is the in-memory "+
			"exporter keeping every span alive for the collector (5 spans per saga, thousands a second); the engine's BenchmarkRun4StepsTracing "+
			"with SAGA_BENCH_NOSYNC=1 shows the CPU cost alone", costNoop)}}
}
