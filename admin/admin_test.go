package admin

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/policy"

	"github.com/sagaengine/saga/internal/testctx"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const token = "0123456789abcdef-secret"

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// fixture: an engine with a COMPLETED, a FAILED and a STUCK saga, its
// observer and the API's handler.
func fixture(t *testing.T) (*engine.Engine, *Observer, http.Handler) {
	return fixtureWith(t, Options{Token: token})
}

// fixtureWith is fixture with opts' Token or Tokens.
func fixtureWith(t *testing.T, opts Options) (*engine.Engine, *Observer, http.Handler) {
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	must(t, reg.RegisterAction("boom", func(context.Context, compensation.Call) ([]byte, error) {
		return nil, compensation.Permanent(errors.New("declined"))
	}))
	must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	must(t, reg.Register("broken", func(context.Context, compensation.Call) error { return errors.New("down") }))
	obs := NewObserver()
	e, err := engine.Open(t.TempDir(), engine.Options{Registry: reg, Logger: quiet, Hooks: obs.Hooks()})
	must(t, err)
	t.Cleanup(func() { e.Close() })
	ctx := testctx.New(t)
	for _, d := range []engine.Definition{
		{Name: "order", Steps: []engine.StepDef{{Name: "pay", Action: "ok", Compensation: "undo"}, {Name: "ship", Action: "ok"}}},
		{Name: "failing", Steps: []engine.StepDef{{Name: "pay", Action: "ok", Compensation: "undo"}, {Name: "ship", Action: "boom"}}},
		{Name: "stucky", Steps: []engine.StepDef{{Name: "pay", Action: "ok", Compensation: "broken",
			CompensationRetry: engine.RetryPolicy{MaxAttempts: 1}}, {Name: "ship", Action: "boom"}}},
	} {
		_, err := e.Define(ctx, d)
		must(t, err)
	}
	for _, r := range [][2]string{{"order", "ok-1"}, {"failing", "failed-1"}, {"stucky", "stuck-1"}} {
		_, err := e.Run(ctx, r[0], nil, engine.StartOptions{ID: r[1]})
		must(t, err)
	}
	pm, err := policy.New(policy.Options{Logger: quiet, LookupEnv: func(string) (string, bool) { return "", false }})
	must(t, err)
	opts.Policy, opts.Logger = pm, quiet
	srv, err := New(e, obs, opts)
	must(t, err)
	return e, obs, srv.Handler()
}

