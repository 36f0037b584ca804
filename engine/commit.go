package engine

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/wal"
)

// The single-node commit path is a writer queue, in the shape of
// leveldb's: a proposer that finds the log idle writes and syncs it
// itself, taking along every proposal queued behind it; a proposer that
// finds a write in flight queues, and the first one queued leads the next
// write. At concurrency 1 a transition costs no hand-off between
// goroutines; under load one fsync covers every proposal that arrived
// while the previous one was in flight.
//
// A write has two stages, each held by one leader at a time: the log
// stage (append and fsync) and the apply stage (applyMu). A leader takes
// applyMu before it names the next leader, so the next leader's fsync
// overlaps this apply, and batches are applied in log order: at most one
// leader ever waits for applyMu.
type writerQueue struct {
	mu      sync.Mutex
	queue   []*proposal // waiting, oldest first; its head leads the next write
	writing bool        // a leader is in the log stage; false means queue is empty
	closed  bool
	active  sync.WaitGroup // proposals queued or being written; Close waits for them
	// grew is signalled (without blocking) by every enqueue and every
	// invocation's finish, for a leader that holds its write for the
	// records of sibling steps.
	grew chan struct{}
	// cycle is a moving average of a write's append and fsync, in
	// nanoseconds: what a hold may cost at most (holdWindow).
	cycle atomic.Int64
	// maxHold bounds a hold whatever the disk: defaultMaxHold (tests
	// widen it).
	maxHold time.Duration
}

// defaultMaxHold bounds a leader's hold for sibling records.
const defaultMaxHold = 500 * time.Microsecond

type proposal struct {
	recs []*fsm.Record
	raw  [][]byte
	one  [1][]byte           // raw's room for a proposal of one record, the usual one
	done chan proposalResult // buffered (1): a lead token, then the result
}

type proposalResult struct {
	lead    bool // not a result: the receiver leads the next write
	results []fsm.Result
	err     error
}

// commit makes p durable and applied through the writer queue and returns
// its results. Once queued, a proposal is answered: every leader either
// writes its batch or answers it with an error.
func (e *Engine) commit(p *proposal) ([]fsm.Result, error) {
	lead, err := e.enqueue(p)
	if err != nil {
		return nil, err
	}
	e.syncWaits.Add(1)
	return e.await(p, lead)
}

// enqueue puts p at the end of the writer queue: its place in the log is
// fixed from here on. lead says the log was idle and the caller must lead
// the write (await does).
func (e *Engine) enqueue(p *proposal) (lead bool, err error) {
	q := &e.wq
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return false, ErrClosed
	}
	q.active.Add(1)
	q.queue = append(q.queue, p)
	lead = !q.writing
	q.writing = true
	q.signal()
	return lead, nil
}

// signal wakes a leader's hold for sibling records (without blocking):
// every enqueue, and every invocation that leaves its saga's calls, can
// make what the hold waits for true.
func (q *writerQueue) signal() {
	if q.grew != nil {
		select {
		case q.grew <- struct{}{}:
		default:
		}
	}
}

// holdWindow is how long a leader may hold a write for sibling records:
// half a write's usual append and fsync (so that the hold costs less than
// the fsync it saves), at most maxHold, and 0 before any write.
func (q *writerQueue) holdWindow() time.Duration {
	return min(time.Duration(q.cycle.Load())/2, q.maxHold)
}

// hold delays a leader's write until ready says the records it waits for
// are queued (or their steps are no longer running), holdWindow has
// passed, or the engine closes. A saga whose parallel steps end
// together (a fan-out) then shares one fsync among their completions:
// without it the first to end finds the log idle and syncs alone, and the
// others wait for a second fsync.
func (e *Engine) hold(ready func() bool) {
	w := e.wq.holdWindow()
	if w <= 0 || ready() {
		return
	}
	t := time.NewTimer(w)
	defer t.Stop()
	for {
		select {
		case <-e.wq.grew:
			if ready() {
				return
			}
		case <-t.C:
			return
		case <-e.ctx.Done():
			return // closing: Close waits for this write
		}
	}
}

// await waits for the answer to an enqueued proposal, leading the writes
// that fall to it.
func (e *Engine) await(p *proposal, lead bool) ([]fsm.Result, error) {
	return e.awaitHolding(p, lead, nil)
}

// awaitHolding is await; if p found the log idle and ready is set, it
// first holds the write until ready (hold).
func (e *Engine) awaitHolding(p *proposal, lead bool, ready func() bool) ([]fsm.Result, error) {
	defer e.wq.active.Done()
	if lead && ready != nil {
		e.hold(ready)
	}
	for {
		if lead {
			e.lead()
		}
		res := <-p.done
		if !res.lead {
			return res.results, res.err
		}
		lead = true
	}
}

