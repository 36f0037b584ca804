// Package service serves the engine's public API over the network: the
// saga.v1.SagaService of proto/saga/v1/saga.proto, with
// connectrpc.com/connect, so the same handlers speak gRPC, gRPC-Web and
// plain JSON over HTTP.
//
// Every call checks its whole request before it reaches the engine: a bad
// request is refused with a typed code (CodeInvalidArgument listing every
// problem, CodeNotFound, CodeFailedPrecondition, CodeAlreadyExists) and
// changes nothing. A call that changes state answers only once the
// engine has made its transition durable and applied it (the engine's
// "ack after apply"); its error means "not applied", except CodeUnknown,
// which means the outcome is unknown (see connectError).
//
// Who calls: with Options.Tokens (or behind Require), every call carries
// a named bearer token whose scope must allow it (ProcedureScope), and
// the actor recorded by Abort, Retry and Resolve, and logged for
// SetPolicy, is the token's name: the actor a request names is then
// ignored. A refused call is CodeUnauthenticated (no token, or an unknown
// one) or CodePermissionDenied (a scope too small) and changes nothing.
// Start's user and meta stay the caller's: they say for whom the saga
// runs, not who started it.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"github.com/sagaengine/saga/auth"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
	sagav1 "github.com/sagaengine/saga/gen/saga/v1"
	"github.com/sagaengine/saga/gen/saga/v1/sagav1connect"
)

// Engine is what the service needs of the engine; *engine.Engine
// implements it. Its errors are the engine's, documented in package
// engine, and are mapped to codes by connectError.
type Engine interface {
	Define(ctx context.Context, d engine.Definition) (*engine.Definition, error)
	Definition(ctx context.Context, name string, version int) (*engine.Definition, error)
	Start(ctx context.Context, definition string, input []byte, o engine.StartOptions) (string, error)
	Launch(ctx context.Context, definition string, input []byte, o engine.StartOptions) (string, bool, error)
	Advance(ctx context.Context, id string, res engine.StepResult) (*engine.Status, error)
	Status(ctx context.Context, id string) (*engine.Status, error)
	List(ctx context.Context, q fsm.Query) ([]*engine.Status, string, error)
	CountQuery(ctx context.Context, q fsm.Query) (int, error)
	History(ctx context.Context, id string) ([]fsm.HistoryEntry, error)
	Wait(ctx context.Context, id string) (*engine.Status, error)
	Abort(ctx context.Context, id, actor, reason string) (*engine.Status, error)
	Retry(ctx context.Context, id, actor, reason string) (*engine.Status, error)
	Resolve(ctx context.Context, id, actor, reason string) (*engine.Status, error)
}

var _ Engine = (*engine.Engine)(nil)

// Options configure a Server. The zero value works.
type Options struct {
	// MaxRequestBytes bounds a request's body; larger ones are refused
	// with CodeResourceExhausted before they are decoded. Default 1 MiB.
	MaxRequestBytes int
	// DefaultWait is how long Wait waits when the request says nothing.
	// Default 30s.
	DefaultWait time.Duration
	// MaxWait bounds the wait a request may ask for. Default 5 minutes.
	MaxWait time.Duration
	// Policy serves GetPolicy, SetPolicy and ExplainPolicy; nil: they
	// answer CodeFailedPrecondition.
	Policy Policy
	// Tokens, if set, authenticate every call: Handler is then wrapped
	// with Require(Tokens, …). Default nil: Handler does not
	// authenticate (wrap it with Require or RequireToken), and without a
	// caller in the request's context Abort, Retry and Resolve record
	// the actor the request names.
	Tokens auth.Authenticator
	// Logger receives a line for each policy change, with its actor.
	// Default: a logger that discards.
	Logger *slog.Logger
	// LeaderAddress, in a replicated group, maps the leader's raft
	// address to the address its clients should call (its API's URL):
	// a follower's CodeUnavailable names it in LeaderHeader. Default nil:
	// LeaderHeader holds the raft address.
	LeaderAddress func(raftAddr string) string
}

