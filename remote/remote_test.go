package remote_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/remote"
)

func TestSuccessPostsTheCallAndReturnsTheBody(t *testing.T) {
	var got remote.Request
	var hdr http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hdr = r.Header.Clone()
		if r.Method != http.MethodPost {
			t.Errorf("method %s", r.Method)
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil {
			t.Errorf("decoding the request: %v", err)
		}
		io.WriteString(w, "charge-7")
	}))
	defer srv.Close()
	c := newClient(t, map[string]remote.EndpointConfig{"pay": {URL: srv.URL + "/pay"}}, remote.Options{})
	call := testCall(compensation.KindAction)
	out, err := action(t, c, "pay")(testCtx(t), call)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "charge-7" {
		t.Fatalf("output %q", out)
	}
	want := remote.Request{SagaID: "order-42", Definition: "order", Version: 3, Step: "pay", StepIndex: 1, Kind: "action",
		Input: call.Input, Attempt: 1, IdempotencyKey: call.IdempotencyKey, User: "alice"}
	if g, w := mustJSON(t, got), mustJSON(t, want); g != w {
		t.Fatalf("request\n got %s\nwant %s", g, w)
	}
	if hdr.Get("Idempotency-Key") != "order-42/pay/action" || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("headers %v", hdr)
	}
	if hdr.Get(remote.SignatureHeader) != "" {
		t.Fatal("signed without a secret")
	}
}

func TestCompensationSendsRecordedOutputAndUncertain(t *testing.T) {
	var got remote.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewDecoder(r.Body).Decode(&got)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	c := newClient(t, map[string]remote.EndpointConfig{"refund": {URL: srv.URL}}, remote.Options{})
	h, err := c.Handler("refund")
	if err != nil {
		t.Fatal(err)
	}
	call := testCall(compensation.KindCompensation)
	call.Output, call.Uncertain, call.Attempt = []byte("charge-7"), true, 4
	if err := h(testCtx(t), call); err != nil {
		t.Fatal(err)
	}
	if got.Kind != "compensation" || string(got.Output) != "charge-7" || !got.Uncertain || got.Attempt != 4 || got.IdempotencyKey != "order-42/pay/compensation" {
		t.Fatalf("request %+v", got)
	}
	if _, err := c.Handler("nope"); !errors.Is(err, remote.ErrUnknownEndpoint) {
		t.Fatalf("unknown endpoint: %v", err)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestClientErrorIsPermanentAndNamesEndpointNotURL(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "card declined\n\x00", http.StatusUnprocessableEntity)
	}))
	defer srv.Close()
	c := newClient(t, map[string]remote.EndpointConfig{"pay": {URL: srv.URL + "/pay?token=s3cret"}}, remote.Options{})
	_, err := action(t, c, "pay")(testCtx(t), testCall(compensation.KindAction))
	var re *remote.Error
	if !errors.As(err, &re) || !errors.Is(err, remote.ErrRejected) || !compensation.IsPermanent(err) || re.Retryable() {
		t.Fatalf("err %v (%T), want a permanent ErrRejected", err, err)
	}
	if re.Status != 422 || re.Endpoint != "pay" || re.Body != "card declined" {
		t.Fatalf("error %+v", re)
	}
	msg := err.Error()
	if !strings.Contains(msg, `"pay"`) || !strings.Contains(msg, "422") || strings.Contains(msg, "s3cret") || strings.Contains(msg, srv.URL) {
		t.Fatalf("message %q: want the endpoint's name and status, not its URL", msg)
	}
}

func TestServerErrorsAndTooManyRequestsAreRetryable(t *testing.T) {
	for _, code := range []int{500, 503, 408, 429} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) }))
		c := newClient(t, map[string]remote.EndpointConfig{"pay": {URL: srv.URL}}, remote.Options{})
		_, err := action(t, c, "pay")(testCtx(t), testCall(compensation.KindAction))
		var re *remote.Error
		if !errors.As(err, &re) || !errors.Is(err, remote.ErrServer) || compensation.IsPermanent(err) || !re.Retryable() || re.Status != code {
			t.Fatalf("%d: err %v, want a retryable ErrServer", code, err)
		}
		srv.Close()
	}
}

// A status of 600 or more is no HTTP status: a misbehaving endpoint, for
// an operator, not a server error to retry.
func TestStatusBeyondHTTPIsPermanent(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(799) }))
	defer srv.Close()
	c := newClient(t, map[string]remote.EndpointConfig{"pay": {URL: srv.URL}}, remote.Options{})
	_, err := action(t, c, "pay")(testCtx(t), testCall(compensation.KindAction))
	var re *remote.Error
	if !errors.As(err, &re) || !errors.Is(err, remote.ErrRejected) || !compensation.IsPermanent(err) || re.Retryable() ||
		re.Status != 799 || !strings.Contains(err.Error(), "not an HTTP status") {
		t.Fatalf("err %v, want a permanent ErrRejected naming the status", err)
	}
}

