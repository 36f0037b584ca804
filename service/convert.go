package service

import (
	"fmt"
	"math"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
	sagav1 "github.com/sagaengine/saga/gen/saga/v1"
)

// problems collects every problem of a request, so that one reply lists
// them all (like fsm.DefinitionError does for a definition).
type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", errBadRequest, strings.Join(p, "; "))
}

// duration converts a request's duration; unset is 0. Negative durations
// are refused unless negativeOK.
func (p *problems) duration(field string, d *durationpb.Duration, negativeOK bool) time.Duration {
	if d == nil {
		return 0
	}
	if err := d.CheckValid(); err != nil {
		p.add("%s: %v", field, err)
		return 0
	}
	v := d.AsDuration()
	if v == math.MaxInt64 {
		// AsDuration saturates: the request asked for a longer one.
		// (A negative one is refused below, or means "forever".)
		p.add("%s is out of range (at most %v)", field, time.Duration(math.MaxInt64).Truncate(time.Second))
		return 0
	}
	if v < 0 && !negativeOK {
		p.add("%s is negative", field)
		return 0
	}
	return v
}

// sagaTimeout converts a saga's timeout, whose deadline (now + timeout,
// in Unix nanoseconds) must be a time the engine can record.
func (p *problems) sagaTimeout(field string, d *durationpb.Duration) time.Duration {
	v := p.duration(field, d, false)
	if v > 0 && time.Now().UnixNano() > math.MaxInt64-int64(v) {
		p.add("%s %v is out of range: the deadline would be after 2262", field, v.Truncate(time.Second))
		return 0
	}
	return v
}

func (p *problems) timestamp(field string, t *timestamppb.Timestamp) int64 {
	if t == nil {
		return 0
	}
	if err := t.CheckValid(); err != nil {
		p.add("%s: %v", field, err)
		return 0
	}
	tm := t.AsTime()
	if tm.Year() < 1678 || tm.Year() > 2261 { // outside int64 Unix nanoseconds
		p.add("%s is out of range", field)
		return 0
	}
	return tm.UnixNano()
}

func (p *problems) int32(field string, v int32) int {
	if v < 0 {
		p.add("%s %d is negative", field, v)
		return 0
	}
	return int(v)
}

func (p *problems) durability(field string, d sagav1.Durability) *fsm.Durability {
	var v fsm.Durability
	switch d {
	case sagav1.Durability_DURABILITY_UNSPECIFIED:
		return nil
	case sagav1.Durability_DURABILITY_STRICT:
		v = fsm.DurabilityStrict
	case sagav1.Durability_DURABILITY_PIPELINED:
		v = fsm.DurabilityPipelined
	default:
		p.add("%s: unknown durability %d", field, d)
		return nil
	}
	return &v
}

func (p *problems) retry(field string, r *sagav1.RetryPolicy) fsm.RetryPolicy {
	if r == nil {
		return fsm.RetryPolicy{}
	}
	out := fsm.RetryPolicy{
		InitialBackoff: p.duration(field+".initial_backoff", r.InitialBackoff, false),
		MaxBackoff:     p.duration(field+".max_backoff", r.MaxBackoff, false),
		Multiplier:     r.Multiplier,
		Jitter:         r.Jitter,
		MaxAttempts:    p.int32(field+".max_attempts", r.MaxAttempts),
		MaxElapsed:     p.duration(field+".max_elapsed", r.MaxElapsed, false),
	}
	if math.IsNaN(r.Multiplier) || math.IsInf(r.Multiplier, 0) || r.Multiplier < 0 {
		p.add("%s.multiplier %v is not a non-negative number", field, r.Multiplier)
	}
	if math.IsNaN(r.Jitter) || r.Jitter < 0 || r.Jitter > 1 {
		p.add("%s.jitter %v is not in [0, 1]", field, r.Jitter)
	}
	return out
}

