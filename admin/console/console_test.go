package console

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/internal/testctx"
)

// fakeCluster is a group of three with n1 leading.
type fakeCluster struct{}

func (fakeCluster) Status() (admin.ClusterStatus, error) {
	return admin.ClusterStatus{ID: "n2", State: "Follower", CommitIndex: 42, LastLogIndex: 43, Term: 7,
		Members: []admin.Member{{ID: "n1", Address: "10.0.0.1:7001", Voter: true, Leader: true},
			{ID: "n2", Address: "10.0.0.2:7001", Voter: true}, {ID: "n3", Address: "10.0.0.3:7001", Voter: true}}}, nil
}
func (fakeCluster) Join(context.Context, string, string) error { return nil }
func (fakeCluster) Remove(context.Context, string) error       { return nil }

// bareConsole is a console of an empty engine of its own, with opts.
func bareConsole(t *testing.T, opts Options) *Console {
	t.Helper()
	obs := admin.NewObserver()
	e, err := engine.Open(t.TempDir(), engine.Options{Logger: quiet, Hooks: obs.Hooks()})
	must(t, err)
	t.Cleanup(func() { e.Close() })
	ui, err := New(e, obs, opts)
	must(t, err)
	t.Cleanup(func() { ui.Close() })
	return ui
}

// TestClusterPageShowsTheGroup: the cluster page shows the members, the
// leader, the command index against the commit index and the state hash,
// as GET /v1/cluster does.
func TestClusterPageShowsTheGroup(t *testing.T) {
	ui := bareConsole(t, Options{Token: fullToken, Cluster: fakeCluster{}, Logger: quiet})
	ctx := testctx.New(t)
	rec := httptest.NewRecorder()
	login := httptest.NewRequestWithContext(ctx, "POST", "/ui/login", strings.NewReader(url.Values{"token": {fullToken}}.Encode()))
	login.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	ui.ServeHTTP(rec, login)
	req := httptest.NewRequestWithContext(ctx, "GET", "/ui/cluster", nil)
	for _, ck := range rec.Result().Cookies() {
		req.AddCookie(ck)
	}
	rec = httptest.NewRecorder()
	ui.ServeHTTP(rec, req)
	page := rec.Body.String()
	h, err := ui.e.StateHash()
	must(t, err)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /ui/cluster: %d\n%s", rec.Code, page)
	}
	for _, want := range []string{"replicated", "n2 · Follower", "of commit index 42", "10.0.0.3:7001", hex.EncodeToString(h)} {
		if !strings.Contains(page, want) {
			t.Errorf("the cluster page lacks %q", want)
		}
	}
}

