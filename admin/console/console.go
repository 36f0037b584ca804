// Package console is the operators' web console: an overview of the
// engine, the saga list with live updates, a saga's timeline, the
// operator actions (retry, resolve, abort) and the policy. It is served
// by the admin server under /ui/ (admin.Options.Console) and rendered on
// the server with html/template; its CSS and its one small script are
// embedded (go:embed). It needs no build step and loads nothing from
// elsewhere.
//
// It reads and acts through the same code as the JSON API
// (admin.ParseQuery, admin.BuildShow, admin.Act, policy.Manager.SetText,
// the observer's watch feed): what the console shows is what sagactl shows.
//
// Security:
//
//   - Logging in exchanges a token (Options.Authenticate) for a session
//     cookie: HttpOnly, SameSite=Strict, Secure on a TLS connection. The
//     token is sent once, in a POST body, and never appears in a URL or a
//     page. Logout ends the session on the server. Ten failed logins in a
//     minute refuse every login until the minute has passed.
//   - Every POST but the login carries the session's CSRF token in a form
//     field; a request without it, or with another, is refused (403) and
//     changes nothing. A request that a browser marks as cross-site
//     (Sec-Fetch-Site) is refused too, the login included.
//   - A session whose token may not act sees no action buttons and no
//     policy editor, and the server refuses its actions (403).
//   - Every answer carries a Content-Security-Policy that allows scripts,
//     styles and connections from the console itself only, with no inline
//     script or style.
package console

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/auth"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/policy"
)

// Prefix is the path the console is served under.
const Prefix = "/ui/"

// ErrInvalidOptions: New's options failed validation.
var ErrInvalidOptions = errors.New("console: invalid options")

// Access is what one login may do.
type Access struct {
	// Who holds the token: the actor recorded for their actions.
	Who string
	// Act allows the saga actions: retry, resolve, abort.
	Act bool
	// EditPolicy allows saving the policy's API layer.
	EditPolicy bool
}

// TokenLogin is Options.Login for a set of scoped tokens, with the admin
// API's rules: the saga actions need the operator scope, the policy
// editor the admin scope, and a read token looks only.
func TokenLogin(a auth.Authenticator) func(token string) (Access, bool) {
	return func(token string) (Access, bool) {
		id, err := a.Authenticate(token)
		if err != nil {
			return Access{}, false
		}
		return Access{Who: id.Name, Act: id.Scope.Allows(auth.Operator), EditPolicy: id.Scope.Allows(auth.Admin)}, true
	}
}

