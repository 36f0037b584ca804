package console

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/sagaengine/saga/auth"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/internal/testctx"
	"github.com/sagaengine/saga/policy"
)

// stateOf is the saga's state in the engine.
func (f *fixture) stateOf(t *testing.T, id string) fsm.SagaState {
	t.Helper()
	st, err := f.e.Status(testctx.New(t), id)
	must(t, err)
	return st.State
}

// TestForgedActionIsRefused: an action without the session's CSRF token,
// or with another, is refused and changes nothing, although the browser
// sends the session cookie.
func TestForgedActionIsRefused(t *testing.T) {
	f := newFixture(t)
	c := newClient(t)
	csrf := c.login(f.base, fullToken)
	for name, form := range map[string]url.Values{
		"no token":    {"reason": {"forged"}, "confirm": {"yes"}},
		"wrong token": {"reason": {"forged"}, "confirm": {"yes"}, "csrf": {csrf[:len(csrf)-2] + "xx"}},
	} {
		resp, body := c.do("POST", f.base+"/ui/sagas/stuck-1/resolve", form)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "CSRF") {
			t.Errorf("%s: %s %q, want 403 naming the CSRF token", name, resp.Status, short(body))
		}
	}
	// A browser's cross-site request is refused even with the token.
	req, _ := http.NewRequestWithContext(c.ctx, "POST", f.base+"/ui/sagas/stuck-1/resolve",
		strings.NewReader(url.Values{"reason": {"x"}, "confirm": {"yes"}, "csrf": {csrf}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	resp, err := c.c.Do(req)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site: %s, want 403", resp.Status)
	}
	if st := f.stateOf(t, "stuck-1"); st != fsm.StateStuck {
		t.Fatalf("after the forged requests stuck-1 is %s, want STUCK (unchanged)", st)
	}
	// The same action with the token goes through: the refusals above
	// were for the token, not for the action.
	resp, _ = c.do("POST", f.base+"/ui/sagas/stuck-1/resolve", url.Values{"reason": {"refunded by hand"}, "confirm": {"yes"}, "csrf": {csrf}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("resolve with the CSRF token: %s, want 303", resp.Status)
	}
	if st := f.stateOf(t, "stuck-1"); st != fsm.StateFailed {
		t.Fatalf("after resolve stuck-1 is %s, want FAILED", st)
	}
}

// TestReadOnlyCannotAct: a read-only session's actions and policy edits
// are refused by the server, with a valid CSRF token, and change nothing.
func TestReadOnlyCannotAct(t *testing.T) {
	f := newFixture(t)
	c := newClient(t)
	csrf := c.login(f.base, readOnlyToken)
	for _, action := range []string{"retry", "resolve", "abort"} {
		resp, body := c.do("POST", f.base+"/ui/sagas/stuck-1/"+action, url.Values{"reason": {"r"}, "confirm": {"yes"}, "csrf": {csrf}})
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "may look but not act") {
			t.Errorf("read-only %s: %s %q, want 403", action, resp.Status, short(body))
		}
	}
	v := f.pm.Snapshot().Describe().Version
	resp, _ := c.do("POST", f.base+"/ui/policy", url.Values{"policy": {"enable_saga: true\n"}, "csrf": {csrf}})
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("read-only policy edit: %s, want 403", resp.Status)
	}
	if st := f.stateOf(t, "stuck-1"); st != fsm.StateStuck {
		t.Fatalf("stuck-1 is %s, want STUCK (unchanged)", st)
	}
	if got := f.pm.Snapshot().Describe().Version; got != v {
		t.Fatalf("policy version %d, want %d (unchanged)", got, v)
	}
	// Nor does the page offer them.
	_, page := c.do("GET", f.base+"/ui/sagas/stuck-1", nil)
	if strings.Contains(page, `action="/ui/sagas/stuck-1/`) || !strings.Contains(page, "(read-only)") {
		t.Fatalf("the read-only detail page offers actions or does not say read-only:\n%s", page)
	}
}

