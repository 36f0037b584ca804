package console

import (
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/policy"
)

var funcs = template.FuncMap{
	"lower": strings.ToLower,
	"list":  func(s ...string) []string { return s },
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05.000")
	},
	"json": func(v any) string {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err.Error()
		}
		return string(b)
	},
}

func writeEvent(w io.Writer, ev admin.Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "event: saga\ndata: %s\n\n", b)
	return err
}

// overviewPage is the overview's data.
type overviewPage struct {
	Counts   []stateCount
	Stuck    int
	Counters admin.Counters
	Rates    rateView
	Status   *admin.StatusReply
	Err      string
}

type stateCount struct {
	State string
	N     int
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, s *session) {
	p := overviewPage{Counters: c.o.Counters()}
	p.Rates = c.rates.view(c.opts.Now(), p.Counters)
	st, err := admin.BuildStatus(c.e)
	if err != nil {
		p.Err = err.Error()
	} else {
		p.Status = st
		for _, state := range fsm.States() {
			p.Counts = append(p.Counts, stateCount{State: state.String(), N: st.Counts[state.String()]})
		}
		p.Stuck = st.Counts[fsm.StateStuck.String()]
	}
	c.render(w, r, http.StatusOK, "overview", s, "Overview", p)
}

// listPage is the saga list's data.
type listPage struct {
	Form        url.Values // the filters as given
	States      []string
	Definitions []string
	Sagas       []admin.SagaJSON
	Next        string // the URL of the next page, "" on the last
	Live        string // the URL of the rows fragment; "" past the first page
	Err         string
}

// filters are the list's form fields, passed to admin.ParseQuery.
var filters = []string{"state", "definition", "user", "tenant", "meta", "since", "until", "updated_since", "updated_until", "limit"}

func (c *Console) list(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := pageCtx(r)
	defer cancel()
	in := r.URL.Query()
	if id := strings.TrimSpace(in.Get("id")); id != "" {
		if _, err := c.e.Status(ctx, id); err == nil {
			http.Redirect(w, r, Prefix+"sagas/"+url.PathEscape(id), http.StatusSeeOther)
			return
		}
	}
	p := listPage{Form: url.Values{}}
	for _, st := range fsm.States() {
		p.States = append(p.States, st.String())
	}
	if ds, err := c.e.DefinitionVersions(ctx); err == nil {
		for _, d := range ds {
			p.Definitions = append(p.Definitions, d.Name)
		}
	}
	for _, f := range append(filters, "id") {
		if v := strings.TrimSpace(in.Get(f)); v != "" {
			p.Form.Set(f, v)
		}
	}
	code := http.StatusOK
	if id := p.Form.Get("id"); id != "" {
		p.Err = fmt.Sprintf("No saga has the id %q.", id)
		code = http.StatusNotFound
	}
	q, err := admin.ParseQuery(func(k string) string {
		switch k {
		case "order":
			return "newest"
		case "limit":
			if v := p.Form.Get("limit"); v != "" {
				return v
			}
			return "50"
		case "cursor":
			return in.Get("cursor")
		}
		return p.Form.Get(k)
	})
	// link is this list's URL: its filters (not the id) and key=value.
	link := func(key, value string) string {
		lq := url.Values{}
		for k, v := range p.Form {
			if k != "id" {
				lq[k] = v
			}
		}
		lq.Set(key, value)
		return Prefix + "sagas?" + lq.Encode()
	}
	if err != nil {
		p.Err, code = err.Error(), http.StatusBadRequest
	} else {
		sagas, next, err := c.e.List(ctx, q)
		if err != nil {
			// The JSON API's code: a closed engine is no bad request.
			code, _ = admin.EngineErrorStatus(err)
			p.Err = err.Error()
		}
		for _, st := range sagas {
			p.Sagas = append(p.Sagas, admin.NewSagaJSON(st))
		}
		if next != "" {
			p.Next = link("cursor", next)
		}
	}
	if in.Get("cursor") == "" {
		p.Live = link("fragment", "rows")
	}
	c.render(w, r, code, "list", s, "Sagas", p)
}

// detailPage is a saga's data.
type detailPage struct {
	Show     *admin.ShowReply
	Timeline timeline
	Actions  []admin.HistoryJSON // the operators' actions, in order
	Allowed  []string            // the actions its state allows
	Err      string              // a failed action's error
	Action   string              // the failed action
	Reason   string              // its reason, to try again
	Live     string
}

