package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
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
	var adminURL string
	for _, l := range strings.Split(out.String(), "\n") {
		if rest, ok := strings.CutPrefix(l, "sagad: admin API and /metrics on "); ok {
			adminURL = strings.TrimSuffix(strings.Fields(rest)[0], ",")
		}
	}
	if adminURL == "" {
		t.Fatalf("sagad did not say where the admin API is:\n%s", out.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", adminURL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`saga_remote_attempts_total{endpoint="pay",outcome="ok"} 1`,
		`saga_remote_attempts_total{endpoint="refund",outcome="ok"} 0`,
		`saga_remote_calls_in_flight{endpoint="pay"} 0`,
		`saga_remote_calls_waiting{endpoint="pay"} 0`,
		`saga_remote_attempt_seconds_total{endpoint="pay"}`,
		`saga_sagas_started_total{definition="order"} 1`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