// TestSessionCookieAndHeaders: the login sets an HttpOnly, SameSite=Strict
// cookie; no page holds the token or an inline script; every answer has
// the CSP; logout ends the session on the server.
func TestSessionCookieAndHeaders(t *testing.T) {
	f := newFixture(t)
	c := newClient(t)
	resp, _ := c.do("GET", f.base+"/ui/", nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/login" {
		t.Fatalf("without a session: %s to %q, want 303 to /ui/login", resp.Status, resp.Header.Get("Location"))
	}
	resp, _ = c.do("POST", f.base+"/ui/login", url.Values{"token": {"wrong-token-wrong-token"}})
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong token: %s, want 401", resp.Status)
	}
	resp, _ = c.do("POST", f.base+"/ui/login", url.Values{"token": {fullToken}})
	var ck *http.Cookie
	for _, k := range resp.Cookies() {
		if k.Name == cookieName {
			ck = k
		}
	}
	if ck == nil || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != Prefix || strings.Contains(ck.Value, fullToken) {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/ui/, not the token", ck)
	}
	if loc := resp.Header.Get("Location"); strings.Contains(loc, fullToken) {
		t.Fatalf("the token is in the redirect %q", loc)
	}
	inline := regexp.MustCompile(`<script(\s[^>]*)?>`)
	for _, p := range []string{"/ui/", "/ui/sagas", "/ui/sagas?state=STUCK", "/ui/sagas/stuck-1", "/ui/policy", "/ui/cluster", "/ui/login"} {
		resp, body := c.do("GET", f.base+p, nil)
		if resp.StatusCode >= 400 {
			t.Errorf("GET %s: %s", p, resp.Status)
		}
		if strings.Contains(body, fullToken) || strings.Contains(resp.Request.URL.String(), fullToken) {
			t.Errorf("GET %s: the page holds the token", p)
		}
		for _, tag := range inline.FindAllString(body, -1) {
			if !strings.Contains(tag, ` src="/ui/static/`) {
				t.Errorf("GET %s: an inline or foreign script %s", p, tag)
			}
		}
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
			t.Errorf("GET %s: Content-Security-Policy %q", p, csp)
		}
	}
	_, page := c.do("GET", f.base+"/ui/", nil)
	csrf := csrfField.FindStringSubmatch(page)[1]
	resp, _ = c.do("POST", f.base+"/ui/logout", url.Values{"csrf": {csrf}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %s", resp.Status)
	}
	// The old cookie, replayed, no longer opens a session.
	c2 := newClient(t)
	u, _ := url.Parse(f.base + "/ui/")
	c2.c.Jar.SetCookies(u, []*http.Cookie{{Name: cookieName, Value: ck.Value, Path: Prefix}})
	resp, _ = c2.do("GET", f.base+"/ui/", nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the logged-out session still opens the overview: %s", resp.Status)
	}
	// The JSON API still wants its bearer token: the console's cookie
	// opens nothing there.
	resp, _ = c.do("GET", f.base+"/v1/status", nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/v1/status without the bearer token: %s, want 401", resp.Status)
	}
}

