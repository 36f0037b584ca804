package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sagaengine/saga/fsm"
)

// Replicator is a replicated log (package replication implements it on
// hashicorp/raft). With Options.Replicator set the engine keeps no log of
// its own: every transition is proposed through the replicator, committed
// by a quorum, applied by every member to its own state, and acknowledged
// after it is applied here. Only the leader runs step actions and
// compensations; on gaining leadership a member resumes every saga that is
// not terminal, as single-node recovery does.
type Replicator interface {
	// Start joins the group. Every committed command is applied to
	// replica in log order (ApplyCommands), on every member, from one
	// goroutine; a snapshot sent by the leader replaces it (Restore). The
	// replica is the engine's own apply path, the one single-node commits
	// take too. An error of ApplyCommands or Restore (other than a
	// malformed snapshot) has fail-stopped the engine: the member must
	// stop applying.
	Start(replica fsm.Replica) error
	// Propose replicates one command (encoded records) and returns, after
	// it is committed and applied on this member, the results of its
	// records. An error may implement NotLeader() (id, addr string): this
	// member does not lead (nothing was applied); or OutcomeUnknown() bool:
	// leadership was lost after the command was sent, and it may or may
	// not commit.
	Propose(ctx context.Context, recs [][]byte) ([]fsm.Result, error)
	// Leadership delivers a value whenever this member gains (true) or
	// loses (false) leadership.
	Leadership() <-chan bool
	// Barrier returns once every command committed before it is applied
	// on this member (the leader only).
	Barrier(ctx context.Context) error
	// Leader returns the current leader, or empty strings if none is known.
	Leader() (id, addr string)
	// Close leaves the group and stops applying.
	Close() error
}

// ErrNotLeader: this member of a replicated group does not lead it;
// nothing was applied. The error is a *NotLeaderError naming the leader.
var ErrNotLeader = errors.New("engine: not the leader")

// NotLeaderError says which member leads (empty if none is known yet).
type NotLeaderError struct {
	LeaderID, LeaderAddr string
}

func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return "engine: not the leader, and no leader is known (an election may be under way); retry"
	}
	return fmt.Sprintf("engine: not the leader; send changes to the leader %s at %s", e.LeaderID, e.LeaderAddr)
}

// Unwrap makes errors.Is(err, ErrNotLeader) true.
func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }

// term is one term of leadership: its context ends when it does, and wg
// counts the drivers started in it. Single-node mode has one term, the
// engine's life.
type term struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// ready is set once the term's resume scan is done: public writes wait
	// for it (until then they are refused with NotLeaderError).
	ready atomic.Bool
}

// termKey marks the contexts of a term: proposals made under one (drivers,
// resume, deadlines) pass the readiness gate.
type termKey struct{}

// curTerm is the current term.
func (e *Engine) curTerm() *term { return e.term.Load() }

// termCtx is the context drivers run under: in replicated mode it ends
// when this member stops leading; in single-node mode it is the engine's.
func (e *Engine) termCtx() context.Context { return e.curTerm().ctx }

// gate refuses a public write on a replicated member that does not lead,
// or whose term has not finished resuming; nil in single-node mode and
// for the engine's own proposals (ctx of a term).
func (e *Engine) gate(ctx context.Context) error {
	if e.opts.Replicator == nil || ctx.Value(termKey{}) != nil {
		return nil
	}
	if t := e.curTerm(); t.ctx.Err() == nil && t.ready.Load() {
		return nil
	}
	id, addr := e.opts.Replicator.Leader()
	return &NotLeaderError{LeaderID: id, LeaderAddr: addr}
}

// openReplicated is Open's replicated path: the store is filled by the
// replicator; drivers run while this member leads.
func (e *Engine) openReplicated() error {
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	e.term.Store(&term{ctx: ended, cancel: cancel}) // not leading yet
	e.recovery.AppliedIndex = e.store.AppliedIndex()
	if err := e.opts.Replicator.Start((*replica)(e)); err != nil {
		return fmt.Errorf("engine: start replication: %w", err)
	}
	e.bg.Add(3)
	go e.deadlineLoop()
	go e.leadershipLoop()
	go e.retentionLoop()
	return nil
}

// replica is the engine as the replicator's fsm.Replica: committed
// commands take the engine's one apply path (applyLocked), as single-node
// commits do.
type replica Engine

func (r *replica) ApplyCommands(cmds []fsm.Command) ([][]fsm.Result, error) {
	e := (*Engine)(r)
	e.applyMu.Lock()
	defer e.applyMu.Unlock()
	return e.applyLocked(cmds, nil)
}

// Restore replaces the whole state with a snapshot's and forgets what was
// derived from the old one.
func (r *replica) Restore(rd io.Reader) error {
	e := (*Engine)(r)
	e.applyMu.Lock()
	defer e.applyMu.Unlock()
	if err := e.store.Restore(rd); err != nil {
		if !errors.Is(err, fsm.ErrBadSnapshot) {
			e.poisonLocked(nil, fmt.Errorf("restore of a snapshot: %w", err))
		}
		return err
	}
	e.restored()
	return nil
}

func (r *replica) Snapshot() (*fsm.StoreSnapshot, error) { return r.store.Snapshot() }
func (r *replica) SourceIndex() uint64                   { return r.store.SourceIndex() }
func (r *replica) AppliedIndex() uint64                  { return r.store.AppliedIndex() }
func (r *replica) RestoreIncomplete() bool               { return r.store.RestoreIncomplete() }

