package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sagaengine/saga/engine"
)

// diskBytes is the size of the files under dir.
func diskBytes(dir string) int64 { n, _ := dirBytes(dir); return n }

type diskSample struct {
	at    time.Duration
	bytes int64 // the data directory
	state int64 // its state (Pebble) directory
	sagas int   // completed in the second before
}

// runSampled runs the rig at conc for dur, sampling the data directory's
// size and the sagas completed every second.
func runSampled(r *rig, conc int, dur time.Duration) (int, []diskSample, *failures) {
	var samples []diskSample
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t0 := time.Now()
		last := r.e.Stats().Records
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
			}
			recs := r.e.Stats().Records
			samples = append(samples, diskSample{at: time.Since(t0).Round(time.Second), bytes: diskBytes(r.dir),
				state: diskBytes(filepath.Join(r.dir, "state")), sagas: int(recs-last) / 5})
			last = recs
		}
	}()
	n, _, fails := r.runFor(conc, dur)
	close(done)
	wg.Wait()
	return n, samples, fails
}

// figRetention: retention under a constant load. The same workload with
// sagas kept forever and with a retention short enough to wrap several
// times in the run: the disk stays flat once removals begin, and what
// removals cost in throughput.
func figRetention() (Figure, []Target) {
	dur := 60 * time.Second
	if *quick {
		dur = 12 * time.Second
	}
	ret := dur / 6
	const conc = 16
	fig := Figure{Name: fmt.Sprintf("13. Retention under constant load: 4 no-op steps, c=%d, %s; retention %s (wraps %d times), removal every %s",
		conc, dur, ret, int(dur/ret)-1, ret/10),
		Method: "two runs of the same engine-driven workload at the same time in one process (sharing the disk and the CPU), sagas kept forever and with the retention; every second the data " +
			"directory's bytes (log and state; both runs checkpoint every 2^15 records, which bounds the log) and the sagas completed in that second; flat = the largest size after the first retention period " +
			"over the size at its end; bytes per saga = the state directory of the run without retention, after Close (flushed), over its sagas"}
	type result struct {
		n       int
		samples []diskSample
		state   int64
		fails   *failures
	}
	run := func(o engine.Options) result {
		r := newRigOpts(0, -1, engine.DurabilityStrict, o)
		n, samples, fails := runSampled(r, conc, dur)
		r.e.Close()
		res := result{n: n, samples: samples, state: diskBytes(filepath.Join(r.dir, "state")), fails: fails}
		if fi, err := os.Stat(filepath.Join(r.dir, "state")); err != nil || !fi.IsDir() {
			res.state = diskBytes(r.dir) // the layout changed: count it all
		}
		os.RemoveAll(r.dir)
		return res
	}
	// Both runs checkpoint (flush the state, truncate the log) every 2^15
	// records rather than the default 2^18, so that the log's share of
	// the disk is bounded within the run, as it is over a long one.
	const ckpt = 1 << 15
	// The two runs go at the same time, each on its engine: they share
	// the disk and the CPU at every moment, so that the throughput ratio
	// compares loads under one condition (run a minute apart, on a disk
	// whose fsync latency drifts, the ratio read 75% to 92% across
	// reports).
	progress("retention: kept forever and %s, side by side, %s", ret, dur)
	var keep, short result
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		keep = run(engine.Options{Retention: engine.KeepForever, CheckpointEvery: ckpt})
	}()
	go func() {
		defer wg.Done()
		short = run(engine.Options{Retention: ret, RemovalInterval: ret / 10, CheckpointEvery: ckpt})
	}()
	wg.Wait()
	for i := 0; i < max(len(keep.samples), len(short.samples)); i++ {
		row := map[string]any{"t_s": i + 1}
		if i < len(keep.samples) {
			row["forever_mb"], row["forever_sagas_per_s"] = round2(float64(keep.samples[i].bytes)/(1<<20)), keep.samples[i].sagas
		}
		if i < len(short.samples) {
			row["retention_mb"], row["retention_sagas_per_s"] = round2(float64(short.samples[i].bytes)/(1<<20)), short.samples[i].sagas
			row["retention_state_mb"] = round2(float64(short.samples[i].state) / (1 << 20))
		}
		fig.Rows = append(fig.Rows, row)
	}
	// The strict reading: the largest sample after the first period over
	// the size at its end. Beside it, what says whether the disk grows:
	// the median of each later period over the second's (the first with
	// removals), and the median after the first period over its end.
	var ref, peak int64
	periods := map[int][]float64{}
	var after []float64
	for _, s := range short.samples {
		if s.at <= ret {
			ref = s.bytes
			continue
		}
		peak = max(peak, s.bytes)
		after = append(after, float64(s.bytes))
		k := int((s.at - 1) / ret)
		periods[k] = append(periods[k], float64(s.bytes))
	}
	flat, medianOver, growth := 0.0, 0.0, 0.0
	if ref > 0 {
		flat = float64(peak) / float64(ref)
		medianOver = median(after) / float64(ref)
	}
	last := 0
	for k := range periods {
		last = max(last, k)
	}
	if m := median(periods[1]); m > 0 && last > 1 {
		growth = median(periods[last]) / m
	}
	tputRatio := 0.0
	if keep.n > 0 {
		tputRatio = 100 * float64(short.n) / float64(keep.n)
	}
	perSaga := 0.0
	if keep.n > 0 {
		perSaga = float64(keep.state) / float64(keep.n)
	}
	sum := map[string]any{"t_s": "total", "forever_sagas_per_s": round(float64(keep.n) / dur.Seconds()),
		"retention_sagas_per_s": round(float64(short.n) / dur.Seconds()), "state_bytes_per_saga": round(perSaga),
		"retention_peak_over_first_period": round2(flat), "retention_median_over_first_period": round2(medianOver),
		"retention_last_period_median_over_second": round2(growth)}
	keep.fails.mark(sum)
	short.fails.mark(sum)
	fig.Rows = append(fig.Rows, sum)
	bound := fmt.Sprintf("the forever run's disk grew to %.0f MB; with retention it peaked at %.0f MB after the first period (%.0f MB at its end), "+
		"while its median after the first period was %.2f× that and the last period's median %.2f× the second's: the peaks are Pebble's "+
		"compactions, not growth. The removals' tombstones, flushed to L0 (Pebble's WAL is off: memtables take no disk), are compacted "+
		"with the bottom level, and a flush spans every key prefix (history, sagas, indexes: new keys at the top of each, removed ones at "+
		"its bottom), so it overlaps every bottom file and each such compaction rewrites all of the live state (about %.0f MB here, every "+
		"2 s or so; a Pebble event log of one run, 2026-12-03), its inputs and outputs both on disk until it ends. Smaller files made it "+
		"worse (256 KiB L0, 1 MiB Lbase: the state grew to 47 MB, the tombstones stranded above the data they delete). The reference is "+
		"one sample, so the ratio moves from run to run (1.30× and 1.79× for the same code here); what would move it is a removal "+
		"that deletes whole key ranges, which Pebble drops without rewriting (delete-only compactions), or a bottom level split by saga age",
		float64(keep.samples[len(keep.samples)-1].bytes)/(1<<20), float64(peak)/(1<<20), float64(ref)/(1<<20), medianOver, growth,
		median(stateAfter(short.samples, ret))/(1<<20))
	return fig, []Target{
		{Name: "retention: disk after the first period, over its size at the end of it", Want: "≤ 1.3×", Measured: round2(flat), Unit: "×",
			Pass: flat > 0 && flat <= 1.3, Bound: bound},
		{Name: "retention: throughput with removals, share of the same run without", Want: "≥ 90%", Measured: round2(tputRatio), Unit: "%",
			Pass: tputRatio >= 90},
		{Name: "bytes on disk per finished saga (state, flushed; 4-step saga, 5 transitions)", Want: "reported", Measured: round(perSaga), Unit: "B",
			Pass: true},
	}
}

// stateAfter is the state directory's sizes sampled after the first
// retention period.
func stateAfter(samples []diskSample, ret time.Duration) []float64 {
	var out []float64
	for _, s := range samples {
		if s.at > ret {
			out = append(out, float64(s.state))
		}
	}
	return out
}
