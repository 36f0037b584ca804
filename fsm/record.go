package fsm

import (
	"fmt"
	"math"
)

// RecordVersion is the version written into every record. Decoders accept
// every version up to it; fields are only ever added, with new tags.
const RecordVersion = 1

// Kind is the kind of a transition record.
type Kind uint8

// Record kinds. The numbers are durable: never renumber.
const (
	KindDefine        Kind = 1  // a saga definition (store-level, no saga)
	KindSagaStarted   Kind = 2  // saga created; its first step is running
	KindStepStarted   Kind = 3  // another attempt of the running step
	KindStepCompleted Kind = 4  // the running step is done; the next one runs (or the saga completes)
	KindStepFailed    Kind = 5  // the running step failed; compensation begins
	KindCompStarted   Kind = 6  // a compensation attempt is about to run
	KindCompCompleted Kind = 7  // the compensation succeeded; the next one is due (or the saga failed)
	KindCompFailed    Kind = 8  // a compensation attempt failed; Final means STUCK
	KindAborted       Kind = 9  // abort (operator, deadline, uncertain step): compensate what was done
	KindRetried       Kind = 10 // operator: retry a STUCK saga's compensation now, with a fresh budget
	KindResolved      Kind = 11 // operator: the STUCK compensation was done by hand
	KindReverted      Kind = 12 // a COMPLETED child saga is compensated as a whole: its parent undoes the step that ran it
	KindRemoved       Kind = 13 // retention: finished sagas and expired idempotency keys are removed (store-level, no saga)
)

var kindNames = map[Kind]string{
	KindDefine: "define", KindSagaStarted: "saga_started", KindStepStarted: "step_started",
	KindStepCompleted: "step_completed", KindStepFailed: "step_failed",
	KindCompStarted: "compensation_started", KindCompCompleted: "compensation_completed",
	KindCompFailed: "compensation_failed", KindAborted: "aborted", KindRetried: "retried",
	KindResolved: "resolved",
	KindReverted: "reverted", KindRemoved: "removed",
}

func (k Kind) String() string {
	if n, ok := kindNames[k]; ok {
		return n
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// StartInfo is the payload of KindSagaStarted: a snapshot of everything the
// saga needs, so that later redefinitions never change a running saga.
type StartInfo struct {
	Definition     string
	Version        int
	Steps          []StepDef
	Driven         bool
	User           string
	IdempotencyKey string
	Input          []byte
	Meta           map[string]string
	Deadline       int64
	Durability     Durability
	// Parent and Depth: see Saga.Parent.
	Parent string
	Depth  int
	// HistoryCap bounds the saga's history: past it, the oldest attempt
	// records of a retry loop are dropped and summarised (see
	// history.go). 0 is no cap.
	HistoryCap int
	// Trace is the W3C trace context of the call that started the saga
	// (see Saga.Trace); nil when the engine traces nothing.
	Trace map[string]string
}

// Record is one transition. Which fields matter depends on Kind.
type Record struct {
	V    uint8
	Kind Kind
	Saga string
	// At is the proposer's wall clock, unix ns: the only time Apply sees.
	At      int64
	Step    int
	Attempt int
	Output  []byte
	Err     *ErrorInfo
	// Final marks the last allowed attempt of a compensation.
	Final  bool
	Actor  string
	Reason string
	Start  *StartInfo
	Def    *Definition
	// Remove is the payload of KindRemoved.
	Remove *Removal
}

// Removal is the payload of KindRemoved, chosen by the proposer (the
// engine's retention loop; see retention.go) and applied as it says, so
// every replica removes the same sagas at the same log index.
type Removal struct {
	// Sagas are top-level finished sagas to remove, each with its
	// history, its index keys and its child sagas. An id that is not a
	// finished top-level saga (unknown, already removed, running, STUCK,
	// a child), or whose child sagas are not all finished (a parent
	// resolved by hand while its child is STUCK), is skipped: Apply never
	// removes anything else.
	Sagas []string
	// KeepKeys: the idempotency keys of the removed sagas outlive them
	// (the dedupe window is longer than the retention): each is kept,
	// still naming its saga, until a later removal lists it in Keys.
	KeepKeys bool
	// Keys are idempotency keys of sagas removed earlier to forget now
	// (their dedupe window has passed). A key that is not one kept this
	// way is skipped.
	Keys []string
}

// MaxRemoval bounds the sagas plus keys of one KindRemoved record.
const MaxRemoval = 4096

// Encode returns the msgpack encoding of r, stamping the current version.
func Encode(r *Record) ([]byte, error) {
	r.V = RecordVersion
	return marshal(r, encodedSizeHint(r)), nil
}

// encodedSizeHint is about the encoded size of r, at least: enough that
// encoding a start (whose steps carry names and retry policies, about 100
// bytes each) allocates once rather than growing its buffer by doubling.
func encodedSizeHint(r *Record) int {
	n := 64 + len(r.Saga) + len(r.Output) + len(r.Actor) + len(r.Reason)
	if r.Err != nil {
		n += 16 + len(r.Err.Kind) + len(r.Err.Message)
	}
	if si := r.Start; si != nil {
		n += 64 + len(si.Definition) + len(si.User) + len(si.IdempotencyKey) + len(si.Input) + 128*len(si.Steps)
		for k, v := range si.Meta {
			n += 8 + len(k) + len(v)
		}
		for k, v := range si.Trace {
			n += 8 + len(k) + len(v)
		}
	}
	if r.Def != nil {
		n += 64 + 128*len(r.Def.Steps)
	}
	if rm := r.Remove; rm != nil {
		n += 16 + 26*len(rm.Sagas) + 40*len(rm.Keys)
	}
	return n
}

// Decode parses and structurally validates a record. It never panics.
func Decode(b []byte) (*Record, error) {
	var r Record
	if err := DecodeInto(b, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// DecodeInto is Decode into r, which it overwrites entirely (for a caller
// that reuses Record values). The result shares no memory with b. On
// error r holds no meaningful record.
func DecodeInto(b []byte, r *Record) error {
	*r = Record{}
	if err := unmarshal(b, r); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidRecord, err)
	}
	return r.checkDecoded()
}

// checkDecoded checks a decoded record's version and validity.
func (r *Record) checkDecoded() error {
	if r.V == 0 || r.V > RecordVersion {
		return fmt.Errorf("%w: version %d (this build reads up to %d)", ErrUnsupportedVersion, r.V, RecordVersion)
	}
	return r.Validate()
}

// ValidID reports whether s may be a saga id or a definition name:
// 1 to 128 characters among letters, digits and . _ : @ -, but not "."
// or "..".
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > 128 || s == "." || s == ".." {
		return false // "." and ".." would read as paths in URLs
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.' || c == '_' || c == ':' || c == '@' || c == '-':
		default:
			return false
		}
	}
	return true
}

