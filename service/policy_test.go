package service_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"connectrpc.com/connect"

	sagav1 "github.com/sagaengine/saga/gen/saga/v1"
	"github.com/sagaengine/saga/gen/saga/v1/sagav1connect"
	"github.com/sagaengine/saga/policy"
	"github.com/sagaengine/saga/service"
)

func TestPolicyGetSetExplain(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	pm, err := policy.New(policy.Options{NoWatch: true, LookupEnv: func(string) (string, bool) { return "", false }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pm.Close() })
	srv, err := service.New(f.eng, service.Options{Policy: pm})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(srv.Handler())
	hs := httptest.NewServer(service.RequireToken(token, mux))
	t.Cleanup(hs.Close)
	c := sagav1connect.NewSagaServiceClient(hs.Client(), hs.URL, connect.WithInterceptors(bearer(token)))

	got, err := c.GetPolicy(ctx, connect.NewRequest(&sagav1.GetPolicyRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if got.Msg.Policy.EnableSaga {
		t.Fatalf("default policy enables sagas: %v", got.Msg.Policy)
	}
	set, err := c.SetPolicy(ctx, connect.NewRequest(&sagav1.SetPolicyRequest{Yaml: `
enable_saga: true
saga_operations: [checkout]
compensation_handlers:
  checkout:
    payment: refund
tenants:
  acme: {enable_saga: false}
`}))
	if err != nil {
		t.Fatal(err)
	}
	p := set.Msg.Policy
	if !p.EnableSaga || p.EnableSagaFrom != "api" || len(p.Operations["checkout"].GetMilestones()) != 1 ||
		p.Tenants["acme"].EnableSaga == nil || *p.Tenants["acme"].EnableSaga {
		t.Fatalf("policy after set: %v", p)
	}
	version := p.Version
	_, err = c.SetPolicy(ctx, connect.NewRequest(&sagav1.SetPolicyRequest{Yaml: "enable_saga: maybe\n"}))
	wantCode(t, "an invalid policy", err, connect.CodeInvalidArgument)
	_, err = c.SetPolicy(ctx, connect.NewRequest(&sagav1.SetPolicyRequest{}))
	wantCode(t, "an empty policy", err, connect.CodeInvalidArgument)
	if v := pm.Snapshot().Version; v != version {
		t.Fatalf("a refused policy changed the version %d → %d", version, v)
	}
	ex, err := c.ExplainPolicy(ctx, connect.NewRequest(&sagav1.ExplainPolicyRequest{Operation: "checkout", User: "alice"}))
	if err != nil || !ex.Msg.Saga || ex.Msg.Spec.GetMilestones()[0].Compensation != "refund" {
		t.Fatalf("explain for alice: %v %v", ex, err)
	}
	ex, err = c.ExplainPolicy(ctx, connect.NewRequest(&sagav1.ExplainPolicyRequest{Operation: "checkout", Tenant: "acme"}))
	if err != nil || ex.Msg.Saga || !strings.Contains(strings.Join(ex.Msg.Reasons, "\n"), "acme") {
		t.Fatalf("explain for tenant acme: %v %v", ex, err)
	}
	_, err = c.ExplainPolicy(ctx, connect.NewRequest(&sagav1.ExplainPolicyRequest{}))
	wantCode(t, "explain without an operation", err, connect.CodeInvalidArgument)
	// clear removes the API layer; with yaml too it is refused.
	_, err = c.SetPolicy(ctx, connect.NewRequest(&sagav1.SetPolicyRequest{Yaml: "enable_saga: true\n", Clear: true}))
	wantCode(t, "yaml and clear", err, connect.CodeInvalidArgument)
	cleared, err := c.SetPolicy(ctx, connect.NewRequest(&sagav1.SetPolicyRequest{Clear: true}))
	if err != nil || cleared.Msg.Policy.EnableSaga || cleared.Msg.Policy.EnableSagaFrom == "api" {
		t.Fatalf("after clear: %v, %v; want the default policy in force", cleared, err)
	}
}

func TestPolicyCallsWithoutAManager(t *testing.T) {
	f := newFixture(t)
	_, err := f.client.GetPolicy(testCtx(t), connect.NewRequest(&sagav1.GetPolicyRequest{}))
	wantCode(t, "get policy without a manager", err, connect.CodeFailedPrecondition)
}
