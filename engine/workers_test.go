package engine

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

// waitUntil polls cond until it holds, failing the test after 30 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (w *workers) idleCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.idle)
}

// A worker that has run an invocation runs the next one (its grown stack
// reused); at most maxIdleWorkers wait; close ends the waiting ones.
func TestWorkersAreReusedBoundedAndEndedByClose(t *testing.T) {
	w := &workers{}
	base := runtime.NumGoroutine()
	done := make(chan struct{})
	w.run(func() { close(done) })
	<-done
	waitUntil(t, "the worker to wait for more", func() bool { return w.idleCount() == 1 })
	release := make(chan struct{})
	w.run(func() { <-release })
	if n := w.idleCount(); n != 0 {
		t.Fatalf("%d idle workers while the second invocation runs: it did not reuse the first", n)
	}
	close(release)
	waitUntil(t, "the worker to wait again", func() bool { return w.idleCount() == 1 })

	// More invocations at once than the bound: the extra workers end.
	var wg sync.WaitGroup
	hold := make(chan struct{})
	for range maxIdleWorkers + 44 {
		wg.Add(1)
		w.run(func() { defer wg.Done(); <-hold })
	}
	close(hold)
	wg.Wait()
	waitUntil(t, "the workers past the bound to end", func() bool {
		return w.idleCount() == maxIdleWorkers && runtime.NumGoroutine() <= base+maxIdleWorkers+5
	})

	w.close()
	if n := w.idleCount(); n != 0 {
		t.Fatalf("%d idle workers after close", n)
	}
	waitUntil(t, "the idle workers to end after close", func() bool { return runtime.NumGoroutine() <= base+5 })
	// After close an invocation still runs, on a goroutine that then ends.
	ran := make(chan struct{})
	w.run(func() { close(ran) })
	<-ran
	waitUntil(t, "the post-close worker to end", func() bool { return runtime.NumGoroutine() <= base+5 && w.idleCount() == 0 })
}