func TestRedirectIsNotFollowed(t *testing.T) {
	var followed atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { followed.Store(true) }))
	defer other.Close()
	srv := httptest.NewServer(http.RedirectHandler(other.URL, http.StatusTemporaryRedirect))
	defer srv.Close()
	c := newClient(t, map[string]remote.EndpointConfig{"pay": {URL: srv.URL}}, remote.Options{})
	_, err := action(t, c, "pay")(testCtx(t), testCall(compensation.KindAction))
	if !errors.Is(err, remote.ErrRejected) || !compensation.IsPermanent(err) || followed.Load() {
		t.Fatalf("err %v, followed %v: a redirect must be refused, not followed", err, followed.Load())
	}
}

func TestTimeoutIsRetryable(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // then the server notices the client hanging up
		<-r.Context().Done()        // never answers: the client's timeout ends it
	}))
	defer closeServer(srv)
	c := newClient(t, map[string]remote.EndpointConfig{"pay": {URL: srv.URL, Timeout: 50 * time.Millisecond}}, remote.Options{})
	_, err := action(t, c, "pay")(testCtx(t), testCall(compensation.KindAction))
	var re *remote.Error
	if !errors.As(err, &re) || !errors.Is(err, remote.ErrTimeout) || compensation.IsPermanent(err) || !re.Retryable() {
		t.Fatalf("err %v, want a retryable ErrTimeout", err)
	}
	if s := c.Stats()["pay"]; s.InFlight != 0 || s.Waiting != 0 {
		t.Fatalf("a timed-out call kept its slot: %+v", s)
	}
}

// Stats counts the attempts that ended by outcome, every outcome named,
// and sums their time.
func TestStatsCountAttemptsByOutcome(t *testing.T) {
	codes := []int{200, 200, 503, 422}
	var i atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n := int(i.Add(1)) - 1; n < len(codes) {
			w.WriteHeader(codes[n])
			return
		}
		t.Error("the abandoned call reached the endpoint")
	}))
	defer srv.Close()
	c := newClient(t, map[string]remote.EndpointConfig{"pay": {URL: srv.URL}}, remote.Options{})
	for range codes {
		_, _ = action(t, c, "pay")(testCtx(t), testCall(compensation.KindAction))
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	cancel()
	_, _ = action(t, c, "pay")(ctx, testCall(compensation.KindAction))
	s := c.Stats()["pay"]
	want := map[string]uint64{"ok": 2, "server": 1, "rejected": 1, "abandoned": 1, "timeout": 0, "unavailable": 0}
	if !maps.Equal(s.Attempts, want) || s.Time <= 0 {
		t.Fatalf("stats %+v, want attempts %v and a time", s, want)
	}
}

func TestConnectionRefusedIsRetryable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	c := newClient(t, map[string]remote.EndpointConfig{"pay": {URL: url}}, remote.Options{})
	_, err := action(t, c, "pay")(testCtx(t), testCall(compensation.KindAction))
	if !errors.Is(err, remote.ErrUnavailable) || compensation.IsPermanent(err) {
		t.Fatalf("err %v, want a retryable ErrUnavailable", err)
	}
}

func TestResponseBodyIsBounded(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(bytes.Repeat([]byte("x"), 1025))
	}))
	defer srv.Close()
	c := newClient(t, map[string]remote.EndpointConfig{
		"big": {URL: srv.URL, MaxResponseBytes: 1024}, "fits": {URL: srv.URL, MaxResponseBytes: 1025},
	}, remote.Options{})
	if _, err := action(t, c, "big")(testCtx(t), testCall(compensation.KindAction)); !errors.Is(err, remote.ErrResponseTooLarge) || !compensation.IsPermanent(err) {
		t.Fatalf("err %v, want a permanent ErrResponseTooLarge", err)
	}
	if out, err := action(t, c, "fits")(testCtx(t), testCall(compensation.KindAction)); err != nil || len(out) != 1025 {
		t.Fatalf("%d bytes, %v", len(out), err)
	}
	// A compensation's answer is not an output: its size does not matter.
	h, _ := c.Handler("big")
	if err := h(testCtx(t), testCall(compensation.KindCompensation)); err != nil {
		t.Fatalf("compensation with a long answer: %v", err)
	}
}

