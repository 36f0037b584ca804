// Package policy makes saga guarantees optional by policy: per operation,
// switched at run time, costing nothing when off.
//
// A policy says whether sagas are enabled at all (enable_saga), which
// operations run as sagas (saga_operations), each operation's milestones
// and their compensation handlers (compensation_handlers), per-operation
// retry settings, what to do when the engine is unavailable, and overrides
// per user or tenant. Four sources are layered, later ones winning:
//
//	built-in default (disabled) < policy file (YAML) < environment < Go API
//
// The active policy is an immutable snapshot swapped atomically: a call
// reads it once and runs wholly with or wholly without a saga, and a saga
// already running keeps the policy it started with (recorded in its start
// transition). An invalid new policy is rejected whole; the last good one
// stays in force.
package policy

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
)

// Errors of this package. Match them with errors.Is.
var (
	// ErrInvalidPolicy: a policy failed validation (wrapped in a
	// *ValidationError listing every problem). Nothing was applied.
	ErrInvalidPolicy = errors.New("policy: invalid policy")
	// ErrEngineUnavailable: the operation must run as a saga, its policy
	// says on_engine_unavailable: fail, and the engine could not start it.
	ErrEngineUnavailable = errors.New("policy: saga engine unavailable")
	// ErrMilestoneOrder: the workflow ran a milestone that is not the
	// next one of the operation's policy.
	ErrMilestoneOrder = errors.New("policy: milestone out of order")
	// ErrIncomplete: the workflow returned without running every milestone.
	ErrIncomplete = errors.New("policy: workflow returned before its last milestone")
	// ErrDuplicateCall: a call with UserContext.IdempotencyKey already used
	// by an earlier call whose saga did not complete (it failed, or still
	// runs). The workflow did not run again; Result names the saga.
	ErrDuplicateCall = errors.New("policy: a call with this idempotency key already ran")
)

// Fallback says what to do when the operation should run as a saga but
// the engine cannot start one.
type Fallback string

// Fallbacks.
const (
	// RunWithoutSaga runs the workflow without saga guarantees, logs a
	// warning and counts the event (the seed plan's behaviour). The default.
	RunWithoutSaga Fallback = "run_without_saga"
	// Fail returns ErrEngineUnavailable without running the workflow.
	Fail Fallback = "fail"
)

// Milestone is one step of an operation and the handler that undoes it.
type Milestone struct {
	Name         string `json:"name"`
	Compensation string `json:"compensation,omitempty"`
	// After names the milestones this one depends on. An operation none
	// of whose milestones names any is a sequence, in the order listed;
	// one where some milestone does is a DAG: a milestone without After
	// may then run at once, and each other one once every milestone it
	// names is done (Group.Go). Validated with the policy: unknown names,
	// cycles.
	After []string `json:"after,omitempty"`
}

// cloneMilestones copies ms, After lists included.
func cloneMilestones(ms []Milestone) []Milestone {
	if ms == nil {
		return nil
	}
	out := make([]Milestone, len(ms))
	for i, m := range ms {
		out[i] = m
		if m.After != nil {
			out[i].After = append([]string{}, m.After...)
		}
	}
	return out
}

// Retry is an operation's compensation retry settings.
type Retry struct {
	MaxAttempts    int           `json:"max_attempts,omitempty"`
	InitialBackoff time.Duration `json:"initial_backoff,omitempty"`
	MaxBackoff     time.Duration `json:"max_backoff,omitempty"`
	MaxElapsed     time.Duration `json:"max_elapsed,omitempty"`
}

// Operation is the saga shape of one operation. A later source that sets
// only some fields keeps the others from the sources below.
type Operation struct {
	Milestones []Milestone `json:"milestones"`
	// Retry bounds each compensation's retries; unset fields take the
	// engine's defaults (100ms → 30s backoff, for at most 10 minutes).
	Retry               *Retry   `json:"retry,omitempty"`
	OnEngineUnavailable Fallback `json:"on_engine_unavailable,omitempty"`
	// Timeout is the saga's deadline from its start: past it an operation
	// still in progress (its caller crashed or hung) is aborted and
	// compensated. Default DefaultTimeout.
	Timeout time.Duration `json:"timeout,omitempty"`
	// shape is the milestones as a graph: set on the snapshot's own
	// copies, shared by their clones (immutable).
	shape *shape

	// Durability is the operation's durability mode (the seed plan's "WAL
	// policy"): "strict" (the default) or "pipelined", where a milestone's
	// record is made durable while the next milestone runs (see
	// engine.DurabilityPipelined). Empty keeps the sources' below.
	Durability string `json:"durability,omitempty"`
}

