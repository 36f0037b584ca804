package remote_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/remote"
)

// seen is one request an endpoint received.
type seen struct {
	endpoint    string
	req         remote.Request
	key         string // the Idempotency-Key header
	traceparent string
}

// orderServer serves the seed's order-processing handlers. The payment
// fails once with a 503, the inventory's first attempt never answers
// (the endpoint's timeout ends it), and shipping refuses with a 422.
type orderServer struct {
	mu   sync.Mutex
	seen []seen
}

func (s *orderServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req remote.Request
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	io.Copy(io.Discard, r.Body) // then the server notices a client hanging up
	name := strings.TrimPrefix(r.URL.Path, "/")
	s.mu.Lock()
	s.seen = append(s.seen, seen{name, req, r.Header.Get("Idempotency-Key"), r.Header.Get("traceparent")})
	s.mu.Unlock()
	switch {
	case name == "process_payment" && req.Attempt == 1:
		http.Error(w, "payments busy", http.StatusServiceUnavailable)
	case name == "reserve_inventory" && req.Attempt == 1:
		<-r.Context().Done() // the client's timeout hangs up
	case name == "ship_product":
		http.Error(w, "no courier", http.StatusUnprocessableEntity)
	case req.Kind == "action":
		io.WriteString(w, name+"-out")
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *orderServer) calls() []seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seen)
}