// Validate checks the structure of a record (not its legality, which
// depends on the state: see Apply).
func (r *Record) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s record: %s", ErrInvalidRecord, r.Kind, fmt.Sprintf(format, a...))
	}
	if _, ok := kindNames[r.Kind]; !ok {
		return fmt.Errorf("%w: unknown kind %d", ErrInvalidRecord, r.Kind)
	}
	if r.Kind == KindDefine {
		if r.Def == nil {
			return bad("no definition")
		}
		return r.Def.Validate()
	}
	if r.Kind == KindRemoved {
		if r.Remove == nil {
			return bad("no removal")
		}
		if n := len(r.Remove.Sagas) + len(r.Remove.Keys); n > MaxRemoval {
			return bad("%d sagas and keys, more than %d", n, MaxRemoval)
		}
		for _, id := range r.Remove.Sagas {
			if !ValidID(id) {
				return bad("invalid saga id %q", id)
			}
		}
		for _, k := range r.Remove.Keys {
			if k == "" {
				return bad("empty idempotency key")
			}
		}
		return nil
	}
	if !ValidID(r.Saga) {
		return bad("invalid saga id %q", r.Saga)
	}
	if r.Step < 0 {
		return bad("negative step %d", r.Step)
	}
	if r.Kind == KindSagaStarted {
		if r.Start == nil {
			return bad("no start info")
		}
		if r.Start.HistoryCap < 0 {
			return bad("negative history cap %d", r.Start.HistoryCap)
		}
		if si := r.Start; (si.Parent == "") != (si.Depth == 0) || si.Depth < 0 || si.Depth > MaxDepth ||
			(si.Parent != "" && !ValidID(si.Parent)) {
			return bad("parent %q at depth %d (a child saga names its parent, at depth 1 to %d)", si.Parent, si.Depth, MaxDepth)
		}
		d := Definition{Name: r.Start.Definition, Version: r.Start.Version, Steps: r.Start.Steps, Durability: r.Start.Durability}
		if err := d.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// MaxSteps bounds the steps of a new definition (ValidateNew): a pass of
// the scheduler over a DAG saga looks at every step and its dependencies,
// so a definition of 100k steps would make each completion cost the
// square of that.
const MaxSteps = 256

// ValidateNew is Validate for a definition about to be written (Define):
// it also holds the definition to the bounds of a new one (MaxSteps). A
// record already in a log is held only to Validate, so that a log written
// before a bound existed still replays to the same state.
func (d *Definition) ValidateNew() error {
	var probs []string
	if len(d.Steps) > MaxSteps {
		probs = append(probs, fmt.Sprintf("%d steps, over the limit of %d", len(d.Steps), MaxSteps))
	}
	probs = append(probs, d.problems()...)
	// NaN passes every comparison of problems; an infinite multiplier
	// makes the second delay the longest at once. A new bound, so here.
	for _, s := range d.Steps {
		for _, rp := range [...]struct {
			what string
			p    RetryPolicy
		}{{"retry", s.Retry}, {"compensation retry", s.CompensationRetry}} {
			if !finite(rp.p.Multiplier) || !finite(rp.p.Jitter) {
				probs = append(probs, fmt.Sprintf("step %q: %s policy has a multiplier or jitter that is not a finite number", s.Name, rp.what))
			}
		}
	}
	if len(probs) == 0 {
		return nil
	}
	return &DefinitionError{Name: d.Name, Problems: probs, TooManySteps: len(d.Steps) > MaxSteps}
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// Validate reports every problem of a definition at once.
func (d *Definition) Validate() error {
	if probs := d.problems(); len(probs) > 0 {
		return &DefinitionError{Name: d.Name, Problems: probs}
	}
	return nil
}

func (d *Definition) problems() []string {
	var probs []string
	if !ValidID(d.Name) {
		probs = append(probs, fmt.Sprintf("invalid name %q (1-128 of letters, digits, . _ : @ -)", d.Name))
	}
	if d.Version < 0 {
		probs = append(probs, fmt.Sprintf("negative version %d", d.Version))
	}
	if d.Durability > DurabilityPipelined {
		probs = append(probs, fmt.Sprintf("unknown durability %d (want strict or pipelined)", uint8(d.Durability)))
	}
	if len(d.Steps) == 0 {
		probs = append(probs, "no steps")
	}
	if d.Timeout < 0 {
		probs = append(probs, "negative timeout")
	}
	if d.Retention < 0 && d.Retention != KeepForever {
		probs = append(probs, fmt.Sprintf("negative retention %s (want 0 for the engine's default, a duration, or KeepForever)", d.Retention))
	}
	// Names seen: by a scan of the steps before for a few steps (every
	// start record is validated on replay, and the map was most of the
	// cost), by a map for many.
	var seen map[string]bool
	if len(d.Steps) > 16 {
		seen = make(map[string]bool, len(d.Steps))
	}
	for i, s := range d.Steps {
		switch {
		case !ValidID(s.Name):
			probs = append(probs, fmt.Sprintf("step %d: invalid name %q", i, s.Name))
		case usedBefore(d.Steps, i, seen):
			probs = append(probs, fmt.Sprintf("step %d: name %q used twice", i, s.Name))
		}
		if seen != nil {
			seen[s.Name] = true
		}
		if s.Timeout < 0 {
			probs = append(probs, fmt.Sprintf("step %q: negative timeout", s.Name))
		}
		if s.OnUncertain > UncertainRetry {
			probs = append(probs, fmt.Sprintf("step %q: unknown uncertain policy %d", s.Name, s.OnUncertain))
		}
		if s.Child != "" {
			switch {
			case !ValidID(s.Child):
				probs = append(probs, fmt.Sprintf("step %q: invalid child definition name %q", s.Name, s.Child))
			case s.Child == d.Name:
				probs = append(probs, fmt.Sprintf("step %q: a definition cannot run itself as a child", s.Name))
			}
			if s.Action != "" || s.Compensation != "" {
				probs = append(probs, fmt.Sprintf("step %q: a child step has no action or compensation of its own (its child saga is both)", s.Name))
			}
		}
		for _, rp := range [...]struct {
			what string
			p    RetryPolicy
		}{{"retry", s.Retry}, {"compensation retry", s.CompensationRetry}} {
			what, p := rp.what, rp.p
			if p.InitialBackoff < 0 || p.MaxBackoff < 0 || p.MaxAttempts < 0 || p.MaxElapsed < 0 ||
				p.Multiplier < 0 || p.Jitter < 0 || p.Jitter > 1 {
				probs = append(probs, fmt.Sprintf("step %q: %s policy has a negative value or a jitter outside [0,1]", s.Name, what))
			}
		}
	}
	if Parallel(d.Steps) {
		probs = append(probs, dagProblems(d.Steps)...)
		if d.Durability == DurabilityPipelined {
			probs = append(probs, "pipelined durability is for sequences: a definition with dependencies (after) is strict")
		}
	}
	return probs
}

// usedBefore reports whether steps[i]'s name is the name of an earlier
// step: seen holds those names, or is nil to scan them.
func usedBefore(steps []StepDef, i int, seen map[string]bool) bool {
	if seen != nil {
		return seen[steps[i].Name]
	}
	for j := range i {
		if steps[j].Name == steps[i].Name {
			return true
		}
	}
	return false
}

// DefinitionError lists every problem of a definition.
type DefinitionError struct {
	Name     string
	Problems []string
	// TooManySteps: one of the problems is more steps than MaxSteps
	// (errors.Is(err, ErrTooManySteps) is then true too).
	TooManySteps bool
}

func (e *DefinitionError) Error() string {
	s := fmt.Sprintf("fsm: invalid definition %q:", e.Name)
	for _, p := range e.Problems {
		s += "\n  - " + p
	}
	return s
}

// Unwrap makes errors.Is(err, ErrInvalidRecord) true, and
// errors.Is(err, ErrTooManySteps) when that is one of the problems.
func (e *DefinitionError) Unwrap() []error {
	if e.TooManySteps {
		return []error{ErrInvalidRecord, ErrTooManySteps}
	}
	return []error{ErrInvalidRecord}
}
