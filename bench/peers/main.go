// Command peers measures github.com/cschleiden/go-workflows (SQLite
// backend wrapped in its monoprocess backend, its fastest setting here) on
// the saga shapes of the main harness: a 4-step saga, bare vs through the
// peer (figure 1), and throughput on the happy and failure paths (figure
// 2). It prints JSON for bench/harness. A module of its own, so the
// library never depends on the peer.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cschleiden/go-workflows/backend"
	"github.com/cschleiden/go-workflows/backend/monoprocess"
	"github.com/cschleiden/go-workflows/backend/sqlite"
	"github.com/cschleiden/go-workflows/client"
	"github.com/cschleiden/go-workflows/worker"
	"github.com/cschleiden/go-workflows/workflow"
)

var quick = flag.Bool("quick", false, "small sizes")

// Step is one saga step: it sleeps work, and fails when asked to.
func Step(ctx context.Context, work time.Duration, fail bool) (int, error) {
	if fail {
		return 0, errors.New("injected failure")
	}
	time.Sleep(work)
	return 1, nil
}

// Undo compensates a step.
func Undo(ctx context.Context, work time.Duration) (int, error) {
	time.Sleep(work)
	return 1, nil
}

var noRetry = workflow.ActivityOptions{RetryOptions: workflow.RetryOptions{MaxAttempts: 1}}

// Saga runs 4 steps; when step failAt fails, it compensates the completed
// steps in reverse order.
func Saga(ctx workflow.Context, work time.Duration, failAt int) (int, error) {
	done := 0
	for k := 0; k < 4; k++ {
		if _, err := workflow.ExecuteActivity[int](ctx, noRetry, Step, work, k == failAt).Get(ctx); err != nil {
			for j := done - 1; j >= 0; j-- {
				if _, err := workflow.ExecuteActivity[int](ctx, noRetry, Undo, work).Get(ctx); err != nil {
					return 0, err
				}
			}
			return done, nil
		}
		done++
	}
	return done, nil
}

type peer struct {
	c      *client.Client
	w      *worker.Worker
	cancel context.CancelFunc
	dir    string
	n      atomic.Int64
}

func newPeer() *peer {
	dir, _ := os.MkdirTemp("", "gw-")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var b backend.Backend = monoprocess.NewMonoprocessBackend(sqlite.NewSqliteBackend(filepath.Join(dir, "gw.sqlite"),
		sqlite.WithBackendOptions(backend.WithLogger(quiet))))
	ctx, cancel := context.WithCancel(context.Background())
	opts := worker.DefaultOptions
	opts.MaxParallelWorkflowTasks = 256
	opts.MaxParallelActivityTasks = 256
	w := worker.New(b, &opts)
	w.RegisterWorkflow(Saga)
	w.RegisterActivity(Step)
	w.RegisterActivity(Undo)
	if err := w.Start(ctx); err != nil {
		panic(err)
	}
	return &peer{c: client.New(b), w: w, cancel: cancel, dir: dir}
}

func (p *peer) close() {
	p.cancel()
	_ = p.w.WaitForCompletion()
	os.RemoveAll(p.dir)
}

func (p *peer) run(work time.Duration, failAt int) {
	ctx := context.Background()
	id := fmt.Sprintf("s-%d", p.n.Add(1))
	wf, err := p.c.CreateWorkflowInstance(ctx, client.WorkflowInstanceOptions{InstanceID: id}, Saga, work, failAt)
	if err != nil {
		panic(err)
	}
	if _, err := client.GetWorkflowResult[int](ctx, p.c, wf, 5*time.Minute); err != nil {
		panic(err)
	}
}

func parallel(conc, n int, fn func()) time.Duration {
	var next atomic.Int64
	t := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				fn()
			}
		}()
	}
	wg.Wait()
	return time.Since(t)
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func main() {
	flag.Parse()
	out := map[string]any{"peer": "go-workflows v1.4.2, SQLite backend in its monoprocess backend"}
	p := newPeer()
	defer p.close()

	// Figure 1: overhead at 1 and 10 ms steps, concurrency 1; paired runs.
	var fig1 []map[string]any
	for _, work := range []time.Duration{time.Millisecond, 10 * time.Millisecond} {
		n, reps := 10, 5
		if *quick {
			n, reps = 3, 3
		}
		var overs []float64
		for i := 0; i < reps; i++ {
			bare := parallel(1, n, func() {
				for k := 0; k < 4; k++ {
					time.Sleep(work)
				}
			})
			peer := parallel(1, n, func() { p.run(work, -1) })
			overs = append(overs, 100*(peer.Seconds()-bare.Seconds())/bare.Seconds())
		}
		fig1 = append(fig1, map[string]any{"step_work": work.String(), "concurrency": 1, "overhead_pct": median(overs), "repetitions": reps})
	}
	out["overhead"] = fig1

	// Figure 2: throughput at concurrency 1, 8, 64, happy and failure path.
	var fig2 []map[string]any
	for _, path := range []string{"happy", "failure"} {
		failAt := -1
		if path == "failure" {
			failAt = 2
		}
		for _, c := range []int{1, 8, 64} {
			n := 4 * c
			if c == 1 {
				n = 40
			}
			if *quick {
				n = max(c, n/4)
			}
			fmt.Fprintf(os.Stderr, "peers: go-workflows %s c=%d\n", path, c)
			d := parallel(c, n, func() { p.run(0, failAt) })
			fig2 = append(fig2, map[string]any{"path": path, "concurrency": c, "sagas_per_s": float64(n) / d.Seconds()})
		}
	}
	out["throughput"] = fig2
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}