// allowed are the actions each state admits (the engine decides; the
// page offers only these).
var allowed = map[string][]string{
	fsm.StateStuck.String():      {"retry", "resolve"},
	fsm.StateInProgress.String(): {"abort"},
}

func (c *Console) detailData(r *http.Request, id string) (*detailPage, int, error) {
	ctx, cancel := pageCtx(r)
	defer cancel()
	rep, err := admin.BuildShow(ctx, c.e, id)
	if err != nil {
		code, _ := admin.EngineErrorStatus(err)
		return nil, code, err
	}
	p := &detailPage{Show: rep, Timeline: buildTimeline(rep, c.opts.Now()), Allowed: allowed[rep.Saga.State],
		Live: Prefix + "sagas/" + url.PathEscape(id) + "?fragment=saga"}
	for _, h := range rep.History {
		if h.Actor != "" {
			p.Actions = append(p.Actions, h)
		}
	}
	return p, http.StatusOK, nil
}

func (c *Console) detail(w http.ResponseWriter, r *http.Request, s *session) {
	p, code, err := c.detailData(r, r.PathValue("id"))
	if err != nil {
		c.render(w, r, code, "list", s, "Sagas", listPage{Err: err.Error(), Form: url.Values{"id": {r.PathValue("id")}}})
		return
	}
	c.render(w, r, code, "detail", s, "Saga "+p.Show.Saga.ID, p)
}

// act runs an operator action: it needs a reason and the confirmation
// box, and records the session's name as the actor.
func (c *Console) act(w http.ResponseWriter, r *http.Request, s *session) {
	id, action := r.PathValue("id"), r.PathValue("action")
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	var err error
	code := http.StatusOK
	switch {
	case !slices.Contains(admin.Actions, action):
		err, code = fmt.Errorf("unknown action %q", action), http.StatusNotFound
	case reason == "":
		err, code = errors.New("give a reason: it is recorded with the action"), http.StatusBadRequest
	case r.PostFormValue("confirm") != "yes":
		err, code = fmt.Errorf("tick the box to confirm the %s", action), http.StatusBadRequest
	}
	var st *engine.Status
	if err == nil {
		ctx, cancel := pageCtx(r)
		st, err = admin.Act(ctx, c.e, action, id, s.who, reason)
		cancel()
		switch {
		case err == nil:
		case errors.Is(err, admin.ErrInvalidAction):
			code = http.StatusBadRequest
		default:
			code, _ = admin.EngineErrorStatus(err) // the JSON API's codes
		}
	}
	if err == nil {
		c.opts.Logger.Info("console: action", "saga", id, "action", action, "who", s.who, "reason", reason)
		c.setFlash(s, fmt.Sprintf("%s accepted by the engine: the saga went to %s (this page follows it live).", titleCase(action), st.State))
		http.Redirect(w, r, Prefix+"sagas/"+url.PathEscape(id), http.StatusSeeOther)
		return
	}
	p, pcode, perr := c.detailData(r, id)
	if perr != nil {
		c.render(w, r, pcode, "list", s, "Sagas", listPage{Err: perr.Error(), Form: url.Values{"id": {id}}})
		return
	}
	p.Err, p.Action, p.Reason = titleCase(action)+" refused: "+err.Error(), action, reason
	c.render(w, r, code, "detail", s, "Saga "+id, p)
}