// Options configures the console.
type Options struct {
	// Token logs in with full access: typically the admin API's own
	// token. Required unless Authenticate is set.
	Token string
	// ReadOnlyToken, if set, logs in to look only. Default "": none.
	ReadOnlyToken string
	// Login, if set, replaces Token and ReadOnlyToken: it says what the
	// holder of token may do (Access), and whether the token is valid at
	// all. It must compare in constant time. TokenLogin builds it from a
	// set of scoped tokens (package auth), with the admin API's rules.
	Login func(token string) (Access, bool)
	// Authenticate is Login's older form, where one bit allows both the
	// saga actions and the policy editor. Ignored when Login is set.
	Authenticate func(token string) (who string, canAct bool, ok bool)
	// Policy, if set, is shown, explained and edited on the policy page.
	Policy *policy.Manager
	// Cluster, for a replicated engine, is what the cluster page shows
	// (the same value as admin.Options.Cluster). Default nil: the page
	// describes a single-node engine.
	Cluster admin.Cluster
	// SessionTTL is how long a session lasts after its login. Default 12h.
	SessionTTL time.Duration
	// RateEvery is how often the overview's rates are sampled; they are
	// computed over the last 30 samples. Default 10s.
	RateEvery time.Duration
	// Now is the clock of sessions and rates. Default time.Now.
	Now func() time.Time
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Console is the web console of one engine: an http.Handler for the
// paths under Prefix. Close ends its live streams.
type Console struct {
	e    *engine.Engine
	o    *admin.Observer
	opts Options
	auth func(string) (Access, bool)
	mux  *http.ServeMux
	tmpl map[string]*template.Template // page name → layout + page

	mu       sync.Mutex // guards sessions, failures and failed
	sessions map[string]*session
	failures []time.Time            // failed logins in the last loginWindow, from anywhere
	failed   map[string][]time.Time // the same, by client address
	// maxSessions is the const maxSessions (a test lowers it).
	maxSessions int

	rates *rates
	quit  chan struct{} // closed by Close
	once  sync.Once
	done  chan struct{} // closed when the rate sampler has returned
}

// session is one login. Its fields never change after login but flash,
// which the session's owner sets and the next page takes (under
// Console.mu).
type session struct {
	who     string
	access  Access
	csrf    string
	expires time.Time
	flash   string
}

//go:embed templates static
var files embed.FS

// New builds the console of e, fed by o (the observer given to the admin
// server). Errors: ErrInvalidOptions.
func New(e *engine.Engine, o *admin.Observer, opts Options) (*Console, error) {
	var probs []string
	if e == nil || o == nil {
		probs = append(probs, "an engine and its observer are required")
	}
	authn := opts.Login
	if authn == nil && opts.Authenticate != nil {
		old := opts.Authenticate
		authn = func(token string) (Access, bool) {
			who, canAct, ok := old(token)
			return Access{Who: who, Act: canAct, EditPolicy: canAct}, ok
		}
	}
	if authn == nil {
		if len(opts.Token) < 16 {
			probs = append(probs, "set Token (at least 16 characters) or Login: nobody could log in")
		}
		if opts.ReadOnlyToken != "" && len(opts.ReadOnlyToken) < 16 {
			probs = append(probs, "ReadOnlyToken is shorter than 16 characters")
		}
		if opts.ReadOnlyToken != "" && opts.ReadOnlyToken == opts.Token {
			probs = append(probs, "ReadOnlyToken equals Token")
		}
		if len(probs) == 0 {
			// The token sets of package auth: hashed, compared in
			// constant time, as the admin API's.
			ts := []auth.Token{{Name: "admin", Scope: auth.Admin, SHA256: auth.HashSecret(opts.Token)}}
			if opts.ReadOnlyToken != "" {
				ts = append(ts, auth.Token{Name: "viewer", Scope: auth.Read, SHA256: auth.HashSecret(opts.ReadOnlyToken)})
			}
			a, err := auth.New(ts...)
			if err != nil {
				probs = append(probs, err.Error())
			} else {
				authn = TokenLogin(a)
			}
		}
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrInvalidOptions, strings.Join(probs, "; "))
	}
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = 12 * time.Hour
	}
	if opts.RateEvery <= 0 {
		opts.RateEvery = 10 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &Console{e: e, o: o, opts: opts, auth: authn, sessions: map[string]*session{}, maxSessions: maxSessions,
		quit: make(chan struct{}), done: make(chan struct{}), tmpl: map[string]*template.Template{}}
	for _, page := range []string{"login", "overview", "list", "detail", "policy", "cluster"} {
		t, err := template.New("").Funcs(funcs).ParseFS(files, "templates/layout.html", "templates/"+page+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", page, err)
		}
		c.tmpl[page] = t
	}
	c.rates = newRates(30)
	c.rates.add(opts.Now(), o.Counters())
	go c.sample()
	c.routes()
	return c, nil
}

// Close ends the console's live streams and its rate sampler.
func (c *Console) Close() error {
	c.once.Do(func() { close(c.quit) })
	<-c.done
	return nil
}

// sample records the observer's counters every RateEvery, for the
// overview's rates.
func (c *Console) sample() {
	defer close(c.done)
	t := time.NewTicker(c.opts.RateEvery)
	defer t.Stop()
	for {
		select {
		case <-c.quit:
			return
		case <-t.C:
			c.rates.add(c.opts.Now(), c.o.Counters())
		}
	}
}

// csp allows the console's own script, styles and streams, and nothing
// inline.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// ServeHTTP serves the console's paths, with its security headers.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	c.mux.ServeHTTP(w, r)
}

func (c *Console) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(files, "static")
	m.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServer(http.FS(static))))
	m.Handle("GET /ui", http.RedirectHandler(Prefix, http.StatusSeeOther))
	m.HandleFunc("GET /ui/login", c.loginPage)
	m.HandleFunc("POST /ui/login", c.login)
	m.HandleFunc("POST /ui/logout", c.post(needLogin, c.logout))
	m.HandleFunc("GET /ui/{$}", c.get(c.overview))
	m.HandleFunc("GET /ui/sagas", c.get(c.list))
	m.HandleFunc("GET /ui/sagas/{id}", c.get(c.detail))
	m.HandleFunc("POST /ui/sagas/{id}/{action}", c.post(needAct, c.act))
	m.HandleFunc("GET /ui/policy", c.get(c.policyPage))
	m.HandleFunc("POST /ui/policy", c.post(needPolicy, c.policyEdit))
	m.HandleFunc("POST /ui/policy/clear", c.post(needPolicy, c.policyClear))
	m.HandleFunc("GET /ui/cluster", c.get(c.cluster))
	m.HandleFunc("GET /ui/events", c.events)
	c.mux = m
}

const cookieName = "saga_console"

