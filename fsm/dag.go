package fsm

import (
	"fmt"
	"slices"
	"strings"
)

// Parallel branches. A definition whose steps declare dependencies
// (StepDef.After) is a DAG: a step starts once every step it names is
// done, so independent steps run at once. A definition without any keeps
// the meaning it always had: a sequence, each step after the one before.
//
// The rules of a DAG saga, which its transitions below enforce:
//
//   - Forward: every step whose dependencies are all done is running;
//     the saga is COMPLETED when every step is done.
//   - A step fails (or the saga is aborted): no step starts any more, and
//     every step still running is marked done and uncertain in the same
//     transition (its handler is cancelled; it may have taken effect). A
//     running step that answers success before its compensation starts
//     has its output recorded and loses its uncertainty; any other late
//     answer is refused and the step stays uncertain.
//   - Backward: a done step is compensated only once every step that
//     depends on it is settled (never started, failed or compensated).
//     Independent branches are compensated at once; a chain in reverse.
//     A step without a compensation handler is settled as soon as it is
//     reachable. The saga is FAILED when nothing is left to undo.
//   - A compensation that exhausts its budget marks its step stuck and the
//     saga STUCK (Current names the first stuck step, LastError its error);
//     compensations in flight may still record their outcome (a failure
//     in the step's CompErr, never in LastError), but none starts until an
//     operator retries (every stuck step gets a fresh round) or resolves
//     (the stuck step named by Current; Current and LastError then name
//     the next stuck step, if any).
//
// Current is -1 for a DAG saga except while it is STUCK.

// Parallel reports whether steps form a DAG (some step declares After)
// rather than a sequence.
func Parallel(steps []StepDef) bool {
	for i := range steps {
		if len(steps[i].After) > 0 {
			return true
		}
	}
	return false
}

func (s *Saga) parallel() bool {
	for i := range s.Steps {
		if s.Steps[i].StepDef != nil && len(s.Steps[i].After) > 0 {
			return true
		}
	}
	return false
}

// Parallel reports whether the saga's steps form a DAG.
func (s *Saga) Parallel() bool { return s.parallel() }

// stepIndex returns the index of the step named name, or -1.
func stepIndex(steps []Step, name string) int {
	for i := range steps {
		if steps[i].Name == name {
			return i
		}
	}
	return -1
}

// DependsOn reports whether step j of the saga names step i in After.
func (s *Saga) DependsOn(j, i int) bool {
	return slices.Contains(s.Steps[j].After, s.Steps[i].Name)
}

// Blockers returns the dependencies of step i that are not done, by name.
func (s *Saga) Blockers(i int) []string {
	var out []string
	for _, d := range s.Steps[i].After {
		if k := stepIndex(s.Steps, d); k < 0 || s.Steps[k].Status != StepDone {
			out = append(out, d)
		}
	}
	return out
}

// depsDone reports whether every dependency of step i is done; idx maps
// names to indexes, or is nil to scan the steps.
func depsDone(s *Saga, i int, idx map[string]int) bool {
	for _, d := range s.Steps[i].After {
		k := -1
		if idx != nil {
			if j, ok := idx[d]; ok {
				k = j
			}
		} else {
			k = stepIndex(s.Steps, d)
		}
		if k < 0 || s.Steps[k].Status != StepDone {
			return false
		}
	}
	return true
}

// settledBackward reports whether a step's dependents no longer stand in
// the way of its compensation.
func settledBackward(st StepStatus) bool {
	return st == StepPending || st == StepFailed || st == StepCompensated
}

// CompensationReady reports whether step i of a DAG saga may be
// compensated now: it is done (or its compensation started) and every
// step that depends on it is settled.
func (s *Saga) CompensationReady(i int) bool {
	st := s.Steps[i].Status
	if st != StepDone && st != StepCompensating {
		return false
	}
	for j := range s.Steps {
		if j != i && s.DependsOn(j, i) && !settledBackward(s.Steps[j].Status) {
			return false
		}
	}
	return true
}

// heldBack marks the steps whose compensation waits for a step that
// depends on them and is not settled: CompensationReady for every step
// at once, in one pass over the dependencies (asking each step in turn
// made a wide fan-out quadratic on every kick and status).
func heldBack(s *Saga) []bool {
	var idx map[string]int
	if len(s.Steps) > 16 {
		idx = make(map[string]int, len(s.Steps))
		for i := range s.Steps {
			idx[s.Steps[i].Name] = i
		}
	}
	held := make([]bool, len(s.Steps))
	for j := range s.Steps {
		if settledBackward(s.Steps[j].Status) {
			continue
		}
		for _, d := range s.Steps[j].After {
			k := -1
			if idx != nil {
				if v, ok := idx[d]; ok {
					k = v
				}
			} else {
				k = stepIndex(s.Steps, d)
			}
			if k >= 0 && k != j {
				held[k] = true
			}
		}
	}
	return held
}

