package service_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sagaengine/saga/engine"
	sagav1 "github.com/sagaengine/saga/gen/saga/v1"
	"github.com/sagaengine/saga/gen/saga/v1/sagav1connect"
	"github.com/sagaengine/saga/service"
)

const token = "test-token"

type fixture struct {
	eng    *engine.Engine
	url    string
	client sagav1connect.SagaServiceClient

	mu       sync.Mutex
	refunded []string // outputs the refund handler was called with
}

// newFixture serves a fresh engine over httptest, behind RequireToken,
// with a connect client that sends the token. The engine holds one
// compensation handler, "refund".
func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{}
	reg := engine.NewRegistry()
	if err := reg.Register("refund", func(ctx context.Context, c engine.Call) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.refunded = append(f.refunded, string(c.Output))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e, err := engine.Open(t.TempDir(), engine.Options{Registry: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	srv, err := service.New(e, service.Options{MaxRequestBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(srv.Handler())
	hs := httptest.NewUnstartedServer(service.RequireToken(token, mux))
	hs.EnableHTTP2 = true
	hs.StartTLS()
	t.Cleanup(hs.Close)
	f.eng, f.url = e, hs.URL
	f.client = sagav1connect.NewSagaServiceClient(hs.Client(), hs.URL, connect.WithInterceptors(bearer(token)))
	return f
}

// bearer sends the token with every call.
func bearer(tok string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+tok)
			return next(ctx, req)
		}
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (f *fixture) lastIndex(t *testing.T) uint64 {
	t.Helper()
	li, err := f.eng.LogInfo()
	if err != nil {
		t.Fatal(err)
	}
	return li.LastIndex
}

var checkout = &sagav1.Definition{Name: "checkout", Steps: []*sagav1.StepDef{
	{Name: "payment", Compensation: "refund"},
	{Name: "shipping"},
}}

func (f *fixture) define(t *testing.T, ctx context.Context) {
	t.Helper()
	if _, err := f.client.Define(ctx, connect.NewRequest(&sagav1.DefineRequest{Definition: checkout})); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) start(t *testing.T, ctx context.Context, key string) *sagav1.Saga {
	t.Helper()
	res, err := f.client.Start(ctx, connect.NewRequest(&sagav1.StartRequest{
		Definition: "checkout", Input: []byte(`{"order":1}`), IdempotencyKey: key,
		User: "alice", Meta: map[string]string{"tenant": "acme"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.Saga
}

func (f *fixture) advance(ctx context.Context, id, step, output string) (*sagav1.Saga, error) {
	res, err := f.client.Advance(ctx, connect.NewRequest(&sagav1.AdvanceRequest{SagaId: id, Step: step, Output: []byte(output)}))
	if err != nil {
		return nil, err
	}
	return res.Msg.Saga, nil
}

// errOf is the error of a call that returns a value and an error, for
// tables of calls that must be refused.
func errOf[T any](_ T, err error) error { return err }

func wantCode(t *testing.T, what string, err error, code connect.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %v", what, code)
	}
	if got := connect.CodeOf(err); got != code {
		t.Fatalf("%s: code %v, want %v (%v)", what, got, code, err)
	}
}

func TestDefineStartAdvanceStatusHistory(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	def, err := f.client.Define(ctx, connect.NewRequest(&sagav1.DefineRequest{Definition: checkout}))
	if err != nil {
		t.Fatal(err)
	}
	if v := def.Msg.Definition.Version; v != 1 {
		t.Fatalf("version %d, want 1", v)
	}
	sg := f.start(t, ctx, "order-1")
	if sg.State != sagav1.SagaState_SAGA_STATE_IN_PROGRESS || sg.CurrentStep != "payment" || sg.User != "alice" ||
		sg.Meta["tenant"] != "acme" || string(sg.Input) != `{"order":1}` || sg.Driven {
		t.Fatalf("started saga: %v", sg)
	}
	if sg, err = f.advance(ctx, sg.Id, "payment", "ch_1"); err != nil {
		t.Fatal(err)
	}
	if sg.CurrentStep != "shipping" {
		t.Fatalf("after payment: current %q", sg.CurrentStep)
	}
	if sg, err = f.advance(ctx, sg.Id, "shipping", "tr_9"); err != nil {
		t.Fatal(err)
	}
	st, err := f.client.Status(ctx, connect.NewRequest(&sagav1.StatusRequest{SagaId: sg.Id}))
	if err != nil {
		t.Fatal(err)
	}
	got := st.Msg.Saga
	if got.State != sagav1.SagaState_SAGA_STATE_COMPLETED || strings.Join(got.Completed, ",") != "payment,shipping" ||
		string(got.Steps[0].Output) != "ch_1" || got.Steps[1].Status != sagav1.StepStatus_STEP_STATUS_DONE {
		t.Fatalf("status: %v", got)
	}
	h, err := f.client.History(ctx, connect.NewRequest(&sagav1.HistoryRequest{SagaId: sg.Id}))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, tr := range h.Msg.Transitions {
		kinds = append(kinds, tr.Kind+":"+tr.StepName)
	}
	if want := "saga_started:payment step_completed:payment step_completed:shipping"; strings.Join(kinds, " ") != want {
		t.Fatalf("history %q, want %q", kinds, want)
	}
	w, err := f.client.Wait(ctx, connect.NewRequest(&sagav1.WaitRequest{SagaId: sg.Id}))
	if err != nil || !w.Msg.Settled {
		t.Fatalf("wait on a completed saga: %v %v", w, err)
	}
	l, err := f.client.List(ctx, connect.NewRequest(&sagav1.ListRequest{Filter: &sagav1.SagaFilter{
		State: sagav1.SagaState_SAGA_STATE_COMPLETED, Definition: "checkout", Tenant: "acme"}}))
	if err != nil || len(l.Msg.Sagas) != 1 || l.Msg.Sagas[0].Id != sg.Id {
		t.Fatalf("list: %v %v", l, err)
	}
}

func TestStartWithTheSameKeyReturnsTheFirstSaga(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.define(t, ctx)
	first := f.start(t, ctx, "order-7")
	before := f.lastIndex(t)
	again := f.start(t, ctx, "order-7")
	if again.Id != first.Id {
		t.Fatalf("second start: saga %s, want %s", again.Id, first.Id)
	}
	if f.lastIndex(t) != before {
		t.Fatal("a repeated start wrote to the log")
	}
	n, err := f.client.Count(ctx, connect.NewRequest(&sagav1.CountRequest{}))
	if err != nil || n.Msg.Count != 1 {
		t.Fatalf("count %v %v, want 1", n, err)
	}
}

func TestAdvanceResentIsIdempotent(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.define(t, ctx)
	sg := f.start(t, ctx, "")
	if _, err := f.advance(ctx, sg.Id, "payment", "ch_1"); err != nil {
		t.Fatal(err)
	}
	before := f.lastIndex(t)
	again, err := f.advance(ctx, sg.Id, "payment", "ch_1")
	if err != nil {
		t.Fatalf("the same result re-sent: %v", err)
	}
	if again.CurrentStep != "shipping" || f.lastIndex(t) != before {
		t.Fatalf("a re-sent result changed something: %v", again)
	}
	// Another result for a step already reported is refused.
	_, err = f.advance(ctx, sg.Id, "payment", "ch_2")
	wantCode(t, "a different result for a reported step", err, connect.CodeFailedPrecondition)
	if f.lastIndex(t) != before {
		t.Fatal("a refused advance wrote to the log")
	}
}

func TestFailedStepIsCompensated(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.define(t, ctx)
	sg := f.start(t, ctx, "")
	if _, err := f.advance(ctx, sg.Id, "payment", "ch_1"); err != nil {
		t.Fatal(err)
	}
	res, err := f.client.Advance(ctx, connect.NewRequest(&sagav1.AdvanceRequest{SagaId: sg.Id, Step: "shipping",
		Error: &sagav1.ErrorInfo{Kind: "permanent", Message: "no courier"}}))
	if err != nil {
		t.Fatal(err)
	}
	if s := res.Msg.Saga.State; s != sagav1.SagaState_SAGA_STATE_COMPENSATING && s != sagav1.SagaState_SAGA_STATE_FAILED {
		t.Fatalf("after a failed step: %v", s)
	}
	w, err := f.client.Wait(ctx, connect.NewRequest(&sagav1.WaitRequest{SagaId: sg.Id, Timeout: durationpb.New(20 * time.Second)}))
	if err != nil {
		t.Fatal(err)
	}
	if !w.Msg.Settled || w.Msg.Saga.State != sagav1.SagaState_SAGA_STATE_FAILED || strings.Join(w.Msg.Saga.Compensated, ",") != "payment" {
		t.Fatalf("after compensation: %v", w.Msg)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if strings.Join(f.refunded, ",") != "ch_1" {
		t.Fatalf("refund saw %q, want the payment's output", f.refunded)
	}
}

func TestWaitReturnsUnsettledAtItsTimeout(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.define(t, ctx)
	sg := f.start(t, ctx, "")
	w, err := f.client.Wait(ctx, connect.NewRequest(&sagav1.WaitRequest{SagaId: sg.Id, Timeout: durationpb.New(50 * time.Millisecond)}))
	if err != nil {
		t.Fatal(err)
	}
	if w.Msg.Settled || w.Msg.Saga.State != sagav1.SagaState_SAGA_STATE_IN_PROGRESS {
		t.Fatalf("wait past its timeout: %v", w.Msg)
	}
}

func TestOperatorCalls(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.define(t, ctx)
	sg := f.start(t, ctx, "")
	_, err := f.client.Retry(ctx, connect.NewRequest(&sagav1.RetryRequest{SagaId: sg.Id, Actor: "bob", Reason: "try"}))
	wantCode(t, "retry of a saga that is not STUCK", err, connect.CodeFailedPrecondition)
	_, err = f.client.Abort(ctx, connect.NewRequest(&sagav1.AbortRequest{SagaId: sg.Id, Actor: "bob"}))
	wantCode(t, "abort without a reason", err, connect.CodeInvalidArgument)
	// The actor is the token's name (RequireToken's is "default"), not
	// what the request says.
	res, err := f.client.Abort(ctx, connect.NewRequest(&sagav1.AbortRequest{SagaId: sg.Id, Actor: "bob", Reason: "customer cancelled"}))
	if err != nil {
		t.Fatal(err)
	}
	if s := res.Msg.Saga.State; s == sagav1.SagaState_SAGA_STATE_IN_PROGRESS {
		t.Fatalf("after abort: %v", s)
	}
	h, err := f.client.History(ctx, connect.NewRequest(&sagav1.HistoryRequest{SagaId: sg.Id}))
	if err != nil {
		t.Fatal(err)
	}
	last := h.Msg.Transitions[1]
	if last.Kind != "aborted" || last.Actor != "default" || last.Reason != "customer cancelled" {
		t.Fatalf("abort recorded as %v", last)
	}
}

// TestBadRequestsChangeNothing sends every kind of bad request and checks
// its code, and that the log did not grow.
func TestBadRequestsChangeNothing(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.define(t, ctx)
	sg := f.start(t, ctx, "")
	before := f.lastIndex(t)
	c := f.client
	for _, tc := range []struct {
		name string
		call func() error
		code connect.Code
	}{
		{"start of an unknown definition", func() error {
			return errOf(c.Start(ctx, connect.NewRequest(&sagav1.StartRequest{Definition: "nope"})))
		}, connect.CodeNotFound},
		{"start without a definition", func() error {
			return errOf(c.Start(ctx, connect.NewRequest(&sagav1.StartRequest{})))
		}, connect.CodeInvalidArgument},
		{"start with a malformed id", func() error {
			return errOf(c.Start(ctx, connect.NewRequest(&sagav1.StartRequest{Definition: "checkout", Id: "a b"})))
		}, connect.CodeInvalidArgument},
		{"start with an id already used", func() error {
			return errOf(c.Start(ctx, connect.NewRequest(&sagav1.StartRequest{Definition: "checkout", Id: sg.Id})))
		}, connect.CodeAlreadyExists},
		{"start with an id already used and a new idempotency key", func() error {
			return errOf(c.Start(ctx, connect.NewRequest(&sagav1.StartRequest{Definition: "checkout", Id: sg.Id, IdempotencyKey: "fresh-key"})))
		}, connect.CodeAlreadyExists},
		{"start with a negative timeout", func() error {
			return errOf(c.Start(ctx, connect.NewRequest(&sagav1.StartRequest{Definition: "checkout", Timeout: durationpb.New(-time.Second)})))
		}, connect.CodeInvalidArgument},
		{"define without a definition", func() error {
			return errOf(c.Define(ctx, connect.NewRequest(&sagav1.DefineRequest{})))
		}, connect.CodeInvalidArgument},
		{"define with duplicate steps", func() error {
			return errOf(c.Define(ctx, connect.NewRequest(&sagav1.DefineRequest{Definition: &sagav1.Definition{Name: "dup",
				Steps: []*sagav1.StepDef{{Name: "a"}, {Name: "a"}}}})))
		}, connect.CodeInvalidArgument},
		{"define with no name", func() error {
			return errOf(c.Define(ctx, connect.NewRequest(&sagav1.DefineRequest{Definition: &sagav1.Definition{Steps: []*sagav1.StepDef{{Name: "a"}}}})))
		}, connect.CodeInvalidArgument},
		{"define with a bad jitter", func() error {
			return errOf(c.Define(ctx, connect.NewRequest(&sagav1.DefineRequest{Definition: &sagav1.Definition{Name: "j",
				Steps: []*sagav1.StepDef{{Name: "a", Retry: &sagav1.RetryPolicy{Jitter: 2}}}}})))
		}, connect.CodeInvalidArgument},
		{"define with an unknown handler", func() error {
			return errOf(c.Define(ctx, connect.NewRequest(&sagav1.DefineRequest{Definition: &sagav1.Definition{Name: "h",
				Steps: []*sagav1.StepDef{{Name: "a", Compensation: "nobody"}}}})))
		}, connect.CodeFailedPrecondition},
		{"advance of a step that is not current", func() error {
			return errOf(f.advance(ctx, sg.Id, "shipping", "x"))
		}, connect.CodeFailedPrecondition},
		{"advance of a step the saga does not have", func() error {
			return errOf(f.advance(ctx, sg.Id, "nope", "x"))
		}, connect.CodeFailedPrecondition},
		{"advance of an unknown saga", func() error {
			return errOf(f.advance(ctx, "nope", "payment", "x"))
		}, connect.CodeNotFound},
		{"advance without a step", func() error {
			return errOf(f.advance(ctx, sg.Id, "", "x"))
		}, connect.CodeInvalidArgument},
		{"advance of a failure without a message", func() error {
			return errOf(c.Advance(ctx, connect.NewRequest(&sagav1.AdvanceRequest{SagaId: sg.Id, Step: "payment", Error: &sagav1.ErrorInfo{}})))
		}, connect.CodeInvalidArgument},
		{"status of an unknown saga", func() error {
			return errOf(c.Status(ctx, connect.NewRequest(&sagav1.StatusRequest{SagaId: "nope"})))
		}, connect.CodeNotFound},
		{"list with a version but no definition", func() error {
			return errOf(c.List(ctx, connect.NewRequest(&sagav1.ListRequest{Filter: &sagav1.SagaFilter{Version: 2}})))
		}, connect.CodeInvalidArgument},
		{"list with a malformed cursor", func() error {
			return errOf(c.List(ctx, connect.NewRequest(&sagav1.ListRequest{Cursor: "!!"})))
		}, connect.CodeInvalidArgument},
		{"list with an unknown state", func() error {
			return errOf(c.List(ctx, connect.NewRequest(&sagav1.ListRequest{Filter: &sagav1.SagaFilter{State: 42}})))
		}, connect.CodeInvalidArgument},
		{"wait longer than the bound", func() error {
			return errOf(c.Wait(ctx, connect.NewRequest(&sagav1.WaitRequest{SagaId: sg.Id, Timeout: durationpb.New(time.Hour)})))
		}, connect.CodeInvalidArgument},
		{"resolve without a reason", func() error {
			return errOf(c.Resolve(ctx, connect.NewRequest(&sagav1.ResolveRequest{SagaId: sg.Id, Actor: "bob"})))
		}, connect.CodeInvalidArgument},
		{"an oversized request", func() error {
			return errOf(c.Start(ctx, connect.NewRequest(&sagav1.StartRequest{Definition: "checkout", Input: make([]byte, 100<<10)})))
		}, connect.CodeResourceExhausted},
	} {
		wantCode(t, tc.name, tc.call(), tc.code)
		if f.lastIndex(t) != before {
			t.Fatalf("%s: the log grew", tc.name)
		}
	}
	st, err := c.Status(ctx, connect.NewRequest(&sagav1.StatusRequest{SagaId: sg.Id}))
	if err != nil || st.Msg.Saga.CurrentStep != "payment" || st.Msg.Saga.State != sagav1.SagaState_SAGA_STATE_IN_PROGRESS {
		t.Fatalf("the saga changed: %v %v", st, err)
	}
}

func TestCallsWithoutTheTokenAreRefused(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for name, c := range map[string]sagav1connect.SagaServiceClient{
		"no token":    sagav1connect.NewSagaServiceClient(hc, f.url),
		"wrong token": sagav1connect.NewSagaServiceClient(hc, f.url, connect.WithInterceptors(bearer("guess"))),
	} {
		_, err := c.Define(ctx, connect.NewRequest(&sagav1.DefineRequest{Definition: checkout}))
		wantCode(t, name, err, connect.CodeUnauthenticated)
	}
	_, err := f.client.GetDefinition(ctx, connect.NewRequest(&sagav1.GetDefinitionRequest{Name: "checkout"}))
	wantCode(t, "the definition an unauthenticated call sent", err, connect.CodeNotFound)
	// Plain HTTP without the token: 401.
	resp, err := hc.Post(f.url+"/saga.v1.SagaService/Status", "application/json", strings.NewReader(`{"sagaId":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("plain HTTP without a token: %d, want 401", resp.StatusCode)
	}
}

// TestJSONOverHTTP drives the service with net/http and JSON alone, as
// curl or any language's HTTP library would.
func TestJSONOverHTTP(t *testing.T) {
	f := newFixture(t)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	post := func(method, body string) (int, map[string]any) {
		t.Helper()
		req, err := http.NewRequest("POST", f.url+"/saga.v1.SagaService/"+method, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: not JSON: %s", method, b)
		}
		return resp.StatusCode, m
	}
	code, m := post("Define", `{"definition":{"name":"checkout","steps":[{"name":"payment"},{"name":"shipping"}]}}`)
	if code != 200 || m["definition"].(map[string]any)["version"] != 1.0 {
		t.Fatalf("define: %d %v", code, m)
	}
	code, m = post("Start", `{"definition":"checkout","idempotencyKey":"order-1","user":"alice","input":"eyJvcmRlciI6MX0="}`)
	if code != 200 {
		t.Fatalf("start: %d %v", code, m)
	}
	sg := m["saga"].(map[string]any)
	id := sg["id"].(string)
	if sg["state"] != "SAGA_STATE_IN_PROGRESS" || sg["currentStep"] != "payment" {
		t.Fatalf("start: %v", sg)
	}
	code, m = post("Advance", `{"sagaId":"`+id+`","step":"payment","output":"Y2hfMQ=="}`)
	if code != 200 || m["saga"].(map[string]any)["currentStep"] != "shipping" {
		t.Fatalf("advance: %d %v", code, m)
	}
	// The proto field names work as well as the JSON names.
	code, m = post("Status", `{"saga_id":"`+id+`"}`)
	if code != 200 || m["saga"].(map[string]any)["id"] != id {
		t.Fatalf("status: %d %v", code, m)
	}
	before := f.lastIndex(t)
	for _, tc := range []struct{ method, body, code string }{
		{"Start", `{"definition":`, "invalid_argument"},                                // malformed JSON
		{"Start", `{"definition":"checkout","color":"red"}`, "invalid_argument"},       // an unknown field
		{"Start", `{"definition":"nope"}`, "not_found"},                                // an unknown definition
		{"Advance", `{"sagaId":"` + id + `","step":"payment"}`, "failed_precondition"}, // not the current step
	} {
		code, m := post(tc.method, tc.body)
		if m["code"] != tc.code || code < 400 {
			t.Errorf("%s %s: %d %v, want %s", tc.method, tc.body, code, m, tc.code)
		}
	}
	if f.lastIndex(t) != before {
		t.Fatal("a bad JSON request wrote to the log")
	}
}

// TestGRPC speaks gRPC over unencrypted HTTP/2, as sagad serves it, and
// gRPC-Web over HTTP/1.
func TestGRPC(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	srv, err := service.New(f.eng, service.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(srv.Handler())
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: service.RequireToken(token, mux), Protocols: p}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	cp := new(http.Protocols)
	cp.SetUnencryptedHTTP2(true)
	hc := &http.Client{Transport: &http.Transport{Protocols: cp}}
	c := sagav1connect.NewSagaServiceClient(hc, "http://"+ln.Addr().String(), connect.WithGRPC(), connect.WithInterceptors(bearer(token)))
	if _, err := c.Define(ctx, connect.NewRequest(&sagav1.DefineRequest{Definition: checkout})); err != nil {
		t.Fatal(err)
	}
	_, err = c.Status(ctx, connect.NewRequest(&sagav1.StatusRequest{SagaId: "nope"}))
	wantCode(t, "gRPC status of an unknown saga", err, connect.CodeNotFound)
	_, err = sagav1connect.NewSagaServiceClient(hc, "http://"+ln.Addr().String(), connect.WithGRPC()).
		Status(ctx, connect.NewRequest(&sagav1.StatusRequest{SagaId: "nope"}))
	wantCode(t, "gRPC without the token", err, connect.CodeUnauthenticated)
	web := sagav1connect.NewSagaServiceClient(http.DefaultClient, "http://"+ln.Addr().String(), connect.WithGRPCWeb(), connect.WithInterceptors(bearer(token)))
	d, err := web.GetDefinition(ctx, connect.NewRequest(&sagav1.GetDefinitionRequest{Name: "checkout"}))
	if err != nil || d.Msg.Definition.Version != 1 {
		t.Fatalf("gRPC-Web: %v %v", d, err)
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	_, err := service.New(nil, service.Options{MaxRequestBytes: -1, DefaultWait: time.Hour, MaxWait: time.Minute})
	if !errors.Is(err, service.ErrInvalidOptions) || !strings.Contains(err.Error(), "MaxRequestBytes") || !strings.Contains(err.Error(), "DefaultWait") {
		t.Fatalf("New with bad options: %v", err)
	}
}

// TestStartResentWithItsIDAndKey: a start re-sent with the id and key it
// was started with answers the saga, without a write.
func TestStartResentWithItsIDAndKey(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.define(t, ctx)
	req := &sagav1.StartRequest{Definition: "checkout", Id: "o-9", IdempotencyKey: "k-9"}
	if _, err := f.client.Start(ctx, connect.NewRequest(req)); err != nil {
		t.Fatal(err)
	}
	before := f.lastIndex(t)
	res, err := f.client.Start(ctx, connect.NewRequest(req))
	if err != nil || res.Msg.Saga.Id != "o-9" {
		t.Fatalf("re-sent start: %v %v", res, err)
	}
	if f.lastIndex(t) != before {
		t.Fatal("a re-sent start wrote to the log")
	}
}
