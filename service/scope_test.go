package service_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sagaengine/saga/auth"
	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	sagav1 "github.com/sagaengine/saga/gen/saga/v1"
	"github.com/sagaengine/saga/gen/saga/v1/sagav1connect"
	"github.com/sagaengine/saga/internal/authtest"
	"github.com/sagaengine/saga/policy"
	"github.com/sagaengine/saga/service"
)

// scopedFixture is an engine served with one token per scope, holding:
// in-1 and in-2, IN_PROGRESS at their first step (caller-driven); stuck-1
// and stuck-2, STUCK; and the definitions checkout and stucky.
type scopedFixture struct {
	eng    *engine.Engine
	pm     *policy.Manager
	url    string
	client func(secret string) sagav1connect.SagaServiceClient
}

func newScopedFixture(t *testing.T, ctx context.Context) *scopedFixture {
	t.Helper()
	reg := engine.NewRegistry()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(reg.Register("refund", func(context.Context, engine.Call) error { return nil }))
	must(reg.Register("broken", func(context.Context, engine.Call) error { return errors.New("down") }))
	must(reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	must(reg.RegisterAction("boom", func(context.Context, compensation.Call) ([]byte, error) {
		return nil, compensation.Permanent(errors.New("declined"))
	}))
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := engine.Open(t.TempDir(), engine.Options{Registry: reg, Logger: quiet})
	must(err)
	t.Cleanup(func() { _ = e.Close() })
	for _, d := range []engine.Definition{
		{Name: "checkout", Steps: []engine.StepDef{{Name: "payment", Compensation: "refund"}, {Name: "shipping"}}},
		{Name: "stucky", Steps: []engine.StepDef{{Name: "pay", Action: "ok", Compensation: "broken",
			CompensationRetry: engine.RetryPolicy{MaxAttempts: 1}}, {Name: "ship", Action: "boom"}}},
	} {
		_, err := e.Define(ctx, d)
		must(err)
	}
	for _, id := range []string{"in-1", "in-2"} {
		_, err := e.Start(ctx, "checkout", nil, engine.StartOptions{ID: id})
		must(err)
	}
	for _, id := range []string{"stuck-1", "stuck-2"} {
		_, err := e.Run(ctx, "stucky", nil, engine.StartOptions{ID: id})
		must(err)
		st, err := e.Wait(ctx, id)
		must(err)
		if st.State.String() != "STUCK" {
			t.Fatalf("%s is %s, want STUCK", id, st.State)
		}
	}
	pm, err := policy.New(policy.Options{NoWatch: true, Logger: quiet, LookupEnv: func(string) (string, bool) { return "", false }})
	must(err)
	t.Cleanup(func() { _ = pm.Close() })
	srv, err := service.New(e, service.Options{Policy: pm, Tokens: authtest.Authenticator(t)})
	must(err)
	mux := http.NewServeMux()
	mux.Handle(srv.Handler())
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return &scopedFixture{eng: e, pm: pm, url: hs.URL, client: func(secret string) sagav1connect.SagaServiceClient {
		return sagav1connect.NewSagaServiceClient(hs.Client(), hs.URL, connect.WithInterceptors(bearer(secret)))
	}}
}

// settle waits until the engine-driven sagas (stuck-1, stuck-2) are
// settled: STUCK or terminal, as a snapshot must see them.
func (f *scopedFixture) settle(t *testing.T, ctx context.Context) {
	t.Helper()
	for _, id := range []string{"stuck-1", "stuck-2"} {
		if _, err := f.eng.Wait(ctx, id); err != nil {
			t.Fatalf("waiting for %s to settle: %v", id, err)
		}
	}
}

// snapshot is what a refused call must leave as it was.
type snapshot struct {
	lastIndex     uint64
	policyVersion string
	sagas         map[string]string // id: state, current step and history length
}

func (f *scopedFixture) snapshot(t *testing.T, ctx context.Context) snapshot {
	t.Helper()
	li, err := f.eng.LogInfo()
	if err != nil {
		t.Fatal(err)
	}
	s := snapshot{lastIndex: li.LastIndex, policyVersion: fmt.Sprint(f.pm.Snapshot().Describe().Version), sagas: map[string]string{}}
	for _, id := range []string{"in-1", "in-2", "stuck-1", "stuck-2", "new-1"} {
		st, err := f.eng.Status(ctx, id)
		if errors.Is(err, engine.ErrUnknownSaga) {
			s.sagas[id] = "none"
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		h, err := f.eng.History(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		s.sagas[id] = fmt.Sprintf("%s at %q, %d records", st.State, st.CurrentStep, len(h))
	}
	return s
}

// scopedCall is one call of the service, made so that it succeeds when
// its scope allows it; actor is the actor it claims (the operator
// calls), which the server must ignore.
type scopedCall struct {
	name string
	need auth.Scope
	call func(ctx context.Context, c sagav1connect.SagaServiceClient) error
}

const claimed = "mallory"

var scopedCalls = []scopedCall{
	{"GetDefinition", auth.Read, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.GetDefinition(ctx, connect.NewRequest(&sagav1.GetDefinitionRequest{Name: "checkout"})))
	}},
	{"Status", auth.Read, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.Status(ctx, connect.NewRequest(&sagav1.StatusRequest{SagaId: "in-1"})))
	}},
	{"List", auth.Read, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.List(ctx, connect.NewRequest(&sagav1.ListRequest{})))
	}},
	{"Count", auth.Read, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.Count(ctx, connect.NewRequest(&sagav1.CountRequest{})))
	}},
	{"History", auth.Read, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.History(ctx, connect.NewRequest(&sagav1.HistoryRequest{SagaId: "stuck-1"})))
	}},
	{"Wait", auth.Read, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		// stuck-1 is settled: the wait answers at once.
		return errOf(c.Wait(ctx, connect.NewRequest(&sagav1.WaitRequest{SagaId: "stuck-1", Timeout: durationpb.New(0)})))
	}},
	{"GetPolicy", auth.Read, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.GetPolicy(ctx, connect.NewRequest(&sagav1.GetPolicyRequest{})))
	}},
	{"ExplainPolicy", auth.Read, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.ExplainPolicy(ctx, connect.NewRequest(&sagav1.ExplainPolicyRequest{Operation: "checkout"})))
	}},
	{"Define", auth.Service, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.Define(ctx, connect.NewRequest(&sagav1.DefineRequest{Definition: &sagav1.Definition{Name: "newdef",
			Steps: []*sagav1.StepDef{{Name: "a"}}}})))
	}},
	{"Start", auth.Service, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.Start(ctx, connect.NewRequest(&sagav1.StartRequest{Definition: "checkout", Id: "new-1", User: "bob"})))
	}},
	{"Advance", auth.Service, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.Advance(ctx, connect.NewRequest(&sagav1.AdvanceRequest{SagaId: "in-2", Step: "payment", Output: []byte("ch_1")})))
	}},
	{"Abort", auth.Operator, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.Abort(ctx, connect.NewRequest(&sagav1.AbortRequest{SagaId: "in-1", Actor: claimed, Reason: "customer cancelled"})))
	}},
	{"Retry", auth.Operator, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.Retry(ctx, connect.NewRequest(&sagav1.RetryRequest{SagaId: "stuck-1", Actor: claimed, Reason: "outage over"})))
	}},
	{"Resolve", auth.Operator, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.Resolve(ctx, connect.NewRequest(&sagav1.ResolveRequest{SagaId: "stuck-2", Actor: claimed, Reason: "refunded by hand"})))
	}},
	{"SetPolicy", auth.Admin, func(ctx context.Context, c sagav1connect.SagaServiceClient) error {
		return errOf(c.SetPolicy(ctx, connect.NewRequest(&sagav1.SetPolicyRequest{Yaml: "enable_saga: true\n"})))
	}},
}

