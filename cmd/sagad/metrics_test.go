package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// With -admin and remote handlers, /metrics carries each endpoint's load
// and its attempts by outcome.
func TestSagadServesTheRemoteHandlersMetrics(t *testing.T) {
	t.Chdir(t.TempDir())
	h := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "{}") }))
	defer h.Close()
	write(t, "sagad.yaml", fmt.Sprintf("handlers:\n  pay: {url: %q}\n  refund: {url: %q}\n", h.URL+"/pay", h.URL+"/refund"))
	const tok = "tok-0123456789abcdef"
	addr, out := start(t, map[string]string{TokenEnv: tok}, "-config", "sagad.yaml", "-admin", "127.0.0.1:0")
	if code, body := post(t, addr, tok, "Define", `{"definition":{"name":"order","steps":[{"name":"charge","action":"pay","compensation":"refund"}]}}`); code != 200 {
		t.Fatalf("define: %d %s", code, body)
	}
	if code, body := post(t, addr, tok, "Start", `{"definition":"order","id":"o-1"}`); code != 200 {
		t.Fatalf("start: %d %s", code, body)
	}
	if code, body := post(t, addr, tok, "Wait", `{"sagaId":"o-1","timeout":"30s"}`); code != 200 || !strings.Contains(body, "COMPLETED") {
		t.Fatalf("wait: %d %s", code, body)
	}
	_, b := getWith(t, adminURLOf(t, out)+"/metrics", tok)
	for _, want := range []string{
		`saga_remote_attempts_total{endpoint="pay",outcome="ok"} 1`,
		`saga_remote_attempts_total{endpoint="refund",outcome="ok"} 0`,
		`saga_remote_calls_in_flight{endpoint="pay"} 0`,
		`saga_remote_calls_waiting{endpoint="pay"} 0`,
		`saga_remote_attempt_seconds_total{endpoint="pay"}`,
		`saga_sagas_started_total{definition="order"} 1`,
	} {
		if !strings.Contains(b, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
