// Package fsm holds the saga state machine: the transition records, their
// msgpack encoding, the pure Apply function and the Pebble store that keeps
// the applied state and its indexes.
//
// Apply is a pure function of (saga, record): no clock, no randomness, no
// I/O, no dependence on map order. Times travel inside records. The same
// sequence of records therefore yields the same state on every node and on
// every replay.
package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// SagaState is the state of a saga.
type SagaState uint8

// Saga states. COMPLETED and FAILED are terminal; STUCK waits for an operator.
const (
	StateInProgress   SagaState = 1 // steps are running forward
	StateCompensating SagaState = 2 // completed steps are being undone, in reverse order
	StateCompleted    SagaState = 3 // every step completed (terminal)
	StateFailed       SagaState = 4 // a step failed and every completed step was compensated (terminal)
	StateStuck        SagaState = 5 // a compensation exhausted its retry budget; an operator must act
)

var stateNames = [...]string{"", "IN_PROGRESS", "COMPENSATING", "COMPLETED", "FAILED", "STUCK"}

func (s SagaState) String() string {
	if int(s) < len(stateNames) && s != 0 {
		return stateNames[s]
	}
	return fmt.Sprintf("SagaState(%d)", uint8(s))
}

// Terminal reports whether no further transition can happen.
func (s SagaState) Terminal() bool { return s == StateCompleted || s == StateFailed }

// ParseState parses the name of a state ("STUCK", case-sensitive).
func ParseState(name string) (SagaState, error) {
	for i, n := range stateNames {
		if n != "" && n == name {
			return SagaState(i), nil
		}
	}
	return 0, fmt.Errorf("fsm: unknown saga state %q (want one of IN_PROGRESS, COMPENSATING, COMPLETED, FAILED, STUCK)", name)
}

// States lists every saga state in order.
func States() []SagaState {
	return []SagaState{StateInProgress, StateCompensating, StateCompleted, StateFailed, StateStuck}
}

// StepStatus is the status of one step.
//
//	pending → running → done | failed
//	done → compensating → compensated
type StepStatus uint8

// Step statuses.
const (
	StepPending      StepStatus = 0
	StepRunning      StepStatus = 1
	StepDone         StepStatus = 2
	StepFailed       StepStatus = 3
	StepCompensating StepStatus = 4
	StepCompensated  StepStatus = 5
)

var stepNames = [...]string{"pending", "running", "done", "failed", "compensating", "compensated"}

func (s StepStatus) String() string {
	if int(s) < len(stepNames) {
		return stepNames[s]
	}
	return fmt.Sprintf("StepStatus(%d)", uint8(s))
}

// UncertainPolicy says what recovery does with an engine-driven step that
// was running when the process stopped: its action may or may not have
// taken effect.
type UncertainPolicy uint8

const (
	// UncertainCompensate aborts the saga and compensates the uncertain step
	// with the others (its compensation must tolerate an action that never
	// happened). The default: it never runs an action twice.
	UncertainCompensate UncertainPolicy = 0
	// UncertainRetry runs the step's action again with the same
	// idempotency key.
	UncertainRetry UncertainPolicy = 1
)

func (p UncertainPolicy) String() string {
	if p == UncertainRetry {
		return "retry"
	}
	return "compensate"
}

// Durability says when a step's side effect may begin relative to the log
// record that says it runs (the seed plan's "WAL policy").
type Durability uint8

const (
	// DurabilityStrict, the default: a step's action runs only after the
	// record saying it runs is durable (persist before side effect).
	DurabilityStrict Durability = 0
	// DurabilityPipelined: the record "step k done, k+1 begins" is made
	// durable while step k+1 runs; the engine is never more than one step
	// ahead of the log, and a saga's start and finish are durable before
	// its caller is told. After a crash the last durable intent and the
	// step after it may both have run: both are compensated as uncertain
	// (their recorded output may be missing), whatever their OnUncertain.
	DurabilityPipelined Durability = 1
)