// A real engine whose actions and compensations are all remote: the saga
// fails at its last step (a 4xx, not retried) and the steps before are
// compensated in reverse order over HTTP, each compensation handed what
// its action answered; a 5xx and a timeout are retried with the same
// idempotency key; every request carries the attempt's trace context.
func TestEngineCompensatesRemoteStepsInReverse(t *testing.T) {
	srv := &orderServer{}
	hs := httptest.NewServer(srv)
	defer closeServer(hs)
	names := []string{"create_order", "cancel_order", "process_payment", "refund_payment",
		"reserve_inventory", "release_inventory", "ship_product", "cancel_shipment"}
	eps := map[string]remote.EndpointConfig{}
	for _, n := range names {
		eps[n] = remote.EndpointConfig{URL: hs.URL + "/" + n, Concurrency: 2}
	}
	ep := eps["reserve_inventory"]
	ep.Timeout = 300 * time.Millisecond
	eps["reserve_inventory"] = ep
	client := newClient(t, eps, remote.Options{})
	reg := engine.NewRegistry()
	if err := client.Register(reg); err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(testCtx(t))
	e, err := engine.Open(t.TempDir(), engine.Options{Registry: reg, TracerProvider: tp, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	retry := engine.RetryPolicy{InitialBackoff: time.Millisecond, MaxAttempts: 5}
	_, err = e.Define(testCtx(t), engine.Definition{Name: "order", Steps: []engine.StepDef{
		{Name: "order", Action: "create_order", Compensation: "cancel_order"},
		{Name: "payment", Action: "process_payment", Compensation: "refund_payment", Retry: retry},
		{Name: "inventory", Action: "reserve_inventory", Compensation: "release_inventory", Retry: retry},
		{Name: "shipping", Action: "ship_product", Compensation: "cancel_shipment", Retry: retry},
	}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.Run(testCtx(t), "order", []byte(`{"sku":7}`), engine.StartOptions{ID: "order-42", User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != engine.StateFailed {
		t.Fatalf("state %s, want FAILED (compensated)", st.State)
	}
	if want := []string{"inventory", "payment", "order"}; !slices.Equal(st.Compensated, want) {
		t.Fatalf("compensated %v, want %v", st.Compensated, want)
	}
	if le := st.LastError; le == nil || le.Retryable || !strings.Contains(le.Message, `"ship_product"`) || !strings.Contains(le.Message, "422") {
		t.Fatalf("last error %+v: want the endpoint's permanent 422", le)
	}

	stepOf := map[string]string{"create_order": "order", "process_payment": "payment", "reserve_inventory": "inventory", "ship_product": "shipping",
		"cancel_order": "order", "refund_payment": "payment", "release_inventory": "inventory", "cancel_shipment": "shipping"}
	var order []string
	attempts := map[string][]int{}
	for _, c := range srv.calls() {
		r := c.req
		kind := compensation.KindAction
		if r.Kind == "compensation" {
			kind = compensation.KindCompensation
		}
		if r.SagaID != "order-42" || r.Definition != "order" || r.Version != 1 || r.Step != stepOf[c.endpoint] || r.User != "alice" || string(r.Input) != `{"sku":7}` {
			t.Errorf("%s: request %+v", c.endpoint, r)
		}
		// The key is the engine's: the same for every attempt of the call.
		if want := compensation.IdempotencyKey("order-42", r.Step, kind); c.key != want || r.IdempotencyKey != want {
			t.Errorf("%s attempt %d: key %q (body %q), want %q", c.endpoint, r.Attempt, c.key, r.IdempotencyKey, want)
		}
		if c.traceparent == "" {
			t.Errorf("%s attempt %d: no traceparent", c.endpoint, r.Attempt)
		}
		if kind == compensation.KindCompensation {
			order = append(order, c.endpoint)
			if want := actionOf(c.endpoint) + "-out"; string(r.Output) != want {
				t.Errorf("%s: output %q, want the action's answer %q", c.endpoint, r.Output, want)
			}
		}
		attempts[c.endpoint] = append(attempts[c.endpoint], r.Attempt)
	}
	if want := []string{"release_inventory", "refund_payment", "cancel_order"}; !slices.Equal(order, want) {
		t.Fatalf("compensations called %v, want %v", order, want)
	}
	if a := attempts["process_payment"]; !slices.Equal(a, []int{1, 2}) {
		t.Errorf("process_payment attempts %v, want the 503 retried once", a)
	}
	if a := attempts["reserve_inventory"]; len(a) < 2 || a[0] != 1 || a[1] != 2 {
		t.Errorf("reserve_inventory attempts %v, want the timeout retried", a)
	}
	if a := attempts["ship_product"]; !slices.Equal(a, []int{1}) {
		t.Errorf("ship_product attempts %v, want one: a 4xx is not retried", a)
	}
}

func actionOf(comp string) string {
	return map[string]string{"cancel_order": "create_order", "refund_payment": "process_payment", "release_inventory": "reserve_inventory"}[comp]
}

// openEngine opens an engine in a temp dir whose registry holds the
// client's endpoints.
func openEngine(t *testing.T, client *remote.Client) *engine.Engine {
	t.Helper()
	reg := engine.NewRegistry()
	if err := client.Register(reg); err != nil {
		t.Fatal(err)
	}
	e, err := engine.Open(t.TempDir(), engine.Options{Registry: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// A compensation endpoint answering 4xx is not retried: the saga is STUCK
// at once, for an operator, whatever the compensation's retry budget.
func TestEngineRemoteCompensationRefusedIsStuck(t *testing.T) {
	var mu sync.Mutex
	undos := 0
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fail":
			http.Error(w, "no", http.StatusBadRequest)
		case "/undo":
			mu.Lock()
			undos++
			mu.Unlock()
			http.Error(w, "unknown order", http.StatusNotFound)
		}
	}))
	defer hs.Close()
	client := newClient(t, map[string]remote.EndpointConfig{
		"do": {URL: hs.URL + "/do"}, "undo": {URL: hs.URL + "/undo"}, "fail": {URL: hs.URL + "/fail"},
	}, remote.Options{})
	e := openEngine(t, client)
	_, err := e.Define(testCtx(t), engine.Definition{Name: "d", Steps: []engine.StepDef{
		{Name: "a", Action: "do", Compensation: "undo", CompensationRetry: engine.RetryPolicy{InitialBackoff: time.Millisecond, MaxAttempts: 10}},
		{Name: "b", Action: "fail"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.Run(testCtx(t), "d", nil, engine.StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if st.State != engine.StateStuck || undos != 1 {
		t.Fatalf("state %s after %d compensation calls, want STUCK after 1", st.State, undos)
	}
}

// After a restart with many sagas to resume, the endpoint's service
// never sees more than its concurrency in flight: the rest wait in the
// engine. The first engine is closed while 40 sagas are in their first
// step (3 at the service, 37 queued); the second resumes them all at once
// (OnUncertain: retry). The service holds every request until the other
// calls are all queued behind the bound, so the bound is under full
// pressure; without it the extra requests reach the service at once.
func TestEngineResumeAfterRestartRespectsTheBound(t *testing.T) {
	const bound, sagas = 3, 40
	var mu sync.Mutex
	inflight, peak, phase := 0, 0, 1
	release := make(chan struct{}) // phase 2: the service answers
	over := make(chan struct{})    // phase 2: more than bound in flight
	var overOnce sync.Once
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		inflight++
		p := phase
		if p == 2 {
			peak = max(peak, inflight)
			if inflight > bound {
				overOnce.Do(func() { close(over) })
			}
		}
		mu.Unlock()
		defer func() { mu.Lock(); inflight--; mu.Unlock() }()
		if p == 1 {
			<-r.Context().Done() // the first engine closes meanwhile
			return
		}
		select {
		case <-release:
			io.WriteString(w, "ok")
		case <-r.Context().Done():
		}
	}))
	defer closeServer(hs)
	client := newClient(t, map[string]remote.EndpointConfig{"step": {URL: hs.URL, Concurrency: bound}}, remote.Options{})
	reg := engine.NewRegistry()
	if err := client.Register(reg); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	opts := engine.Options{Registry: reg, Logger: slog.New(slog.DiscardHandler)}
	e, err := engine.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if _, err := e.Define(ctx, engine.Definition{Name: "d", Steps: []engine.StepDef{
		{Name: "a", Action: "step", OnUncertain: engine.UncertainRetry}, {Name: "b", Action: "step"},
	}}); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, sagas)
	var wg sync.WaitGroup
	for i := range ids {
		ids[i] = fmt.Sprintf("saga-%d", i)
		wg.Go(func() { e.Run(ctx, "d", nil, engine.StartOptions{ID: ids[i]}) }) // ends when e closes
	}
	waitFor(t, ctx, "40 sagas in their first step", func() bool {
		s := client.Stats()["step"]
		return s.InFlight+s.Waiting == sagas
	})
	e.Close()
	wg.Wait()

	mu.Lock()
	phase = 2
	mu.Unlock()
	e, err = engine.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	waitFor(t, ctx, "the resumed calls queued behind the bound (or too many at the service)", func() bool {
		select {
		case <-over:
			return true
		default:
		}
		s := client.Stats()["step"]
		return s.InFlight == bound && s.Waiting == sagas-bound
	})
	close(release)
	for _, id := range ids {
		st, err := e.Wait(ctx, id)
		if err != nil || st.State != engine.StateCompleted {
			t.Fatalf("%s: %v, %v", id, st, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if peak > bound {
		t.Fatalf("the service saw %d calls in flight after the restart; the bound is %d", peak, bound)
	}
}

// waitFor polls cond until it holds, failing the test when ctx ends.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-tick.C:
		}
	}
}