// definitionFrom converts a definition of a Define request; the engine
// then validates what it means (fsm.DefinitionError).
func definitionFrom(d *sagav1.Definition) (engine.Definition, error) {
	var p problems
	if d == nil {
		p.add("definition is required")
		return engine.Definition{}, p.err()
	}
	out := engine.Definition{
		Name:      d.Name,
		Timeout:   p.sagaTimeout("timeout", d.Timeout),
		Retention: p.duration("retention", d.Retention, true),
	}
	if out.Retention < 0 {
		out.Retention = fsm.KeepForever
	}
	if dur := p.durability("durability", d.Durability); dur != nil {
		out.Durability = *dur
	}
	for i, s := range d.Steps {
		f := fmt.Sprintf("steps[%d]", i)
		if s == nil {
			p.add("%s is empty", f)
			continue
		}
		sd := engine.StepDef{
			Name: s.Name, Compensation: s.Compensation, Action: s.Action,
			Retry:             p.retry(f+".retry", s.Retry),
			CompensationRetry: p.retry(f+".compensation_retry", s.CompensationRetry),
			Timeout:           p.duration(f+".timeout", s.Timeout, false),
			After:             s.After,
			Child:             s.Child,
		}
		switch s.OnUncertain {
		case sagav1.UncertainPolicy_UNCERTAIN_POLICY_UNSPECIFIED, sagav1.UncertainPolicy_UNCERTAIN_POLICY_COMPENSATE:
			sd.OnUncertain = fsm.UncertainCompensate
		case sagav1.UncertainPolicy_UNCERTAIN_POLICY_RETRY:
			sd.OnUncertain = fsm.UncertainRetry
		default:
			p.add("%s.on_uncertain: unknown policy %d", f, s.OnUncertain)
		}
		out.Steps = append(out.Steps, sd)
	}
	return out, p.err()
}