func (d Durability) String() string {
	switch d {
	case DurabilityStrict:
		return "strict"
	case DurabilityPipelined:
		return "pipelined"
	}
	return fmt.Sprintf("Durability(%d)", uint8(d))
}

// ParseDurability parses "strict" or "pipelined" ("" is strict).
func ParseDurability(s string) (Durability, error) {
	switch s {
	case "", "strict":
		return DurabilityStrict, nil
	case "pipelined":
		return DurabilityPipelined, nil
	}
	return 0, fmt.Errorf("fsm: unknown durability %q (want strict or pipelined)", s)
}

// MarshalText and UnmarshalText make Durability read and write its name
// in JSON and YAML.
func (d Durability) MarshalText() ([]byte, error) {
	if d > DurabilityPipelined {
		return nil, fmt.Errorf("fsm: unknown durability %d", uint8(d))
	}
	return []byte(d.String()), nil
}

func (d *Durability) UnmarshalText(b []byte) error {
	v, err := ParseDurability(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// RetryPolicy bounds the attempts of an action or a compensation. Delays
// grow from InitialBackoff by Multiplier up to MaxBackoff, each reduced by a
// random fraction up to Jitter. Its fields match compensation.Policy, so
// one converts to the other. Durations are stored as nanoseconds.
type RetryPolicy struct {
	InitialBackoff time.Duration `json:"initial_backoff,omitempty"`
	MaxBackoff     time.Duration `json:"max_backoff,omitempty"`
	Multiplier     float64       `json:"multiplier,omitempty"`
	Jitter         float64       `json:"jitter,omitempty"`
	// MaxAttempts is the number of attempts, the first included; 0 means
	// no bound on the count.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// MaxElapsed bounds the time from the first attempt; 0 means no bound.
	MaxElapsed time.Duration `json:"max_elapsed,omitempty"`
}

// StepDef is one step of a saga definition.
type StepDef struct {
	// Name is unique within the definition and durable: never derive it
	// from a function name.
	Name string `json:"name"`
	// Compensation names the registered handler that undoes the step;
	// empty means there is nothing to undo.
	Compensation string `json:"compensation,omitempty"`
	// Action names the registered action the engine calls in engine-driven
	// mode (Run). Empty for steps the caller performs and reports (Advance).
	Action string `json:"action,omitempty"`
	// Retry bounds the attempts of the action.
	Retry RetryPolicy `json:"retry,omitempty"`
	// CompensationRetry bounds the attempts of the compensation before the
	// saga becomes STUCK.
	CompensationRetry RetryPolicy `json:"compensation_retry,omitempty"`
	// Timeout bounds one attempt of the action or compensation; 0: none.
	Timeout time.Duration `json:"timeout,omitempty"`
	// OnUncertain is what recovery does when the step was running.
	OnUncertain UncertainPolicy `json:"on_uncertain,omitempty"`
	// After names the steps that must be done before this one starts. A
	// definition in which no step has After is a sequence, each step
	// after the one before; one in which any step has After is a DAG, and
	// a step without After starts with the saga. See dag.go.
	After []string `json:"after,omitempty"`
	// Child names a definition whose saga the step runs as a whole (a
	// nested saga): the step is done when the child saga completes and
	// fails when it fails, having compensated itself. Undoing the step
	// compensates the child as a whole (KindReverted). A child step has no
	// Action or Compensation of its own. See nested.go.
	Child string `json:"child,omitempty"`
}

// Undoable reports whether the step has something to undo once done: a
// compensation handler, or a child saga.
func (d *StepDef) Undoable() bool { return d.Compensation != "" || d.Child != "" }

// Definition is a durable, versioned saga type.
type Definition struct {
	Name string `json:"name"`
	// Version is assigned by the engine: 1 for the first definition of a
	// name, one more for every changed redefinition.
	Version int       `json:"version"`
	Steps   []StepDef `json:"steps"`
	// Timeout is the saga-level deadline, from the start; past it an
	// in-progress saga is compensated. 0 means none.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Durability is the default durability mode of the definition's
	// sagas (a start may override it).
	Durability Durability `json:"durability,omitempty"`
	// Retention is how long the definition's finished sagas are kept
	// after they finish (see the engine's Options.Retention): 0 means
	// the engine's default, KeepForever keeps them.
	Retention time.Duration `json:"retention,omitempty"`
}

// KeepForever as a retention keeps finished sagas forever.
const KeepForever time.Duration = -1

// Clone returns a copy that shares no memory with d (its steps and their
// After lists): what the store and the engine hand to callers, who may
// change it.
func (d *Definition) Clone() *Definition {
	c := *d
	c.Steps = slices.Clone(d.Steps)
	for i := range c.Steps {
		c.Steps[i].After = slices.Clone(c.Steps[i].After)
	}
	return &c
}

// ErrorInfo is an error as data: a Go error value does not survive a restart.
type ErrorInfo struct {
	Kind      string `json:"kind,omitempty"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable,omitempty"`
}

func (e *ErrorInfo) Error() string {
	if e.Kind != "" {
		return e.Kind + ": " + e.Message
	}
	return e.Message
}

// Step is the state of one step of a saga. Its definition is shared by
// every version of the saga's state and never changes after the start.
type Step struct {
	*StepDef
	Status StepStatus
	// Uncertain marks a step that was running when the saga was aborted:
	// its effect is unknown, so it is compensated with the done steps.
	Uncertain    bool
	Attempts     int
	Output       []byte
	Err          *ErrorInfo
	StartedAt    int64
	EndedAt      int64
	CompAttempts int
	// CompRoundBase is CompAttempts when the current retry round began (an
	// operator retry starts a new round with a fresh budget).
	CompRoundBase  int
	CompRoundStart int64
	CompErr        *ErrorInfo
	CompEndedAt    int64
	// Stuck marks a step of a DAG saga whose compensation exhausted its
	// budget (a sequence's stuck step is its Current).
	Stuck bool
}

// Saga is the applied state of one saga.
type Saga struct {
	ID         string
	Definition string
	Version    int
	State      SagaState
	// Driven is true for engine-driven sagas (Run), false for sagas whose
	// caller reports each step (Advance).
	Driven bool
	// Durability is the saga's durability mode, fixed at its start.
	Durability     Durability
	User           string
	IdempotencyKey string
	Input          []byte
	Meta           map[string]string
	Steps          []Step
	// Current is the step running forward (IN_PROGRESS) or being
	// compensated (COMPENSATING, STUCK); -1 in a terminal state.
	Current   int
	LastError *ErrorInfo
	Deadline  int64
	CreatedAt int64
	UpdatedAt int64
	// Seq counts the transitions applied to this saga; the history holds
	// Seq-HistoryDropped records.
	Seq uint64
	// Parent is the id of the saga whose step runs this one (a nested
	// saga), "" for a saga started by a caller; Depth is its nesting
	// depth (0 for a top-level saga).
	Parent string
	Depth  int
	// HistoryCap is the saga's history cap (StartInfo.HistoryCap; 0:
	// none). See history.go.
	HistoryCap int
	// HistoryRun is the seq of the oldest record still kept of the
	// current run of attempt records, 0 when the last record applied is
	// not an attempt record (see history.go).
	HistoryRun uint64
	// HistoryDropped is the summary of the attempt records the history
	// cap dropped: how many, and the seqs of the first and the last.
	HistoryDropped      uint64
	HistoryDroppedFirst uint64
	HistoryDroppedLast  uint64
	// Trace is the W3C trace context (traceparent, tracestate, baggage:
	// header names as keys) of the call that started the saga, recorded
	// so that spans made after a restart or a failover continue its
	// trace. Nil when the engine traced nothing at the start. Apply never
	// reads it.
	Trace map[string]string
}

// Clone returns a copy whose steps can be changed without touching s:
// what Apply needs, since it never mutates its input. Byte slices, maps and
// ErrorInfo values are shared: Apply only ever replaces them. Code that
// hands a saga to callers uses DeepCopy.
func (s *Saga) Clone() *Saga {
	c := *s
	c.Steps = append([]Step(nil), s.Steps...)
	return &c
}

// DeepCopy returns a copy that shares no memory with s.
func (s *Saga) DeepCopy() *Saga {
	c := s.Clone()
	c.Input = bytes.Clone(s.Input)
	c.Meta = maps.Clone(s.Meta)
	c.Trace = maps.Clone(s.Trace)
	c.LastError = cloneErr(s.LastError)
	for i := range c.Steps {
		st := &c.Steps[i]
		if st.StepDef != nil {
			d := *st.StepDef
			d.After = slices.Clone(d.After)
			st.StepDef = &d
		}
		st.Output = bytes.Clone(st.Output)
		st.Err = cloneErr(st.Err)
		st.CompErr = cloneErr(st.CompErr)
	}
	return c
}

func cloneErr(e *ErrorInfo) *ErrorInfo {
	if e == nil {
		return nil
	}
	c := *e
	return &c
}

// Errors returned by Apply and the store. Match them with errors.Is.
var (
	// ErrIllegalTransition: the record is not allowed in the saga's current
	// state (wrapped in a *TransitionError).
	ErrIllegalTransition = errors.New("fsm: illegal transition")
	// ErrUnknownSaga: the record names a saga that does not exist.
	ErrUnknownSaga = errors.New("fsm: unknown saga")
	// ErrSagaExists: a start record names an existing saga id.
	ErrSagaExists = errors.New("fsm: saga already exists")
	// ErrDuplicateKey: a start record carries an idempotency key already
	// used by another saga (wrapped in a *DuplicateKeyError).
	ErrDuplicateKey = errors.New("fsm: idempotency key already used")
	// ErrInvalidRecord: the record is malformed (missing fields, bad
	// definition, unknown kind).
	ErrInvalidRecord = errors.New("fsm: invalid record")
	// ErrUnsupportedVersion: the record was written by a newer format.
	ErrUnsupportedVersion = errors.New("fsm: unsupported record version")
	// ErrUnknownDefinition: no such definition (or version).
	ErrUnknownDefinition = errors.New("fsm: unknown definition")
	// ErrTooManySteps: a new definition has more than MaxSteps steps
	// (wrapped in a *DefinitionError, with its other problems).
	ErrTooManySteps = errors.New("fsm: too many steps")
	// ErrInvalidOptions: OpenStore was given a negative size.
	ErrInvalidOptions = errors.New("fsm: invalid store options")
)

// TransitionError explains why a record was refused.
type TransitionError struct {
	Saga  string
	Kind  Kind
	State SagaState
	// Step is the index of the step the record names (maybe one the saga
	// does not have); -1 when it names none: an abort or a retry is about
	// the whole saga, and Advance names -1 for a step name the saga does
	// not have.
	Step int
	// StepName is the name of that step ("" when none): a DAG saga's
	// steps are told apart by name, and an index alone says little.
	StepName string
	Reason   string
}

func (e *TransitionError) Error() string {
	step := ""
	switch {
	case e.StepName != "" && e.Step >= 0:
		step = fmt.Sprintf(", step %d %q", e.Step, e.StepName)
	case e.StepName != "":
		step = fmt.Sprintf(", step %q", e.StepName)
	case e.Step >= 0:
		step = fmt.Sprintf(", step %d", e.Step)
	}
	return fmt.Sprintf("fsm: illegal transition %s on saga %s (state %s%s): %s",
		e.Kind, e.Saga, e.State, step, e.Reason)
}

// Unwrap makes errors.Is(err, ErrIllegalTransition) true.
func (e *TransitionError) Unwrap() error { return ErrIllegalTransition }

// DuplicateKeyError carries the id of the saga that owns the key.
type DuplicateKeyError struct {
	Key      string
	Existing string
}

func (e *DuplicateKeyError) Error() string {
	return fmt.Sprintf("fsm: idempotency key %q already used by saga %s", e.Key, e.Existing)
}

// Unwrap makes errors.Is(err, ErrDuplicateKey) true.
func (e *DuplicateKeyError) Unwrap() error { return ErrDuplicateKey }
