package console

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/internal/testctx"
	"github.com/sagaengine/saga/policy"
)

// The browser tests drive Debian's chromium (headless) through
// chromedp. Without chromium they fail, saying how to install it, unless
// SAGA_SKIP_BROWSER=1. SAGA_CHROMIUM names another binary.
// SAGA_SCREENSHOTS=DIR keeps their screenshots in DIR (docs/, say);
// otherwise they go to $TMPDIR/saga-console-screenshots.

// chromium returns the browser's path, or fails the test loudly.
func chromium(t *testing.T) string {
	t.Helper()
	if os.Getenv("SAGA_SKIP_BROWSER") == "1" {
		t.Skip("SAGA_SKIP_BROWSER=1: the browser tests of the web console do not run")
	}
	candidates := []string{os.Getenv("SAGA_CHROMIUM"), "chromium", "chromium-browser", "/usr/bin/chromium"}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	t.Fatalf("NO CHROMIUM: the web console's browser tests need Debian's chromium package.\n" +
		"  install it:  apt-get install -y chromium   (.ci/run does this)\n" +
		"  or point SAGA_CHROMIUM at a chromium binary,\n" +
		"  or set SAGA_SKIP_BROWSER=1 to skip these tests knowingly.")
	return ""
}

// browser starts a headless chromium of its own (a fresh profile) and
// returns a tab's context, which ends with the test or after limit.
func browser(t *testing.T, limit time.Duration) context.Context {
	t.Helper()
	bin := chromium(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	parent, cancelT := context.WithTimeout(testctx.New(t), limit)
	actx, cancelA := chromedp.NewExecAllocator(parent, opts...)
	ctx, cancelB := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() { cancelB(); cancelA(); cancelT() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium (%s): %v", bin, err)
	}
	return ctx
}

// do runs steps, failing the test with what it was doing.
func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	// Each step has 15 s, so that a failure leaves time to say where the
	// page was.
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, steps...); err != nil {
		loc, _ := chromedp.Run(ctx, chromedp.Location())
		body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		t.Fatalf("%s: %v\nat %s, the page reads:\n%s", what, err, loc, body)
	}
}

// get runs one action that returns a value.
func get[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// text is the visible text of the element sel (CSS) selects, read in
// one step of the page's own script: a live refresh may replace the
// element at any time, and a node looked up before it would be stale.
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	q, _ := json.Marshal(sel)
	v := get(t, ctx, "read "+sel, chromedp.Evaluate[*string](fmt.Sprintf(
		`(function () { var e = document.querySelector(%s); return e ? e.innerText : null; })()`, q)))
	if v == nil {
		t.Fatalf("no element %s on the page", sel)
	}
	return strings.TrimSpace(*v)
}

// labelled fails the test if a form control of the page has no label.
func labelled(t *testing.T, ctx context.Context, page string) {
	t.Helper()
	bad := get(t, ctx, "unlabelled controls", chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll(
		"input:not([type=hidden]), select, textarea")).filter(e => !e.labels || e.labels.length === 0).map(e => e.outerHTML)`))
	if len(bad) > 0 {
		t.Errorf("%s: controls without a label: %v", page, bad)
	}
}

func visible(sel string) chromedp.Action[chromedp.Void] {
	return chromedp.WaitVisible(chromedp.CSS(sel))
}

// screenshot saves the page as name.png.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("SAGA_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "saga-console-screenshots")
	}
	must(t, os.MkdirAll(dir, 0o755))
	png := get(t, ctx, "screenshot "+name, chromedp.FullScreenshot(100))
	path := filepath.Join(dir, name+".png")
	must(t, os.WriteFile(path, png, 0o644))
	t.Logf("screenshot: %s", path)
}

func logIn(t *testing.T, ctx context.Context, base, token string) {
	t.Helper()
	do(t, ctx, "log in",
		chromedp.Navigate(base+"/ui/"),
		visible(`#token`),
		chromedp.SendKeys(chromedp.CSS(`#token`), token),
		chromedp.Submit(chromedp.CSS(`#token`)),
		visible(`#stuck-count`),
	)
}