// Running returns the indexes of the steps running forward.
func (s *Saga) Running() []int {
	var out []int
	for i := range s.Steps {
		if s.Steps[i].Status == StepRunning {
			out = append(out, i)
		}
	}
	return out
}

// DependencyProblems names every problem of the dependencies (After)
// among steps, as Definition.Validate reports them: for callers that
// build definitions from their own configuration (the policy's
// milestones) and validate it before any Define.
func DependencyProblems(steps []StepDef) []string { return dagProblems(steps) }

// dagProblems names every problem of a DAG's dependencies: unknown or
// repeated names, a step after itself, cycles, and steps that no start
// can reach because they depend on a cycle.
func dagProblems(steps []StepDef) []string {
	var probs []string
	index := make(map[string]int, len(steps))
	for i, s := range steps {
		if _, dup := index[s.Name]; !dup {
			index[s.Name] = i
		}
	}
	deps := make([][]int, len(steps))
	for i, s := range steps {
		seen := map[string]bool{}
		for _, d := range s.After {
			switch k, ok := index[d]; {
			case seen[d]:
				probs = append(probs, fmt.Sprintf("step %q: after %q listed twice", s.Name, d))
			case !ok:
				probs = append(probs, fmt.Sprintf("step %q: after unknown step %q", s.Name, d))
			case k == i:
				probs = append(probs, fmt.Sprintf("step %q: after itself", s.Name))
			default:
				deps[i] = append(deps[i], k)
			}
			seen[d] = true
		}
	}
	// Kahn's order: what it never reaches is on a cycle or after one.
	indeg := make([]int, len(steps))
	for i := range deps {
		indeg[i] = len(deps[i])
	}
	var queue []int
	for i, n := range indeg {
		if n == 0 {
			queue = append(queue, i)
		}
	}
	// The steps after each step (deps[j] holds a step at most once), so
	// that the order costs the edges, not steps times edges: every start
	// record is validated, on replay too.
	after := make([][]int, len(steps))
	for j := range deps {
		for _, k := range deps[j] {
			after[k] = append(after[k], j)
		}
	}
	reached := make([]bool, len(steps))
	for len(queue) > 0 {
		i := queue[0]
		queue = queue[1:]
		reached[i] = true
		for _, j := range after[i] {
			if indeg[j]--; indeg[j] == 0 {
				queue = append(queue, j)
			}
		}
	}
	onCycle := make([]bool, len(steps))
	for _, c := range cycles(deps, reached) {
		names := make([]string, 0, len(c)+1)
		for _, i := range c {
			names = append(names, fmt.Sprintf("%q", steps[i].Name))
			onCycle[i] = true
		}
		names = append(names, names[0])
		probs = append(probs, "cycle: "+strings.Join(names, " after "))
	}
	for i := range steps {
		if !reached[i] && !onCycle[i] && steps[i].Name != "" {
			probs = append(probs, fmt.Sprintf("step %q can never start: it depends on a cycle", steps[i].Name))
		}
	}
	return probs
}

// cycles returns one cycle through each group of unreached steps that
// lie on one, each as step indexes in dependency order from its smallest
// index, deterministically.
func cycles(deps [][]int, reached []bool) [][]int {
	var out [][]int
	covered := make([]bool, len(deps))
	for start := range deps {
		if reached[start] || covered[start] {
			continue
		}
		// Follow the first unreached dependency until a step repeats:
		// every unreached step has one, so this ends on a cycle.
		pos := map[int]int{}
		var path []int
		i := start
		for {
			if p, ok := pos[i]; ok {
				c := path[p:]
				if !covered[c[0]] {
					lo := 0
					for k := range c {
						if c[k] < c[lo] {
							lo = k
						}
					}
					c = append(append([]int(nil), c[lo:]...), c[:lo]...)
					for _, k := range c {
						covered[k] = true
					}
					out = append(out, c)
				}
				break
			}
			if covered[i] {
				break
			}
			pos[i] = len(path)
			path = append(path, i)
			next := -1
			for _, k := range deps[i] {
				if !reached[k] {
					next = k
					break
				}
			}
			if next < 0 {
				break
			}
			i = next
		}
	}
	return out
}

