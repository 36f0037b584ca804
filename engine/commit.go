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

	// The proposers a write answers mostly come back within a moment
	// with their sagas' next records (a handler that returns at once, a
	// compensation's next step). A write led meanwhile holds for them
	// (returnersReady): else they miss it, wait for the write after, and
	// the sagas in flight split into two halves that take turns, each
	// joining every second fsync.
	gen       uint64       // under mu: the number of the latest write answered
	returning atomic.Int64 // sagas of write gen expected back with a record
	// comeback is a moving average of the time from a write's fsync to
	// the next record of a saga it answered, in nanoseconds: a hold for
	// returners longer than the hold window would only cost the others.
	comeback atomic.Int64
	// holdTimeouts counts the holds that ended by their window rather
	// than by what they waited for (tests).
	holdTimeouts atomic.Int64
}

// defaultMaxHold bounds a leader's hold for sibling records.
const defaultMaxHold = 500 * time.Microsecond

type proposal struct {
	run *run // the saga the records change, if a change's (engine.change)
	// from is the saga whose step invocation proposed the records (a
	// child's start, a handler calling the engine), if any.
	from *run
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
	if p.run != nil {
		p.run.inQueue.Add(1)
		// Back: whether the write it is expected by is the latest
		// (returning) or one led since (it came back too late for it),
		// its comeback counts. Counting only those in time would keep
		// the average within the window whatever the sagas do, and the
		// holds on (returnersReady). A late one counts as twice the
		// window: one saga parked for minutes must not turn holds off
		// for long.
		if b := p.run.back.Swap(0); b != 0 {
			if b == q.gen {
				q.returning.Add(-1)
			}
			d := min(time.Now().UnixNano()-p.run.backAt.Load(), 2*int64(q.returnWindow()))
			c := q.comeback.Load()
			q.comeback.Store(c + (d-c)/8) // under mu
		}
	}
	if f := p.from; f != nil && f != p.run {
		// Proposed from inside a step of f's saga: f comes back only
		// after this record's write (a parent waits for its child), so
		// no write may hold for it.
		if f.back.Swap(0) == q.gen && q.gen != 0 {
			q.returning.Add(-1)
		}
	}
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
func (e *Engine) hold(siblings func() bool) {
	q := &e.wq
	var w time.Duration
	if siblings != nil && !siblings() {
		w = q.holdWindow()
	}
	if !q.returnersReady() {
		w = max(w, q.returnWindow())
	}
	if w <= 0 {
		return
	}
	ready := func() bool { return (siblings == nil || siblings()) && q.returnersReady() }
	t := time.NewTimer(w)
	defer t.Stop()
	for {
		select {
		case <-q.grew:
			if ready() {
				return
			}
		case <-t.C:
			q.holdTimeouts.Add(1)
			return
		case <-e.ctx.Done():
			return // closing: Close waits for this write
		}
	}
}

// returnWindow is how long a leader may hold a write for the sagas the
// last write answered: a write's usual append and fsync, for which the
// hold puts their records into this write instead of the next, at most
// twice maxHold, and 0 before any write.
func (q *writerQueue) returnWindow() time.Duration {
	return min(time.Duration(q.cycle.Load()), 2*q.maxHold)
}

// returnersReady reports that a leader need not hold for the sagas the
// last write answered: they are back with their records (or will not
// be), or they usually take longer than a hold may (returnWindow).
func (q *writerQueue) returnersReady() bool {
	return q.returning.Load() <= 0 || time.Duration(q.comeback.Load()) > q.returnWindow()
}

// await waits for the answer to an enqueued proposal, leading the writes
// that fall to it.
func (e *Engine) await(p *proposal, lead bool) ([]fsm.Result, error) {
	return e.awaitHolding(p, lead, nil)
}

// awaitHolding is await. Each write it leads first holds (hold) for the
// sagas the last write answered, and the first, if p found the log idle
// and siblings is set, for p's siblings too.
func (e *Engine) awaitHolding(p *proposal, lead bool, siblings func() bool) ([]fsm.Result, error) {
	defer e.wq.active.Done()
	for {
		if lead {
			e.hold(siblings)
			e.lead()
		}
		res := <-p.done
		if !res.lead {
			return res.results, res.err
		}
		lead, siblings = true, nil
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
	for _, p := range batch {
		if p.run != nil {
			p.run.inQueue.Add(-1)
		}
	}
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
	q.gen++
	returning := int64(0)
	if err == nil {
		// Expected back: every change's saga with no record queued
		// already; ack takes out those whose saga the batch settled.
		// Counted before the next leader is named, so that it holds for
		// them.
		now := time.Now().UnixNano()
		for _, p := range batch {
			if p.run != nil && p.run.inQueue.Load() == 0 && p.run.back.Swap(q.gen) != q.gen { // once per saga
				p.run.backAt.Store(now)
				returning++
			}
		}
	}
	q.returning.Store(returning)
	gen := q.gen
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
		e.ack(batch, entries, appendTime, gen)
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
// stages them on the store, counts them and runs the OnTransition hook,
// calls answer with the results (the single-node leader acknowledges its
// proposals there), commits the staged batch to Pebble, and only then
// wakes waiters.
// An error stops the engine (fail-stop): nothing is applied after it.
// applyMu is held, so that poisoning is ordered with acknowledgements: an
// acknowledgement either happens before the engine is poisoned or not at
// all.
//
// Answering before Pebble's commit takes that commit, the larger half of
// an apply, off the path from one fsync to the next: the proposers build
// their next records while it runs. Their outcomes are durable already
// (the log holds them). Until the commit ends, read (every read of the
// store the engine makes) waits for it, so that no one who was answered
// reads the state from before.
func (e *Engine) applyLocked(cmds []fsm.Command, answer func([][]fsm.Result)) ([][]fsm.Result, error) {
	if poison := e.poisoned(); poison != nil {
		return nil, fmt.Errorf("%w (cause: %v)", ErrPoisoned, poison)
	}
	var staged *fsm.Staged
	var results [][]fsm.Result
	var err error
	if e.opts.Replicator == nil {
		staged, err = e.store.StageBatch(cmds[0].Entries)
		if err == nil {
			results = [][]fsm.Result{staged.Results()}
		}
	} else {
		staged, results, err = e.store.StageCommands(cmds)
	}
	if err != nil {
		e.poisonLocked(nil, fmt.Errorf("apply: %w", err))
		return nil, err
	}
	n := 0
	for _, c := range cmds {
		n += len(c.Entries)
	}
	// Counted before anyone is answered or woken: a Run that returns sees
	// its records in Stats.
	e.commits.Add(uint64(len(cmds)))
	e.committedRecs.Add(uint64(n))
	for k, c := range cmds {
		e.countResults(c.Entries, results[k])
		e.transitionHooks(c.Entries, results[k])
	}
	if staged != nil {
		if answer != nil {
			unseen := make(chan struct{})
			e.unseen.Store(&unseen)
			answer(results)
			if e.beforeCommit != nil {
				e.beforeCommit()
			}
			err = e.commitStaged(staged)
			if err != nil {
				// Answered already: durable, and the next Open applies
				// it. Until then the store is behind what its proposers
				// were told: reads refuse, from before they are let go.
				err = fmt.Errorf("apply: %w", err)
				cause := err
				e.behind.Store(&cause)
			}
			e.unseen.Store(nil)
			close(unseen)
			if err != nil {
				e.poisonLocked(nil, err)
				return results, nil
			}
		} else if err = e.commitStaged(staged); err != nil {
			e.poisonLocked(nil, fmt.Errorf("apply: %w", err))
			return nil, err
		}
	} else if answer != nil {
		answer(results)
	}
	for k := range cmds {
		e.afterApply(results[k])
	}
	if e.opts.Replicator == nil && e.sinceCkpt.Add(uint64(n)) >= e.opts.CheckpointEvery {
		select {
		case e.ckpt <- struct{}{}:
		default:
		}
	}
	return results, nil
}

// commitStaged commits a staged batch to Pebble, or fails it with
// commitErr (tests).
func (e *Engine) commitStaged(st *fsm.Staged) error {
	if e.commitErr != nil {
		st.Discard()
		return e.commitErr
	}
	return st.Commit()
}

// awaitVisible waits until the batch being committed to Pebble, if one
// is, is visible to readers of the store (applyLocked).
func (e *Engine) awaitVisible() {
	if c := e.unseen.Load(); c != nil {
		<-*c
	}
}

// ack applies a durable batch and answers its proposals.
func (e *Engine) ack(batch []*proposal, entries []fsm.Entry, appendTime time.Duration, gen uint64) {
	// Before the batch is staged: the proposers see the hook's effect
	// once answered, and a hook that reads the engine does not wait for
	// a commit that waits for it (awaitVisible).
	if h := e.opts.Hooks.OnCommit; h != nil {
		h(len(entries), appendTime)
	}
	_, err := e.applyLocked([]fsm.Command{{Entries: entries}}, func(results [][]fsm.Result) {
		off := 0
		for _, p := range batch {
			res := results[0][off : off+len(p.recs)]
			off += len(p.recs)
			if p.run != nil && !comesBack(res) && p.run.back.CompareAndSwap(gen, 0) {
				e.wq.returning.Add(-1)
			}
			p.done <- proposalResult{results: res}
		}
		e.wq.signal()
	})
	if err != nil {
		// Durable, but not acknowledged after an I/O error: the next
		// Open replays it.
		for _, p := range batch {
			p.done <- proposalResult{err: fmt.Errorf("%w: in the log but not applied before the engine stopped: %v", ErrOutcomeUnknown, err)}
		}
	}
}

// comesBack reports that a change's results leave its saga with a next
// record to make soon, by the engine's own drivers: an engine-driven saga
// still running or compensating.
func comesBack(res []fsm.Result) bool {
	if len(res) == 0 {
		return false
	}
	sg := res[len(res)-1].Saga
	return sg != nil && sg.Driven && (sg.State == fsm.StateInProgress || sg.State == fsm.StateCompensating)
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
