package fsm

import "fmt"

// Apply returns the state of a saga after record r. s is the current state
// (nil when the saga does not exist yet). Apply never mutates s: on error it
// returns s's state untouched (nil, err) and the caller keeps s.
//
// Apply is pure and deterministic: the result depends only on (s, r).
// Define records are not saga transitions: see ApplyDefinition.
//
// COMPLETED and FAILED are final, with one exception: a COMPLETED child
// saga (Saga.Parent set) leaves COMPLETED for COMPENSATING by a
// KindReverted record, when its parent undoes the step that ran it; it
// then ends FAILED like any compensated saga, and nothing leaves FAILED.
// A top-level saga's COMPLETED is final: what its caller was told stays
// true.
func Apply(s *Saga, r *Record) (*Saga, error) { return ApplyInto(nil, s, r) }

// ApplyInto is Apply with the new state written into dst (when s exists),
// reusing dst's memory: for a caller that only checks a transition, or
// keeps the result in a scratch value it owns. dst nil allocates, as Apply
// does; dst == s changes s in place (and on error leaves it untouched).
// Otherwise dst's previous contents are overwritten, and the result shares
// with s what Apply's would. It returns the new state.
func ApplyInto(dst, s *Saga, r *Record) (*Saga, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	if r.Kind == KindDefine || r.Kind == KindRemoved {
		return nil, fmt.Errorf("%w: a %s record is not a saga transition", ErrInvalidRecord, r.Kind)
	}
	if r.Kind == KindSagaStarted {
		if s != nil {
			return nil, fmt.Errorf("%w: %s", ErrSagaExists, r.Saga)
		}
		return start(r), nil
	}
	if s == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownSaga, r.Saga)
	}
	if s.ID != r.Saga {
		return nil, fmt.Errorf("%w: record for saga %s applied to saga %s", ErrInvalidRecord, r.Saga, s.ID)
	}
	n := s.cloneInto(dst)
	if err := transition(n, r); err != nil {
		return nil, err
	}
	return n, nil
}

// applyInPlace is Apply for a saga the caller owns exclusively (a copy
// made by an earlier Apply that nothing else has seen yet): it changes n
// itself instead of a copy, and on error leaves it untouched. r must be a
// saga transition other than a start, already validated, for n.ID.
func applyInPlace(n *Saga, r *Record) error { return transition(n, r) }