// startDAG marks every step without dependencies running.
func startDAG(s *Saga, at int64) {
	s.Current = -1
	for i := range s.Steps {
		if len(s.Steps[i].After) == 0 {
			runStep(&s.Steps[i], at)
		}
	}
}

// dagTransition is transition for a DAG saga.
func dagTransition(n *Saga, r *Record, illegal func(string, ...any) error) error {
	if r.Kind != KindAborted && r.Kind != KindRetried && r.Step >= len(n.Steps) {
		return illegal("saga has %d steps", len(n.Steps))
	}
	inState := func(states ...SagaState) error {
		if !slices.Contains(states, n.State) {
			return illegal("not allowed in state %s", n.State)
		}
		return nil
	}
	switch r.Kind {
	case KindStepStarted:
		if err := inState(StateInProgress); err != nil {
			return err
		}
		st := &n.Steps[r.Step]
		if st.Status != StepRunning {
			return illegal("step is %s, not running", st.Status)
		}
		if r.Attempt != st.Attempts+1 {
			return illegal("attempt %d does not follow attempt %d", r.Attempt, st.Attempts)
		}
		st.Attempts = r.Attempt

	case KindStepCompleted:
		st := &n.Steps[r.Step]
		if n.State != StateInProgress {
			// A late answer of a step cancelled by a failure or an abort.
			if (n.State != StateCompensating && n.State != StateStuck) || st.Status != StepDone || !st.Uncertain || st.CompAttempts > 0 {
				return illegal("step is %s in a %s saga: only an uncertain step whose compensation has not started takes a late answer", st.Status, n.State)
			}
			st.Output, st.Uncertain, st.EndedAt = r.Output, false, r.At
			break
		}
		if st.Status != StepRunning {
			if st.Status == StepPending {
				return illegal("step %q is not ready: it waits for %s", st.Name, strings.Join(n.Blockers(r.Step), ", "))
			}
			return illegal("step is %s, not running", st.Status)
		}
		st.Status, st.Output, st.EndedAt, st.Err = StepDone, r.Output, r.At, nil
		// Only a step after this one can have become ready: every other
		// pending step waits for a step that is not done. Its dependencies
		// are looked up by a map for many steps (a wide fan-in checked by a
		// scan of the steps per name made each completion quadratic).
		var idx map[string]int
		if len(n.Steps) > 16 {
			idx = make(map[string]int, len(n.Steps))
			for i := range n.Steps {
				idx[n.Steps[i].Name] = i
			}
		}
		all := true
		for i := range n.Steps {
			if n.Steps[i].Status == StepPending && slices.Contains(n.Steps[i].After, st.Name) && depsDone(n, i, idx) {
				runStep(&n.Steps[i], r.At)
			}
			all = all && n.Steps[i].Status == StepDone
		}
		if all {
			n.State = StateCompleted
		}

	case KindStepFailed:
		if err := inState(StateInProgress); err != nil {
			return err
		}
		st := &n.Steps[r.Step]
		if st.Status != StepRunning {
			if st.Status == StepPending {
				return illegal("step %q is not ready: it waits for %s", st.Name, strings.Join(n.Blockers(r.Step), ", "))
			}
			return illegal("step is %s, not running", st.Status)
		}
		if r.Err == nil {
			return illegal("a failure record needs an error")
		}
		st.Status, st.Err, st.EndedAt = StepFailed, r.Err, r.At
		n.LastError = r.Err
		abandonRunning(n, r.At)
		n.State = StateCompensating
		settleDAG(n, r.At)

	case KindAborted:
		if err := inState(StateInProgress); err != nil {
			return illegal("only an in-progress saga can be aborted, this one is %s", n.State)
		}
		abandonRunning(n, r.At)
		n.LastError = &ErrorInfo{Kind: "aborted", Message: abortMessage(r)}
		n.State = StateCompensating
		settleDAG(n, r.At)

	case KindCompStarted:
		if err := inState(StateCompensating); err != nil {
			return err
		}
		st := &n.Steps[r.Step]
		if !n.CompensationReady(r.Step) {
			if st.Status != StepDone && st.Status != StepCompensating {
				return illegal("step is %s: only a done step is compensated", st.Status)
			}
			return illegal("step %q is compensated only after the steps that depend on it", st.Name)
		}
		if !st.Undoable() {
			return illegal("step %q has no compensation", st.Name)
		}
		if r.Attempt != st.CompAttempts+1 {
			return illegal("attempt %d does not follow attempt %d", r.Attempt, st.CompAttempts)
		}
		if st.Status == StepDone {
			st.CompRoundStart = r.At
		}
		st.Status, st.CompAttempts = StepCompensating, r.Attempt

	case KindCompCompleted:
		if err := inState(StateCompensating, StateStuck); err != nil {
			return err
		}
		st := &n.Steps[r.Step]
		if st.Status != StepCompensating || st.Stuck {
			return illegal("step is %s, not compensating", st.Status)
		}
		st.Status, st.CompEndedAt, st.CompErr = StepCompensated, r.At, nil
		settleDAG(n, r.At)

	case KindCompFailed:
		if err := inState(StateCompensating, StateStuck); err != nil {
			return err
		}
		st := &n.Steps[r.Step]
		if st.Status != StepCompensating || st.Stuck {
			return illegal("step is %s, not compensating", st.Status)
		}
		if r.Err == nil {
			return illegal("a failure record needs an error")
		}
		if r.Attempt != st.CompAttempts {
			return illegal("attempt %d failed but attempt %d is running", r.Attempt, st.CompAttempts)
		}
		st.CompErr = r.Err
		// While STUCK, LastError is the error that made it so: a branch
		// still in flight that fails (for good or not) keeps its error in
		// its own step (CompErr) and in the history.
		if n.State != StateStuck {
			n.LastError = r.Err
		}
		if r.Final {
			st.Stuck = true
			if n.State != StateStuck {
				n.State, n.Current = StateStuck, r.Step
			}
		}

	case KindReverted:
		if err := revertable(n, illegal); err != nil {
			return err
		}
		n.LastError = revertError(r)
		n.State, n.Current = StateCompensating, -1
		settleDAG(n, r.At)

	case KindRetried:
		if err := inState(StateStuck); err != nil {
			return illegal("only a STUCK saga can be retried, this one is %s", n.State)
		}
		for i := range n.Steps {
			if st := &n.Steps[i]; st.Stuck {
				st.Stuck, st.CompRoundBase, st.CompRoundStart = false, st.CompAttempts, r.At
			}
		}
		n.State, n.Current = StateCompensating, -1

	case KindResolved:
		if err := inState(StateStuck); err != nil {
			return illegal("only a STUCK saga can be resolved by hand, this one is %s", n.State)
		}
		st := &n.Steps[r.Step]
		if !st.Stuck {
			return illegal("step %s is not a stuck step", stepLabel(n, r.Step))
		}
		st.Stuck, st.Status, st.CompEndedAt = false, StepCompensated, r.At
		n.Current = -1
		for i := range n.Steps {
			if n.Steps[i].Stuck {
				n.Current = i
				break
			}
		}
		if n.Current < 0 {
			n.State = StateCompensating
		} else if e := n.Steps[n.Current].CompErr; e != nil {
			// Still STUCK, now at another step: its error explains why.
			n.LastError = e
		}
		settleDAG(n, r.At)

	default:
		return fmt.Errorf("%w: kind %s is not a saga transition", ErrInvalidRecord, r.Kind)
	}
	return nil
}