// The server must never see more than the endpoint's concurrency in
// flight, however many calls are made at once. It holds every request
// until the other calls are all queued behind the bound (Stats), so the
// bound is under full pressure; without the bound the extra requests
// reach the server, which then lets everything go and the peak shows it.
func TestConcurrencyBoundHolds(t *testing.T) {
	const bound, calls = 4, 50
	var inflight, peak, arrived atomic.Int32
	over := make(chan struct{})
	var overOnce sync.Once
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		arrived.Add(1)
		if n > bound {
			overOnce.Do(func() { close(over) })
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer closeServer(srv)
	c := newClient(t, map[string]remote.EndpointConfig{"pay": {URL: srv.URL, Concurrency: bound}}, remote.Options{})
	a := action(t, c, "pay")
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for range calls {
		wg.Go(func() {
			if _, err := a(ctx, testCall(compensation.KindAction)); err != nil {
				errs <- err
			}
		})
	}
	// Wait until bound calls are at the server and the rest queue behind
	// the bound, or the server sees too many.
	tick := time.NewTicker(time.Millisecond)
	for done := false; !done; {
		select {
		case <-over:
			done = true
		case <-ctx.Done():
			t.Fatalf("the calls never queued: %+v, %d at the server", c.Stats()["pay"], inflight.Load())
		case <-tick.C:
			s := c.Stats()["pay"]
			done = s.Waiting == calls-bound && inflight.Load() == bound
		}
	}
	tick.Stop()
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if p := peak.Load(); p > bound || arrived.Load() != calls {
		t.Fatalf("peak in flight %d (bound %d), %d of %d calls arrived", p, bound, arrived.Load(), calls)
	}
	if s := c.Stats()["pay"]; s.InFlight != 0 || s.Waiting != 0 || s.Attempts["ok"] != calls {
		t.Fatalf("stats after the calls: %+v", s)
	}
}

// A call waiting for a slot ends with its context, and never reaches the
// server.
func TestConcurrencyWaitEndsWithContext(t *testing.T) {
	var arrived atomic.Int32
	first := make(chan struct{})
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if arrived.Add(1) == 1 {
			close(first)
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer closeServer(srv)
	defer close(release)
	c := newClient(t, map[string]remote.EndpointConfig{"pay": {URL: srv.URL, Concurrency: 1}}, remote.Options{})
	a := action(t, c, "pay")
	ctx := testCtx(t)
	go a(ctx, testCall(compensation.KindAction))
	select {
	case <-first:
	case <-ctx.Done():
		t.Fatal("the first call never arrived")
	}
	wctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err := a(wctx, testCall(compensation.KindAction))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want the waiting call to end with its context", err)
	}
	if n := arrived.Load(); n != 1 {
		t.Fatalf("%d calls reached the server, want 1", n)
	}
}

func TestTraceContextTravelsInHeaders(t *testing.T) {
	var hdr http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hdr = r.Header.Clone() }))
	defer srv.Close()
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	ctx, span := tp.Tracer("test").Start(testCtx(t), "step pay")
	defer span.End()
	m, _ := baggage.NewMember("tenant", "acme")
	bag, _ := baggage.New(m)
	ctx = baggage.ContextWithBaggage(ctx, bag)
	c := newClient(t, map[string]remote.EndpointConfig{"pay": {URL: srv.URL}}, remote.Options{})
	if _, err := action(t, c, "pay")(ctx, testCall(compensation.KindAction)); err != nil {
		t.Fatal(err)
	}
	sc := span.SpanContext()
	want := "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"
	if got := hdr.Get("traceparent"); got != want {
		t.Fatalf("traceparent %q, want %q", got, want)
	}
	if got := hdr.Get("baggage"); got != "tenant=acme" {
		t.Fatalf("baggage %q", got)
	}
	// Without a span there is no traceparent.
	hdr = nil
	if _, err := action(t, c, "pay")(testCtx(t), testCall(compensation.KindAction)); err != nil {
		t.Fatal(err)
	}
	if got := hdr.Get("traceparent"); got != "" {
		t.Fatalf("traceparent %q without a span", got)
	}
}

func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	var handled atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handled.Add(1)
		io.WriteString(w, "ok")
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.server}, ClientCAs: p.pool, ClientAuth: tls.RequireAndVerifyClientCert}
	srv.StartTLS()
	defer srv.Close()
	c := newClient(t, map[string]remote.EndpointConfig{
		"mtls":   {URL: srv.URL, TLS: &remote.TLSConfig{CA: p.caFile, Cert: p.certFile, Key: p.keyFile}},
		"nocert": {URL: srv.URL, TLS: &remote.TLSConfig{CA: p.caFile}},
		"noca":   {URL: srv.URL},
	}, remote.Options{})
	out, err := action(t, c, "mtls")(testCtx(t), testCall(compensation.KindAction))
	if err != nil || string(out) != "ok" {
		t.Fatalf("with a client certificate: %q, %v", out, err)
	}
	for _, name := range []string{"nocert", "noca"} {
		_, err := action(t, c, name)(testCtx(t), testCall(compensation.KindAction))
		if !errors.Is(err, remote.ErrUnavailable) {
			t.Fatalf("%s: err %v, want the handshake refused (ErrUnavailable)", name, err)
		}
	}
	if n := handled.Load(); n != 1 {
		t.Fatalf("the handler ran %d times, want once (only with the client certificate)", n)
	}
}