// lead writes one batch, taken from the head of the queue (the leader's
// own proposal first), names the next leader and applies the batch.
func (e *Engine) lead() {
	q := &e.wq
	q.mu.Lock()
	n, k := 0, 0
	for k < len(q.queue) && (k == 0 || n+len(q.queue[k].recs) <= e.opts.MaxBatch) {
		n += len(q.queue[k].recs)
		k++
	}
	batch := q.queue[:k:k]
	q.queue = q.queue[k:]
	q.mu.Unlock()

	var entries []fsm.Entry
	t0 := time.Now()
	err := e.poisoned()
	if err != nil {
		err = fmt.Errorf("%w (cause: %v)", ErrPoisoned, err)
	} else {
		entries, err = e.write(batch, n)
	}
	appendTime := time.Since(t0)
	if err == nil {
		c := q.cycle.Load()
		q.cycle.Store(c + (int64(appendTime)-c)/8) // one leader at a time
	}

	e.applyMu.Lock()
	defer e.applyMu.Unlock()
	ioErr := err != nil && !errors.Is(err, ErrPoisoned) && !errors.Is(err, ErrInvalidArgument)
	if ioErr {
		// Poisoned before the next leader may write.
		e.poisonLocked(batch, fmt.Errorf("log append: %w", err))
	}
	q.mu.Lock()
	if len(q.queue) > 0 {
		q.queue[0].done <- proposalResult{lead: true}
	} else {
		q.writing = false
	}
	q.mu.Unlock()
	switch {
	case ioErr:
	case err != nil:
		for _, p := range batch {
			p.done <- proposalResult{err: err}
		}
	default:
		e.ack(batch, entries, appendTime)
	}
}

// write appends the batch's records to the log with one fsync.
func (e *Engine) write(batch []*proposal, n int) ([]fsm.Entry, error) {
	raws := make([][]byte, 0, n)
	for _, p := range batch {
		raws = append(raws, p.raw...)
	}
	first, err := e.log.Append(raws)
	if errors.Is(err, wal.ErrRecordTooLarge) {
		// Checked before writing: nothing reached the log. propose
		// rejects such records first, so this is only a safety net.
		return nil, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	if err != nil {
		return nil, err
	}
	entries := make([]fsm.Entry, 0, n)
	idx := first
	for _, p := range batch {
		for i, r := range p.recs {
			entries = append(entries, fsm.Entry{Index: idx, Rec: r, Raw: p.raw[i]})
			idx++
		}
	}
	return entries, nil
}

// applyLocked is the engine's one apply path, for both logs: the
// single-node leader calls it with one command (Source 0) after its fsync,
// the replicator (through replica) with the commands raft committed. It
// applies them to the store, and only then counts them, runs the hooks and
// wakes waiters. An error stops the engine (fail-stop): nothing is applied
// after it. applyMu is held, so that poisoning is ordered with
// acknowledgements: an ack either happens before the engine is poisoned or
// not at all.
func (e *Engine) applyLocked(cmds []fsm.Command) ([][]fsm.Result, error) {
	if poison := e.poisoned(); poison != nil {
		return nil, fmt.Errorf("%w (cause: %v)", ErrPoisoned, poison)
	}
	var results [][]fsm.Result
	var err error
	if e.opts.Replicator == nil {
		var res []fsm.Result
		res, err = e.store.ApplyBatch(cmds[0].Entries)
		results = [][]fsm.Result{res}
	} else {
		results, err = e.store.ApplyCommands(cmds)
	}
	if err != nil {
		e.poisonLocked(nil, fmt.Errorf("apply: %w", err))
		return nil, err
	}
	n := 0
	for _, c := range cmds {
		n += len(c.Entries)
	}
	// Counted before any waiter is woken: a Run that returns sees its
	// records in Stats.
	e.commits.Add(uint64(len(cmds)))
	e.committedRecs.Add(uint64(n))
	for k, c := range cmds {
		e.countResults(c.Entries, results[k])
		e.afterApply(c.Entries, results[k])
	}
	if e.opts.Replicator == nil && e.sinceCkpt.Add(uint64(n)) >= e.opts.CheckpointEvery {
		select {
		case e.ckpt <- struct{}{}:
		default:
		}
	}
	return results, nil
}

// ack applies a durable batch and answers its proposals.
func (e *Engine) ack(batch []*proposal, entries []fsm.Entry, appendTime time.Duration) {
	results, err := e.applyLocked([]fsm.Command{{Entries: entries}})
	if err != nil {
		// Durable, but not acknowledged after an I/O error: the next
		// Open replays it.
		for _, p := range batch {
			p.done <- proposalResult{err: fmt.Errorf("%w: in the log but not applied before the engine stopped: %v", ErrOutcomeUnknown, err)}
		}
		return
	}
	if h := e.opts.Hooks.OnCommit; h != nil {
		h(len(entries), appendTime)
	}
	off := 0
	for _, p := range batch {
		p.done <- proposalResult{results: results[0][off : off+len(p.recs)]}
		off += len(p.recs)
	}
}

// closeQueue refuses new proposals and waits for every queued one to be
// answered.
func (e *Engine) closeQueue() {
	q := &e.wq
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.active.Wait()
}

func (e *Engine) poisoned() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.poison
}

// failStop poisons the engine after an I/O error and answers the batch
// with ErrOutcomeUnknown. It waits for an apply in progress, so that no
// acknowledgement follows the poisoning.
func (e *Engine) failStop(batch []*proposal, err error) {
	e.applyMu.Lock()
	defer e.applyMu.Unlock()
	e.poisonLocked(batch, err)
}

// poisonLocked is failStop with applyMu held.
func (e *Engine) poisonLocked(batch []*proposal, err error) {
	e.mu.Lock()
	first := e.poison == nil
	if first {
		e.poison = err
	}
	e.mu.Unlock()
	if first {
		e.opts.Logger.Error("engine: poisoned by an I/O error; no further transitions until reopened", "err", err)
		if h := e.opts.Hooks.OnPoisoned; h != nil {
			h(err)
		}
		e.cancel()
	}
	for _, p := range batch {
		p.done <- proposalResult{err: fmt.Errorf("%w: %v", ErrOutcomeUnknown, err)}
	}
}