// call serves one request. Its context ends after 5 s, so that a
// streaming endpoint (the watch) reached by mistake returns instead of
// holding the test forever.
func call(h http.Handler, method, path, auth, body string) *httptest.ResponseRecorder {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req := httptest.NewRequestWithContext(ctx, method, path, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestRefusesToRunOpen(t *testing.T) {
	if _, err := New(nil, nil, Options{}); !errors.Is(err, ErrNoToken) {
		t.Fatalf("no token: %v", err)
	}
	if _, err := New(nil, nil, Options{Token: "short"}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("short token: %v", err)
	}
}

// TestAuthMatrix: every endpoint but /healthz refuses a request without
// the token or with a wrong one, and changes nothing.
func TestAuthMatrix(t *testing.T) {
	e, _, h := fixture(t)
	endpoints := []struct{ method, path, body string }{
		{"GET", "/metrics", ""},
		{"GET", "/v1/status", ""},
		{"GET", "/v1/sagas", ""},
		{"GET", "/v1/sagas/stuck-1", ""},
		{"GET", "/v1/count", ""},
		{"GET", "/v1/definitions", ""},
		{"POST", "/v1/sagas/stuck-1/retry", `{"actor":"mallory"}`},
		{"POST", "/v1/sagas/stuck-1/resolve", `{"actor":"mallory","reason":"x"}`},
		{"POST", "/v1/sagas/ok-1/abort", `{"actor":"mallory","reason":"x"}`},
		{"GET", "/v1/watch", ""},
		{"GET", "/v1/policy", ""},
		{"PUT", "/v1/policy", "enable_saga: true\n"},
		{"DELETE", "/v1/policy", ""},
		{"GET", "/v1/policy/explain?operation=x", ""},
		{"GET", "/v1/nothing-here", ""},
	}
	before, _ := e.History(testctx.New(t), "stuck-1")
	for _, ep := range endpoints {
		for _, auth := range []string{"", "Bearer wrong-token", "Bearer " + token + "x", "Basic " + token, token} {
			rec := call(h, ep.method, ep.path, auth, ep.body)
			if rec.Code != http.StatusUnauthorized || !strings.Contains(rec.Body.String(), `"error"`) {
				t.Errorf("%s %s with %q: %d %s", ep.method, ep.path, auth, rec.Code, rec.Body.String())
			}
		}
	}
	after, _ := e.History(testctx.New(t), "stuck-1")
	if len(after) != len(before) {
		t.Fatal("an unauthenticated request changed a saga")
	}
	st, _ := e.Status(testctx.New(t), "stuck-1")
	if st.State != fsm.StateStuck {
		t.Fatalf("stuck-1 is %s", st.State)
	}
	if rec := call(h, "GET", "/healthz", "", ""); rec.Code != http.StatusOK {
		t.Fatalf("healthz: %d", rec.Code)
	}
}

func TestBadRequestsChangeNothing(t *testing.T) {
	e, _, h := fixture(t)
	auth := "Bearer " + token
	cases := []struct {
		method, path, body string
		code               int
	}{
		{"POST", "/v1/sagas/stuck-1/retry", `{"actor":`, http.StatusBadRequest},               // malformed JSON
		{"POST", "/v1/sagas/stuck-1/retry", `{"actor":"a","extra":1}`, http.StatusBadRequest}, // unknown field
		{"POST", "/v1/sagas/nope/retry", `{"actor":"a"}`, http.StatusNotFound},
		{"POST", "/v1/sagas/ok-1/retry", `{"actor":"a"}`, http.StatusConflict}, // illegal for its state
		{"POST", "/v1/sagas/ok-1/frob", `{"actor":"a"}`, http.StatusNotFound},
		{"POST", "/v1/sagas/stuck-1/abort", `{"actor":"a"}`, http.StatusBadRequest},                                  // no reason
		{"POST", "/v1/sagas/stuck-1/retry", `{"actor":"` + strings.Repeat("a", 2<<20) + `"}`, http.StatusBadRequest}, // oversized
		{"GET", "/v1/sagas?state=SOMETIMES", "", http.StatusBadRequest},
		{"GET", "/v1/sagas?limit=-1", "", http.StatusBadRequest},
		{"GET", "/v1/sagas?order=sideways", "", http.StatusBadRequest},
		{"GET", "/v1/sagas?version=2", "", http.StatusBadRequest}, // a version needs a definition
		{"GET", "/v1/sagas?meta=novalue", "", http.StatusBadRequest},
		{"GET", "/v1/sagas?since=yesterday", "", http.StatusBadRequest},
		{"GET", "/v1/sagas?since=1h&until=2h", "", http.StatusBadRequest}, // an empty range
		{"GET", "/v1/sagas?cursor=stuck-1", "", http.StatusBadRequest},    // not a cursor
		{"GET", "/v1/count?updated_since=-1h", "", http.StatusBadRequest},
		{"GET", "/v1/sagas/nope", "", http.StatusNotFound},
		{"PUT", "/v1/policy", "enable_saga: maybe\n", http.StatusBadRequest},
		{"GET", "/v1/policy/explain", "", http.StatusBadRequest},
	}
	before, _ := e.History(testctx.New(t), "stuck-1")
	for _, c := range cases {
		rec := call(h, c.method, c.path, auth, c.body)
		if rec.Code != c.code || !strings.Contains(rec.Body.String(), `"error"`) {
			t.Errorf("%s %s %.40q: %d %s, want %d", c.method, c.path, c.body, rec.Code, rec.Body.String(), c.code)
		}
	}
	after, _ := e.History(testctx.New(t), "stuck-1")
	if len(after) != len(before) {
		t.Fatal("a bad request changed a saga")
	}
	// And a good one works.
	if rec := call(h, "POST", "/v1/sagas/stuck-1/resolve", auth, `{"actor":"ops","reason":"refunded by hand"}`); rec.Code != 200 {
		t.Fatalf("resolve: %d %s", rec.Code, rec.Body.String())
	}
}

func TestMetricsMove(t *testing.T) {
	e, _, h := fixture(t)
	auth := "Bearer " + token
	scrape := func() string {
		rec := call(h, "GET", "/metrics", auth, "")
		if rec.Code != 200 {
			t.Fatalf("metrics: %d", rec.Code)
		}
		return rec.Body.String()
	}
	m := scrape()
	for _, want := range []string{
		`saga_sagas_started_total{definition="order"} 1`,
		`saga_sagas_completed_total{definition="order"} 1`,
		`saga_sagas_failed_total{definition="failing"} 1`,
		`saga_sagas_stuck_total{definition="stucky"} 1`,
		`saga_compensation_attempts_total{definition="failing"} 1`,
		`saga_step_duration_seconds_count{definition="order"} 2`,
		`saga_group_commit_records_count`,
		`saga_wal_append_seconds_count`,
		`saga_recovery_seconds`,
		`saga_sagas{state="STUCK"} 1`,
		`saga_sagas{state="COMPLETED"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	_, err := e.Run(testctx.New(t), "order", nil, engine.StartOptions{})
	must(t, err)
	if m := scrape(); !strings.Contains(m, `saga_sagas_completed_total{definition="order"} 2`) {
		t.Error("completed counter did not move after another saga")
	}
	// Per-state gauges via /v1/status (STUCK > 0 is what an alert watches).
	rec := call(h, "GET", "/v1/status", auth, "")
	if !strings.Contains(rec.Body.String(), `"STUCK":1`) || !strings.Contains(rec.Body.String(), `"COMPLETED":2`) {
		t.Fatalf("status: %s", rec.Body.String())
	}
}

// TestWatchStreamsTransitions: a watcher sees live transitions.
func TestWatchStreamsTransitions(t *testing.T) {
	e, _, h := fixture(t)
	srv := httptest.NewServer(h)
	defer srv.Close()
	wctx, cancel := context.WithTimeout(testctx.New(t), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(wctx, "GET", srv.URL+"/v1/watch", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := srv.Client().Do(req)
	must(t, err)
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("watch: %d", resp.StatusCode)
	}
	go func() {
		_, _ = e.Retry(testctx.New(t), "stuck-1", "alice", "outage over")
	}()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev Event
		if err := dec.Decode(&ev); err != nil {
			t.Fatalf("watch stream: %v", err)
		}
		if ev.Saga == "stuck-1" && ev.Kind == "retried" && ev.Actor == "alice" {
			return
		}
	}
}

// TestTLS: with a key pair the API speaks only TLS.
func TestTLS(t *testing.T) {
	e, obs, _ := fixture(t)
	dir := t.TempDir()
	certFile, keyFile := writeSelfSigned(t, dir)
	srv, err := New(e, obs, Options{Addr: "127.0.0.1:0", Token: token, CertFile: certFile, KeyFile: keyFile, Logger: quiet})
	must(t, err)
	must(t, srv.Start())
	defer srv.Close()
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := insecure.Get("https://" + srv.Addr() + "/healthz")
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("https healthz: %d", resp.StatusCode)
	}
	if resp, err := http.Get("http://" + srv.Addr() + "/healthz"); err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP was served on a TLS listener")
	}
}

func writeSelfSigned(t *testing.T, dir string) (string, string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	kb, err := x509.MarshalECPrivateKey(key)
	must(t, err)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	must(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	must(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600))
	return certFile, keyFile
}

// TestListCountAndDefinitions: the filters of the query parameters
// combine, pages follow the cursor newest first, and counts and
// definition versions answer.
func TestListCountAndDefinitions(t *testing.T) {
	_, _, h := fixture(t)
	auth := "Bearer " + token
	get := func(path string, v any) {
		t.Helper()
		rec := call(h, "GET", path, auth, "")
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body.String())
		}
		must(t, json.Unmarshal(rec.Body.Bytes(), v))
	}
	var ids []string
	for path := "/v1/sagas?order=newest&limit=1&since=1h"; ; {
		var rep ListReply
		get(path, &rep)
		for _, sg := range rep.Sagas {
			ids = append(ids, sg.ID)
		}
		if rep.Next == "" {
			break
		}
		path = "/v1/sagas?order=newest&limit=1&since=1h&cursor=" + rep.Next
	}
	if strings.Join(ids, ",") != "stuck-1,failed-1,ok-1" {
		t.Fatalf("newest first: %v", ids)
	}
	var rep ListReply
	get("/v1/sagas?state=failed&definition=failing&version=1", &rep)
	if len(rep.Sagas) != 1 || rep.Sagas[0].ID != "failed-1" {
		t.Fatalf("failed of failing@v1: %+v", rep.Sagas)
	}
	get("/v1/sagas?state=failed&definition=order", &rep)
	if len(rep.Sagas) != 0 {
		t.Fatalf("failed of order: %+v", rep.Sagas)
	}
	var c CountReply
	get("/v1/count?updated_since=1h", &c)
	if c.Count != 3 {
		t.Fatalf("count %d, want 3", c.Count)
	}
	var ds []DefinitionJSON
	get("/v1/definitions", &ds)
	if len(ds) != 3 || ds[0].Name != "failing" || len(ds[0].Versions) != 1 {
		t.Fatalf("definitions %+v", ds)
	}
}

// meta repeats in a URL's query: the query holds every pair, and one key
// given twice with different values is refused (no saga holds both).
func TestParseQueryValuesReadsEveryMetaPair(t *testing.T) {
	q, err := ParseQueryValues(url.Values{"meta": {"region=eu", "tier=gold", "region=eu"}})
	if err != nil || len(q.Meta) != 2 || q.Meta["region"] != "eu" || q.Meta["tier"] != "gold" {
		t.Fatalf("two pairs: %+v, %v", q.Meta, err)
	}
	for _, metas := range [][]string{{"region=eu", "region=us"}, {"region=", "region=us"}, {"novalue"}} {
		if _, err := ParseQueryValues(url.Values{"meta": metas}); !errors.Is(err, fsm.ErrInvalidQuery) {
			t.Errorf("meta %v: %v, want an invalid query", metas, err)
		}
	}
}