// DefaultTimeout is the saga deadline of an operation whose policy sets none.
const DefaultTimeout = time.Hour

func (o *Operation) clone() *Operation {
	if o == nil {
		return nil
	}
	c := *o
	c.Milestones = cloneMilestones(o.Milestones)
	if o.Retry != nil {
		r := *o.Retry
		c.Retry = &r
	}
	return &c
}

func (o Override) clone() Override {
	if o.EnableSaga != nil {
		o.EnableSaga = Bool(*o.EnableSaga)
	}
	if o.SagaOperations != nil {
		o.SagaOperations = append([]string{}, o.SagaOperations...)
	}
	return o
}

// clone returns a copy of p that shares no memory with it.
func (p *Policy) clone() *Policy {
	if p == nil {
		return nil
	}
	c := *p
	if p.EnableSaga != nil {
		c.EnableSaga = Bool(*p.EnableSaga)
	}
	if p.SagaOperations != nil {
		c.SagaOperations = append([]string{}, p.SagaOperations...)
	}
	c.Operations = nil
	for name, op := range p.Operations {
		if c.Operations == nil {
			c.Operations = map[string]*Operation{}
		}
		c.Operations[name] = op.clone()
	}
	c.Users, c.Tenants = cloneOverrides(p.Users), cloneOverrides(p.Tenants)
	return &c
}

func cloneOverrides(m map[string]Override) map[string]Override {
	if m == nil {
		return nil
	}
	out := make(map[string]Override, len(m))
	for k, v := range m {
		out[k] = v.clone()
	}
	return out
}

// Override changes enable_saga and/or saga_operations for one user or
// tenant. Nil fields leave the policy's value.
type Override struct {
	EnableSaga     *bool    `json:"enable_saga,omitempty"`
	SagaOperations []string `json:"saga_operations,omitempty"`
}

// Policy is one source's view. Unset fields (nil) leave the value of the
// sources below it.
type Policy struct {
	EnableSaga          *bool                 `json:"enable_saga,omitempty"`
	SagaOperations      []string              `json:"saga_operations,omitempty"`
	OnEngineUnavailable Fallback              `json:"on_engine_unavailable,omitempty"`
	Operations          map[string]*Operation `json:"operations,omitempty"`
	Users               map[string]Override   `json:"users,omitempty"`
	Tenants             map[string]Override   `json:"tenants,omitempty"`

	// lines maps "operation", "operation/milestone" and "users/name" to
	// the line that defined them in a file, for error messages.
	lines map[string]int
	file  string
}

// Bool returns a pointer to b, for Policy.EnableSaga and Override.EnableSaga.
func Bool(b bool) *bool { return &b }

// ValidationError lists every problem of a policy.
type ValidationError struct {
	Source   string
	Problems []string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("policy: invalid policy from %s:\n  - %s", e.Source, strings.Join(e.Problems, "\n  - "))
}

// Unwrap makes errors.Is(err, ErrInvalidPolicy) true.
func (e *ValidationError) Unwrap() error { return ErrInvalidPolicy }

