package service

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"connectrpc.com/connect"

	"github.com/sagaengine/saga/auth"
	sagav1 "github.com/sagaengine/saga/gen/saga/v1"
	"github.com/sagaengine/saga/policy"
)

// Policy is what the service needs of the policy ("optional by policy");
// *policy.Manager implements it.
type Policy interface {
	// Snapshot returns the policy in force.
	Snapshot() *policy.Snapshot
	// SetText parses a policy document and makes it the API layer; an
	// invalid policy, or one that could not be kept, is refused whole
	// and changes nothing.
	SetText(name string, data []byte) error
	// ClearAPI removes the API layer; if the rest does not validate
	// alone it is refused and changes nothing.
	ClearAPI() error
	// Explain says whether a call runs as a saga, and why.
	Explain(operation string, uc policy.UserContext) policy.Decision
}

var _ Policy = (*policy.Manager)(nil)

// errNoPolicy: the server was started without a policy manager.
var errNoPolicy = errors.New("service: this server has no policy manager")

func (s *Server) needPolicy() error {
	if s.opts.Policy == nil {
		return connect.NewError(connect.CodeFailedPrecondition, errNoPolicy)
	}
	return nil
}

// GetPolicy implements saga.v1.SagaService.GetPolicy.
func (s *Server) GetPolicy(ctx context.Context, req *connect.Request[sagav1.GetPolicyRequest]) (*connect.Response[sagav1.GetPolicyResponse], error) {
	if err := s.needPolicy(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&sagav1.GetPolicyResponse{Policy: policyOf(s.opts.Policy.Snapshot().Describe())}), nil
}

// SetPolicy implements saga.v1.SagaService.SetPolicy.
func (s *Server) SetPolicy(ctx context.Context, req *connect.Request[sagav1.SetPolicyRequest]) (*connect.Response[sagav1.SetPolicyResponse], error) {
	if err := s.needPolicy(); err != nil {
		return nil, err
	}
	who := "(unauthenticated)"
	if id, ok := auth.FromContext(ctx); ok {
		who = id.Name
	}
	var err error
	switch {
	case req.Msg.Clear && req.Msg.Yaml != "":
		return nil, connectError(fmt.Errorf("%w: give yaml or clear, not both", errBadRequest))
	case req.Msg.Clear:
		err = s.opts.Policy.ClearAPI()
	case req.Msg.Yaml == "":
		return nil, connectError(fmt.Errorf("%w: yaml is required (a policy in the policy file's format), or clear to remove the API layer", errBadRequest))
	default:
		err = s.opts.Policy.SetText("request", []byte(req.Msg.Yaml))
	}
	if err != nil {
		if errors.Is(err, policy.ErrNotDurable) {
			// In force, its file not known to be durable: the outcome
			// of a crash now is unknown (see connectError).
			return nil, connect.NewError(connect.CodeUnknown, err)
		}
		// Nothing changed: the policy in force stays.
		if !policy.IsInvalid(err) {
			return nil, connect.NewError(connect.CodeInternal, err) // it could not be kept
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	d := s.opts.Policy.Snapshot().Describe()
	s.opts.Logger.Info("service: policy set", "actor", who, "version", d.Version, "cleared", req.Msg.Clear)
	return connect.NewResponse(&sagav1.SetPolicyResponse{Policy: policyOf(d)}), nil
}

// ExplainPolicy implements saga.v1.SagaService.ExplainPolicy.
func (s *Server) ExplainPolicy(ctx context.Context, req *connect.Request[sagav1.ExplainPolicyRequest]) (*connect.Response[sagav1.ExplainPolicyResponse], error) {
	if err := s.needPolicy(); err != nil {
		return nil, err
	}
	m := req.Msg
	if m.Operation == "" {
		return nil, connectError(fmt.Errorf("%w: operation is required", errBadRequest))
	}
	d := s.opts.Policy.Explain(m.Operation, policy.UserContext{UserID: m.User, TenantID: m.Tenant})
	return connect.NewResponse(&sagav1.ExplainPolicyResponse{
		Saga: d.Saga, Operation: d.Operation, Spec: operationOf(d.Spec), Fallback: string(d.Fallback),
		Version: d.Version, Reasons: d.Reasons,
	}), nil
}

func policyOf(d policy.Description) *sagav1.Policy {
	out := &sagav1.Policy{
		Version: d.Version, EnableSaga: d.EnableSaga, EnableSagaFrom: d.EnableSagaFrom,
		SagaOperations: d.SagaOperations, SagaOperationsFrom: d.SagaOperationsFrom,
		OnEngineUnavailable: string(d.OnEngineUnavailable),
		Operations:          map[string]*sagav1.PolicyOperation{},
		Users:               overridesOf(d.Users), Tenants: overridesOf(d.Tenants),
	}
	for name, op := range d.Operations {
		out.Operations[name] = operationOf(op)
	}
	return out
}

func operationOf(op *policy.Operation) *sagav1.PolicyOperation {
	if op == nil {
		return nil
	}
	out := &sagav1.PolicyOperation{
		OnEngineUnavailable: string(op.OnEngineUnavailable), Timeout: durationOf(op.Timeout), Durability: op.Durability,
	}
	for _, m := range op.Milestones {
		out.Milestones = append(out.Milestones, &sagav1.Milestone{Name: m.Name, Compensation: m.Compensation, After: m.After})
	}
	if r := op.Retry; r != nil {
		out.Retry = &sagav1.PolicyRetry{MaxAttempts: int32(r.MaxAttempts), InitialBackoff: durationOf(r.InitialBackoff),
			MaxBackoff: durationOf(r.MaxBackoff), MaxElapsed: durationOf(r.MaxElapsed)}
	}
	return out
}

func overridesOf(m map[string]policy.Override) map[string]*sagav1.PolicyOverride {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]*sagav1.PolicyOverride, len(m))
	for name, o := range m {
		ops := append([]string(nil), o.SagaOperations...)
		sort.Strings(ops)
		out[name] = &sagav1.PolicyOverride{EnableSaga: o.EnableSaga, SagaOperations: ops}
	}
	return out
}
