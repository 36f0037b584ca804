package engine

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"

	"github.com/sagaengine/saga/fsm"
)

// StateCounts returns the number of sagas in each state. The first call
// counts them (a scan of the state index); later calls are kept current by
// the apply loop and cost nothing.
func (e *Engine) StateCounts() (map[fsm.SagaState]int, error) {
	e.applyMu.Lock()
	if e.counts != nil {
		defer e.applyMu.Unlock()
		return maps.Clone(e.counts), nil
	}
	e.applyMu.Unlock()
	// One first count at a time; later callers wait for it.
	e.countMu.Lock()
	defer e.countMu.Unlock()
	e.applyMu.Lock()
	if e.counts != nil {
		defer e.applyMu.Unlock()
		return maps.Clone(e.counts), nil
	}
	// Count from a snapshot taken under the lock, but scan it outside the
	// lock (a scan of 10^6 sagas must not stall commits); transitions
	// applied meanwhile are gathered as deltas and added after.
	var later func() (map[fsm.SagaState]int, error)
	if err := e.read(func() error { e.countFrom, later = e.store.CountLater(); return nil }); err != nil {
		e.applyMu.Unlock()
		return nil, err
	}
	e.deltas = map[fsm.SagaState]int{}
	e.applyMu.Unlock()
	var counts map[fsm.SagaState]int
	err := e.read(func() (err error) { counts, err = later(); return err })
	e.applyMu.Lock()
	defer e.applyMu.Unlock()
	if err != nil {
		e.deltas = nil // the next call starts over
		return nil, err
	}
	if e.deltas == nil {
		// A snapshot replaced the whole state during the scan: answer,
		// but do not keep counts that started from the old state.
		return counts, nil
	}
	for st, d := range e.deltas {
		counts[st] += d
	}
	e.counts, e.deltas = counts, nil
	return maps.Clone(e.counts), nil
}

// LogInfo describes the saga log and the state's position in it.
type LogInfo struct {
	Dir          string
	FirstIndex   uint64 // everything before it was checkpointed and truncated
	LastIndex    uint64
	AppliedIndex uint64
	Segments     int
	Bytes        int64
}

// LogInfo describes the saga log.
func (e *Engine) LogInfo() (LogInfo, error) {
	e.awaitVisible() // an applied index covering every record answered
	if e.log == nil {
		return LogInfo{AppliedIndex: e.store.AppliedIndex()}, fmt.Errorf("%w: a replicated member keeps its log in the replicator's directory", ErrInvalidArgument)
	}
	li := LogInfo{Dir: filepath.Join(e.dir, "wal"), FirstIndex: e.log.FirstIndex(), LastIndex: e.log.LastIndex(),
		AppliedIndex: e.store.AppliedIndex()}
	ents, err := os.ReadDir(li.Dir)
	if err != nil {
		return li, fmt.Errorf("engine: read %s: %w", li.Dir, err)
	}
	for _, ent := range ents {
		if info, err := ent.Info(); err == nil && !ent.IsDir() && len(ent.Name()) == 20 {
			li.Segments++
			li.Bytes += info.Size()
		}
	}
	return li, nil
}

// Resumption says what Open does with a saga that is not terminal.
type Resumption struct {
	Status *Status
	// Action: "compensate <steps in order>", "retry step <s>",
	// "compensate uncertain step <s> and <…>", "wait for the caller
	// (step <s>)", "wait for an operator".
	Action string
}

// Resumptions lists every non-terminal saga and what Open does with it.
func (e *Engine) Resumptions(ctx context.Context) ([]Resumption, error) {
	var out []Resumption
	for _, st := range []fsm.SagaState{fsm.StateCompensating, fsm.StateInProgress, fsm.StateStuck} {
		err := e.read(func() error {
			return e.store.Each(st, func(sg *fsm.Saga) error {
				out = append(out, Resumption{Status: statusOf(sg), Action: resumeAction(sg)})
				return nil
			})
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func resumeAction(sg *fsm.Saga) string {
	names := func(idx []int) string {
		var n []string
		for _, i := range idx {
			n = append(n, sg.Steps[i].Name)
		}
		return strings.Join(n, ", ")
	}
	switch sg.State {
	case fsm.StateCompensating:
		return "compensate " + names(fsm.Pending(sg))
	case fsm.StateStuck:
		return "wait for an operator (retry or resolve " + sg.Steps[sg.Current].Name + ")"
	}
	if sg.Parallel() {
		running := sg.Running()
		retry := true
		for _, i := range running {
			retry = retry && sg.Steps[i].OnUncertain == fsm.UncertainRetry
		}
		switch {
		case !sg.Driven:
			return "wait for the caller (steps " + names(running) + ")"
		case retry:
			return "retry uncertain steps " + names(running)
		default:
			var done []int
			for i := len(sg.Steps) - 1; i >= 0; i-- {
				if s := sg.Steps[i]; s.Undoable() && (s.Status == fsm.StepDone || s.Status == fsm.StepRunning) {
					done = append(done, i)
				}
			}
			return "abort: compensate " + names(done) + " (" + names(running) + " uncertain)"
		}
	}
	st := sg.Steps[sg.Current]
	switch {
	case !sg.Driven:
		return "wait for the caller (step " + st.Name + ")"
	case st.OnUncertain == fsm.UncertainRetry:
		return "retry uncertain step " + st.Name
	default:
		var done []int
		for i := sg.Current; i >= 0; i-- {
			if sg.Steps[i].Undoable() && (i == sg.Current || sg.Steps[i].Status == fsm.StepDone) {
				done = append(done, i)
			}
		}
		return "abort: compensate " + names(done) + " (" + st.Name + " is uncertain)"
	}
}

// LockDir takes the lock of a data directory the way Open does, for tools
// that work on its files directly (sagactl wal repair). It fails with
// ErrLocked while an engine holds the directory.
func LockDir(dir string) (release func(), err error) {
	f, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	return func() { unlockDir(f) }, nil
}