// Validate reports every problem of p at once. reg, if not nil, is
// checked for every compensation handler named.
func (p *Policy) Validate(source string, reg *compensation.Registry) error {
	var probs []string
	at := func(key string) string {
		if l, ok := p.lines[key]; ok && p.file != "" {
			return fmt.Sprintf("%s:%d: ", p.file, l)
		}
		return ""
	}
	checkFallback := func(where string, f Fallback) {
		if f != "" && f != RunWithoutSaga && f != Fail {
			probs = append(probs, fmt.Sprintf("%son_engine_unavailable %q (want %s or %s)", where, f, RunWithoutSaga, Fail))
		}
	}
	checkFallback(at("on_engine_unavailable"), p.OnEngineUnavailable)
	for _, name := range sortedKeys(p.Operations) {
		op := p.Operations[name]
		if !validName(name) {
			probs = append(probs, fmt.Sprintf("%sinvalid operation name %q", at(name), name))
		}
		if op == nil {
			continue
		}
		seen := map[string]bool{}
		for _, m := range op.Milestones {
			where := at(name + "/" + m.Name)
			switch {
			case !validName(m.Name):
				probs = append(probs, fmt.Sprintf("%soperation %q: invalid milestone name %q", where, name, m.Name))
			case seen[m.Name]:
				probs = append(probs, fmt.Sprintf("%soperation %q: milestone %q listed twice", where, name, m.Name))
			}
			seen[m.Name] = true
			if m.Compensation != "" && reg != nil {
				if _, ok := reg.Handler(m.Compensation); !ok {
					probs = append(probs, fmt.Sprintf("%soperation %q milestone %q: unknown compensation handler %q",
						where, name, m.Name, m.Compensation))
				}
			}
		}
		if steps := dependencies(op.Milestones); fsm.Parallel(steps) {
			for _, prob := range fsm.DependencyProblems(steps) {
				probs = append(probs, fmt.Sprintf("%soperation %q: %s", at(name), name, prob))
			}
			if d, _ := engine.ParseDurability(op.Durability); d == engine.DurabilityPipelined {
				probs = append(probs, fmt.Sprintf("%soperation %q: durability pipelined is for sequences: milestones with after run strict",
					at(name), name))
			}
		}
		if r := op.Retry; r != nil && (r.MaxAttempts < 0 || r.InitialBackoff < 0 || r.MaxBackoff < 0 || r.MaxElapsed < 0) {
			probs = append(probs, fmt.Sprintf("%soperation %q: negative retry setting", at(name), name))
		}
		if op.Timeout < 0 {
			probs = append(probs, fmt.Sprintf("%soperation %q: negative timeout", at(name), name))
		}
		if _, err := engine.ParseDurability(op.Durability); err != nil {
			probs = append(probs, fmt.Sprintf("%soperation %q: durability %q: want strict or pipelined", at(name), name, op.Durability))
		}
		checkFallback(at(name)+"operation "+name+": ", op.OnEngineUnavailable)
	}
	for _, op := range p.SagaOperations {
		if !validName(op) {
			probs = append(probs, fmt.Sprintf("%sinvalid operation name %q in saga_operations", at("saga_operations"), op))
		}
	}
	for _, kind := range []struct {
		what string
		m    map[string]Override
	}{{"users", p.Users}, {"tenants", p.Tenants}} {
		for _, who := range sortedKeys(kind.m) {
			if who == "" {
				probs = append(probs, fmt.Sprintf("%s: empty name", kind.what))
			}
		}
	}
	if len(probs) == 0 {
		return nil
	}
	return &ValidationError{Source: source, Problems: probs}
}

// dependencies returns the milestones as steps that carry only their
// names and dependencies, for the state machine's DAG rules.
func dependencies(ms []Milestone) []fsm.StepDef {
	steps := make([]fsm.StepDef, len(ms))
	for i, m := range ms {
		steps[i] = fsm.StepDef{Name: m.Name, After: m.After}
	}
	return steps
}