// leadershipLoop starts and ends terms of leadership.
func (e *Engine) leadershipLoop() {
	defer e.bg.Done()
	ch := e.opts.Replicator.Leadership()
	for {
		select {
		case <-e.ctx.Done():
			e.endTerm()
			return
		case leader := <-ch:
			e.endTerm()
			if leader {
				e.beginTerm()
			}
		}
	}
}

func (e *Engine) endTerm() {
	t := e.term.Load()
	if t.ctx.Err() != nil {
		return
	}
	e.mu.Lock() // ordered with launch's check: no invocation joins t.wg after this
	t.cancel()
	e.mu.Unlock()
	e.clearDeadlines()
	e.dropCaches()
	e.tr.endAll("leadership ended")
	e.opts.Logger.Info("engine: no longer the leader; drivers stopped")
}

// beginTerm waits until every command of earlier terms is applied, forgets
// what this member cached while others led, and resumes every saga that
// is not terminal.
func (e *Engine) beginTerm() {
	start := time.Now()
	ctx, cancel := context.WithCancel(context.WithValue(e.ctx, termKey{}, true))
	if err := e.opts.Replicator.Barrier(ctx); err != nil {
		cancel()
		e.opts.Logger.Warn("engine: leadership gained but the barrier failed; waiting for the next change", "err", err)
		return
	}
	// The previous term's drivers have seen their context end; wait for
	// them to let go of their sagas, so that each saga is driven by this
	// term's resume and by no one else.
	e.curTerm().wg.Wait()
	e.dropCaches()
	t := &term{ctx: ctx, cancel: cancel}
	e.term.Store(t)
	resumed, stuck, err := e.resumeAll(ctx)
	if err != nil {
		e.opts.Logger.Error("engine: resume after gaining leadership failed", "err", err)
	}
	t.ready.Store(true)
	e.opts.Logger.Info("engine: leading", "resumed", resumed, "stuck", stuck, "took", time.Since(start))
}

// dropCaches forgets the sagas cached by runs: another member may have
// changed them.
func (e *Engine) dropCaches() {
	e.mu.Lock()
	runs := make([]*run, 0, len(e.runs))
	for _, r := range e.runs {
		runs = append(runs, r)
	}
	e.mu.Unlock()
	for _, r := range runs {
		r.mu.Lock()
		r.saga = nil
		r.mu.Unlock()
	}
}

// proposeReplicated sends one proposal through the replicator.
// Its caller, propose, has refused it if the engine is poisoned.
func (e *Engine) proposeReplicated(ctx context.Context, raw [][]byte) ([]fsm.Result, error) {
	e.mu.Lock()
	closing := e.closing
	e.mu.Unlock()
	if closing {
		return nil, ErrClosed
	}
	if err := e.gate(ctx); err != nil {
		return nil, err
	}
	res, err := e.opts.Replicator.Propose(ctx, raw)
	if err == nil {
		return res, nil
	}
	var nl interface{ NotLeader() (string, string) }
	var ou interface{ OutcomeUnknown() bool }
	switch {
	case errors.As(err, &nl):
		id, addr := nl.NotLeader()
		return nil, &NotLeaderError{LeaderID: id, LeaderAddr: addr}
	case errors.As(err, &ou) && ou.OutcomeUnknown():
		return nil, fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
	}
	return nil, err
}

// countResults keeps the state counts (once StateCounts began) in step
// with applied results. Called with applyMu held.
//
// A first count scans a snapshot holding everything up to e.countFrom:
// entries the snapshot already has are not counted again (a replicated
// member applies to the store before it calls back).
func (e *Engine) countResults(entries []fsm.Entry, results []fsm.Result) {
	for _, m := range []map[fsm.SagaState]int{e.counts, e.deltas} {
		if m == nil {
			continue
		}
		for i, r := range results {
			if entries[i].Index <= e.countFrom {
				continue
			}
			if r.Err == nil && r.Saga != nil && r.Prev != r.Saga.State {
				if r.Prev != 0 {
					m[r.Prev]--
				}
				m[r.Saga.State]++
			}
			for _, sg := range r.Removed {
				m[sg.State]--
			}
		}
	}
}

// Leader returns the leader of the replicated group (empty strings if
// unknown), and whether this member is it. In single-node mode the engine
// always leads.
func (e *Engine) Leader() (id, addr string, self bool) {
	if e.opts.Replicator == nil {
		return "", "", true
	}
	id, addr = e.opts.Replicator.Leader()
	t := e.curTerm()
	return id, addr, t.ctx.Err() == nil && t.ready.Load()
}

// Replicator returns Options.Replicator (nil in single-node mode), for
// cluster administration through its own interfaces.
func (e *Engine) Replicator() Replicator { return e.opts.Replicator }

// restored forgets what was derived from the state a snapshot replaced:
// the state counts are counted again, and waiters of sagas that settled
// in the snapshot are woken. Called with applyMu held.
func (e *Engine) restored() {
	e.counts, e.deltas, e.countFrom = nil, nil, 0
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, chs := range e.watchers {
		sg, err := e.store.Get(id)
		if err != nil || !(sg.State.Terminal() || sg.State == fsm.StateStuck) {
			continue
		}
		for _, ch := range chs {
			ch <- sg
		}
		delete(e.watchers, id)
	}
}

// StateHash returns a SHA-256 of the whole applied state: members of a
// replicated group that applied the same commands have equal hashes.
func (e *Engine) StateHash() ([]byte, error) {
	var h []byte
	err := e.read(func() (err error) { h, err = e.store.Hash(); return err })
	return h, err
}

// CommandIndex is the index, in the replicated log, of the last command
// applied to this member's state (0 in single-node mode).
func (e *Engine) CommandIndex() uint64 { return e.store.SourceIndex() }
