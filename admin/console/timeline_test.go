package console

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sagaengine/saga/admin"
)

// TestTimelineReadsAttemptsOffTheHistory: each action and compensation
// attempt is a bar from the record that starts it to the one that ends
// it; a retried attempt ends where the next begins; what is still open
// runs to now.
func TestTimelineReadsAttemptsOffTheHistory(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	rep := &admin.ShowReply{
		Saga: admin.SagaJSON{ID: "s1", CreatedAt: t0, Steps: []admin.StepJSON{{Name: "pay"}, {Name: "ship"}}},
		History: []admin.HistoryJSON{
			{Kind: "saga_started", At: at(0)},
			{Kind: "step_completed", Step: "pay", At: at(10)},
			{Kind: "step_started", Step: "ship", Attempt: 2, At: at(30)},
			{Kind: "step_failed", Step: "ship", Error: "declined", At: at(40)},
			{Kind: "compensation_started", Step: "pay", Attempt: 1, At: at(50)},
			{Kind: "compensation_failed", Step: "pay", Attempt: 1, Error: "down", Final: true, At: at(60)},
			{Kind: "retried", Step: "pay", Actor: "ada", Reason: "back", At: at(80)},
			{Kind: "compensation_started", Step: "pay", Attempt: 2, At: at(80)},
		},
	}
	tl := buildTimeline(rep, at(100))
	var got []string
	for _, r := range tl.Rows {
		got = append(got, fmt.Sprintf("%s %s#%d %s %s %s %s", r.Step, r.Kind, r.N, r.Outcome, r.Duration, r.Error, r.Key))
	}
	want := []string{
		"pay action#1 done 10ms  s1/pay/action",
		"ship action#1 failed 20ms  s1/ship/action",
		"ship action#2 failed 10ms declined s1/ship/action",
		"pay compensation#1 stuck 10ms down s1/pay/compensation",
		"pay compensation#2 running 20ms so far  s1/pay/compensation",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if tl.Span != "100ms" {
		t.Fatalf("span %s, want 100ms (to now: an attempt is running)", tl.Span)
	}
	if r := tl.Rows[3]; r.X != 50 || r.W != 10 {
		t.Fatalf("the stuck compensation's bar is at %.1f%%, %.1f%% wide; want 50%%, 10%%", r.X, r.W)
	}
}
