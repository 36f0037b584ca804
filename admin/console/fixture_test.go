package console

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/internal/testctx"
	"github.com/sagaengine/saga/policy"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const (
	fullToken     = "console-test-full-token-0123456789"
	readOnlyToken = "console-test-read-only-token-0123"
)

// fixture is an engine with a COMPLETED, a FAILED and a STUCK saga
// ("stuck-1": its refund failed with "payment service down"), served by
// an admin server with the console.
type fixture struct {
	e    *engine.Engine
	pm   *policy.Manager
	base string // http://127.0.0.1:port
	// healed makes the refund succeed; it then waits for release, so
	// that a test sees the saga reach FAILED only through the live feed.
	healed  atomic.Bool
	release chan struct{}
}

func newFixture(t *testing.T) *fixture { t.Helper(); return newFixtureWith(t, nil) }

// newFixtureWith is newFixture with the console's options changed by mod.
func newFixtureWith(t *testing.T, mod func(*Options)) *fixture {
	t.Helper()
	f := &fixture{release: make(chan struct{})}
	ctx := testctx.New(t)
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }))
	must(t, reg.RegisterAction("declined", func(context.Context, compensation.Call) ([]byte, error) {
		return nil, compensation.Permanent(errors.New("card declined"))
	}))
	must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	must(t, reg.Register("refund", func(ctx context.Context, _ compensation.Call) error {
		if !f.healed.Load() {
			return errors.New("payment service down")
		}
		select {
		case <-f.release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}))
	obs := admin.NewObserver()
	e, err := engine.Open(t.TempDir(), engine.Options{Registry: reg, Logger: quiet, Hooks: obs.Hooks()})
	must(t, err)
	t.Cleanup(func() { e.Close() })
	f.e = e
	t.Cleanup(func() {
		select {
		case <-f.release:
		default:
			close(f.release) // a refund still waiting ends before the engine closes
		}
	})
	for _, d := range []engine.Definition{
		{Name: "order", Steps: []engine.StepDef{{Name: "reserve", Action: "ok", Compensation: "undo"}, {Name: "ship", Action: "ok"}}},
		{Name: "checkout", Steps: []engine.StepDef{{Name: "reserve", Action: "ok", Compensation: "undo"}, {Name: "charge", Action: "declined"}}},
		{Name: "payment", Steps: []engine.StepDef{{Name: "charge", Action: "ok", Compensation: "refund",
			CompensationRetry: engine.RetryPolicy{MaxAttempts: 1}}, {Name: "ship", Action: "declined"}}},
	} {
		_, err := e.Define(ctx, d)
		must(t, err)
	}
	for _, r := range [][2]string{{"order", "done-1"}, {"checkout", "failed-1"}, {"payment", "stuck-1"}} {
		_, err := e.Run(ctx, r[0], nil, engine.StartOptions{ID: r[1], User: "ada"})
		must(t, err)
	}
	if st, err := e.Status(ctx, "stuck-1"); err != nil || st.State != fsm.StateStuck {
		t.Fatalf("fixture: stuck-1 is %v (%v), want STUCK", st, err)
	}
	f.pm, err = policy.New(policy.Options{Logger: quiet, LookupEnv: func(string) (string, bool) { return "", false }})
	must(t, err)
	t.Cleanup(func() { f.pm.Close() })
	// The console logs a page it failed to render as an error: the test
	// fails then, whatever the page looked like.
	var errs lockedBuffer
	t.Cleanup(func() {
		if s := errs.String(); s != "" {
			t.Errorf("the console logged errors:\n%s", s)
		}
	})
	uo := Options{Token: fullToken, ReadOnlyToken: readOnlyToken, Policy: f.pm,
		Logger: slog.New(slog.NewTextHandler(&errs, &slog.HandlerOptions{Level: slog.LevelError}))}
	if mod != nil {
		mod(&uo)
	}
	ui, err := New(e, obs, uo)
	must(t, err)
	srv, err := admin.New(e, obs, admin.Options{Addr: "127.0.0.1:0", Token: fullToken, Policy: f.pm, Logger: quiet, Console: ui})
	must(t, err)
	must(t, srv.Start())
	t.Cleanup(func() { srv.Close() })
	f.base = "http://" + srv.Addr()
	return f
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// client is a browser without a browser: a cookie jar and no redirects
// followed, so that a test sees each answer.
type client struct {
	t   *testing.T
	c   *http.Client
	ctx context.Context
}

func newClient(t *testing.T) *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: t, ctx: testctx.New(t), c: &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (c *client) do(method, u string, form url.Values) (*http.Response, string) {
	c.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(c.ctx, method, u, body)
	must(c.t, err)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := c.c.Do(req)
	must(c.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	must(c.t, err)
	return resp, string(b)
}

// login logs in with token and returns the session's CSRF token, read
// off the overview page.
func (c *client) login(base, token string) string {
	c.t.Helper()
	resp, _ := c.do("POST", base+"/ui/login", url.Values{"token": {token}})
	if resp.StatusCode != http.StatusSeeOther {
		c.t.Fatalf("login: %s, want 303", resp.Status)
	}
	_, page := c.do("GET", base+"/ui/", nil)
	m := csrfField.FindStringSubmatch(page)
	if m == nil {
		c.t.Fatalf("no CSRF field in the overview:\n%s", page)
	}
	return m[1]
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