// current returns r's session, nil if it has none or it expired.
func (c *Console) current(r *http.Request) *session {
	ck, err := r.Cookie(cookieName)
	if err != nil || ck.Value == "" {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sessions[ck.Value]
	if s != nil && !c.opts.Now().Before(s.expires) {
		delete(c.sessions, ck.Value)
		return nil
	}
	return s
}

// get wraps a page: without a session it sends the browser to the login.
func (c *Console) get(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := c.current(r)
		if s == nil {
			if r.URL.Query().Get("fragment") != "" {
				http.Error(w, "log in again", http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, Prefix+"login", http.StatusSeeOther)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		// The applied index before the page reads anything: the page
		// shows this state or a newer one. The script skips a refresh
		// whose version is the one it shows, so an unchanged part is
		// never replaced under the user's hands.
		v := c.e.Stats().AppliedIndex
		h(w, r.WithContext(context.WithValue(r.Context(), versionKey{}, v)), s)
	}
}

// versionKey keys the applied index a page was read at.
type versionKey struct{}

// need is what a POST route requires of its session beyond a login.
type need int

const (
	needLogin  need = iota // any session
	needAct                // Access.Act: the saga actions
	needPolicy             // Access.EditPolicy: the policy editor
)

// post wraps a change: it needs a session, its CSRF token in the form
// field "csrf", a browser that does not call it cross-site, and a session
// whose Access allows what need names. Anything else is refused with 403
// and reaches no handler.
func (c *Console) post(need need, h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := c.current(r)
		if s == nil {
			c.refuse(w, http.StatusUnauthorized, "Your session ended: log in again.")
			return
		}
		if crossSite(r) {
			c.refuse(w, http.StatusForbidden, "Refused: a request from another site.")
			return
		}
		got := r.PostFormValue("csrf")
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) != 1 {
			c.refuse(w, http.StatusForbidden, "Refused: the form's CSRF token is missing or wrong. Reload the page and try again.")
			return
		}
		switch {
		case need == needAct && !s.access.Act:
			c.refuse(w, http.StatusForbidden, "Refused: "+s.who+" may look but not act.")
			return
		case need == needPolicy && !s.access.EditPolicy:
			c.refuse(w, http.StatusForbidden, "Refused: "+s.who+" may not edit the policy (it takes an admin token).")
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		h(w, r, s)
	}
}

// crossSite says whether the browser marks r as sent by another site
// (Sec-Fetch-Site).
func crossSite(r *http.Request) bool {
	site := r.Header.Get("Sec-Fetch-Site")
	return site != "" && site != "same-origin"
}

func (c *Console) refuse(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = fmt.Fprintln(w, msg)
}

// newSecret returns 32 random bytes, base64url.
func newSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if c.current(r) != nil {
		http.Redirect(w, r, Prefix, http.StatusSeeOther)
		return
	}
	c.render(w, r, http.StatusOK, "login", nil, "Log in", nil)
}

// At most loginFailures failed logins per loginWindow from one client
// address: past them that address's logins are refused (429) until the
// window has moved on, so that the login form is no oracle for guessing
// tokens, while a client that fails does not lock the operators out. From
// all addresses together at most loginFailuresAll, the bound for a guesser
// that spreads over many. At most maxThrottled addresses are tracked; the
// failures of others count only in the total. The JSON API is not
// affected.
// maxSessions bounds the sessions kept at once (each is a login with a
// valid token): past it a login ends the session that would end first.
const maxSessions = 10000

const (
	loginFailures    = 10
	loginFailuresAll = 100
	loginWindow      = time.Minute
	maxThrottled     = 4096
)

// throttled says whether logins from client are refused now; failed
// records a failed one.
func (c *Console) throttled(now time.Time, client string, failed bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	recent := func(ts []time.Time) []time.Time {
		keep := ts[:0]
		for _, at := range ts {
			if now.Sub(at) < loginWindow {
				keep = append(keep, at)
			}
		}
		return keep
	}
	c.failures = recent(c.failures)
	for k, ts := range c.failed {
		if ts = recent(ts); len(ts) == 0 {
			delete(c.failed, k)
		} else {
			c.failed[k] = ts
		}
	}
	if failed {
		c.failures = append(c.failures, now)
		if _, known := c.failed[client]; known || len(c.failed) < maxThrottled {
			if c.failed == nil {
				c.failed = map[string][]time.Time{}
			}
			c.failed[client] = append(c.failed[client], now)
		}
	}
	return len(c.failed[client]) >= loginFailures || len(c.failures) >= loginFailuresAll
}