// TestScopeMatrix makes every call with a token of every scope: a call
// the scope allows succeeds; one it does not is refused with
// CodePermissionDenied naming the scope it needs, and changes nothing
// (the log, the sagas, their histories and the policy are as they were).
// Without a token, or with an unknown one, every call is
// CodeUnauthenticated and changes nothing.
func TestScopeMatrix(t *testing.T) {
	covered := map[string]bool{}
	for _, c := range scopedCalls {
		covered[c.name] = true
	}
	methods := sagav1.File_saga_v1_saga_proto.Services().ByName("SagaService").Methods()
	for i := 0; i < methods.Len(); i++ {
		if name := string(methods.Get(i).Name()); !covered[name] {
			t.Errorf("the matrix does not cover %s", name)
		}
	}
	for _, tok := range append(slices.Clip(authtest.Scoped),
		authtest.Token{Name: "nobody"}, authtest.Token{Name: "stranger", Secret: "unknown-secret-0123456789"}) {
		t.Run(tok.Name, func(t *testing.T) {
			ctx := testCtx(t)
			f := newScopedFixture(t, ctx)
			c := f.client(tok.Secret)
			for _, call := range scopedCalls {
				before := f.snapshot(t, ctx)
				err := call.call(ctx, c)
				switch {
				case tok.Scope == 0:
					if connect.CodeOf(err) != connect.CodeUnauthenticated {
						t.Errorf("%s without a known token: %v, want unauthenticated", call.name, err)
					}
				case tok.Scope.Allows(call.need):
					if err != nil {
						t.Errorf("%s with a %s token: %v", call.name, tok.Scope, err)
					}
					// A call that succeeds may set the engine going (Retry
					// compensates stuck-1 again until it is STUCK again):
					// the next call's "before" waits for that to end.
					f.settle(t, ctx)
					continue
				default:
					if connect.CodeOf(err) != connect.CodePermissionDenied {
						t.Errorf("%s with a %s token: %v, want permission_denied", call.name, tok.Scope, err)
					} else if want := "needs scope " + call.need.String(); !strings.Contains(err.Error(), want) {
						t.Errorf("%s refused without naming its scope: %v", call.name, err)
					}
				}
				if after := f.snapshot(t, ctx); fmt.Sprint(after) != fmt.Sprint(before) {
					t.Errorf("%s refused to %s changed things:\nbefore %v\nafter  %v", call.name, tok.Name, before, after)
				}
			}
		})
	}
}

