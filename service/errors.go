package service

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
)

// LeaderHeader names the leader's address on a CodeUnavailable error of
// a replicated member that does not lead (empty when none is known).
const LeaderHeader = "Saga-Leader"

// leaderAddress rewrites the LeaderHeader of a follower's refusal from
// the leader's raft address to the address f gives.
func leaderAddress(f func(raftAddr string) string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			res, err := next(ctx, req)
			var ce *connect.Error
			if errors.As(err, &ce) && ce.Code() == connect.CodeUnavailable {
				if addr := ce.Meta().Get(LeaderHeader); addr != "" {
					ce.Meta().Set(LeaderHeader, f(addr))
				}
			}
			return res, err
		}
	}
}

// connectError maps an engine (or request) error to a connect code:
//
//   - CodeInvalidArgument: a malformed request or definition, a query that
//     cannot be run (nothing was read or changed);
//   - CodeNotFound: no such saga or definition (or the saga was removed
//     after its retention);
//   - CodeFailedPrecondition: the saga's state does not allow the call
//     (an Advance of a step that is not running, a Retry of a saga that is
//     not STUCK), a definition naming a handler the server does not have,
//     an engine opened read only;
//   - CodeAlreadyExists: a Start with a saga id already used;
//   - CodeUnavailable: not the leader (LeaderHeader names it), the engine
//     is closed or stopped by an I/O error: nothing was applied, and the
//     call may be sent again (elsewhere, or after a restart);
//   - CodeUnknown: the outcome is unknown (an I/O error while the change
//     was made durable, leadership lost while it was in flight): look at
//     the saga before acting again;
//   - CodeCanceled, CodeDeadlineExceeded: the caller's context ended;
//   - CodeInternal: anything else.
func connectError(err error) *connect.Error {
	var notLeader *engine.NotLeaderError
	var unknown interface{ OutcomeUnknown() bool }
	code := connect.CodeInternal
	switch {
	case errors.Is(err, errBadRequest),
		errors.Is(err, engine.ErrInvalidArgument),
		errors.Is(err, fsm.ErrInvalidRecord), // a *DefinitionError among them
		errors.Is(err, engine.ErrInvalidQuery):
		code = connect.CodeInvalidArgument
	case errors.Is(err, engine.ErrUnknownSaga), errors.Is(err, engine.ErrUnknownDefinition), errors.Is(err, engine.ErrRemoved):
		code = connect.CodeNotFound
	case errors.Is(err, engine.ErrIllegalTransition), errors.Is(err, engine.ErrUnknownHandler),
		errors.Is(err, engine.ErrNotDriven), errors.Is(err, engine.ErrReadOnly):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, engine.ErrSagaExists), errors.Is(err, engine.ErrDuplicateKey):
		code = connect.CodeAlreadyExists
	case errors.As(err, &notLeader):
		ce := connect.NewError(connect.CodeUnavailable, err)
		ce.Meta().Set(LeaderHeader, notLeader.LeaderAddr)
		return ce
	case errors.Is(err, engine.ErrNotLeader), errors.Is(err, engine.ErrPoisoned), errors.Is(err, engine.ErrClosed):
		code = connect.CodeUnavailable
	case errors.Is(err, engine.ErrOutcomeUnknown), errors.As(err, &unknown) && unknown.OutcomeUnknown():
		code = connect.CodeUnknown
	case errors.Is(err, context.Canceled):
		code = connect.CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	}
	return connect.NewError(code, err)
}