// TestStuckSagaStory is the operator's story, by clicking: log in, see
// the STUCK count, filter the list to STUCK, open the saga, see its
// failed compensation in the timeline, retry it with a reason, and see
// it reach FAILED through the live update (the retried refund waits
// until the page is following the feed, so no reload can show it).
func TestStuckSagaStory(t *testing.T) {
	f := newFixture(t)
	ctx := browser(t, 45*time.Second)
	logIn(t, ctx, f.base, fullToken)
	if n := text(t, ctx, `#stuck-count .n`); n != "1" {
		t.Fatalf("overview: STUCK count %q, want 1", n)
	}
	screenshot(t, ctx, "console-overview")

	do(t, ctx, "filter the list to STUCK",
		chromedp.Click(chromedp.CSS(`a[href="/ui/sagas"]`)),
		visible(`#f-state`),
		chromedp.SetValue(chromedp.CSS(`#f-state`), "STUCK"),
		chromedp.Click(chromedp.CSS(`#apply`)),
		chromedp.WaitReady(chromedp.CSS(`#f-state option[value="STUCK"][selected]`)),
		visible(`tr[data-id="stuck-1"]`),
	)
	rows := get(t, ctx, "the rows", chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("#rows tr[data-id]")).map(r => r.dataset.id)`))
	labelled(t, ctx, "the saga list")
	if strings.Join(rows, ",") != "stuck-1" {
		t.Fatalf("the STUCK list shows %v, want only stuck-1", rows)
	}

	do(t, ctx, "open the saga: its failed compensation is in the timeline",
		chromedp.Click(chromedp.CSS(`tr[data-id="stuck-1"] a`)),
		visible(`#timeline tr[data-kind="compensation"][data-step="charge"][data-outcome="stuck"]`),
	)
	if e := text(t, ctx, `#timeline tr[data-kind="compensation"][data-outcome="stuck"] .err`); !strings.Contains(e, "payment service down") {
		t.Fatalf("the failed compensation's error reads %q", e)
	}
	labelled(t, ctx, "the saga's page")
	screenshot(t, ctx, "console-stuck-saga")

	f.healed.Store(true) // the payment service is back: the next refund succeeds, once released
	// By keyboard: type the reason, Tab to the confirmation, Space to
	// tick it, Tab to the button, Enter.
	do(t, ctx, "retry with a reason and a confirmation, by keyboard",
		chromedp.Focus(chromedp.CSS(`#reason-retry`)),
		chromedp.KeyEvent("payment service is back"),
		chromedp.KeyEvent("\t"),
		chromedp.KeyEvent(" "),
		chromedp.KeyEvent("\t"),
		chromedp.KeyEvent("\r"),
		visible(`#flash`),
		visible(`body[data-live="on"]`),
	)
	if flash := text(t, ctx, `#flash`); !strings.Contains(flash, "Retry accepted") {
		t.Fatalf("after retry the page says %q", flash)
	}
	if st := text(t, ctx, `#state`); st == "FAILED" {
		t.Fatalf("the saga is FAILED before its refund was released: the test would not see the live update")
	}
	close(f.release) // the refund completes: only the live feed can tell the page
	do(t, ctx, "see FAILED through the live update",
		visible(`#state.s-failed`),
		visible(`#timeline tr[data-kind="compensation"][data-outcome="done"]`),
	)
	if ops := text(t, ctx, `#ops`); !strings.Contains(ops, "retried") || !strings.Contains(ops, "admin") || !strings.Contains(ops, "payment service is back") {
		t.Fatalf("operator actions read %q, want the retry with who and why", ops)
	}
	if st := f.stateOf(t, "stuck-1"); st != fsm.StateFailed {
		t.Fatalf("engine: stuck-1 is %s, want FAILED", st)
	}
	screenshot(t, ctx, "console-after-retry")

	// At phone width the page fits the screen: nothing scrolls sideways
	// but the tables' own scroll boxes.
	do(t, ctx, "phone width", chromedp.EmulateViewport(390, 844), chromedp.Reload(), visible(`#state`))
	if get(t, ctx, "overflow", chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`)) {
		t.Errorf("at 390 px the page scrolls sideways")
	}
}

// TestRejectedPolicyEditKeepsPolicy: an invalid edit shows its error next
// to the text, says that nothing changed, and the policy in force stays;
// a valid one then takes effect.
func TestRejectedPolicyEditKeepsPolicy(t *testing.T) {
	f := newFixture(t)
	ctx := browser(t, 30*time.Second)
	logIn(t, ctx, f.base, fullToken)
	before := f.pm.Snapshot().Describe()
	do(t, ctx, "submit an invalid policy",
		chromedp.Navigate(f.base+"/ui/policy"),
		visible(`#policy-text`),
		chromedp.SendKeys(chromedp.CSS(`#policy-text`), "enable_saga: maybe\n"),
		chromedp.Click(chromedp.CSS(`#policy-save`)),
		visible(`#policy-error`),
	)
	if e := text(t, ctx, `#policy-error`); !strings.Contains(e, "nothing changed") || !strings.Contains(e, "enable_saga") {
		t.Fatalf("the rejection reads %q", e)
	}
	if v := text(t, ctx, `#policy-version`); v != fmt.Sprint(before.Version) {
		t.Fatalf("the page shows version %s in force, want %d", v, before.Version)
	}
	if got := f.pm.Snapshot().Describe(); got.Version != before.Version || got.EnableSaga != before.EnableSaga {
		t.Fatalf("the rejected edit changed the policy: %+v, was %+v", got, before)
	}
	if v := get(t, ctx, "the textarea", chromedp.Value(chromedp.CSS(`#policy-text`))); !strings.Contains(v, "maybe") {
		t.Fatalf("the textarea holds %q after the rejection", v)
	}
	labelled(t, ctx, "the policy page")
	screenshot(t, ctx, "console-policy-rejected")

	do(t, ctx, "a valid edit takes effect",
		chromedp.SetValue(chromedp.CSS(`#policy-text`), "enable_saga: true\n"),
		chromedp.Click(chromedp.CSS(`#policy-save`)),
		visible(`#flash`),
	)
	if e := text(t, ctx, `#enable-saga`); e != "true" || !f.pm.Snapshot().Describe().EnableSaga {
		t.Fatalf("after a valid edit the page says enable_saga %q, the manager %v", e, f.pm.Snapshot().Describe().EnableSaga)
	}

	do(t, ctx, "explain an operation for a user",
		chromedp.SendKeys(chromedp.CSS(`#x-op`), "upload"),
		chromedp.SendKeys(chromedp.CSS(`#x-user`), "ada"),
		chromedp.Submit(chromedp.CSS(`#x-op`)),
		visible(`#explain`),
	)
	want := f.pm.Explain("upload", policy.UserContext{UserID: "ada"})
	if x := text(t, ctx, `#explain`); !strings.Contains(x, "upload") || len(want.Reasons) == 0 || !strings.Contains(x, want.Reasons[0]) {
		t.Fatalf("explain reads %q, want the manager's reasons %q", x, want.Reasons)
	}
}

// TestReadOnlyBrowserSeesNoActions: logged in with the read-only token, a
// STUCK saga's page offers no action and no policy editor (the server
// refuses them too: TestReadOnlyCannotAct).
func TestReadOnlyBrowserSeesNoActions(t *testing.T) {
	f := newFixture(t)
	ctx := browser(t, 30*time.Second)
	logIn(t, ctx, f.base, readOnlyToken)
	do(t, ctx, "open the stuck saga read-only", chromedp.Navigate(f.base+"/ui/sagas/stuck-1"), visible(`#timeline`))
	who := text(t, ctx, `#who`)
	forms := get(t, ctx, "action forms", chromedp.Evaluate[int](`document.querySelectorAll("form.act, #do-retry, #do-resolve, #do-abort").length`))
	do(t, ctx, "open the policy read-only", chromedp.Navigate(f.base+"/ui/policy"), visible(`#policy-version`))
	editors := get(t, ctx, "policy editors", chromedp.Evaluate[int](`document.querySelectorAll("#policy-form").length`))
	if who != "viewer (read-only)" || forms != 0 || editors != 0 {
		t.Fatalf("read-only session %q sees %d action forms and %d policy editors, want none", who, forms, editors)
	}
}