func titleCase(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// policyPage is the policy page's data.
type policyPage struct {
	None    bool // no policy manager
	Desc    policy.Description
	Explain *policy.Decision
	Form    url.Values // the explain form
	Text    string     // the edit as submitted
	EditErr string     // why it was rejected
	// NotDurable: the edit is in force, but its file may not survive a
	// crash (policy.ErrNotDurable); EditErr says why.
	NotDurable bool
	Accepted   bool
}

func (c *Console) policyData(r *http.Request) *policyPage {
	p := &policyPage{None: c.opts.Policy == nil, Form: url.Values{}}
	if p.None {
		return p
	}
	p.Desc = c.opts.Policy.Snapshot().Describe()
	q := r.URL.Query()
	for _, k := range []string{"operation", "user", "tenant"} {
		if v := strings.TrimSpace(q.Get(k)); v != "" {
			p.Form.Set(k, v)
		}
	}
	if op := p.Form.Get("operation"); op != "" {
		d := c.opts.Policy.Explain(op, policy.UserContext{UserID: p.Form.Get("user"), TenantID: p.Form.Get("tenant")})
		p.Explain = &d
	}
	return p
}

func (c *Console) policyPage(w http.ResponseWriter, r *http.Request, s *session) {
	c.render(w, r, http.StatusOK, "policy", s, "Policy", c.policyData(r))
}

// policyEdit sets the API layer of the policy; a rejected edit changes
// nothing and the page says so, next to the text as submitted.
func (c *Console) policyEdit(w http.ResponseWriter, r *http.Request, s *session) {
	if c.opts.Policy == nil {
		c.refuse(w, http.StatusNotFound, "No policy manager is configured on this engine.")
		return
	}
	text := r.PostFormValue("policy")
	c.policyChanged(w, r, s, c.opts.Policy.SetText("the console's edit", []byte(text)), text, "policy set", "Policy accepted")
}

// policyClear removes the API layer of the policy; a refusal changes
// nothing and the page says so.
func (c *Console) policyClear(w http.ResponseWriter, r *http.Request, s *session) {
	if c.opts.Policy == nil {
		c.refuse(w, http.StatusNotFound, "No policy manager is configured on this engine.")
		return
	}
	c.policyChanged(w, r, s, c.opts.Policy.ClearAPI(), "", "policy API layer removed", "API layer removed")
}

// policyChanged answers a change of the policy's API layer: on err the
// policy page with the error (and text, as submitted) beside the policy
// still in force; else a redirect to it with done's flash.
func (c *Console) policyChanged(w http.ResponseWriter, r *http.Request, s *session, err error, text, what, done string) {
	if err != nil {
		p := c.policyData(r)
		p.Text, p.EditErr, p.NotDurable = text, err.Error(), errors.Is(err, policy.ErrNotDurable)
		code := http.StatusUnprocessableEntity
		if !policy.IsInvalid(err) {
			code = http.StatusInternalServerError // it could not be kept (or, ErrNotDurable, not synced)
		}
		c.render(w, r, code, "policy", s, "Policy", p)
		return
	}
	v := c.opts.Policy.Snapshot().Describe().Version
	c.opts.Logger.Info("console: "+what, "who", s.who, "version", v)
	c.setFlash(s, fmt.Sprintf("%s: version %d is in force.", done, v))
	http.Redirect(w, r, Prefix+"policy", http.StatusSeeOther)
}

// rates keeps the last samples of the observer's counters; the overview
// computes rates over them. Safe for concurrent use.
type rates struct {
	mu      sync.Mutex
	max     int
	samples []rateSample
}

type rateSample struct {
	at time.Time
	c  admin.Counters
}

func newRates(max int) *rates { return &rates{max: max} }

func (r *rates) add(at time.Time, c admin.Counters) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.samples = append(r.samples, rateSample{at, c})
	if len(r.samples) > r.max {
		r.samples = r.samples[len(r.samples)-r.max:]
	}
}

// rateView is what the overview shows of the rates.
type rateView struct {
	Window                      string  // the span they are measured over
	Started, Finished, Attempts float64 // per minute
	CompensatedPct              float64 // of the sagas that finished, the share that failed (was compensated)
	Finishes                    uint64  // sagas finished in the window
}

func (r *rates) view(now time.Time, cur admin.Counters) rateView {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.samples) == 0 {
		return rateView{}
	}
	old := r.samples[0]
	span := now.Sub(old.at)
	if span < time.Second {
		return rateView{}
	}
	per := func(a, b uint64) float64 { return float64(a-b) / span.Minutes() }
	v := rateView{Window: span.Round(time.Second).String(),
		Started:  per(cur.Started, old.c.Started),
		Finished: per(cur.Completed+cur.Failed, old.c.Completed+old.c.Failed),
		Attempts: per(cur.CompensationAttempts, old.c.CompensationAttempts),
		Finishes: cur.Completed + cur.Failed - old.c.Completed - old.c.Failed}
	if v.Finishes > 0 {
		v.CompensatedPct = 100 * float64(cur.Failed-old.c.Failed) / float64(v.Finishes)
	}
	return v
}

// clusterPage is the cluster page's data.
type clusterPage struct {
	C   *admin.ClusterReply
	Err string
}

// cluster shows the member this engine is (admin.BuildCluster, as
// GET /v1/cluster): the group's members and leader, and the indexes
// that say how stale its reads are. Changing the group stays with
// sagactl cluster.
func (c *Console) cluster(w http.ResponseWriter, r *http.Request, s *session) {
	var p clusterPage
	rep, err := admin.BuildCluster(c.e, c.opts.Cluster)
	if err != nil {
		p.Err = err.Error()
	}
	p.C = rep
	c.render(w, r, http.StatusOK, "cluster", s, "Cluster", p)
}
