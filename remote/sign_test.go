package remote_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/remote"
)

var secret = []byte("0123456789abcdef0123456789abcdef-test")

// The engine signs; a server using remote.Verify accepts the request and
// reads the same body afterwards.
func TestSignedRequestVerifies(t *testing.T) {
	dir := t.TempDir()
	var verr error
	var body, reread []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, verr = remote.Verify(r, secret, time.Minute)
		reread, _ = io.ReadAll(r.Body)
		if verr != nil {
			http.Error(w, verr.Error(), http.StatusUnauthorized)
		}
	}))
	defer srv.Close()
	c := newClient(t, map[string]remote.EndpointConfig{
		"signed":    {URL: srv.URL + "/saga/pay?region=eu", HMACSecretFile: writeFile(t, dir, "s", append(secret, '\n'))},
		"wrong":     {URL: srv.URL + "/saga/pay", HMACSecretFile: writeFile(t, dir, "w", bytes.Repeat([]byte("z"), 40))},
		"unsigned":  {URL: srv.URL + "/saga/pay"},
		"longtrail": {URL: srv.URL + "/saga/pay", HMACSecretFile: writeFile(t, dir, "l", append(secret, "\n\n"...))},
	}, remote.Options{})
	for _, name := range []string{"signed", "longtrail"} {
		if _, err := action(t, c, name)(testCtx(t), testCall(compensation.KindAction)); err != nil || verr != nil {
			t.Fatalf("%s: %v, server: %v", name, err, verr)
		}
		if !bytes.Contains(body, []byte(`"idempotency_key":"order-42/pay/action"`)) || !bytes.Equal(body, reread) {
			t.Fatalf("%s: Verify returned %q, the handler re-read %q", name, body, reread)
		}
	}
	for name, want := range map[string]error{"wrong": remote.ErrBadSignature, "unsigned": remote.ErrUnsigned} {
		_, err := action(t, c, name)(testCtx(t), testCall(compensation.KindAction))
		if !errors.Is(verr, want) || !errors.Is(err, remote.ErrRejected) {
			t.Fatalf("%s: server %v (want %v), client %v", name, verr, want, err)
		}
	}
}

func TestVerifyRejectsTamperedAndStale(t *testing.T) {
	now := time.Unix(1_764_763_200, 0)
	body := []byte(`{"saga_id":"order-42","step":"pay"}`)
	req := func(method, target string, b []byte, sig string) *http.Request {
		r := httptest.NewRequest(method, target, bytes.NewReader(b))
		if sig != "" {
			r.Header.Set(remote.SignatureHeader, sig)
		}
		return r
	}
	good := remote.Sign(secret, "POST", "/saga/pay?x=1", now, body)
	v := &remote.Verifier{Secrets: [][]byte{secret}, Window: 5 * time.Minute, Now: func() time.Time { return now }}
	if got, err := v.Verify(req("POST", "/saga/pay?x=1", body, good)); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("good request: %q, %v", got, err)
	}
	// Within the window either way.
	for _, at := range []time.Time{now.Add(-4 * time.Minute), now.Add(4 * time.Minute)} {
		if _, err := v.Verify(req("POST", "/saga/pay?x=1", body, remote.Sign(secret, "POST", "/saga/pay?x=1", at, body))); err != nil {
			t.Fatalf("signed at %v: %v", at.Sub(now), err)
		}
	}
	// A rotation: the old secret still verifies beside the new one.
	rot := &remote.Verifier{Secrets: [][]byte{[]byte("new-secret-new-secret-new-secret!"), secret}, Now: v.Now}
	if _, err := rot.Verify(req("POST", "/saga/pay?x=1", body, good)); err != nil {
		t.Fatalf("rotation: %v", err)
	}
	ts := good[:strings.Index(good, ",")]
	cases := []struct {
		name string
		r    *http.Request
		want error
	}{
		{"tampered body", req("POST", "/saga/pay?x=1", []byte(`{"saga_id":"order-43","step":"pay"}`), good), remote.ErrBadSignature},
		{"other path", req("POST", "/saga/refund?x=1", body, good), remote.ErrBadSignature},
		{"other query", req("POST", "/saga/pay?x=2", body, good), remote.ErrBadSignature},
		{"other method", req("PUT", "/saga/pay?x=1", body, good), remote.ErrBadSignature},
		{"moved timestamp", req("POST", "/saga/pay?x=1", body, "t=1764763201"+good[len(ts):]), remote.ErrBadSignature},
		{"other secret", req("POST", "/saga/pay?x=1", body, remote.Sign([]byte("another-secret-another-secret-xx"), "POST", "/saga/pay?x=1", now, body)), remote.ErrBadSignature},
		{"stale", req("POST", "/saga/pay?x=1", body, remote.Sign(secret, "POST", "/saga/pay?x=1", now.Add(-6*time.Minute), body)), remote.ErrStale},
		{"future", req("POST", "/saga/pay?x=1", body, remote.Sign(secret, "POST", "/saga/pay?x=1", now.Add(6*time.Minute), body)), remote.ErrStale},
		{"unsigned", req("POST", "/saga/pay?x=1", body, ""), remote.ErrUnsigned},
		{"garbled", req("POST", "/saga/pay?x=1", body, "t=1,v1=zz"), remote.ErrUnsigned},
		{"no timestamp", req("POST", "/saga/pay?x=1", body, good[len(ts)+1:]), remote.ErrUnsigned},
	}
	for _, tc := range cases {
		if _, err := v.Verify(tc.r); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	small := &remote.Verifier{Secrets: [][]byte{secret}, Now: v.Now, MaxBodyBytes: 10}
	if _, err := small.Verify(req("POST", "/saga/pay?x=1", body, good)); !errors.Is(err, remote.ErrRequestTooLarge) {
		t.Errorf("oversized body: %v", err)
	}
}
