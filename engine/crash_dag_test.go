package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// The parallel part of the crash test: part of the child's sagas are a
// fan-out (root, then b0..b7 after root, then join after every branch),
// some failing in one or two branches, in join or in root, so that
// branches are compensated in parallel, and across kills. Their handlers
// append to a journal of their own (the file "journal", one write per
// line, O_APPEND: a SIGKILL loses no line that a handler wrote), one line
// per event:
//
//	boot  <pid> -     a process opened the directory (child or parent)
//	act   <saga> <step>  an action was invoked (its first instruction)
//	actx  <saga> <step>  ... and found its context already ended: no effect
//	fail  <saga> <step>  ... and failed as the input asked: no effect
//	do    <saga> <step>  ... and took effect
//	cbeg  <saga> <step>  a compensation was invoked
//	cfail <saga> <step>  ... and failed (a transient failure, retried)
//	undo  <saga> <step>  ... and took effect: the compensation completed
//
// checkDAGJournal checks, for every fan-out saga after the final resume:
//   - the journal names no saga the engine does not know;
//   - a COMPLETED saga was never compensated and every step took effect;
//   - in a FAILED saga every effect was undone after it took effect, and
//     every step the engine calls compensated was undone by its handler;
//   - reverse dependency order: when a compensation of step X is invoked,
//     the last compensation of every step that depends on X completed,
//     and none of them is invoked again afterwards;
//   - persist before side effect: no action of a step the engine says
//     never started, no action or effect of a step after its compensation
//     was invoked, and no action invoked with a live context after the
//     saga's first compensation was invoked. An action already in flight
//     when a failure cancels it may still be invoked (the engine checks
//     its context just before calling): it then finds its context ended
//     right after writing "act", which it records with "actx". It writes
//     "act" before looking, so an "act" not excused by "actx" was written
//     before the cancellation, which precedes every compensation of the
//     saga.

const dagBranches = 8

// dagDefinitions returns the fan-out definitions: "fanc" compensates
// uncertain steps, "fanr" retries them, "fanm" mixes both (root, join and
// the even branches retry), so that recovery retries a saga only if every
// step it finds running says retry.
func dagDefinitions() []Definition {
	var defs []Definition
	for _, name := range []string{"fanc", "fanr", "fanm"} {
		step := func(s string, after ...string) StepDef {
			sd := StepDef{Name: s, Action: "dagact", Compensation: "dagundo", After: after,
				CompensationRetry: RetryPolicy{InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, Multiplier: 2}}
			switch {
			case name == "fanr",
				name == "fanm" && (s == "root" || s == "join" || (s[1]-'0')%2 == 0):
				sd.OnUncertain = fsm.UncertainRetry
			}
			return sd
		}
		d := Definition{Name: name, Steps: []StepDef{step("root")}}
		var branches []string
		for i := range dagBranches {
			b := fmt.Sprintf("b%d", i)
			branches = append(branches, b)
			d.Steps = append(d.Steps, step(b, "root"))
		}
		d.Steps = append(d.Steps, step("join", branches...))
		defs = append(defs, d)
	}
	return defs
}

// dagInput returns the input of a fan-out saga: the steps whose action
// fails ("fail=b2,b5"; none in about two sagas in five), and whether the
// first attempt of its compensations fails (";flaky"). The outcome is in
// the input, so it is the same after a restart.
func dagInput(r interface{ IntN(int) int }) string {
	var fail []string
	switch p := r.IntN(20); {
	case p < 8: // no failure
	case p < 14: // one or two branches
		fail = append(fail, fmt.Sprintf("b%d", r.IntN(dagBranches)))
		if p%2 == 0 {
			fail = append(fail, fmt.Sprintf("b%d", r.IntN(dagBranches)))
		}
	case p < 18:
		fail = append(fail, "join")
	default:
		fail = append(fail, "root")
	}
	in := "fail=" + strings.Join(fail, ",")
	if r.IntN(3) == 0 {
		in += ";flaky"
	}
	return in
}

// registerDAG registers the fan-out's handlers, journaling to the file
// "journal" in dir, which it opens and marks with a boot line; the
// returned func closes it.
func registerDAG(reg *compensation.Registry, dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "journal"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(f, "boot %d -\n", os.Getpid()); err != nil {
		f.Close()
		return nil, err
	}
	write := func(op string, c compensation.Call) error {
		_, err := f.WriteString(op + " " + c.SagaID + " " + c.Step + "\n")
		return err
	}
	spec := func(c compensation.Call) (fail []string, flaky bool) {
		s, opts, _ := strings.Cut(strings.TrimPrefix(string(c.Input), "fail="), ";")
		return strings.Split(s, ","), opts == "flaky"
	}
	if err := reg.RegisterAction("dagact", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		if err := write("act", c); err != nil {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, errors.Join(ctx.Err(), write("actx", c))
		}
		if fail, _ := spec(c); slices.Contains(fail, c.Step) {
			if err := write("fail", c); err != nil {
				return nil, err
			}
			return nil, compensation.Permanent(errors.New("injected step failure"))
		}
		if err := write("do", c); err != nil {
			return nil, err
		}
		return []byte(c.Step), nil
	}); err != nil {
		f.Close()
		return nil, err
	}
	if err := reg.Register("dagundo", func(ctx context.Context, c compensation.Call) error {
		if err := write("cbeg", c); err != nil {
			return err
		}
		if _, flaky := spec(c); flaky && c.Attempt == 1 {
			return errors.Join(errors.New("transient compensation failure"), write("cfail", c))
		}
		return write("undo", c)
	}); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// dagEvent is one journal line of a saga: its position in the journal and