// transition changes n by record r (not a start) and returns nil, or
// returns why r is illegal in n's state and leaves n untouched: every
// check comes before the first change.
func transition(n *Saga, r *Record) error {
	illegal := func(why string, a ...any) error {
		e := &TransitionError{Saga: n.ID, Kind: r.Kind, State: n.State, Step: r.Step, Reason: fmt.Sprintf(why, a...)}
		switch {
		case r.Kind == KindAborted && n.Durability != DurabilityPipelined, r.Kind == KindRetried,
			r.Kind == KindResolved && n.State != StateStuck:
			e.Step = -1 // about the saga: its Step names no step
		case r.Step < len(n.Steps):
			e.StepName = n.Steps[r.Step].Name
		}
		return e
	}
	if n.parallel() {
		if err := dagTransition(n, r, illegal); err != nil {
			return err
		}
		n.Seq++
		n.UpdatedAt = r.At
		n.noteHistory(r)
		return nil
	}
	// Checks shared by every per-step record.
	needStep := func(st SagaState) error {
		if n.State != st {
			return illegal("not allowed in state %s", n.State)
		}
		if r.Step >= len(n.Steps) {
			return illegal("saga has %d steps", len(n.Steps))
		}
		if r.Step != n.Current {
			return illegal("step %s is not the current step %s", stepLabel(n, r.Step), stepLabel(n, n.Current))
		}
		return nil
	}

	switch r.Kind {
	case KindStepStarted:
		if err := needStep(StateInProgress); err != nil {
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
		if err := needStep(StateInProgress); err != nil {
			return err
		}
		st := &n.Steps[r.Step]
		if st.Status != StepRunning {
			return illegal("step is %s, not running", st.Status)
		}
		st.Status, st.Output, st.EndedAt, st.Err = StepDone, r.Output, r.At, nil
		if r.Step == len(n.Steps)-1 {
			n.State, n.Current = StateCompleted, -1
		} else {
			n.Current = r.Step + 1
			runStep(&n.Steps[n.Current], r.At)
		}

	case KindStepFailed:
		if err := needStep(StateInProgress); err != nil {
			return err
		}
		st := &n.Steps[r.Step]
		if st.Status != StepRunning {
			return illegal("step is %s, not running", st.Status)
		}
		if r.Err == nil {
			return illegal("a failure record needs an error")
		}
		st.Status, st.Err, st.EndedAt = StepFailed, r.Err, r.At
		n.LastError = r.Err
		beginCompensation(n, r.At)

	case KindAborted:
		if n.State != StateInProgress {
			return illegal("only an in-progress saga can be aborted, this one is %s", n.State)
		}
		// The running step may have taken effect: compensate it too. A
		// pipelined saga's recovery names the step after it (Step is
		// Current+1): that one may have run before its record was
		// durable, and is compensated as well. A strict saga's abort
		// ignores Step (it always names the current step).
		last := n.Current
		if n.Durability == DurabilityPipelined && r.Step != n.Current {
			if r.Step != n.Current+1 || r.Step >= len(n.Steps) {
				return illegal("a pipelined saga's abort names its current step %s or the one after it", stepLabel(n, n.Current))
			}
			last = r.Step
		}
		for i := n.Current; i <= last; i++ {
			st := &n.Steps[i]
			st.Status, st.Uncertain, st.EndedAt = StepDone, true, r.At
		}
		n.LastError = &ErrorInfo{Kind: "aborted", Message: abortMessage(r)}
		beginCompensation(n, r.At)

	case KindCompStarted:
		if err := needStep(StateCompensating); err != nil {
			return err
		}
		st := &n.Steps[r.Step]
		if st.Status != StepDone && st.Status != StepCompensating {
			return illegal("step is %s: only a done step is compensated", st.Status)
		}
		if r.Attempt != st.CompAttempts+1 {
			return illegal("attempt %d does not follow attempt %d", r.Attempt, st.CompAttempts)
		}
		if st.Status == StepDone {
			st.CompRoundStart = r.At
		}
		st.Status, st.CompAttempts = StepCompensating, r.Attempt

	case KindCompCompleted:
		if err := needStep(StateCompensating); err != nil {
			return err
		}
		st := &n.Steps[r.Step]
		if st.Status != StepCompensating {
			return illegal("step is %s, not compensating", st.Status)
		}
		st.Status, st.CompEndedAt, st.CompErr = StepCompensated, r.At, nil
		nextCompensation(n, r.At)

	case KindCompFailed:
		if err := needStep(StateCompensating); err != nil {
			return err
		}
		st := &n.Steps[r.Step]
		if st.Status != StepCompensating {
			return illegal("step is %s, not compensating", st.Status)
		}
		if r.Err == nil {
			return illegal("a failure record needs an error")
		}
		if r.Attempt != st.CompAttempts {
			return illegal("attempt %d failed but attempt %d is running", r.Attempt, st.CompAttempts)
		}
		st.CompErr = r.Err
		n.LastError = r.Err
		if r.Final {
			n.State = StateStuck
		}

	case KindRetried:
		if n.State != StateStuck {
			return illegal("only a STUCK saga can be retried, this one is %s", n.State)
		}
		st := &n.Steps[n.Current]
		st.CompRoundBase, st.CompRoundStart = st.CompAttempts, r.At
		n.State = StateCompensating

	case KindResolved:
		if n.State != StateStuck {
			return illegal("only a STUCK saga can be resolved by hand, this one is %s", n.State)
		}
		if r.Step != n.Current {
			return illegal("step %s is not the stuck step %s", stepLabel(n, r.Step), stepLabel(n, n.Current))
		}
		st := &n.Steps[n.Current]
		st.Status, st.CompEndedAt = StepCompensated, r.At
		n.State = StateCompensating
		nextCompensation(n, r.At)

	case KindReverted:
		if err := revertable(n, illegal); err != nil {
			return err
		}
		n.LastError = revertError(r)
		beginCompensation(n, r.At)

	default:
		return fmt.Errorf("%w: kind %s is not a saga transition", ErrInvalidRecord, r.Kind)
	}
	n.Seq++
	n.UpdatedAt = r.At
	n.noteHistory(r)
	return nil
}

func abortMessage(r *Record) string {
	msg := r.Reason
	if msg == "" {
		msg = "aborted"
	}
	if r.Actor != "" {
		msg += " (by " + r.Actor + ")"
	}
	return msg
}

func start(r *Record) *Saga {
	return startWith(r, append([]StepDef(nil), r.Start.Steps...))
}

// startWith is start with the steps' definitions in plan, which the saga
// keeps (start copies the record's; the Replayer, whose records are its
// own, passes them).
func startWith(r *Record, plan []StepDef) *Saga {
	si := r.Start
	s := &Saga{
		ID:             r.Saga,
		Definition:     si.Definition,
		Version:        si.Version,
		State:          StateInProgress,
		Driven:         si.Driven,
		Durability:     si.Durability,
		User:           si.User,
		IdempotencyKey: si.IdempotencyKey,
		Input:          si.Input,
		Meta:           si.Meta,
		Steps:          make([]Step, len(si.Steps)),
		Current:        0,
		Deadline:       si.Deadline,
		Parent:         si.Parent,
		Depth:          si.Depth,
		HistoryCap:     si.HistoryCap,
		Trace:          si.Trace,
		CreatedAt:      r.At,
		UpdatedAt:      r.At,
		Seq:            1,
	}
	for i := range plan {
		s.Steps[i].StepDef = &plan[i]
	}
	if Parallel(plan) {
		startDAG(s, r.At)
		return s
	}
	runStep(&s.Steps[0], r.At)
	return s
}

// stepLabel names step i of n in a message: its index and name.
func stepLabel(n *Saga, i int) string {
	if i >= 0 && i < len(n.Steps) {
		return fmt.Sprintf("%d %q", i, n.Steps[i].Name)
	}
	return fmt.Sprint(i)
}

func runStep(st *Step, at int64) {
	st.Status, st.Attempts, st.StartedAt = StepRunning, 1, at
}

// beginCompensation moves a saga whose forward path ended to COMPENSATING
// at its highest done step, or to FAILED when nothing needs undoing.
func beginCompensation(n *Saga, at int64) {
	n.State = StateCompensating
	n.Current = len(n.Steps) // nextCompensation searches below it
	nextCompensation(n, at)
}

// nextCompensation moves Current to the next done step below it that has a
// compensation handler; steps without one are marked compensated (nothing
// to undo). With none left the saga has FAILED.
func nextCompensation(n *Saga, at int64) {
	for i := n.Current - 1; i >= 0; i-- {
		st := &n.Steps[i]
		if st.Status != StepDone {
			continue
		}
		if !st.Undoable() {
			st.Status, st.CompEndedAt = StepCompensated, at
			continue
		}
		n.Current = i
		return
	}
	n.State, n.Current = StateFailed, -1
}

// Pending reports the compensations still to run for a saga, in the order
// they will run (for a DAG saga: those ready now first; several run at
// once).
func Pending(s *Saga) []int {
	if s.State != StateCompensating && s.State != StateStuck {
		return nil
	}
	if s.parallel() {
		return pendingDAG(s)
	}
	var out []int
	for i := s.Current; i >= 0; i-- {
		st := s.Steps[i]
		if (st.Status == StepDone || st.Status == StepCompensating) && st.Undoable() {
			out = append(out, i)
		}
	}
	return out
}

// ApplyDefinition returns the definition table entry after a define
// record: d.Version must be one more than the latest version (or 1).
func ApplyDefinition(latest *Definition, r *Record) (*Definition, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	if r.Kind != KindDefine {
		return nil, fmt.Errorf("%w: %s is not a define record", ErrInvalidRecord, r.Kind)
	}
	want := 1
	if latest != nil {
		want = latest.Version + 1
	}
	if r.Def.Version != want {
		return nil, fmt.Errorf("%w: definition %q version %d, expected version %d",
			ErrIllegalTransition, r.Def.Name, r.Def.Version, want)
	}
	return r.Def.Clone(), nil
}