func validName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, c := range s {
		ok := c == '_' || c == '-' || c == '.' || c == ':' || c == '@' ||
			(c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		if !ok {
			return false
		}
	}
	return true
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Source names, as Explain reports them.
const (
	SourceDefault = "default"
	SourceFile    = "file"
	SourceEnv     = "environment"
	SourceAPI     = "api"
)

// layer is one source's policy with its name.
type layer struct {
	source string // SourceDefault, SourceFile…
	detail string // the file path, the variable names
	p      *Policy
}

// Snapshot is the effective policy: immutable, swapped atomically.
type Snapshot struct {
	// Version grows by one at every change that took effect.
	Version uint64

	enabled        bool
	enabledFrom    string
	operations     map[string]bool
	operationsFrom string
	fallback       Fallback
	ops            map[string]*Operation
	anyParallel    bool // some operation's milestones are a DAG
	opsFrom        map[string]string
	users          map[string]Override
	tenants        map[string]Override
}

// merge resolves the layers, lowest first.
func merge(version uint64, layers []layer) *Snapshot {
	s := &Snapshot{Version: version, operations: map[string]bool{}, fallback: RunWithoutSaga,
		ops: map[string]*Operation{}, opsFrom: map[string]string{},
		users: map[string]Override{}, tenants: map[string]Override{},
		enabledFrom: SourceDefault, operationsFrom: SourceDefault}
	for _, l := range layers {
		p := l.p
		if p == nil {
			continue
		}
		name := l.source
		if l.detail != "" {
			name += " (" + l.detail + ")"
		}
		if p.EnableSaga != nil {
			s.enabled, s.enabledFrom = *p.EnableSaga, name
		}
		if p.SagaOperations != nil {
			s.operations = map[string]bool{}
			for _, op := range p.SagaOperations {
				s.operations[op] = true
			}
			s.operationsFrom = name
		}
		if p.OnEngineUnavailable != "" {
			s.fallback = p.OnEngineUnavailable
		}
		for op, def := range p.Operations {
			if def == nil {
				continue
			}
			merged := s.ops[op].clone()
			if merged == nil {
				merged = &Operation{}
			}
			if def.Milestones != nil {
				merged.Milestones = cloneMilestones(def.Milestones)
				s.opsFrom[op] = name
			}
			if def.Retry != nil {
				r := *def.Retry
				merged.Retry = &r
			}
			if def.OnEngineUnavailable != "" {
				merged.OnEngineUnavailable = def.OnEngineUnavailable
			}
			if def.Timeout != 0 {
				merged.Timeout = def.Timeout
			}
			if def.Durability != "" {
				merged.Durability = def.Durability
			}
			s.ops[op] = merged
		}
		mergeOverrides(s.users, p.Users)
		mergeOverrides(s.tenants, p.Tenants)
	}
	for _, op := range s.ops {
		op.shape = newShape(op.Milestones)
		s.anyParallel = s.anyParallel || op.shape.parallel
	}
	return s
}

// shape is an operation's milestones as a graph.
type shape struct {
	index map[string]int
	// deps lists the indexes of each milestone's dependencies: After in
	// a DAG, the one before in a sequence.
	deps     [][]int
	parallel bool // a DAG: some milestone names After
}

func newShape(ms []Milestone) *shape {
	sh := &shape{index: make(map[string]int, len(ms)), deps: make([][]int, len(ms)), parallel: fsm.Parallel(dependencies(ms))}
	for i, m := range ms {
		if _, dup := sh.index[m.Name]; !dup {
			sh.index[m.Name] = i
		}
	}
	for i, m := range ms {
		switch {
		case !sh.parallel && i > 0:
			sh.deps[i] = []int{i - 1}
		case sh.parallel:
			for _, a := range m.After {
				if d, ok := sh.index[a]; ok { // validated: always
					sh.deps[i] = append(sh.deps[i], d)
				}
			}
		}
	}
	return sh
}

// offShape is the shape the no-saga handle of a call keeps: that of a
// DAG operation, whose groups then wait for dependencies as with a
// saga. Nil for every other operation (a sequence's group does not
// wait), and found without a lookup while no operation is a DAG: the
// off path stays a few nanoseconds.
func (s *Snapshot) offShape(operation string) *shape {
	if !s.anyParallel {
		return nil
	}
	if op := s.ops[operation]; op != nil && op.shape.parallel {
		return op.shape
	}
	return nil
}

// mergeOverrides lays src over dst field by field.
func mergeOverrides(dst, src map[string]Override) {
	for who, o := range src {
		cur := dst[who]
		if o.EnableSaga != nil {
			cur.EnableSaga = Bool(*o.EnableSaga)
		}
		if o.SagaOperations != nil {
			cur.SagaOperations = append([]string{}, o.SagaOperations...)
		}
		dst[who] = cur
	}
}

// UserContext identifies who runs an operation, for per-user and
// per-tenant overrides (a user override wins over a tenant override).
type UserContext struct {
	UserID   string
	TenantID string
	// IdempotencyKey, if set, makes the call run at most one saga: a call
	// re-sent with the same key (after a crash, say) does not run the
	// workflow again. It returns the first call's saga: success with
	// Result.Duplicate when that saga completed, ErrDuplicateCall
	// otherwise. Ignored when the policy runs the call without a saga.
	IdempotencyKey string
}

// Decision is what the policy says about one call.
type Decision struct {
	// Saga is true when the operation runs as a saga.
	Saga      bool   `json:"saga"`
	Operation string `json:"operation"`
	// Milestones and their handlers; nil when the operation has none.
	Spec     *Operation `json:"spec,omitempty"`
	Fallback Fallback   `json:"fallback"`
	Version  uint64     `json:"version"`
	// Reasons explain the decision, one line per rule that applied.
	Reasons []string `json:"reasons"`
}

// Decide applies the snapshot to one call. It does not allocate when the
// answer is "no saga" because sagas are disabled and no override applies.
func (s *Snapshot) Decide(operation string, uc UserContext) (saga bool) {
	enabled, listed := s.enabled, s.operations
	if len(s.users) != 0 || len(s.tenants) != 0 {
		if o, ok := s.tenants[uc.TenantID]; ok && uc.TenantID != "" {
			enabled, listed = applyOverride(enabled, listed, o)
		}
		if o, ok := s.users[uc.UserID]; ok && uc.UserID != "" {
			enabled, listed = applyOverride(enabled, listed, o)
		}
	}
	if !enabled || !listed[operation] {
		return false
	}
	op := s.ops[operation]
	return op != nil && len(op.Milestones) > 0
}

func applyOverride(enabled bool, listed map[string]bool, o Override) (bool, map[string]bool) {
	if o.EnableSaga != nil {
		enabled = *o.EnableSaga
	}
	if o.SagaOperations != nil {
		listed = map[string]bool{}
		for _, op := range o.SagaOperations {
			listed[op] = true
		}
	}
	return enabled, listed
}

// Explain returns the decision for one call with the reasons behind it:
// which source decided each part.
func (s *Snapshot) Explain(operation string, uc UserContext) Decision {
	d := Decision{Operation: operation, Version: s.Version, Fallback: s.fallback}
	d.Saga = s.Decide(operation, uc)
	d.Reasons = append(d.Reasons, fmt.Sprintf("enable_saga=%v, set by %s", s.enabled, s.enabledFrom))
	d.Reasons = append(d.Reasons, fmt.Sprintf("saga_operations (%s) %s %s", s.operationsFrom,
		map[bool]string{true: "lists", false: "does not list"}[s.operations[operation]], operation))
	if o, ok := s.tenants[uc.TenantID]; ok && uc.TenantID != "" {
		d.Reasons = append(d.Reasons, "tenant override for "+uc.TenantID+": "+describeOverride(o))
	}
	if o, ok := s.users[uc.UserID]; ok && uc.UserID != "" {
		d.Reasons = append(d.Reasons, "user override for "+uc.UserID+": "+describeOverride(o))
	}
	if op := s.ops[operation]; op != nil && len(op.Milestones) > 0 {
		d.Spec = op.clone()
		if op.OnEngineUnavailable != "" {
			d.Fallback = op.OnEngineUnavailable
		}
		names := make([]string, len(op.Milestones))
		sep := " → "
		for i, m := range op.Milestones {
			names[i] = m.Name
			if op.shape != nil && op.shape.parallel {
				sep = ", "
				if len(m.After) > 0 {
					names[i] += " (after " + strings.Join(m.After, ", ") + ")"
				}
			}
		}
		d.Reasons = append(d.Reasons, fmt.Sprintf("milestones %s, from %s", strings.Join(names, sep), s.opsFrom[operation]))
	} else {
		d.Reasons = append(d.Reasons, "no milestones are defined for "+operation+": it cannot run as a saga")
	}
	return d
}

func describeOverride(o Override) string {
	var parts []string
	if o.EnableSaga != nil {
		parts = append(parts, fmt.Sprintf("enable_saga=%v", *o.EnableSaga))
	}
	if o.SagaOperations != nil {
		parts = append(parts, "saga_operations="+strings.Join(o.SagaOperations, ","))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}

// String renders a decision for operators.
func (d Decision) String() string {
	verdict := "runs WITHOUT a saga"
	if d.Saga {
		verdict = "runs as a saga"
	}
	return fmt.Sprintf("%s %s (policy version %d)\n  - %s", d.Operation, verdict, d.Version,
		strings.Join(d.Reasons, "\n  - "))
}

// Description is the policy in force, for operators (sagactl policy get).
type Description struct {
	Version             uint64                `json:"version"`
	EnableSaga          bool                  `json:"enable_saga"`
	EnableSagaFrom      string                `json:"enable_saga_from"`
	SagaOperations      []string              `json:"saga_operations"`
	SagaOperationsFrom  string                `json:"saga_operations_from"`
	OnEngineUnavailable Fallback              `json:"on_engine_unavailable"`
	Operations          map[string]*Operation `json:"operations"`
	Users               map[string]Override   `json:"users,omitempty"`
	Tenants             map[string]Override   `json:"tenants,omitempty"`
}

// Describe returns a copy of the policy in force.
func (s *Snapshot) Describe() Description {
	d := Description{Version: s.Version, EnableSaga: s.enabled, EnableSagaFrom: s.enabledFrom,
		SagaOperations: sortedKeys(s.operations), SagaOperationsFrom: s.operationsFrom,
		OnEngineUnavailable: s.fallback, Operations: map[string]*Operation{},
		Users: cloneOverrides(s.users), Tenants: cloneOverrides(s.tenants)}
	for name, op := range s.ops {
		d.Operations[name] = op.clone()
	}
	return d
}