// the process it came from (the number of boot lines before it).
type dagEvent struct {
	pos, boot int
	op, step  string
}

// checkDAGJournal checks the journal against the final states of the
// fan-out sagas (see the comment at the top of this file). It returns
// the number of sagas completed, failed, with two branches or more
// compensated, and with a compensation interrupted by a kill.
func checkDAGJournal(t *testing.T, dir string, states map[string]*Status) (completed, failed, parallel, acrossKills int) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	events := map[string][]dagEvent{}
	boot := 0
	for pos, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("bad journal line %d %q", pos, line)
		}
		if f[0] == "boot" {
			boot++
			continue
		}
		st, ok := states[f[1]]
		if !ok {
			t.Fatalf("journal line %d %q: a side effect for a saga the engine does not know: persist-before-side-effect broken", pos, line)
		}
		if !st.Saga.Parallel() {
			t.Fatalf("journal line %d %q: a fan-out handler ran for saga of definition %s", pos, line, st.Definition)
		}
		events[f[1]] = append(events[f[1]], dagEvent{pos: pos, boot: boot, op: f[0], step: f[2]})
	}
	for id, st := range states {
		if !st.Saga.Parallel() {
			continue
		}
		evs := events[id]
		fatal := func(format string, args ...any) {
			t.Helper()
			var b strings.Builder
			for _, e := range evs {
				fmt.Fprintf(&b, "\n  %6d (process %d) %-5s %s", e.pos, e.boot, e.op, e.step)
			}
			t.Fatalf("fan-out saga %s (%s, input %q, %s): %s; its journal:%s",
				id, st.Definition, st.Saga.Input, st.State, fmt.Sprintf(format, args...), b.String())
		}
		// The events of one step, and whether one of ops is among them.
		of := func(step string, ops ...string) []dagEvent {
			var out []dagEvent
			for _, e := range evs {
				if e.step == step && slices.Contains(ops, e.op) {
					out = append(out, e)
				}
			}
			return out
		}
		switch st.State {
		case fsm.StateCompleted:
			completed++
			for _, e := range evs {
				if e.op == "cbeg" || e.op == "undo" || e.op == "cfail" {
					fatal("completed, yet %s was compensated", e.step)
				}
			}
			for _, s := range st.Steps {
				if len(of(s.Name, "do")) == 0 {
					fatal("completed, yet step %s never took effect", s.Name)
				}
			}
		case fsm.StateFailed:
			failed++
			for _, s := range st.Steps {
				// Every effect undone after it took effect.
				last := of(s.Name, "do", "undo")
				if len(last) > 0 && last[len(last)-1].op != "undo" {
					fatal("step %s took effect at line %d and was never compensated after", s.Name, last[len(last)-1].pos)
				}
				if s.Status == fsm.StepCompensated && len(of(s.Name, "undo")) == 0 {
					fatal("the engine says step %s is compensated, its handler never completed", s.Name)
				}
				if s.Status == fsm.StepDone || s.Status == fsm.StepCompensating {
					fatal("step %s left %s", s.Name, s.Status)
				}
			}
		default:
			fatal("not terminal")
		}
		// Reverse dependency order.
		for i, x := range st.Steps {
			for _, c := range of(x.Name, "cbeg") {
				for j, y := range st.Steps {
					if !st.Saga.DependsOn(j, i) {
						continue
					}
					var before []dagEvent
					for _, e := range of(y.Name, "cbeg", "undo") {
						if e.pos > c.pos {
							if e.op == "cbeg" {
								fatal("%s compensated again (line %d) after the compensation of %s, which it depends on, began (line %d)", y.Name, e.pos, x.Name, c.pos)
							}
							continue
						}
						before = append(before, e)
					}
					if len(before) > 0 && before[len(before)-1].op != "undo" {
						fatal("compensation of %s began (line %d) while the compensation of %s, which depends on it, had not completed (line %d)",
							x.Name, c.pos, y.Name, before[len(before)-1].pos)
					}
				}
			}
		}
		// Persist before side effect.
		first := -1 // the saga's first compensation
		for _, e := range evs {
			if e.op == "cbeg" {
				first = e.pos
				break
			}
		}
		for k, e := range evs {
			switch e.op {
			case "act", "actx", "do", "fail":
			default:
				continue
			}
			if s := st.Steps[slices.IndexFunc(st.Steps, func(s fsm.Step) bool { return s.Name == e.step })]; s.Status == fsm.StepPending {
				fatal("action of %s invoked (line %d), yet the engine says it never started", e.step, e.pos)
			}
			if own := of(e.step, "cbeg"); len(own) > 0 && own[0].pos < e.pos {
				fatal("%s of %s (line %d) after its compensation was invoked (line %d)", e.op, e.step, e.pos, own[0].pos)
			}
			if e.op != "act" || first < 0 || e.pos < first {
				continue
			}
			excused := false
			for _, n := range evs[k+1:] {
				if n.step == e.step && n.boot == e.boot && n.op != "cbeg" && n.op != "cfail" && n.op != "undo" {
					excused = n.op == "actx"
					break
				}
			}
			if !excused {
				fatal("action of %s invoked with a live context (line %d) after the saga's compensation began (line %d)", e.step, e.pos, first)
			}
		}
		// What the workload exercised.
		branches, from, to := 0, -1, -1
		for _, e := range evs {
			if e.op == "undo" && strings.HasPrefix(e.step, "b") {
				branches++
			}
			if e.op == "cbeg" && from < 0 {
				from = e.boot
			}
			if e.op == "undo" {
				to = e.boot
			}
		}
		if branches >= 2 {
			parallel++
		}
		if from >= 0 && to > from {
			acrossKills++
		}
	}
	return completed, failed, parallel, acrossKills
}