// short is the start of a body, for a message.
func short(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// TestListFilters: the list passes its filters to admin.ParseQuery, and
// a bad one is shown, not ignored.
func TestListFilters(t *testing.T) {
	f := newFixture(t)
	c := newClient(t)
	c.login(f.base, fullToken)
	ids := regexp.MustCompile(`<tr data-id="([^"]+)"`)
	for q, want := range map[string]string{
		"":                                   "stuck-1 failed-1 done-1",
		"state=stuck":                        "stuck-1",
		"definition=checkout":                "failed-1",
		"user=ada&state=COMPLETED":           "done-1",
		"user=nobody":                        "",
		"since=1h&updated_since=1h":          "stuck-1 failed-1 done-1",
		"until=2000-01-01T00:00:00Z":         "",
		"updated_until=2000-01-01T00:00:00Z": "",
	} {
		resp, page := c.do("GET", f.base+"/ui/sagas?"+q, nil)
		var got []string
		for _, m := range ids.FindAllStringSubmatch(page, -1) {
			got = append(got, m[1])
		}
		if resp.StatusCode != http.StatusOK || strings.Join(got, " ") != want {
			t.Errorf("?%s: %s %v, want %q (newest first)", q, resp.Status, got, want)
		}
	}
	// Cursor pages: two, then the last one, the filters kept.
	next := regexp.MustCompile(`<a href="([^"]+)" rel="next"`)
	u := "/ui/sagas?limit=2&user=ada"
	var pages []string
	for range 3 {
		_, page := c.do("GET", f.base+u, nil)
		var got []string
		for _, m := range ids.FindAllStringSubmatch(page, -1) {
			got = append(got, m[1])
		}
		pages = append(pages, strings.Join(got, " "))
		m := next.FindStringSubmatch(page)
		if m == nil {
			break
		}
		u = strings.ReplaceAll(m[1], "&amp;", "&")
	}
	if strings.Join(pages, " | ") != "stuck-1 failed-1 | done-1" {
		t.Errorf("pages of 2: %q, want \"stuck-1 failed-1 | done-1\"", strings.Join(pages, " | "))
	}
	resp, page := c.do("GET", f.base+"/ui/sagas?since=yesterday", nil)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(page, `id="list-error"`) || !strings.Contains(page, "since") {
		t.Errorf("a bad filter: %s, want 400 and the error on the page", resp.Status)
	}
	resp, _ = c.do("GET", f.base+"/ui/sagas?id=stuck-1", nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/sagas/stuck-1" {
		t.Errorf("search by id: %s to %q, want 303 to the saga", resp.Status, resp.Header.Get("Location"))
	}
}

// TestOperatorActsButCannotEditThePolicy: with scoped tokens (TokenLogin)
// the console follows the admin API's rules: an operator token may retry,
// resolve and abort, but saving the policy takes an admin token; the
// refusal changes nothing and the page does not offer the editor.
func TestOperatorActsButCannotEditThePolicy(t *testing.T) {
	const opsToken = "ops-token-0123456789abcdef"
	ts, err := auth.New(auth.Token{Name: "root", Scope: auth.Admin, SHA256: auth.HashSecret(fullToken)},
		auth.Token{Name: "ops", Scope: auth.Operator, SHA256: auth.HashSecret(opsToken)},
		auth.Token{Name: "viewer", Scope: auth.Read, SHA256: auth.HashSecret(readOnlyToken)})
	must(t, err)
	f := newFixtureWith(t, func(o *Options) { o.Token, o.ReadOnlyToken, o.Login = "", "", TokenLogin(ts) })
	c := newClient(t)
	csrf := c.login(f.base, opsToken)
	v := f.pm.Snapshot().Describe().Version
	resp, body := c.do("POST", f.base+"/ui/policy", url.Values{"policy": {"enable_saga: true\n"}, "csrf": {csrf}})
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "admin token") {
		t.Fatalf("an operator's policy edit: %s %q, want 403 naming the admin token", resp.Status, short(body))
	}
	if resp, _ := c.do("POST", f.base+"/ui/policy/clear", url.Values{"csrf": {csrf}}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("an operator's removal of the API layer: %s, want 403", resp.Status)
	}
	if got := f.pm.Snapshot().Describe().Version; got != v {
		t.Fatalf("policy version %d, want %d (unchanged)", got, v)
	}
	if _, page := c.do("GET", f.base+"/ui/policy", nil); strings.Contains(page, `id="policy-form"`) || strings.Contains(page, `id="policy-clear-form"`) ||
		!strings.Contains(page, "ops (operator)") {
		t.Fatalf("the operator's policy page offers the editor or does not say operator:\n%s", short(page))
	}
	resp, _ = c.do("POST", f.base+"/ui/sagas/stuck-1/resolve", url.Values{"reason": {"refunded by hand"}, "confirm": {"yes"}, "csrf": {csrf}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("an operator's resolve: %s, want 303", resp.Status)
	}
	if st := f.stateOf(t, "stuck-1"); st != fsm.StateFailed {
		t.Fatalf("after the operator's resolve stuck-1 is %s, want FAILED", st)
	}
	h, err := f.e.History(testctx.New(t), "stuck-1")
	must(t, err)
	found := false
	for _, he := range h {
		if he.Record.Kind == fsm.KindResolved && he.Record.Actor == "ops" {
			found = true
		}
	}
	if !found {
		t.Fatal("the resolve is not recorded with the operator's name as its actor")
	}
	// An admin token may edit the policy.
	c2 := newClient(t)
	csrf2 := c2.login(f.base, fullToken)
	resp, body = c2.do("POST", f.base+"/ui/policy", url.Values{"policy": {"enable_saga: true\n"}, "csrf": {csrf2}})
	if resp.StatusCode >= 400 {
		t.Fatalf("the admin's policy edit: %s %q", resp.Status, short(body))
	}
	if got := f.pm.Snapshot().Describe().Version; got == v {
		t.Fatalf("the admin's policy edit left version %d", got)
	}
	// ... and remove the API layer again.
	resp, _ = c2.do("POST", f.base+"/ui/policy/clear", url.Values{"csrf": {csrf2}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the admin's removal of the API layer: %s, want 303", resp.Status)
	}
	if _, page := c2.do("GET", f.base+"/ui/policy", nil); !strings.Contains(page, "API layer removed") {
		t.Fatalf("the policy page does not say the API layer was removed:\n%s", short(page))
	}
	if d := f.pm.Snapshot().Describe(); d.EnableSagaFrom == policy.SourceAPI {
		t.Fatalf("after the removal enable_saga still comes from the API layer: %+v", d)
	}
}