// EnsureDefaults fills the unset fields.
func (o *Options) EnsureDefaults() {
	if o.MaxRequestBytes == 0 {
		o.MaxRequestBytes = 1 << 20
	}
	if o.DefaultWait == 0 {
		o.DefaultWait = 30 * time.Second
	}
	if o.MaxWait == 0 {
		o.MaxWait = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem at once.
func (o *Options) Validate() error {
	var errs []error
	if o.MaxRequestBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxRequestBytes %d is negative", o.MaxRequestBytes))
	}
	if o.DefaultWait < 0 || o.MaxWait < 0 {
		errs = append(errs, errors.New("DefaultWait and MaxWait must not be negative"))
	}
	if o.DefaultWait > 0 && o.MaxWait > 0 && o.DefaultWait > o.MaxWait {
		errs = append(errs, fmt.Errorf("DefaultWait %v is more than MaxWait %v", o.DefaultWait, o.MaxWait))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	return nil
}

// ErrInvalidOptions: New was given options that Validate refuses.
var ErrInvalidOptions = errors.New("service: invalid options")

// errBadRequest marks a request the service refused before the engine saw
// it; it maps to CodeInvalidArgument.
var errBadRequest = errors.New("service: bad request")

// Server implements sagav1connect.SagaServiceHandler over an Engine.
type Server struct {
	eng  Engine
	opts Options
}

var _ sagav1connect.SagaServiceHandler = (*Server)(nil)

// New returns a Server over e. It copies opts.
func New(e Engine, opts Options) (*Server, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return &Server{eng: e, opts: opts}, nil
}

// compressMinBytes: responses shorter than this are sent uncompressed.
// A saga's status is a few hundred bytes: gzip cost more CPU per call
// (a compressor's reset alone was a tenth of the server's profile) than
// it saved on loopback and LANs; lists and histories still compress.
const compressMinBytes = 4 << 10

// Handler returns the path prefix to mount the service on and its
// handler: authenticated with Options.Tokens if set, else not (wrap it
// with Require or RequireToken).
func (s *Server) Handler() (string, http.Handler) {
	opts := append(jsonCodecs(), connect.WithReadMaxBytes(s.opts.MaxRequestBytes), connect.WithCompressMinBytes(compressMinBytes))
	if s.opts.LeaderAddress != nil {
		opts = append(opts, connect.WithInterceptors(leaderAddress(s.opts.LeaderAddress)))
	}
	path, h := sagav1connect.NewSagaServiceHandler(s, opts...)
	if s.opts.Tokens != nil {
		h = Require(s.opts.Tokens, h)
	}
	return path, h
}

// Define implements saga.v1.SagaService.Define.
func (s *Server) Define(ctx context.Context, req *connect.Request[sagav1.DefineRequest]) (*connect.Response[sagav1.DefineResponse], error) {
	d, err := definitionFrom(req.Msg.Definition)
	if err != nil {
		return nil, connectError(err)
	}
	got, err := s.eng.Define(ctx, d)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&sagav1.DefineResponse{Definition: definitionOf(got)}), nil
}

// GetDefinition implements saga.v1.SagaService.GetDefinition.
func (s *Server) GetDefinition(ctx context.Context, req *connect.Request[sagav1.GetDefinitionRequest]) (*connect.Response[sagav1.GetDefinitionResponse], error) {
	var p problems
	if req.Msg.Name == "" {
		p.add("name is required")
	}
	version := p.int32("version", req.Msg.Version)
	if err := p.err(); err != nil {
		return nil, connectError(err)
	}
	d, err := s.eng.Definition(ctx, req.Msg.Name, version)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&sagav1.GetDefinitionResponse{Definition: definitionOf(d)}), nil
}

// engineDriven reports whether every step of d names what runs it.
func engineDriven(d *engine.Definition) bool {
	for _, st := range d.Steps {
		if st.Action == "" && st.Child == "" {
			return false
		}
	}
	return len(d.Steps) > 0
}

