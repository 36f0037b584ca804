package admin

import (
	"time"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
)

// SagaJSON is a saga as the API and sagactl show it.
type SagaJSON struct {
	ID          string     `json:"id"`
	Definition  string     `json:"definition"`
	Version     int        `json:"version"`
	State       string     `json:"state"`
	CurrentStep string     `json:"current_step,omitempty"`
	Running     []string   `json:"running,omitempty"`
	Parallel    bool       `json:"parallel,omitempty"`
	Completed   []string   `json:"completed"`
	Compensated []string   `json:"compensated"`
	Pending     []string   `json:"pending_compensations,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	User        string     `json:"user,omitempty"`
	Driven      bool       `json:"engine_driven"`
	Durability  string     `json:"durability"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	Deadline    *time.Time `json:"deadline,omitempty"`
	// Parent is the saga whose step runs this one (a nested saga), at
	// nesting depth Depth.
	Parent string     `json:"parent,omitempty"`
	Depth  int        `json:"depth,omitempty"`
	Steps  []StepJSON `json:"steps"`
	// HistoryDropped summarises the attempt records the saga's history
	// cap dropped from its history (engine.Options.HistoryCap); absent
	// when none were.
	HistoryDropped *HistoryDroppedJSON `json:"history_dropped,omitempty"`
}

// HistoryDroppedJSON summarises the attempt records dropped from a
// saga's history: how many, and the seqs of the first and the last (the
// history has no entry with those seqs, nor with some between them).
type HistoryDroppedJSON struct {
	Count    uint64 `json:"count"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
}

// StepJSON is one step of a saga.
type StepJSON struct {
	Name                 string `json:"name"`
	Status               string `json:"status"`
	Compensation         string `json:"compensation,omitempty"`
	Attempts             int    `json:"attempts,omitempty"`
	CompensationAttempts int    `json:"compensation_attempts,omitempty"`
	Uncertain            bool   `json:"uncertain,omitempty"`
	Error                string `json:"error,omitempty"`
	CompensationError    string `json:"compensation_error,omitempty"`
	Duration             string `json:"duration,omitempty"`
	// After lists the steps this one waits for (parallel steps).
	After []string `json:"after,omitempty"`
	// Child is the definition a child step runs, and ChildSaga the id of
	// its saga (which exists once the step has started).
	Child     string `json:"child,omitempty"`
	ChildSaga string `json:"child_saga,omitempty"`
	// Stuck marks a parallel step whose compensation exhausted its budget.
	Stuck         bool       `json:"stuck,omitempty"`
	StartedAt     *time.Time `json:"started_at,omitempty"`
	EndedAt       *time.Time `json:"ended_at,omitempty"`
	CompensatedAt *time.Time `json:"compensated_at,omitempty"`
}

func jsonTime(ns int64) *time.Time {
	if ns <= 0 {
		return nil
	}
	t := time.Unix(0, ns).UTC()
	return &t
}

// NewSagaJSON converts a status.
func NewSagaJSON(st *engine.Status) SagaJSON {
	j := SagaJSON{ID: st.ID, Definition: st.Definition, Version: st.Version, State: st.State.String(),
		CurrentStep: st.CurrentStep, Completed: nonNil(st.Completed), Compensated: nonNil(st.Compensated),
		Pending: st.Pending, User: st.User, CreatedAt: st.CreatedAt.UTC(), UpdatedAt: st.UpdatedAt.UTC(),
		Running: st.Running}
	j.Durability = engine.DurabilityStrict.String()
	if st.Saga != nil {
		j.Driven, j.Durability = st.Saga.Driven, st.Saga.Durability.String()
		j.Parallel = st.Saga.Parallel()
		j.Parent, j.Depth = st.Saga.Parent, st.Saga.Depth
		if sg := st.Saga; sg.HistoryDropped > 0 {
			j.HistoryDropped = &HistoryDroppedJSON{Count: sg.HistoryDropped, FirstSeq: sg.HistoryDroppedFirst, LastSeq: sg.HistoryDroppedLast}
		}
	}
	if st.LastError != nil {
		j.LastError = st.LastError.Error()
	}
	if st.State == fsm.StateFailed {
		// Once every compensation succeeded (after an operator's retry,
		// say), what matters is why the saga failed: the failed step's
		// error, not the compensation error that a retry cleared.
		for _, s := range st.Steps {
			if s.Status == fsm.StepFailed && s.Err != nil {
				j.LastError = s.Err.Error()
			}
		}
	}
	if !st.Deadline.IsZero() {
		d := st.Deadline.UTC()
		j.Deadline = &d
	}
	for _, s := range st.Steps {
		sj := StepJSON{Name: s.Name, Status: s.Status.String(), Compensation: s.Compensation, Attempts: s.Attempts,
			CompensationAttempts: s.CompAttempts, Uncertain: s.Uncertain, After: s.After, Stuck: s.Stuck,
			StartedAt: jsonTime(s.StartedAt), EndedAt: jsonTime(s.EndedAt), CompensatedAt: jsonTime(s.CompEndedAt)}
		if s.Child != "" {
			sj.Child, sj.ChildSaga = s.Child, engine.ChildID(st.ID, len(j.Steps))
		}
		if s.Err != nil {
			sj.Error = s.Err.Error()
		}
		if s.CompErr != nil {
			sj.CompensationError = s.CompErr.Error()
		}
		if s.StartedAt > 0 && s.EndedAt >= s.StartedAt {
			sj.Duration = time.Duration(s.EndedAt - s.StartedAt).String()
		}
		j.Steps = append(j.Steps, sj)
	}
	return j
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// HistoryJSON is one transition of a saga's timeline.
type HistoryJSON struct {
	Seq     uint64    `json:"seq"`
	Index   uint64    `json:"log_index"`
	At      time.Time `json:"at"`
	Kind    string    `json:"kind"`
	Step    string    `json:"step,omitempty"`
	Attempt int       `json:"attempt,omitempty"`
	Error   string    `json:"error,omitempty"`
	Final   bool      `json:"final,omitempty"`
	Actor   string    `json:"actor,omitempty"`
	Reason  string    `json:"reason,omitempty"`
}

// NewHistoryJSON converts a history entry; sg names the steps.
func NewHistoryJSON(he fsm.HistoryEntry, sg *fsm.Saga) HistoryJSON {
	r := he.Record
	h := HistoryJSON{Seq: he.Seq, Index: he.Index, At: time.Unix(0, r.At).UTC(), Kind: r.Kind.String(),
		Attempt: r.Attempt, Final: r.Final, Actor: r.Actor, Reason: r.Reason}
	if r.Kind != fsm.KindSagaStarted && sg != nil && r.Step < len(sg.Steps) {
		h.Step = sg.Steps[r.Step].Name
	}
	if r.Err != nil {
		h.Error = r.Err.Error()
	}
	return h
}
