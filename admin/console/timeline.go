package console

import (
	"time"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/compensation"
)

// timeline is a saga's attempts as bars on one time axis: each action
// attempt and each compensation attempt, in the order they started.
type timeline struct {
	Start, End time.Time
	Span       string
	Rows       []attempt
}

// attempt is one run of a step's action or compensation.
type attempt struct {
	Step    string
	Kind    string // "action" or "compensation"
	N       int    // the attempt's number
	Outcome string // running, done, failed, stuck (the final failed compensation), uncertain
	Error   string
	Key     string // the idempotency key the handler received
	From    time.Time
	To      time.Time // zero while running
	// X and W place the bar, in percent of the axis.
	X, W     float64
	Duration string
}

// buildTimeline reads the attempts off a saga's history: a step's action
// runs from the record that starts it (saga_started for the first step,
// the previous step's step_completed for the next, step_started for a
// retry or a parallel step) to its step_completed or step_failed; a
// compensation from its compensation_started to its
// compensation_completed or compensation_failed. Attempts still open
// run to now.
func buildTimeline(rep *admin.ShowReply, now time.Time) timeline {
	sg := rep.Saga
	var t timeline
	open := map[string]int{} // "kind/step" → index in t.Rows of its open attempt
	done := map[string]bool{}
	start := func(step, kind string, n int, at time.Time) {
		if i, ok := open[kind+"/"+step]; ok { // a retry: the last one ended here
			t.Rows[i].To, t.Rows[i].Outcome = at, "failed"
		}
		ck := compensation.KindAction
		if kind == "compensation" {
			ck = compensation.KindCompensation
		}
		if n == 0 {
			n = 1
		}
		t.Rows = append(t.Rows, attempt{Step: step, Kind: kind, N: n, Outcome: "running", From: at,
			Key: compensation.IdempotencyKey(sg.ID, step, ck)})
		open[kind+"/"+step] = len(t.Rows) - 1
	}
	end := func(step, kind, outcome, errText string, at time.Time) {
		i, ok := open[kind+"/"+step]
		if !ok {
			return
		}
		delete(open, kind+"/"+step)
		t.Rows[i].To, t.Rows[i].Outcome, t.Rows[i].Error = at, outcome, errText
	}
	// ready starts what a saga_started or a step_completed starts: the
	// next step, or (parallel steps) every step whose dependencies are
	// now all done.
	ready := func(at time.Time) {
		for i, st := range sg.Steps {
			if done[st.Name] || started(t.Rows, st.Name) {
				continue
			}
			if !sg.Parallel {
				if i == 0 || done[sg.Steps[i-1].Name] {
					start(st.Name, "action", 1, at)
				}
				return
			}
			deps := true
			for _, a := range st.After {
				deps = deps && done[a]
			}
			if deps {
				start(st.Name, "action", 1, at)
			}
		}
	}
	for _, h := range rep.History {
		switch h.Kind {
		case "saga_started":
			t.Start = h.At
			ready(h.At)
		case "step_started":
			start(h.Step, "action", h.Attempt, h.At)
		case "step_completed":
			end(h.Step, "action", "done", "", h.At)
			done[h.Step] = true
			ready(h.At)
		case "step_failed":
			end(h.Step, "action", "failed", h.Error, h.At)
		case "compensation_started":
			start(h.Step, "compensation", h.Attempt, h.At)
		case "compensation_completed":
			end(h.Step, "compensation", "done", "", h.At)
		case "compensation_failed":
			outcome := "failed"
			if h.Final {
				outcome = "stuck"
			}
			end(h.Step, "compensation", outcome, h.Error, h.At)
		case "aborted":
			for k, i := range open {
				if t.Rows[i].Kind == "action" {
					t.Rows[i].To, t.Rows[i].Outcome = h.At, "uncertain"
					delete(open, k)
				}
			}
		}
		if h.At.After(t.End) {
			t.End = h.At
		}
	}
	if t.Start.IsZero() {
		t.Start = sg.CreatedAt
	}
	if len(open) > 0 && now.After(t.End) {
		t.End = now
	}
	span := t.End.Sub(t.Start)
	t.Span = round(span)
	for i := range t.Rows {
		a := &t.Rows[i]
		to := a.To
		if to.IsZero() {
			to = t.End
		}
		if span > 0 {
			a.X = 100 * float64(a.From.Sub(t.Start)) / float64(span)
			a.W = 100 * float64(to.Sub(a.From)) / float64(span)
		}
		a.W = max(a.W, 0.6) // an instant stays visible
		a.X = min(a.X, 100-a.W)
		a.Duration = round(to.Sub(a.From))
		if a.To.IsZero() {
			a.Duration += " so far"
		}
	}
	return t
}

func started(rows []attempt, step string) bool {
	for _, r := range rows {
		if r.Kind == "action" && r.Step == step {
			return true
		}
	}
	return false
}

// round shows a duration to a useful precision.
func round(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(10 * time.Microsecond).String()
	default:
		return d.Round(time.Millisecond).String()
	}
}