// clientOf is the address a login comes from: the connection's host
// (behind a proxy, the proxy's: every client then shares one budget).
func clientOf(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if crossSite(r) {
		// Not counted as a failure: a page elsewhere must not be able to
		// spend the login budget and lock the operators out (nor log a
		// browser in under its own token).
		c.refuse(w, http.StatusForbidden, "Refused: a request from another site.")
		return
	}
	if c.throttled(c.opts.Now(), clientOf(r), false) {
		c.render(w, r, http.StatusTooManyRequests, "login", nil, "Log in",
			map[string]string{"Error": "Too many failed logins: wait a minute and try again."})
		return
	}
	access, ok := c.auth(r.PostFormValue("token"))
	if !ok {
		c.throttled(c.opts.Now(), clientOf(r), true)
		c.opts.Logger.Warn("console: failed login", "remote", r.RemoteAddr)
		c.render(w, r, http.StatusUnauthorized, "login", nil, "Log in", map[string]string{"Error": "That token is not valid."})
		return
	}
	id, now := newSecret(), c.opts.Now()
	s := &session{who: access.Who, access: access, csrf: newSecret(), expires: now.Add(c.opts.SessionTTL)}
	c.mu.Lock()
	for k, old := range c.sessions { // forget the expired ones
		if !now.Before(old.expires) {
			delete(c.sessions, k)
		}
	}
	if len(c.sessions) >= c.maxSessions {
		// A token holder logging in without end: the session that ends
		// first makes room.
		first := ""
		for k, old := range c.sessions {
			if first == "" || old.expires.Before(c.sessions[first].expires) {
				first = k
			}
		}
		delete(c.sessions, first)
	}
	c.sessions[id] = s
	c.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: Prefix, HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: int(c.opts.SessionTTL / time.Second)})
	c.opts.Logger.Info("console: login", "who", access.Who, "can_act", access.Act, "can_edit_policy", access.EditPolicy)
	http.Redirect(w, r, Prefix, http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) {
	c.mu.Lock()
	for k, v := range c.sessions {
		if v == s {
			delete(c.sessions, k)
		}
	}
	c.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: Prefix, HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, Prefix+"login", http.StatusSeeOther)
}

// setFlash leaves a message for the session's next page.
func (c *Console) setFlash(s *session, msg string) {
	c.mu.Lock()
	s.flash = msg
	c.mu.Unlock()
}

func (c *Console) takeFlash(s *session) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := s.flash
	s.flash = ""
	return f
}

// layout is what every page's layout shows.
type layout struct {
	Title  string
	Nav    string
	Who    string
	CanAct bool // the saga actions
	// CanEditPolicy: the policy editor.
	CanEditPolicy bool
	CSRF          string
	Flash         string
	// Version is the engine's applied index when the page was read (0
	// outside a page of get).
	Version uint64
	P       any // the page's own data
}

// render executes page (or, with ?fragment=NAME, only its block NAME).
func (c *Console) render(w http.ResponseWriter, r *http.Request, code int, page string, s *session, title string, p any) {
	d := layout{Title: title, Nav: page, P: p}
	if s != nil {
		d.Who, d.CanAct, d.CanEditPolicy, d.CSRF = s.who, s.access.Act, s.access.EditPolicy, s.csrf
	}
	d.Version, _ = r.Context().Value(versionKey{}).(uint64)
	name := "layout"
	if f := r.URL.Query().Get("fragment"); f != "" && r.Method == http.MethodGet {
		w.Header().Set("X-Saga-Version", strconv.FormatUint(d.Version, 10))
		if c.tmpl[page].Lookup("fragment-"+f) == nil {
			http.Error(w, "no such fragment", http.StatusNotFound)
			return
		}
		name = "fragment-" + f
	} else if s != nil {
		d.Flash = c.takeFlash(s)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	if err := c.tmpl[page].ExecuteTemplate(w, name, d); err != nil {
		c.opts.Logger.Error("console: render", "page", page, "err", err)
	}
}

// events streams the watch feed to a logged-in browser as server-sent
// events ("saga", with the admin.Event as JSON), until the browser goes
// away or Close. The browser re-reads what it shows on each one.
func (c *Console) events(w http.ResponseWriter, r *http.Request) {
	if c.current(r) == nil {
		http.Error(w, "log in again", http.StatusUnauthorized)
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // the stream outlives the server's timeouts
	_ = rc.SetReadDeadline(time.Time{})
	ch, cancel := c.o.Subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, "retry: 2000\n\n")
	fl.Flush()
	keep := time.NewTicker(25 * time.Second)
	defer keep.Stop()
	ctx := r.Context()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.quit:
			return
		case <-keep.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
		case ev := <-ch:
			if err := writeEvent(w, ev); err != nil {
				return
			}
			fl.Flush()
		}
	}
}

// ctx bounds the engine reads of one page.
func pageCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), 10*time.Second)
}