// TestActorIsTheTokensName: Abort, Retry and Resolve record the caller's
// token name as the actor, whatever actor the request names; Start keeps
// the caller's user.
func TestActorIsTheTokensName(t *testing.T) {
	ctx := testCtx(t)
	f := newScopedFixture(t, ctx)
	alice := f.client("operator-secret-0123456789")
	for _, name := range []string{"Abort", "Retry", "Resolve", "Start"} {
		for _, call := range scopedCalls {
			if call.name == name {
				if err := call.call(ctx, alice); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
			}
		}
	}
	for id, kind := range map[string]string{"in-1": "aborted", "stuck-1": "retried", "stuck-2": "resolved"} {
		h, err := alice.History(ctx, connect.NewRequest(&sagav1.HistoryRequest{SagaId: id}))
		if err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, tr := range h.Msg.Transitions {
			if tr.Kind == kind {
				found = true
				if tr.Actor != "alice" {
					t.Errorf("%s of %s recorded actor %q, want the token's name alice (the request claimed %q)", kind, id, tr.Actor, claimed)
				}
			}
		}
		if !found {
			t.Errorf("%s has no %s transition", id, kind)
		}
	}
	st, err := alice.Status(ctx, connect.NewRequest(&sagav1.StatusRequest{SagaId: "new-1"}))
	if err != nil || st.Msg.Saga.User != "bob" {
		t.Fatalf("Start's user: %v %v", st, err)
	}
}

// TestUnauthenticatedHandlerRecordsTheClaimedActor: a Server without
// Tokens, served without Require (an embedding that authenticates
// otherwise), records the actor the request names, and requires one.
func TestUnauthenticatedHandlerRecordsTheClaimedActor(t *testing.T) {
	ctx := testCtx(t)
	f := newScopedFixture(t, ctx)
	srv, err := service.New(f.eng, service.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(srv.Handler())
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	c := sagav1connect.NewSagaServiceClient(hs.Client(), hs.URL)
	_, err = c.Abort(ctx, connect.NewRequest(&sagav1.AbortRequest{SagaId: "in-1", Reason: "who?"}))
	wantCode(t, "abort without an actor", err, connect.CodeInvalidArgument)
	if _, err := c.Abort(ctx, connect.NewRequest(&sagav1.AbortRequest{SagaId: "in-1", Actor: "bob", Reason: "x"})); err != nil {
		t.Fatal(err)
	}
	h, err := f.eng.History(ctx, "in-1")
	if err != nil {
		t.Fatal(err)
	}
	var actors []string
	for _, e := range h {
		if e.Record != nil && e.Record.Actor != "" {
			actors = append(actors, e.Record.Actor)
		}
	}
	if fmt.Sprint(actors) != "[bob]" {
		t.Fatalf("actors recorded: %v, want [bob]", actors)
	}
}

// TestScopeRefusalsSpeakGRPC: a refusal is answered in the caller's
// protocol, so a gRPC client sees PermissionDenied and Unauthenticated
// as codes, not as transport errors.
func TestScopeRefusalsSpeakGRPC(t *testing.T) {
	ctx := testCtx(t)
	tokens, err := auth.Single("dashboard", auth.Read, "read-secret-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.Open(t.TempDir(), engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	srv, err := service.New(e, service.Options{Tokens: tokens})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(srv.Handler())
	hs := httptest.NewUnstartedServer(mux)
	hs.EnableHTTP2 = true
	hs.StartTLS()
	t.Cleanup(hs.Close)
	for secret, code := range map[string]connect.Code{"read-secret-0123456789": connect.CodePermissionDenied, "guess": connect.CodeUnauthenticated} {
		c := sagav1connect.NewSagaServiceClient(hs.Client(), hs.URL, connect.WithGRPC(), connect.WithInterceptors(bearer(secret)))
		_, err := c.Define(ctx, connect.NewRequest(&sagav1.DefineRequest{Definition: checkout}))
		wantCode(t, "gRPC define with "+secret, err, code)
	}
	c := sagav1connect.NewSagaServiceClient(hs.Client(), hs.URL, connect.WithGRPC(), connect.WithInterceptors(bearer("read-secret-0123456789")))
	_, err = c.GetDefinition(ctx, connect.NewRequest(&sagav1.GetDefinitionRequest{Name: "checkout"}))
	wantCode(t, "the definition a refused gRPC call sent", err, connect.CodeNotFound)
}
