package service

import (
	"errors"
	"net/http"

	"connectrpc.com/connect"

	"github.com/sagaengine/saga/auth"
	"github.com/sagaengine/saga/gen/saga/v1/sagav1connect"
)

// procedureScopes is the scope each procedure of saga.v1.SagaService
// needs; ProcedureScope answers auth.Admin for any other path, so that a
// procedure added without an entry here is closed rather than open.
var procedureScopes = map[string]auth.Scope{
	sagav1connect.SagaServiceGetDefinitionProcedure: auth.Read,
	sagav1connect.SagaServiceStatusProcedure:        auth.Read,
	sagav1connect.SagaServiceListProcedure:          auth.Read,
	sagav1connect.SagaServiceCountProcedure:         auth.Read,
	sagav1connect.SagaServiceHistoryProcedure:       auth.Read,
	sagav1connect.SagaServiceWaitProcedure:          auth.Read,
	sagav1connect.SagaServiceGetPolicyProcedure:     auth.Read,
	sagav1connect.SagaServiceExplainPolicyProcedure: auth.Read,
	sagav1connect.SagaServiceDefineProcedure:        auth.Service,
	sagav1connect.SagaServiceStartProcedure:         auth.Service,
	sagav1connect.SagaServiceAdvanceProcedure:       auth.Service,
	sagav1connect.SagaServiceAbortProcedure:         auth.Operator,
	sagav1connect.SagaServiceRetryProcedure:         auth.Operator,
	sagav1connect.SagaServiceResolveProcedure:       auth.Operator,
	sagav1connect.SagaServiceSetPolicyProcedure:     auth.Admin,
}

// ProcedureScope returns the scope a call of procedure (a path such as
// "/saga.v1.SagaService/Start") needs: read for the reads (status,
// list, count, history, wait, definitions, the policy's get and
// explain), service for Define, Start and Advance, operator for Abort,
// Retry and Resolve, admin for SetPolicy and for any path it does not
// know.
func ProcedureScope(procedure string) auth.Scope {
	if s, ok := procedureScopes[procedure]; ok {
		return s
	}
	return auth.Admin
}

// Require wraps h, a handler of saga.v1.SagaService, so that only calls
// with "Authorization: Bearer <token>" of a token a knows, whose scope
// allows the procedure (ProcedureScope), reach it; the caller's
// auth.Identity travels in the request's context, and the actor of
// Abort, Retry and Resolve is its name. Calls are refused before their
// body is read, so a refused call changes nothing, in the request's own
// protocol (gRPC, gRPC-Web or Connect):
//
//   - CodeUnauthenticated: no token, or one a does not know (the
//     connection is closed);
//   - CodePermissionDenied: the token's scope does not allow the call;
//     the message names the scope it needs.
func Require(a auth.Authenticator, h http.Handler) http.Handler {
	ew := connect.NewErrorWriter()
	refuse := func(w http.ResponseWriter, r *http.Request, err *connect.Error) {
		if ew.IsSupported(r) {
			_ = ew.Write(w, r, err)
			return
		}
		code := http.StatusForbidden
		if err.Code() == connect.CodeUnauthenticated {
			code = http.StatusUnauthorized
		}
		http.Error(w, err.Error(), code)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := a.Authenticate(auth.BearerToken(r))
		if err != nil {
			w.Header().Set("Connection", "close")
			w.Header().Set("WWW-Authenticate", `Bearer realm="sagad"`)
			refuse(w, r, connect.NewError(connect.CodeUnauthenticated,
				errors.New("missing or unknown bearer token (Authorization: Bearer …)")))
			return
		}
		if err := id.Require(ProcedureScope(r.URL.Path)); err != nil {
			refuse(w, r, connect.NewError(connect.CodePermissionDenied, err))
			return
		}
		h.ServeHTTP(w, r.WithContext(auth.NewContext(r.Context(), id)))
	})
}

// RequireToken is Require with a single token: token, named
// auth.DefaultName, of scope admin (every call is allowed, and recorded
// as DefaultName's). An empty token refuses every call.
func RequireToken(token string, h http.Handler) http.Handler {
	var a auth.Authenticator = auth.Func(func(string) (auth.Identity, error) { return auth.Identity{}, auth.ErrUnknownToken })
	if ts, err := auth.Single(auth.DefaultName, auth.Admin, token); err == nil {
		a = ts
	}
	return Require(a, h)
}