// abandonRunning marks every running step done and uncertain: its
// handler is cancelled, and its effect unknown.
func abandonRunning(n *Saga, at int64) {
	for i := range n.Steps {
		if st := &n.Steps[i]; st.Status == StepRunning {
			st.Status, st.Uncertain, st.EndedAt = StepDone, true, at
		}
	}
}

// settleDAG marks compensated every done step without a compensation
// handler whose dependents are settled, until none is left, and moves a
// compensating saga with nothing left to undo to FAILED.
func settleDAG(n *Saga, at int64) {
	for changed := true; changed; {
		changed = false
		held := heldBack(n)
		for i := range n.Steps {
			st := &n.Steps[i]
			if st.Status == StepDone && !st.Undoable() && !held[i] {
				st.Status, st.CompEndedAt = StepCompensated, at
				changed = true
			}
		}
	}
	if n.State != StateCompensating {
		return
	}
	for i := range n.Steps {
		if s := n.Steps[i].Status; s == StepDone || s == StepCompensating {
			return
		}
	}
	n.State, n.Current = StateFailed, -1
}

// pendingDAG lists the compensations still to run, those ready first,
// each group in reverse step order.
func pendingDAG(s *Saga) []int {
	var ready, later []int
	held := heldBack(s)
	for i := len(s.Steps) - 1; i >= 0; i-- {
		st := s.Steps[i]
		if (st.Status == StepDone || st.Status == StepCompensating) && st.Undoable() {
			if !held[i] {
				ready = append(ready, i)
			} else {
				later = append(later, i)
			}
		}
	}
	return append(ready, later...)
}