// Start implements saga.v1.SagaService.Start: an engine-driven saga when
// every step of the definition names an action (or a child saga), else a
// caller-driven one. A saga started whose status cannot then be read is
// CodeUnknown, naming it: never a code that says "not applied".
func (s *Server) Start(ctx context.Context, req *connect.Request[sagav1.StartRequest]) (*connect.Response[sagav1.StartResponse], error) {
	m := req.Msg
	var p problems
	if m.Definition == "" {
		p.add("definition is required")
	}
	o := engine.StartOptions{
		ID: m.Id, IdempotencyKey: m.IdempotencyKey, User: m.User, Meta: m.Meta,
		Version:    p.int32("version", m.Version),
		Timeout:    p.sagaTimeout("timeout", m.Timeout),
		Durability: p.durability("durability", m.Durability),
	}
	if err := p.err(); err != nil {
		return nil, connectError(err)
	}
	// The engine drives a saga whose every step it can run (an action,
	// a remote handler, or a child saga); the caller drives the others
	// with Advance. The engine refuses a used id or key without writing.
	d, err := s.eng.Definition(ctx, m.Definition, o.Version)
	if err != nil {
		return nil, connectError(err)
	}
	// Start the version looked at: a Define in between must not start a
	// version whose steps say otherwise (ErrNotDriven for a step without
	// an action, or a caller-driven saga of actions).
	o.Version = d.Version
	var id string
	if engineDriven(d) {
		id, _, err = s.eng.Launch(ctx, m.Definition, m.Input, o)
	} else {
		id, err = s.eng.Start(ctx, m.Definition, m.Input, o)
	}
	if err != nil {
		return nil, connectError(err)
	}
	st, err := s.eng.Status(ctx, id)
	if errors.Is(err, engine.ErrUnknownSaga) && m.IdempotencyKey != "" {
		// The key outlives its saga for the dedupe window.
		return nil, connectError(fmt.Errorf("%w: idempotency key %q belongs to saga %s, which finished and was removed; the key refuses a new start for the dedupe window: %w",
			engine.ErrRemoved, m.IdempotencyKey, id, err))
	}
	if err != nil {
		// The saga is durable: its code must not say "not applied" (an
		// ErrClosed would be CodeUnavailable, "send it again"), so only
		// the cause's text goes along, as engine.Run does.
		return nil, connect.NewError(connect.CodeUnknown,
			fmt.Errorf("saga %s is started (durable), but its status could not be read: look at it before starting again: %v", id, err))
	}
	return connect.NewResponse(&sagav1.StartResponse{Saga: sagaOf(st)}), nil
}

// Advance implements saga.v1.SagaService.Advance.
func (s *Server) Advance(ctx context.Context, req *connect.Request[sagav1.AdvanceRequest]) (*connect.Response[sagav1.AdvanceResponse], error) {
	m := req.Msg
	var p problems
	if m.SagaId == "" {
		p.add("saga_id is required")
	}
	if m.Step == "" {
		p.add("step is required")
	}
	res := engine.StepResult{Step: m.Step, Output: m.Output}
	if m.Error != nil {
		if m.Error.Message == "" {
			p.add("error.message is required when the step failed")
		}
		if len(m.Output) > 0 {
			p.add("a failed step has no output")
		}
		res.Err = &fsm.ErrorInfo{Kind: m.Error.Kind, Message: m.Error.Message, Retryable: m.Error.Retryable}
	}
	if err := p.err(); err != nil {
		return nil, connectError(err)
	}
	st, err := s.eng.Advance(ctx, m.SagaId, res)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&sagav1.AdvanceResponse{Saga: sagaOf(st)}), nil
}

// Status implements saga.v1.SagaService.Status.
func (s *Server) Status(ctx context.Context, req *connect.Request[sagav1.StatusRequest]) (*connect.Response[sagav1.StatusResponse], error) {
	st, err := s.status(ctx, req.Msg.SagaId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&sagav1.StatusResponse{Saga: sagaOf(st)}), nil
}

func (s *Server) status(ctx context.Context, id string) (*engine.Status, error) {
	if id == "" {
		return nil, connectError(fmt.Errorf("%w: saga_id is required", errBadRequest))
	}
	st, err := s.eng.Status(ctx, id)
	if err != nil {
		return nil, connectError(err)
	}
	return st, nil
}

// List implements saga.v1.SagaService.List.
func (s *Server) List(ctx context.Context, req *connect.Request[sagav1.ListRequest]) (*connect.Response[sagav1.ListResponse], error) {
	m := req.Msg
	q, err := queryFrom(m.Filter, m.Order, m.Limit, m.Cursor)
	if err != nil {
		return nil, connectError(err)
	}
	q.MaxBytes = maxListBytes
	sts, next, err := s.eng.List(ctx, q)
	if err != nil {
		return nil, connectError(err)
	}
	out := &sagav1.ListResponse{NextCursor: next}
	for _, st := range sts {
		out.Sagas = append(out.Sagas, sagaOf(st))
	}
	return connect.NewResponse(out), nil
}

// maxListBytes bounds the data of the sagas of a List page
// (fsm.Query.MaxBytes): a page of 1000 sagas with large inputs and
// outputs was read whole into memory, and past 4 MiB a gRPC client
// refuses the message by default.
const maxListBytes = 2 << 20

// Count implements saga.v1.SagaService.Count.
func (s *Server) Count(ctx context.Context, req *connect.Request[sagav1.CountRequest]) (*connect.Response[sagav1.CountResponse], error) {
	q, err := queryFrom(req.Msg.Filter, sagav1.Order_ORDER_UNSPECIFIED, 0, "")
	if err != nil {
		return nil, connectError(err)
	}
	n, err := s.eng.CountQuery(ctx, q)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&sagav1.CountResponse{Count: int64(n)}), nil
}