func durationOf(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

func retryOf(r fsm.RetryPolicy) *sagav1.RetryPolicy {
	if r == (fsm.RetryPolicy{}) {
		return nil
	}
	return &sagav1.RetryPolicy{
		InitialBackoff: durationOf(r.InitialBackoff), MaxBackoff: durationOf(r.MaxBackoff),
		Multiplier: r.Multiplier, Jitter: r.Jitter, MaxAttempts: int32(r.MaxAttempts),
		MaxElapsed: durationOf(r.MaxElapsed),
	}
}

func durabilityOf(d fsm.Durability) sagav1.Durability {
	if d == fsm.DurabilityPipelined {
		return sagav1.Durability_DURABILITY_PIPELINED
	}
	return sagav1.Durability_DURABILITY_STRICT
}

func definitionOf(d *engine.Definition) *sagav1.Definition {
	out := &sagav1.Definition{
		Name: d.Name, Version: int32(d.Version), Timeout: durationOf(d.Timeout),
		Durability: durabilityOf(d.Durability), Retention: durationOf(d.Retention),
	}
	for i := range d.Steps {
		s := &d.Steps[i]
		ps := &sagav1.StepDef{
			Name: s.Name, Compensation: s.Compensation, Action: s.Action,
			Retry: retryOf(s.Retry), CompensationRetry: retryOf(s.CompensationRetry),
			Timeout: durationOf(s.Timeout), After: s.After, Child: s.Child,
			OnUncertain: sagav1.UncertainPolicy_UNCERTAIN_POLICY_COMPENSATE,
		}
		if s.OnUncertain == fsm.UncertainRetry {
			ps.OnUncertain = sagav1.UncertainPolicy_UNCERTAIN_POLICY_RETRY
		}
		out.Steps = append(out.Steps, ps)
	}
	return out
}

func timeOf(ns int64) *timestamppb.Timestamp {
	if ns == 0 {
		return nil
	}
	return timestamppb.New(time.Unix(0, ns))
}

func errorOf(e *fsm.ErrorInfo) *sagav1.ErrorInfo {
	if e == nil {
		return nil
	}
	return &sagav1.ErrorInfo{Kind: e.Kind, Message: e.Message, Retryable: e.Retryable}
}

// sagaOf converts an engine status. The proto's SagaState numbers are the
// engine's; its StepStatus numbers are one more (0 is UNSPECIFIED).
func sagaOf(st *engine.Status) *sagav1.Saga {
	sg := st.Saga
	out := &sagav1.Saga{
		Id: st.ID, Definition: st.Definition, Version: int32(st.Version),
		State:       sagav1.SagaState(st.State),
		CurrentStep: st.CurrentStep, Running: st.Running, Completed: st.Completed,
		Compensated: st.Compensated, Pending: st.Pending, LastError: errorOf(st.LastError),
		User: st.User, Meta: st.Meta,
	}
	if sg == nil {
		return out
	}
	out.IdempotencyKey, out.Input, out.Driven = sg.IdempotencyKey, sg.Input, sg.Driven
	out.Durability = durabilityOf(sg.Durability)
	out.CreatedAt, out.UpdatedAt, out.Deadline = timeOf(sg.CreatedAt), timeOf(sg.UpdatedAt), timeOf(sg.Deadline)
	out.Parent = sg.Parent
	for i := range sg.Steps {
		s := &sg.Steps[i]
		ps := &sagav1.Step{
			Status:    sagav1.StepStatus(s.Status + 1),
			Uncertain: s.Uncertain, Attempts: int32(s.Attempts), Output: s.Output, Error: errorOf(s.Err),
			StartedAt: timeOf(s.StartedAt), EndedAt: timeOf(s.EndedAt),
			CompensationAttempts: int32(s.CompAttempts), CompensationError: errorOf(s.CompErr),
			CompensatedAt: timeOf(s.CompEndedAt), Stuck: s.Stuck,
		}
		if s.StepDef != nil {
			ps.Name, ps.Compensation, ps.Action = s.Name, s.StepDef.Compensation, s.Action
		}
		out.Steps = append(out.Steps, ps)
	}
	return out
}

// maxListLimit bounds a page of List: each saga carries its steps.
const maxListLimit = 1000

func queryFrom(f *sagav1.SagaFilter, order sagav1.Order, limit int32, cursor string) (fsm.Query, error) {
	var p problems
	q := fsm.Query{After: cursor}
	if f != nil {
		if f.State < 0 || f.State > sagav1.SagaState_SAGA_STATE_STUCK {
			p.add("filter.state: unknown state %d", f.State)
		} else {
			q.State = fsm.SagaState(f.State)
		}
		q.Definition, q.User, q.Tenant, q.Meta = f.Definition, f.User, f.Tenant, f.Meta
		q.Version = p.int32("filter.version", f.Version)
		q.CreatedSince = p.timestamp("filter.created_since", f.CreatedSince)
		q.CreatedUntil = p.timestamp("filter.created_until", f.CreatedUntil)
		q.UpdatedSince = p.timestamp("filter.updated_since", f.UpdatedSince)
		q.UpdatedUntil = p.timestamp("filter.updated_until", f.UpdatedUntil)
	}
	switch order {
	case sagav1.Order_ORDER_UNSPECIFIED, sagav1.Order_ORDER_OLDEST:
		q.Order = fsm.OrderOldest
	case sagav1.Order_ORDER_NEWEST:
		q.Order = fsm.OrderNewest
	default:
		p.add("order: unknown order %d", order)
	}
	q.Limit = p.int32("limit", limit)
	if q.Limit > maxListLimit {
		p.add("limit %d is more than %d", q.Limit, maxListLimit)
	}
	if err := p.err(); err != nil {
		return q, err
	}
	// The engine's own check, so that every problem is reported as a bad
	// request before anything is read.
	return q, q.Validate()
}

func transitionOf(h fsm.HistoryEntry, steps []fsm.Step) *sagav1.Transition {
	r := h.Record
	out := &sagav1.Transition{
		Seq: h.Seq, Index: h.Index, Kind: r.Kind.String(), At: timeOf(r.At),
		Step: int32(r.Step), Attempt: int32(r.Attempt), Output: r.Output, Error: errorOf(r.Err),
		Final: r.Final, Actor: r.Actor, Reason: r.Reason,
	}
	if r.Step >= 0 && r.Step < len(steps) && steps[r.Step].StepDef != nil {
		out.StepName = steps[r.Step].Name
	}
	return out
}
