package admin

import (
	"net/http"
	"strings"
	"testing"

	"github.com/sagaengine/saga/internal/testctx"
)

// A query parameter an endpoint does not know is a client's mistake (a
// typo such as stat=STUCK would otherwise list every saga, and
// explain?usr=alice explain the policy for no user): it is answered 400
// naming it, as is a filter given twice, and nothing runs.
func TestUnknownOrRepeatedQueryParametersAreRefused(t *testing.T) {
	e, _, h := fixture(t)
	auth := "Bearer " + token
	for _, c := range []struct{ method, path, body, name string }{
		{"GET", "/v1/sagas?stat=STUCK", "", "stat"},
		{"GET", "/v1/sagas?state=STUCK&state=COMPLETED", "", "state"},
		{"GET", "/v1/count?stat=STUCK", "", "stat"},
		{"GET", "/v1/count?definition=order&definition=failing", "", "definition"},
		{"GET", "/v1/status?verbose=1", "", "verbose"},
		{"GET", "/v1/sagas/stuck-1?history=0", "", "history"},
		{"GET", "/v1/definitions?name=order", "", "name"},
		{"GET", "/v1/policy?x=1", "", "x"},
		{"GET", "/v1/policy/explain?operation=x&usr=alice", "", "usr"},
		{"GET", "/v1/policy/explain?operation=x&operation=y", "", "operation"},
		{"GET", "/v1/cluster?x=1", "", "x"},
		{"GET", "/v1/watch?saga=stuck-1", "", "saga"},
		{"POST", "/v1/sagas/stuck-1/retry?force=1", `{}`, "force"},
		{"PUT", "/v1/policy?dry_run=1", "enable_saga: true\n", "dry_run"},
		{"DELETE", "/v1/policy?x=1", "", "x"},
	} {
		rec := call(h, c.method, c.path, auth, c.body)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"error"`) || !strings.Contains(rec.Body.String(), c.name) {
			t.Errorf("%s %s: %d %.200s, want 400 naming %q", c.method, c.path, rec.Code, rec.Body.String(), c.name)
		}
	}
	if st, _ := e.Status(testctx.New(t), "stuck-1"); st.State.String() != "STUCK" {
		t.Errorf("a refused retry ran: stuck-1 is %s", st.State)
	}
	// The known ones still work, meta repeated included.
	for _, p := range []string{"/v1/sagas?state=stuck&limit=5&order=newest", "/v1/count?meta=a=1&meta=b=2",
		"/v1/policy/explain?operation=x&user=alice&tenant=acme", "/v1/status", "/v1/sagas/stuck-1"} {
		if rec := call(h, "GET", p, auth, ""); rec.Code != http.StatusOK {
			t.Errorf("GET %s: %d %s", p, rec.Code, rec.Body.String())
		}
	}
}

// A body that holds more than the one JSON object of the request is
// malformed: refused, and the action does not run.
func TestActionBodyWithTrailingDataIsRefused(t *testing.T) {
	e, _, h := fixture(t)
	rec := call(h, "POST", "/v1/sagas/stuck-1/resolve", "Bearer "+token, `{"reason":"refunded"} {"reason":"not refunded"}`)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"error"`) {
		t.Errorf("two objects in one body: %d %s, want 400", rec.Code, rec.Body.String())
	}
	if st, _ := e.Status(testctx.New(t), "stuck-1"); st.State.String() != "STUCK" {
		t.Errorf("a refused resolve ran: stuck-1 is %s", st.State)
	}
}