// History implements saga.v1.SagaService.History.
func (s *Server) History(ctx context.Context, req *connect.Request[sagav1.HistoryRequest]) (*connect.Response[sagav1.HistoryResponse], error) {
	// The status names the steps the records point at by index.
	st, err := s.status(ctx, req.Msg.SagaId)
	if err != nil {
		return nil, err
	}
	h, err := s.eng.History(ctx, req.Msg.SagaId)
	if err != nil {
		return nil, connectError(err)
	}
	out := &sagav1.HistoryResponse{}
	for _, e := range h {
		if e.Record != nil {
			out.Transitions = append(out.Transitions, transitionOf(e, st.Saga.Steps))
		}
	}
	return connect.NewResponse(out), nil
}

// Wait implements saga.v1.SagaService.Wait, a long-poll.
func (s *Server) Wait(ctx context.Context, req *connect.Request[sagav1.WaitRequest]) (*connect.Response[sagav1.WaitResponse], error) {
	var p problems
	if req.Msg.SagaId == "" {
		p.add("saga_id is required")
	}
	d := p.duration("timeout", req.Msg.Timeout, false)
	if d > s.opts.MaxWait {
		p.add("timeout %v is more than %v", d, s.opts.MaxWait)
	}
	if err := p.err(); err != nil {
		return nil, connectError(err)
	}
	if req.Msg.Timeout == nil {
		d = s.opts.DefaultWait // unset; a timeout set to zero is a poll
	}
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	st, err := s.eng.Wait(wctx, req.Msg.SagaId)
	switch {
	case err == nil:
		return connect.NewResponse(&sagav1.WaitResponse{Saga: sagaOf(st), Settled: true}), nil
	case ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
		// The wait's own timeout: the saga as it is now, which may have
		// settled since.
		st, err := s.status(ctx, req.Msg.SagaId)
		if err != nil {
			return nil, err
		}
		settled := st.State.Terminal() || st.State == engine.StateStuck
		return connect.NewResponse(&sagav1.WaitResponse{Saga: sagaOf(st), Settled: settled}), nil
	default:
		return nil, connectError(err)
	}
}

// operatorRequest is what Abort, Retry and Resolve requests share.
type operatorRequest interface {
	GetSagaId() string
	GetActor() string
	GetReason() string
}

// actor is who makes a change: the authenticated caller's token name,
// whatever the request says; without authentication (no caller in ctx),
// the actor the request names, which is then required.
func actor(ctx context.Context, claimed string, p *problems) string {
	if id, ok := auth.FromContext(ctx); ok {
		return id.Name
	}
	if claimed == "" {
		p.add("actor is required: who is acting")
	}
	if len(claimed) > 256 {
		p.add("actor too long (256 bytes)")
	}
	return claimed
}

func (s *Server) operator(ctx context.Context, m operatorRequest, needReason string,
	act func(ctx context.Context, id, actor, reason string) (*engine.Status, error)) (*sagav1.Saga, error) {
	var p problems
	if m.GetSagaId() == "" {
		p.add("saga_id is required")
	}
	who := actor(ctx, m.GetActor(), &p)
	if len(m.GetReason()) > 4096 {
		p.add("reason too long (4096 bytes)")
	}
	if needReason != "" && m.GetReason() == "" {
		p.add("%s", needReason)
	}
	if err := p.err(); err != nil {
		return nil, connectError(err)
	}
	st, err := act(ctx, m.GetSagaId(), who, m.GetReason())
	if err != nil {
		return nil, connectError(err)
	}
	return sagaOf(st), nil
}

// Abort implements saga.v1.SagaService.Abort.
func (s *Server) Abort(ctx context.Context, req *connect.Request[sagav1.AbortRequest]) (*connect.Response[sagav1.AbortResponse], error) {
	sg, err := s.operator(ctx, req.Msg, "abort needs a reason", s.eng.Abort)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&sagav1.AbortResponse{Saga: sg}), nil
}

// Retry implements saga.v1.SagaService.Retry.
func (s *Server) Retry(ctx context.Context, req *connect.Request[sagav1.RetryRequest]) (*connect.Response[sagav1.RetryResponse], error) {
	sg, err := s.operator(ctx, req.Msg, "", s.eng.Retry)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&sagav1.RetryResponse{Saga: sg}), nil
}

// Resolve implements saga.v1.SagaService.Resolve.
func (s *Server) Resolve(ctx context.Context, req *connect.Request[sagav1.ResolveRequest]) (*connect.Response[sagav1.ResolveResponse], error) {
	sg, err := s.operator(ctx, req.Msg, "resolve needs a reason (what was done by hand)", s.eng.Resolve)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&sagav1.ResolveResponse{Saga: sg}), nil
}
