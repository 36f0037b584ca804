package engine

import "sync"

// workers runs handler invocations on goroutines that outlive one
// invocation. A new goroutine's stack starts small and is copied each time
// it doubles on its way through the commit path (a sixth of a fan-out's
// CPU went to that copying); a worker that has run one invocation keeps
// its stack for the next. Idle workers wait, newest first, each on a
// channel of its own; at most maxIdleWorkers wait, and close ends them.
type workers struct {
	mu     sync.Mutex
	idle   []chan func() // waiting workers, the most recent last
	closed bool
}

// maxIdleWorkers bounds the workers kept waiting: a worker that would be
// one more ends instead.
const maxIdleWorkers = 256

// run runs f on the most recently idle worker, or on a new one.
func (w *workers) run(f func()) {
	w.mu.Lock()
	if n := len(w.idle); n > 0 {
		c := w.idle[n-1]
		w.idle = w.idle[:n-1]
		w.mu.Unlock()
		c <- f // buffered (1): the worker is waiting on it
		return
	}
	w.mu.Unlock()
	go w.loop(f)
}

func (w *workers) loop(f func()) {
	c := make(chan func(), 1)
	for f != nil {
		f()
		w.mu.Lock()
		if w.closed || len(w.idle) >= maxIdleWorkers {
			w.mu.Unlock()
			return
		}
		w.idle = append(w.idle, c)
		w.mu.Unlock()
		f = <-c // nil once close closed c
	}
}

// close ends the idle workers; a worker still running ends when its
// invocation does.
func (w *workers) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	for _, c := range w.idle {
		close(c)
	}
	w.idle = nil
}
