package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sagaengine/saga/auth"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/internal/authtest"
	"github.com/sagaengine/saga/internal/testctx"
)

func scopedFixture(t *testing.T) (*engine.Engine, http.Handler) {
	t.Helper()
	e, _, h := fixtureWith(t, Options{Tokens: authtest.Authenticator(t)})
	ctx := testctx.New(t)
	_, err := e.Define(ctx, engine.Definition{Name: "manual", Steps: []engine.StepDef{{Name: "wait"}}})
	must(t, err)
	_, err = e.Start(ctx, "manual", nil, engine.StartOptions{ID: "manual-1"})
	must(t, err)
	return e, h
}

// adminSnapshot is what a refused request must leave as it was.
func adminSnapshot(t *testing.T, e *engine.Engine, h http.Handler) string {
	t.Helper()
	ctx := testctx.New(t)
	li, err := e.LogInfo()
	must(t, err)
	out := fmt.Sprintf("log %d;", li.LastIndex)
	for _, id := range []string{"ok-1", "failed-1", "stuck-1", "manual-1"} {
		st, err := e.Status(ctx, id)
		must(t, err)
		hist, err := e.History(ctx, id)
		must(t, err)
		out += fmt.Sprintf(" %s %s %d records;", id, st.State, len(hist))
	}
	rec := call(h, "GET", "/v1/policy", "Bearer admin-secret-0123456789", "")
	return out + " policy " + rec.Body.String()
}

// adminRoutes: every route, in an order in which each succeeds when its
// scope allows it; the actions claim an actor the server must ignore.
var adminRoutes = []struct {
	method, path, body string
	need               auth.Scope
}{
	{"GET", "/metrics", "", auth.Read},
	{"GET", "/v1/status", "", auth.Read},
	{"GET", "/v1/sagas", "", auth.Read},
	{"GET", "/v1/sagas/stuck-1", "", auth.Read},
	{"GET", "/v1/count", "", auth.Read},
	{"GET", "/v1/definitions", "", auth.Read},
	{"GET", "/v1/watch", "", auth.Read},
	{"GET", "/v1/policy", "", auth.Read},
	{"GET", "/v1/policy/explain?operation=x", "", auth.Read},
	{"GET", "/v1/cluster", "", auth.Read},
	{"POST", "/v1/sagas/stuck-1/retry", `{"actor":"mallory","reason":"outage over"}`, auth.Operator},
	{"POST", "/v1/sagas/stuck-1/resolve", `{"actor":"mallory","reason":"refunded by hand"}`, auth.Operator},
	{"POST", "/v1/sagas/manual-1/abort", `{"actor":"mallory","reason":"customer cancelled"}`, auth.Operator},
	{"PUT", "/v1/policy", "enable_saga: true\n", auth.Admin},
	{"DELETE", "/v1/policy", "", auth.Admin},
	// A single-node engine answers 409 to a cluster change; an admin
	// token gets that far, and the others do not.
	{"POST", "/v1/cluster/join", `{"id":"n2","address":"127.0.0.1:1"}`, auth.Admin},
	{"POST", "/v1/cluster/remove", `{"id":"n2"}`, auth.Admin},
}

// TestScopeMatrix sends every route with a token of every scope: a
// request the scope allows gets past authorization (2xx, or the 409 of a
// cluster change on a single node); one it does not is answered 403
// naming the scope it needs, and changes nothing.
func TestScopeMatrix(t *testing.T) {
	for _, tok := range authtest.Scoped {
		t.Run(tok.Name, func(t *testing.T) {
			e, h := scopedFixture(t)
			for _, rt := range adminRoutes {
				before := adminSnapshot(t, e, h)
				rec := scopedCall(h, rt.method, rt.path, tok.Secret, rt.body)
				what := fmt.Sprintf("%s %s with a %s token", rt.method, rt.path, tok.Scope)
				if !tok.Scope.Allows(rt.need) {
					if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "needs scope "+rt.need.String()) {
						t.Errorf("%s: %d %s, want 403 naming scope %s", what, rec.Code, rec.Body.String(), rt.need)
					}
					if after := adminSnapshot(t, e, h); after != before {
						t.Errorf("%s was refused but changed things:\nbefore %s\nafter  %s", what, before, after)
					}
					continue
				}
				ok := rec.Code/100 == 2 || (strings.HasPrefix(rt.path, "/v1/cluster/") && rec.Code == http.StatusConflict)
				if !ok {
					t.Errorf("%s: %d %s", what, rec.Code, rec.Body.String())
				}
				// Let an allowed action's compensation run to its end, so
				// that the next snapshot is stable.
				// (manual-1 is caller-driven: an abort settles it at once.)
				ctx, cancel := context.WithTimeout(testctx.New(t), 30*time.Second)
				_, err := e.Wait(ctx, "stuck-1")
				cancel()
				must(t, err)
			}
		})
	}
}

// scopedCall is call with the secret as a bearer token; the watch's
// context is ended at once, so that an allowed watch answers its 200
// and returns.
func scopedCall(h http.Handler, method, path, secret, body string) *httptest.ResponseRecorder {
	if path != "/v1/watch" {
		return call(h, method, path, "Bearer "+secret, body)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := httptest.NewRequestWithContext(ctx, method, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+secret)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestActionActorIsTheTokensName: retry, resolve and abort record the
// token's name as the actor, whatever "actor" the body says.
func TestActionActorIsTheTokensName(t *testing.T) {
	e, h := scopedFixture(t)
	ctx := testctx.New(t)
	for _, rt := range adminRoutes {
		if rt.need != auth.Operator {
			continue
		}
		if rec := call(h, rt.method, rt.path, "Bearer operator-secret-0123456789", rt.body); rec.Code != 200 {
			t.Fatalf("%s %s: %d %s", rt.method, rt.path, rec.Code, rec.Body.String())
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := e.Wait(wctx, "stuck-1")
		cancel()
		must(t, err)
	}
	var actors []string
	for _, id := range []string{"stuck-1", "manual-1"} {
		hist, err := e.History(ctx, id)
		must(t, err)
		for _, he := range hist {
			if he.Record != nil && he.Record.Actor != "" {
				actors = append(actors, he.Record.Actor)
			}
		}
	}
	if fmt.Sprint(actors) != "[alice alice alice]" {
		t.Fatalf("actors recorded %v, want the token's name three times (the body claimed mallory)", actors)
	}
}

func TestNewRefusesTokenAndTokens(t *testing.T) {
	ts, err := auth.Single("x", auth.Read, "some-secret-0123456789")
	must(t, err)
	if _, err := New(nil, nil, Options{Token: token, Tokens: ts}); !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), "not both") {
		t.Fatalf("Token and Tokens: %v", err)
	}
}