// TestSessionCookieIsSecureUnderTLS: a login over TLS sets a Secure
// cookie; over plain HTTP (loopback) it cannot.
func TestSessionCookieIsSecureUnderTLS(t *testing.T) {
	ui := bareConsole(t, Options{Token: fullToken, Logger: quiet})
	for _, overTLS := range []bool{true, false} {
		req := httptest.NewRequestWithContext(testctx.New(t), "POST", "/ui/login", strings.NewReader(url.Values{"token": {fullToken}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if overTLS {
			req.TLS = &tls.ConnectionState{}
		}
		rec := httptest.NewRecorder()
		ui.ServeHTTP(rec, req)
		cks := rec.Result().Cookies()
		if len(cks) != 1 || cks[0].Secure != overTLS || !cks[0].HttpOnly || cks[0].SameSite != http.SameSiteStrictMode {
			t.Fatalf("TLS %v: cookies %+v, want one HttpOnly SameSite=Strict cookie, Secure %v", overTLS, cks, overTLS)
		}
	}
}

// TestFailedLoginsAreThrottled: after ten failed logins in a minute from
// one address every login from it is refused, the right token too, until
// the minute has passed, while another address logs in; a hundred
// failures from many addresses refuse every address.
func TestFailedLoginsAreThrottled(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	ui := bareConsole(t, Options{Token: fullToken, Logger: quiet, Now: clock})
	loginFrom := func(addr, token string) int {
		req := httptest.NewRequestWithContext(testctx.New(t), "POST", "/ui/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.RemoteAddr = addr
		rec := httptest.NewRecorder()
		ui.ServeHTTP(rec, req)
		return rec.Code
	}
	login := func(token string) int { return loginFrom("192.0.2.1:4000", token) }
	for i := range 10 {
		if code := login("guess-guess-guess-" + strconv.Itoa(i)); code != http.StatusUnauthorized {
			t.Fatalf("failed login %d: %d, want 401", i, code)
		}
	}
	if code := login(fullToken); code != http.StatusTooManyRequests {
		t.Fatalf("the right token after ten failures: %d, want 429", code)
	}
	if code := loginFrom("192.0.2.1:4001", fullToken); code != http.StatusTooManyRequests {
		t.Fatalf("the same address from another port: %d, want 429", code)
	}
	if code := loginFrom("198.51.100.7:4000", fullToken); code != http.StatusSeeOther {
		t.Fatalf("another address after the first one's ten failures: %d, want 303 (no lock-out of everybody)", code)
	}
	mu.Lock()
	now = now.Add(time.Minute)
	mu.Unlock()
	if code := login(fullToken); code != http.StatusSeeOther {
		t.Fatalf("the right token a minute later: %d, want 303", code)
	}
	for i := range 100 {
		loginFrom(fmt.Sprintf("203.0.113.%d:1", i), "guess-guess-guess")
	}
	if code := loginFrom("198.51.100.8:4000", fullToken); code != http.StatusTooManyRequests {
		t.Fatalf("after a hundred failures from a hundred addresses: %d, want 429 for every address", code)
	}
}

// TestCrossSiteLoginsAreRefusedUncounted: a page of another site cannot
// log a browser in, nor spend the failed-login budget that would lock
// the operators out.
func TestCrossSiteLoginsAreRefusedUncounted(t *testing.T) {
	ui := bareConsole(t, Options{Token: fullToken, Logger: quiet})
	login := func(token, site string) int {
		req := httptest.NewRequestWithContext(testctx.New(t), "POST", "/ui/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", site)
		rec := httptest.NewRecorder()
		ui.ServeHTTP(rec, req)
		return rec.Code
	}
	for i := range 20 {
		if code := login("guess-guess-guess-"+strconv.Itoa(i), "cross-site"); code != http.StatusForbidden {
			t.Fatalf("cross-site login %d: %d, want 403", i, code)
		}
	}
	if code := login(fullToken, "cross-site"); code != http.StatusForbidden {
		t.Fatalf("cross-site login with the right token: %d, want 403", code)
	}
	if code := login(fullToken, "same-origin"); code != http.StatusSeeOther {
		t.Fatalf("same-origin login after the cross-site ones: %d, want 303 (they must not count)", code)
	}
}

// TestSessionsAreBounded: logins with a valid token keep at most
// maxSessions sessions (lowered here to 50); a new one ends the one that
// would end first.
func TestSessionsAreBounded(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); now = now.Add(time.Millisecond); return now }
	ui := bareConsole(t, Options{Token: fullToken, Logger: quiet, Now: clock})
	ui.maxSessions = 50
	var first *http.Cookie
	for i := range ui.maxSessions + 1 {
		req := httptest.NewRequestWithContext(testctx.New(t), "POST", "/ui/login", strings.NewReader(url.Values{"token": {fullToken}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		ui.ServeHTTP(rec, req)
		if rec.Code != http.StatusSeeOther {
			t.Fatalf("login %d: %d", i, rec.Code)
		}
		if i == 0 {
			first = rec.Result().Cookies()[0]
		}
	}
	ui.mu.Lock()
	n := len(ui.sessions)
	ui.mu.Unlock()
	if n != ui.maxSessions {
		t.Fatalf("%d sessions kept, want %d", n, ui.maxSessions)
	}
	req := httptest.NewRequestWithContext(testctx.New(t), "GET", "/ui/", nil)
	req.AddCookie(first)
	rec := httptest.NewRecorder()
	ui.ServeHTTP(rec, req)
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/ui/login" {
		t.Fatalf("the first session after the bound: %d to %q, want it ended (303 to /ui/login)", rec.Code, rec.Header().Get("Location"))
	}
}
