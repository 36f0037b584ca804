package engine

// Engine interaction tests as data, in the way etcd-io/raft tests RawNode
// interactions: the scripts in testdata/interaction/*.txt propose, resolve
// handler calls, advance a fake clock, crash and reopen, and print what
// the engine did. Every script runs twice, once per mode:
//
//   - single: a real data directory (wal/ and Pebble) in a temp dir;
//   - replicated: the engine over a fake Replicator (ixRep, the approach
//     of fakeRep in replicated_test.go) that applies each proposal at
//     once, can hold proposals, and lets the script deliver commands of
//     another leader.
//
// The harness is in package engine, not engine_test, because waiting for
// the engine to be quiescent without sleeping needs to see the
// scheduler: the runs and their invocations (r.calls), the writer queue,
// the term. That is the only internal state it reads; every action goes
// through the public API, except crash in single-node mode, which calls
// failStop (see ixHarness.crash). fakeRep lives in engine_test and cannot
// be reached from here, so ixRep is a small copy of its approach.
//
// Determinism. Every action and compensation is a script-controlled
// handler: it blocks until the script resolves it (resolve) or its context
// ends. Time is a fake clock moved by tick; jitter is 0. After each
// command the harness waits (polling, with a deadline, never a fixed
// sleep) until the engine is quiescent: every saga that its state says
// must have a call in flight has exactly that one, and that call is
// either blocked in a script handler or parked on a backoff timer of the
// clock (timers are attributed to sagas by the goroutine that created
// them), or waiting for a log the script holds. See ixHarness.quiescent.
//
// Regenerate the expected output with:
//
//	go test ./engine -run TestInteraction -rewrite

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/compensation/fakeclock"
	"github.com/sagaengine/saga/fsm"
)

const (
	ixSingle     = "single"
	ixReplicated = "replicated"
)

// ixSettleTimeout bounds each wait for quiescence: generous, so that only
// a wedged engine trips it, never a loaded machine.
const ixSettleTimeout = 20 * time.Second

var errIxCrash = errors.New("interaction: crashed (injected)")

func TestInteraction(t *testing.T) {
	for _, mode := range []string{ixSingle, ixReplicated} {
		t.Run(mode, func(t *testing.T) {
			datadriven.Walk(t, "testdata/interaction", func(t *testing.T, path string) {
				h := newIxHarness(t, mode)
				datadriven.RunTest(t, path, h.handle)
			})
		})
	}
}

// ixHarness drives one engine through one script.
type ixHarness struct {
	t     *testing.T
	mode  string
	dir   string
	ctx   context.Context
	clk   *ixClock
	epoch time.Time
	reg   *compensation.Registry
	names map[string]bool // registered handler and action names
	// parallel holds the definitions with parallel steps and their
	// sagas: their events are sorted, having no order of their own.
	parallel map[string]bool

	e       *Engine
	log     *ixLog // single-node mode: the current log wrapper
	rep     *ixRep // replicated mode
	crashed bool
	skip    string // set by `only`: the rest of the file is for this other mode

	sagas []string // every saga id the script named, in order
	runs  map[string]*ixRun

	mu      sync.Mutex
	pending map[*ixCall]bool // handler calls blocked until the script resolves them
	gids    map[uint64]string
	events  []ixEvent
	quiet   bool // a crash is under way: what it ends is not reported call by call
}

// ixCall is one handler invocation blocked in the harness.
type ixCall struct {
	c   compensation.Call
	res chan ixResult // buffered (1)
}

type ixResult struct {
	out []byte
	err error
}

func (c *ixCall) String() string {
	kind := "action"
	if c.c.Kind == compensation.KindCompensation {
		kind = "undo"
	}
	s := fmt.Sprintf("%s %s %s #%d", c.c.SagaID, kind, c.c.Step, c.c.Attempt)
	if c.c.Kind == compensation.KindCompensation {
		if c.c.Uncertain {
			s += " uncertain"
		}
		if len(c.c.Output) > 0 {
			s += " output=" + string(c.c.Output)
		}
	}
	return s
}

// ixEvent is something the engine did on its own: a handler called, a
// handler's context ended, a Run returned.
type ixEvent struct {
	saga, text string
}

// ixRun is a Run in flight, in its own goroutine.
type ixRun struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func newIxHarness(t *testing.T, mode string) *ixHarness {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	t.Cleanup(cancel)
	epoch := time.Unix(1_700_000_000, 0)
	h := &ixHarness{
		t: t, mode: mode, dir: t.TempDir(), ctx: ctx,
		clk: &ixClock{fc: fakeclock.New(epoch)}, epoch: epoch,
		reg: compensation.NewRegistry(), names: map[string]bool{}, parallel: map[string]bool{},
		runs: map[string]*ixRun{}, pending: map[*ixCall]bool{}, gids: map[uint64]string{},
	}
	if mode == ixReplicated {
		h.rep = &ixRep{ch: make(chan bool, 1), release: make(chan struct{})}
	}
	h.open(t)
	if mode == ixReplicated {
		h.rep.setLeader(true)
		h.waitFor(t, "the first term", func() (bool, string) { return h.leading(), "not leading" })
	}
	t.Cleanup(h.close)
	return h
}

func (h *ixHarness) options() Options {
	o := Options{Registry: h.reg, Logger: quiet, Clock: h.clk, Rand: func() float64 { return 0 }, RemovalInterval: ManualRemoval}
	if h.mode == ixSingle {
		h.log = &ixLog{release: make(chan struct{})}
		o.WrapLog = func(l Log) Log { h.log.Log = l; return h.log }
	} else {
		o.Replicator = h.rep
	}
	return o
}

func (h *ixHarness) open(t *testing.T) {
	e, err := Open(h.dir, h.options())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	h.e = e
}

func (h *ixHarness) close() {
	h.mu.Lock()
	h.quiet = true
	h.mu.Unlock()
	for _, r := range h.runs {
		r.cancel()
	}
	if !h.crashed || h.mode == ixReplicated {
		if h.log != nil {
			h.log.setHold(false, false)
		}
		if h.rep != nil {
			h.rep.setHold(false, false)
		}
		_ = h.e.Close()
	}
	for _, r := range h.runs {
		<-r.done
	}
}

func (h *ixHarness) leading() bool {
	t := h.e.curTerm()
	return t.ctx.Err() == nil && t.ready.Load()
}

// handle runs one command of a script.
func (h *ixHarness) handle(t *testing.T, d *datadriven.TestData) string {
	if h.skip != "" {
		return d.Expected
	}
	if d.Cmd == "only" {
		// only mode=X: the rest of the file is for mode X alone.
		if m, _ := ixArg(d, "mode"); m != h.mode {
			h.skip = m
		}
		return "ok\n"
	}
	if m, ok := ixArg(d, "mode"); ok && m != h.mode {
		return d.Expected
	}
	var out string
	switch d.Cmd {
	case "define":
		out = h.define(t, d)
	case "run":
		out = h.run(t, d)
	case "start":
		out = h.start(t, d)
	case "advance":
		out = h.advance(t, d)
	case "calls":
		out = h.callsList()
	case "resolve":
		out = h.resolve(t, d)
	case "tick":
		out = h.tick(t, d)
	case "timers":
		out = h.timers()
	case "status":
		out = h.status(t, d)
	case "history":
		out = h.history(t, d)
	case "abort", "retry", "resolve-stuck":
		out = h.operator(t, d)
	case "crash":
		out = h.crash(t)
	case "reopen":
		out = h.reopen(t)
	case "deliver":
		out = h.deliver(t, d)
	case "log":
		out = h.logCmd(t, d)
	default:
		t.Fatalf("%s: unknown command %q", d.Pos, d.Cmd)
	}
	if d.Cmd != "crash" && d.Cmd != "reopen" && !h.crashed {
		h.settle(t)
	}
	return h.withEvents(out)
}

// withEvents appends the events since the last command: grouped by saga
// (sorted), in the order they happened within a saga, which is causal:
// a saga runs one invocation at a time.
func (h *ixHarness) withEvents(out string) string {
	h.mu.Lock()
	evs := h.events
	h.events = nil
	h.mu.Unlock()
	sort.SliceStable(evs, func(i, j int) bool {
		if evs[i].saga != evs[j].saga {
			return evs[i].saga < evs[j].saga
		}
		// Parallel steps: calls start and end in no order of their own.
		return h.parallel[evs[i].saga] && evs[i].text < evs[j].text
	})
	var b strings.Builder
	b.WriteString(out)
	for _, ev := range evs {
		if b.Len() > 0 && !strings.HasSuffix(b.String(), "\n") {
			b.WriteByte('\n')
		}
		b.WriteString(ev.text)
		b.WriteByte('\n')
	}
	if b.Len() == 0 {
		return "ok\n"
	}
	return b.String()
}

func (h *ixHarness) event(saga, text string) {
	h.events = append(h.events, ixEvent{saga: saga, text: text})
}

func (h *ixHarness) know(id string) {
	if !slices.Contains(h.sagas, id) {
		h.sagas = append(h.sagas, id)
	}
}

// --- arguments ---

// ixArg returns the value of key=value.
func ixArg(d *datadriven.TestData, key string) (string, bool) {
	for _, a := range d.CmdArgs {
		if a.Key == key && len(a.Vals) > 0 {
			return strings.Join(a.Vals, ","), true
		}
	}
	return "", false
}

// ixPos returns the positional (bare) arguments.
func ixPos(d *datadriven.TestData) []string {
	var out []string
	for _, a := range d.CmdArgs {
		if len(a.Vals) == 0 {
			out = append(out, a.Key)
		}
	}
	return out
}

func ixNeed(t *testing.T, d *datadriven.TestData, n int) []string {
	p := ixPos(d)
	if len(p) < n {
		t.Fatalf("%s: %s needs %d positional arguments, has %v", d.Pos, d.Cmd, n, p)
	}
	return p
}

func ixDuration(t *testing.T, s string) time.Duration {
	v, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// --- commands ---

// define name=N [durability=strict|pipelined], one step a line:
//
//	<name> [action=do_<name>|none] [undo=undo_<name>|none] [retry=N]
//	       [backoff=D] [multiplier=F] [undo_retry=N] [undo_backoff=D]
//	       [undo_multiplier=F] [timeout=D] [on_uncertain=compensate|retry]
func (h *ixHarness) define(t *testing.T, d *datadriven.TestData) string {
	def := Definition{}
	var ok bool
	if def.Name, ok = ixArg(d, "name"); !ok {
		t.Fatalf("%s: define needs name=", d.Pos)
	}
	if s, ok := ixArg(d, "durability"); ok {
		dur, err := ParseDurability(s)
		if err != nil {
			t.Fatal(err)
		}
		def.Durability = dur
	}
	for _, line := range strings.Split(strings.TrimSpace(d.Input), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		sd := StepDef{Name: f[0], Action: "do_" + f[0], Compensation: "undo_" + f[0]}
		for _, kv := range f[1:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				t.Fatalf("%s: step option %q is not key=value", d.Pos, kv)
			}
			num := func() int {
				n, err := strconv.Atoi(v)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			flt := func() float64 {
				n, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			switch k {
			case "action":
				sd.Action = v
			case "undo":
				sd.Compensation = v
			case "retry":
				sd.Retry.MaxAttempts = num()
			case "backoff":
				sd.Retry.InitialBackoff = ixDuration(t, v)
			case "multiplier":
				sd.Retry.Multiplier = flt()
			case "undo_retry":
				sd.CompensationRetry.MaxAttempts = num()
			case "undo_backoff":
				sd.CompensationRetry.InitialBackoff = ixDuration(t, v)
			case "undo_multiplier":
				sd.CompensationRetry.Multiplier = flt()
			case "timeout":
				sd.Timeout = ixDuration(t, v)
			case "after":
				sd.After = strings.Split(v, ",")
			case "on_uncertain":
				switch v {
				case "retry":
					sd.OnUncertain = UncertainRetry
				case "compensate":
					sd.OnUncertain = UncertainCompensate
				default:
					t.Fatalf("%s: on_uncertain=%s", d.Pos, v)
				}
			default:
				t.Fatalf("%s: unknown step option %q", d.Pos, k)
			}
		}
		if sd.Action == "none" {
			sd.Action = ""
		}
		if sd.Compensation == "none" {
			sd.Compensation = ""
		}
		h.register(t, sd)
		def.Steps = append(def.Steps, sd)
	}
	got, err := h.e.Define(h.ctx, def)
	if err != nil {
		return ixErr(err)
	}
	if fsm.Parallel(def.Steps) {
		h.parallel["def:"+def.Name] = true
	}
	return fmt.Sprintf("%s v%d", got.Name, got.Version)
}

// register makes every name the step uses a script-controlled handler.
func (h *ixHarness) register(t *testing.T, sd StepDef) {
	if n := sd.Action; n != "" && !h.names[n] {
		h.names[n] = true
		if err := h.reg.RegisterAction(n, func(ctx context.Context, c compensation.Call) ([]byte, error) {
			r := h.block(ctx, c)
			return r.out, r.err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if n := sd.Compensation; n != "" && !h.names[n] {
		h.names[n] = true
		if err := h.reg.Register(n, func(ctx context.Context, c compensation.Call) error {
			return h.block(ctx, c).err
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// block is every handler: it waits for the script to resolve the call, or
// for its context to end (an abort, a step timeout, a crash).
func (h *ixHarness) block(ctx context.Context, c compensation.Call) ixResult {
	call := &ixCall{c: c, res: make(chan ixResult, 1)}
	h.mu.Lock()
	h.gids[ixGoroutine()] = c.SagaID
	h.pending[call] = true
	h.event(c.SagaID, "call "+call.String())
	h.mu.Unlock()
	select {
	case r := <-call.res:
		return r
	case <-ctx.Done():
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case r := <-call.res: // resolved as the context ended: the script's word wins
		return r
	default:
	}
	delete(h.pending, call)
	if !h.quiet {
		why := "context cancelled"
		if timedOut(ctx) {
			why = "step timeout"
		}
		h.event(c.SagaID, "cancelled "+call.String()+" ("+why+")")
	}
	return ixResult{err: ctx.Err()}
}

func (h *ixHarness) startOptions(t *testing.T, d *datadriven.TestData, id string) StartOptions {
	o := StartOptions{ID: id}
	if s, ok := ixArg(d, "durability"); ok {
		dur, err := ParseDurability(s)
		if err != nil {
			t.Fatal(err)
		}
		o.Durability = &dur
	}
	return o
}

// run <id> def=<name> [input=x] [durability=…]: an engine-driven saga;
// Run goes on in the background and its return is an event.
func (h *ixHarness) run(t *testing.T, d *datadriven.TestData) string {
	id := ixNeed(t, d, 1)[0]
	def, _ := ixArg(d, "def")
	input, _ := ixArg(d, "input")
	o := h.startOptions(t, d, id)
	h.know(id)
	h.parallel[id] = h.parallel["def:"+def]
	ctx, cancel := context.WithCancel(h.ctx)
	r := &ixRun{cancel: cancel, done: make(chan struct{})}
	h.runs[id] = r
	go func() {
		defer close(r.done)
		st, err := h.e.Run(ctx, def, []byte(input), o)
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.quiet {
			return
		}
		if err != nil {
			h.event(id, "run "+id+" returned "+ixErr(err))
			return
		}
		h.event(id, "run "+id+" returned "+st.State.String())
	}()
	return ""
}

// start <id> def=<name> [input=x]: a caller-driven saga.
func (h *ixHarness) start(t *testing.T, d *datadriven.TestData) string {
	id := ixNeed(t, d, 1)[0]
	def, _ := ixArg(d, "def")
	input, _ := ixArg(d, "input")
	h.know(id)
	h.parallel[id] = h.parallel["def:"+def]
	got, err := h.e.Start(h.ctx, def, []byte(input), h.startOptions(t, d, id))
	if err != nil {
		return ixErr(err)
	}
	return h.line(got)
}

// advance <id> <step> ok [output=x] | fail [msg=…]
func (h *ixHarness) advance(t *testing.T, d *datadriven.TestData) string {
	p := ixNeed(t, d, 3)
	res := StepResult{Step: p[1]}
	switch p[2] {
	case "ok":
		if o, ok := ixArg(d, "output"); ok {
			res.Output = []byte(o)
		}
	case "fail":
		msg, ok := ixArg(d, "msg")
		if !ok {
			msg = "failed"
		}
		res.Err = errors.New(msg)
	default:
		t.Fatalf("%s: advance wants ok or fail, not %q", d.Pos, p[2])
	}
	st, err := h.e.Advance(h.ctx, p[0], res)
	if err != nil {
		return ixErr(err)
	}
	return h.statusLine(st)
}

// calls lists the handler calls waiting for the script, with their
// idempotency keys.
func (h *ixHarness) callsList() string {
	h.mu.Lock()
	var lines []string
	for c := range h.pending {
		lines = append(lines, c.String()+" key="+c.c.IdempotencyKey)
	}
	h.mu.Unlock()
	if len(lines) == 0 {
		return "none"
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// resolve <id> action|undo ok [output=x] | fail [permanent] [msg=…]
// [step=name]: answers the one matching call.
func (h *ixHarness) resolve(t *testing.T, d *datadriven.TestData) string {
	p := ixNeed(t, d, 3)
	kind := compensation.KindAction
	switch p[1] {
	case "action":
	case "undo":
		kind = compensation.KindCompensation
	default:
		t.Fatalf("%s: resolve wants action or undo, not %q", d.Pos, p[1])
	}
	var r ixResult
	switch p[2] {
	case "ok":
		if o, ok := ixArg(d, "output"); ok {
			r.out = []byte(o)
		}
	case "fail":
		msg, ok := ixArg(d, "msg")
		if !ok {
			msg = "failed"
		}
		r.err = errors.New(msg)
		if slices.Contains(p[3:], "permanent") {
			r.err = compensation.Permanent(r.err)
		}
	default:
		t.Fatalf("%s: resolve wants ok or fail, not %q", d.Pos, p[2])
	}
	step, _ := ixArg(d, "step")
	h.mu.Lock()
	var match []*ixCall
	for c := range h.pending {
		if c.c.SagaID == p[0] && c.c.Kind == kind && (step == "" || c.c.Step == step) {
			match = append(match, c)
		}
	}
	if len(match) != 1 {
		h.mu.Unlock()
		return fmt.Sprintf("error: %d calls match; waiting:\n%s", len(match), h.callsList())
	}
	delete(h.pending, match[0])
	match[0].res <- r
	h.mu.Unlock()
	return ""
}

// tick <duration>: moves the fake clock; timers that fall due fire.
func (h *ixHarness) tick(t *testing.T, d *datadriven.TestData) string {
	h.clk.Advance(ixDuration(t, ixNeed(t, d, 1)[0]))
	return fmt.Sprintf("t=%v", h.clk.Now().Sub(h.epoch))
}

// timers lists the backoff and step-timeout timers pending, by saga.
func (h *ixHarness) timers() string {
	now := h.clk.Now()
	h.mu.Lock()
	var lines []string
	for _, tm := range h.clk.pending() {
		if tm.kind != ixActionBackoff && tm.kind != ixUndoBackoff && tm.kind != ixStepTimeout {
			continue
		}
		lines = append(lines, fmt.Sprintf("%s %s in %v", h.gids[tm.gid], tm.kind, tm.at.Sub(now)))
	}
	h.mu.Unlock()
	if len(lines) == 0 {
		return "none"
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func (h *ixHarness) status(t *testing.T, d *datadriven.TestData) string {
	st, err := h.e.Status(h.ctx, ixNeed(t, d, 1)[0])
	if err != nil {
		return ixErr(err)
	}
	sg := st.Saga
	var b strings.Builder
	how := "caller-driven"
	if sg.Driven {
		how = "driven"
	}
	fmt.Fprintf(&b, "%s %s@v%d %s %s %s", sg.ID, sg.Definition, sg.Version, how, sg.Durability, sg.State)
	if st.CurrentStep != "" {
		fmt.Fprintf(&b, " at %s", st.CurrentStep)
	}
	b.WriteByte('\n')
	for i, s := range sg.Steps {
		fmt.Fprintf(&b, "  %d %s: %s", i, s.Name, s.Status)
		if s.Attempts > 0 {
			fmt.Fprintf(&b, " attempts=%d", s.Attempts)
		}
		if s.CompAttempts > 0 {
			fmt.Fprintf(&b, " undo_attempts=%d", s.CompAttempts)
		}
		if s.Uncertain {
			b.WriteString(" uncertain")
		}
		if s.Stuck {
			b.WriteString(" stuck")
		}
		if len(s.Output) > 0 {
			fmt.Fprintf(&b, " output=%s", s.Output)
		}
		if s.Err != nil {
			fmt.Fprintf(&b, " err=(%s)", s.Err.Error())
		}
		if s.CompErr != nil {
			fmt.Fprintf(&b, " undo_err=(%s)", s.CompErr.Error())
		}
		b.WriteByte('\n')
	}
	if st.LastError != nil {
		fmt.Fprintf(&b, "  last error: %s\n", st.LastError.Error())
	}
	return b.String()
}

// history <id>: the saga's transitions, one a line.
func (h *ixHarness) history(t *testing.T, d *datadriven.TestData) string {
	id := ixNeed(t, d, 1)[0]
	hist, err := h.e.History(h.ctx, id)
	if err != nil {
		return ixErr(err)
	}
	st, err := h.e.Status(h.ctx, id)
	if err != nil {
		return ixErr(err)
	}
	steps := st.Saga.Steps
	var b strings.Builder
	for _, he := range hist {
		r := he.Record
		fmt.Fprintf(&b, "%d %s", he.Seq, r.Kind)
		switch r.Kind {
		case fsm.KindSagaStarted, fsm.KindRetried, fsm.KindResolved:
		default:
			if r.Step >= 0 && r.Step < len(steps) {
				fmt.Fprintf(&b, " %s", steps[r.Step].Name)
			}
		}
		if r.Attempt > 0 {
			fmt.Fprintf(&b, " #%d", r.Attempt)
		}
		if len(r.Output) > 0 {
			fmt.Fprintf(&b, " output=%s", r.Output)
		}
		if r.Final {
			b.WriteString(" final")
		}
		if r.Actor != "" {
			fmt.Fprintf(&b, " by=%s", r.Actor)
		}
		if r.Reason != "" {
			fmt.Fprintf(&b, " (%s)", r.Reason)
		}
		if r.Err != nil {
			fmt.Fprintf(&b, " err=(%s)", r.Err.Error())
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// abort|retry|resolve-stuck <id> [reason=…]: operator actions, by "op".
func (h *ixHarness) operator(t *testing.T, d *datadriven.TestData) string {
	id := ixNeed(t, d, 1)[0]
	reason, ok := ixArg(d, "reason")
	if !ok {
		reason = "script"
	}
	var st *Status
	var err error
	switch d.Cmd {
	case "abort":
		st, err = h.e.Abort(h.ctx, id, "op", reason)
	case "retry":
		st, err = h.e.Retry(h.ctx, id, "op", reason)
	case "resolve-stuck":
		st, err = h.e.Resolve(h.ctx, id, "op", reason)
	}
	if err != nil {
		return ixErr(err)
	}
	return h.statusLine(st)
}

// crash stops the engine the way a process dies, as far as the engine can
// tell.
//
// Single-node mode: the log is switched to fail every append (a held
// append fails too) and the engine is fail-stopped (failStop: poisoned,
// its context cancelled), then closed; a poisoned engine's Close does not
// flush the state, so the next Open replays the log from the last
// checkpoint as after a real crash, and nothing that was not durable in
// the log survives. The handlers in flight see their context end; the
// engine records nothing of them (its context ended first), so to the
// engine they are lost, as in a crash.
//
// Replicated mode: the member loses leadership (raft's LeaderCh says
// false); proposals held by the script fail with OutcomeUnknown and are
// not committed; the term's handlers see their context end. The member
// keeps its state and goes on applying what another leader commits
// (deliver).
//
// In both modes the callers of Run see their context end (they were
// connected to the process that died).
func (h *ixHarness) crash(t *testing.T) string {
	if h.crashed {
		t.Fatal("crash: already crashed")
	}
	h.mu.Lock()
	h.quiet = true
	var lost []string
	for c := range h.pending {
		lost = append(lost, c.String())
	}
	h.mu.Unlock()
	for _, r := range h.runs {
		r.cancel()
	}
	if h.mode == ixSingle {
		h.log.setHold(false, true)
		h.e.failStop(nil, errIxCrash)
		if err := h.e.Close(); err != nil && !errors.Is(err, ErrPoisoned) && !errors.Is(err, errIxCrash) {
			t.Fatalf("close after the crash: %v", err)
		}
	} else {
		h.rep.crash()
		h.waitFor(t, "the term to end", func() (bool, string) {
			if h.leading() {
				return false, "still leading"
			}
			return h.quiescent()
		})
	}
	for _, r := range h.runs {
		<-r.done
	}
	h.runs = map[string]*ixRun{}
	h.waitFor(t, "the handlers to return", func() (bool, string) {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.pending) == 0, fmt.Sprintf("%d handlers blocked", len(h.pending))
	})
	h.mu.Lock()
	h.quiet = false
	h.events = nil
	h.mu.Unlock()
	h.crashed = true
	if len(lost) == 0 {
		return "crashed"
	}
	sort.Strings(lost)
	return "crashed; lost calls:\n" + strings.Join(lost, "\n")
}

// reopen: single-node mode opens the data directory again (recovery:
// replay, then resume); replicated mode regains leadership (the barrier,
// then resume).
func (h *ixHarness) reopen(t *testing.T) string {
	if !h.crashed {
		t.Fatal("reopen: not crashed")
	}
	h.crashed = false
	if h.mode == ixSingle {
		h.open(t)
	} else {
		h.rep.setLeader(true)
		h.waitFor(t, "the new term", func() (bool, string) { return h.leading(), "not leading" })
	}
	h.settle(t)
	return "reopened"
}

// deliver <id> <kind> [step=name] [output=x] [msg=…]: a command committed
// by another leader reaches this member (replicated mode only). Kinds:
// step_completed, step_failed, compensation_started,
// compensation_completed.
func (h *ixHarness) deliver(t *testing.T, d *datadriven.TestData) string {
	if h.mode != ixReplicated {
		t.Fatalf("%s: deliver is for replicated mode (add mode=replicated)", d.Pos)
	}
	p := ixNeed(t, d, 2)
	st, err := h.e.Status(h.ctx, p[0])
	if err != nil {
		return ixErr(err)
	}
	sg := st.Saga
	r := &fsm.Record{Saga: p[0], At: h.clk.Now().UnixNano(), Step: sg.Current}
	if name, ok := ixArg(d, "step"); ok {
		r.Step = slices.IndexFunc(sg.Steps, func(s fsm.Step) bool { return s.Name == name })
	}
	switch p[1] {
	case "step_completed":
		r.Kind = fsm.KindStepCompleted
		if o, ok := ixArg(d, "output"); ok {
			r.Output = []byte(o)
		}
	case "step_failed":
		r.Kind = fsm.KindStepFailed
		msg, _ := ixArg(d, "msg")
		r.Err = &fsm.ErrorInfo{Kind: "permanent", Message: msg}
	case "compensation_started":
		r.Kind, r.Attempt = fsm.KindCompStarted, sg.Steps[r.Step].CompAttempts+1
	case "compensation_completed":
		r.Kind = fsm.KindCompCompleted
	default:
		t.Fatalf("%s: deliver: unknown kind %q", d.Pos, p[1])
	}
	b, err := fsm.Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	res, err := h.rep.apply([][]byte{b})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil {
		return ixErr(res[0].Err)
	}
	return h.line(p[0])
}

// log hold|release: hold every log append (single-node) or proposal
// (replicated) until released or crashed.
func (h *ixHarness) logCmd(t *testing.T, d *datadriven.TestData) string {
	hold := false
	switch p := ixNeed(t, d, 1)[0]; p {
	case "hold":
		hold = true
	case "release":
	default:
		t.Fatalf("%s: log hold or log release, not %q", d.Pos, p)
	}
	if h.mode == ixSingle {
		h.log.setHold(hold, false)
	} else {
		h.rep.setHold(hold, false)
	}
	return ""
}

// line is the status line of a saga.
func (h *ixHarness) line(id string) string {
	st, err := h.e.Status(h.ctx, id)
	if err != nil {
		return ixErr(err)
	}
	return h.statusLine(st)
}

func (h *ixHarness) statusLine(st *Status) string {
	s := st.ID + " " + st.State.String()
	if st.CurrentStep != "" {
		s += " at " + st.CurrentStep
	}
	return s
}

// ixErr renders an error with the name of the sentinel it matches.
func ixErr(err error) string {
	for _, s := range []struct {
		err  error
		name string
	}{
		{ErrIllegalTransition, "ErrIllegalTransition"}, {ErrUnknownSaga, "ErrUnknownSaga"},
		{ErrUnknownDefinition, "ErrUnknownDefinition"}, {ErrSagaExists, "ErrSagaExists"},
		{ErrInvalidArgument, "ErrInvalidArgument"}, {ErrNotDriven, "ErrNotDriven"},
		{ErrNotLeader, "ErrNotLeader"}, {ErrNotSettled, "ErrNotSettled"},
		{ErrOutcomeUnknown, "ErrOutcomeUnknown"}, {ErrPoisoned, "ErrPoisoned"},
		{ErrClosed, "ErrClosed"}, {ErrUnknownHandler, "ErrUnknownHandler"},
	} {
		if errors.Is(err, s.err) {
			return "error " + s.name + ": " + err.Error()
		}
	}
	return "error: " + err.Error()
}

// --- waiting for quiescence ---

// settle waits until the engine is quiescent.
func (h *ixHarness) settle(t *testing.T) {
	h.waitFor(t, "the engine to be quiescent", h.quiescent)
}

// waitFor polls ok until it holds, for at most ixSettleTimeout: a
// condition, never a fixed sleep.
func (h *ixHarness) waitFor(t *testing.T, what string, ok func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(ixSettleTimeout)
	for {
		done, why := ok()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s\nhandler calls waiting:\n%s", what, why, h.callsList())
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// quiescent reports whether the engine has nothing left to do until the
// script acts, and if not, why. It holds when
//
//   - no log write is in flight (single-node), unless the script holds
//     the log;
//   - for every saga the script named, the invocations in flight are
//     exactly those its state calls for (none on a member that does not
//     lead), and each is parked: blocked in a script handler of that
//     step, kind and attempt (with its step-timeout timer, if the step has
//     a timeout), or sleeping on a backoff timer of the clock of its kind,
//     or (the script holds the log) waiting for it;
//   - every handler blocked and every backoff or step-timeout timer
//     belongs to such a parked invocation;
//   - a Run whose saga settled has returned.
func (h *ixHarness) quiescent() (ok bool, why string) {
	e := h.e
	held := 0
	if h.log != nil {
		held = h.log.heldCount()
	}
	if h.rep != nil {
		held = h.rep.heldCount()
	}
	// The log is looked at before and after the sagas: a record queued
	// ahead of its durability (pipelined) is queued before the handler of
	// the step it begins is called, so one the sagas saw is seen here.
	if !h.logIdle(held) {
		return false, "a log write is in flight"
	}
	defer func() {
		if ok && !h.logIdle(held) {
			ok, why = false, "a log write is in flight"
		}
	}()
	leading := h.leading()
	now := h.clk.Now()

	h.mu.Lock()
	handlers := map[string][]*ixCall{} // by saga
	for c := range h.pending {
		handlers[c.c.SagaID] = append(handlers[c.c.SagaID], c)
	}
	type timerCount struct{ action, undo, timeout int }
	timers := map[string]*timerCount{}
	for _, tm := range h.clk.pending() {
		switch tm.kind {
		case ixDeadline:
			continue // saga deadlines are not scripted
		case ixOther:
			h.mu.Unlock()
			return false, fmt.Sprintf("a %s timer is pending (in %v): a transient failure is being retried", tm.kind, tm.at.Sub(now))
		}
		id, ok := h.gids[tm.gid]
		if !ok {
			h.mu.Unlock()
			return false, "a timer of a call not yet in a handler"
		}
		tc := timers[id]
		if tc == nil {
			tc = &timerCount{}
			timers[id] = tc
		}
		switch tm.kind {
		case ixActionBackoff:
			tc.action++
		case ixUndoBackoff:
			tc.undo++
		case ixStepTimeout:
			tc.timeout++
		}
	}
	h.mu.Unlock()

	for _, id := range h.sagas {
		e.mu.Lock()
		r := e.runs[id]
		e.mu.Unlock()
		var sg *fsm.Saga
		var inFlight []int
		wake := false
		if r != nil {
			if !r.mu.TryLock() {
				if held > 0 {
					continue // a transition waits for the held log, under the saga's lock
				}
				return false, id + ": a transition is under way"
			}
			sg = r.saga
			for k, inv := range r.calls {
				inFlight = append(inFlight, k)
				wake = wake || len(inv.wake) > 0
			}
			r.mu.Unlock()
		}
		var stored *fsm.Saga
		err := e.read(func() (err error) { stored, err = e.store.Get(id); return err })
		if errors.Is(err, fsm.ErrUnknownSaga) {
			if len(inFlight) > 0 || handlers[id] != nil {
				return false, id + ": calls of an unknown saga"
			}
			if run := h.runs[id]; run != nil && !ixClosed(run.done) {
				return false, id + ": Run has not returned (nor started the saga)"
			}
			continue
		}
		if err != nil {
			return false, fmt.Sprintf("%s: %v", id, err)
		}
		if sg == nil {
			sg = stored
		}
		if (sg.State.Terminal() || sg.State == fsm.StateStuck) && h.runs[id] != nil && !ixClosed(h.runs[id].done) {
			return false, id + ": settled, but Run has not returned"
		}
		var want []work
		if leading {
			want = due(sg, nil, math.MaxInt)
		}
		if leading && sg.Parallel() && sg.State == fsm.StateStuck {
			// Compensations of other branches in flight when the saga
			// went STUCK finish their attempt; nothing new starts.
			for _, k := range inFlight {
				if st := sg.Steps[k]; st.Status == fsm.StepCompensating && !st.Stuck {
					want = append(want, work{step: k, kind: compensation.KindCompensation})
				}
			}
		}
		slices.Sort(inFlight)
		var wantSteps []int
		for _, w := range want {
			wantSteps = append(wantSteps, w.step)
		}
		slices.Sort(wantSteps)
		if !slices.Equal(inFlight, wantSteps) {
			return false, fmt.Sprintf("%s (%s): invocations in flight for steps %v, its state calls for %v", id, sg.State, inFlight, wantSteps)
		}
		hcs := handlers[id]
		delete(handlers, id)
		tc := timers[id]
		delete(timers, id)
		if tc == nil {
			tc = &timerCount{}
		}
		if len(want) == 0 {
			if len(hcs) > 0 {
				return false, fmt.Sprintf("%s: handler %s blocked, but nothing is due", id, hcs[0])
			}
			if *tc != (timerCount{}) {
				return false, fmt.Sprintf("%s: timers pending, but nothing is due: %+v", id, *tc)
			}
			continue
		}
		// Each call due is in a handler (with its step timeout's timer)
		// or sleeping on its backoff; nothing else is pending.
		for _, w := range want {
			st := sg.Steps[w.step]
			attempt := st.Attempts
			if w.kind == compensation.KindCompensation {
				attempt = st.CompAttempts
			}
			k := slices.IndexFunc(hcs, func(hc *ixCall) bool {
				return hc.c.StepIndex == w.step && hc.c.Kind == w.kind && hc.c.Attempt == attempt
			})
			switch {
			case k >= 0:
				hcs = slices.Delete(hcs, k, k+1)
				if st.Timeout > 0 {
					tc.timeout--
				}
			case !wake && w.kind == compensation.KindAction && tc.action > 0:
				tc.action-- // sleeping on its backoff
			case !wake && w.kind == compensation.KindCompensation && tc.undo > 0:
				tc.undo--
			case held > 0 && sg.Current-stored.Current >= 2:
				// Pipelined: waits for the held record that began the step
				// before (never more than one step ahead of the log).
			case len(hcs) > 0:
				return false, fmt.Sprintf("%s: handler %s blocked, but the state calls for %s of step %d attempt %d", id, hcs[0], w.kind, w.step, attempt)
			default:
				return false, fmt.Sprintf("%s: its %s of step %d is neither in a handler nor backing off (timers %+v)", id, w.kind, w.step, *tc)
			}
		}
		if len(hcs) > 0 {
			return false, fmt.Sprintf("%s: handler %s blocked, but nothing calls for it", id, hcs[0])
		}
		if *tc != (timerCount{}) {
			return false, fmt.Sprintf("%s: handlers blocked with timers %+v left over", id, *tc)
		}
	}
	for id, hcs := range handlers {
		return false, fmt.Sprintf("%s: handler %s blocked for a saga not checked", id, hcs[0])
	}
	for id, tc := range timers {
		return false, fmt.Sprintf("%s: timers %+v pending for a saga not checked", id, *tc)
	}
	return true, ""
}

// logIdle reports whether no single-node log write is in flight (or the
// script holds the log), with the last batch written applied.
func (h *ixHarness) logIdle(held int) bool {
	if h.mode != ixSingle {
		return true
	}
	e := h.e
	e.wq.mu.Lock()
	writing := e.wq.writing
	e.wq.mu.Unlock()
	if writing {
		return held > 0
	}
	// The leader that set writing to false holds applyMu until its batch
	// is applied: taking it waits for that.
	e.applyMu.Lock()
	//lint:ignore SA2001 the critical section is the wait
	e.applyMu.Unlock()
	return true
}

func ixClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// ixGoroutine returns the id of the calling goroutine: a handler and the
// timers its invocation creates run on the invocation's goroutine.
func ixGoroutine() uint64 {
	var buf [64]byte
	n := runtime.Stack(buf[:], false)
	f := strings.Fields(string(buf[:n])) // "goroutine 123 [running]:"
	if len(f) < 2 {
		return 0
	}
	id, _ := strconv.ParseUint(f[1], 10, 64)
	return id
}

// --- the clock ---

// Timer kinds, told apart by who creates the timer.
const (
	ixActionBackoff = "action-backoff" // sleep in act: the next attempt of an action
	ixUndoBackoff   = "undo-backoff"   // sleep in compensationFailed
	ixStepTimeout   = "step-timeout"   // callCtx: one attempt's timeout
	ixDeadline      = "deadline"       // the deadline scheduler
	ixOther         = "retry-sleep"    // any other sleep: a transient failure's retry
)

// ixClock is the fake clock, with every timer it hands out recorded with
// its kind and the goroutine that created it.
type ixClock struct {
	fc     *fakeclock.Clock
	mu     sync.Mutex
	timers []*ixTimer
}

type ixTimer struct {
	compensation.Timer
	clk     *ixClock
	kind    string
	gid     uint64
	at      time.Time
	stopped bool // under clk.mu
}

func (c *ixClock) Now() time.Time { return c.fc.Now() }

func (c *ixClock) NewTimer(d time.Duration) compensation.Timer {
	kind, gid := ixTimerKind(), ixGoroutine()
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &ixTimer{Timer: c.fc.NewTimer(d), clk: c, kind: kind, gid: gid, at: c.fc.Now().Add(d)}
	if d > 0 {
		c.timers = append(c.timers, t)
	}
	return t
}

func (t *ixTimer) Stop() bool {
	t.clk.mu.Lock()
	t.stopped = true
	t.clk.mu.Unlock()
	return t.Timer.Stop()
}

// Advance moves the time on and fires the timers that fall due.
func (c *ixClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fc.Advance(d)
}

// pending returns the timers neither fired nor stopped.
func (c *ixClock) pending() []ixTimer {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.fc.Now()
	kept := c.timers[:0]
	var out []ixTimer
	for _, t := range c.timers {
		if t.stopped || !t.at.After(now) {
			continue
		}
		kept = append(kept, t)
		out = append(out, ixTimer{kind: t.kind, gid: t.gid, at: t.at})
	}
	clear(c.timers[len(kept):])
	c.timers = kept
	return out
}

// ixTimerKind looks at who asks for the timer.
func ixTimerKind() string {
	pcs := make([]uintptr, 32)
	n := runtime.Callers(3, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	const pkg = "github.com/sagaengine/saga/engine."
	var names []string
	for {
		f, more := frames.Next()
		if name, ok := strings.CutPrefix(f.Function, pkg); ok {
			names = append(names, name)
		}
		if !more {
			break
		}
	}
	for i, name := range names {
		switch name {
		case "(*Engine).callCtx":
			return ixStepTimeout
		case "(*Engine).deadlineLoop":
			return ixDeadline
		case "(*Engine).sleep":
			if i+1 < len(names) {
				switch names[i+1] {
				case "(*Engine).act":
					return ixActionBackoff
				case "(*Engine).compensationFailed":
					return ixUndoBackoff
				}
			}
			return ixOther
		}
	}
	return ixOther
}

// --- the single-node log ---

// ixLog is the log under the engine in single-node mode: it passes
// appends through, or holds them (log hold), or fails them (crash).
type ixLog struct {
	Log
	mu      sync.Mutex
	hold    bool
	fail    bool
	release chan struct{} // closed when held appends may go on
	held    atomic.Int32
}

func (l *ixLog) Append(recs [][]byte) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.hold && !l.fail {
		ch := l.release
		l.held.Add(1)
		l.mu.Unlock()
		<-ch
		l.mu.Lock()
		l.held.Add(-1)
	}
	if l.fail {
		return 0, errIxCrash
	}
	return l.Log.Append(recs)
}

func (l *ixLog) setHold(hold, fail bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fail = l.fail || fail
	if l.hold && (!hold || fail) {
		close(l.release)
		l.release = make(chan struct{})
	}
	l.hold = hold
}

// heldCount is the number of appends the hold keeps: none once released
// (those woken may not have left Append's loop yet).
func (l *ixLog) heldCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.hold || l.fail {
		return 0
	}
	return int(l.held.Load())
}

// --- the replicated log ---

// ixRep is a Replicator whose leadership the script controls (crash,
// reopen), which commits every proposal at once (unless the script holds
// them) and applies it through the engine's replica as raft's FSM does,
// and through which the script delivers commands of another leader.
type ixRep struct {
	mu     sync.Mutex // one applier, as raft's FSM goroutine
	store  fsm.Replica
	source uint64
	leader atomic.Bool
	ch     chan bool

	hmu     sync.Mutex
	hold    bool
	epoch   int           // bumped by a crash: held proposals of an earlier epoch are lost
	release chan struct{} // closed when held proposals may go on
	held    atomic.Int32
}

type ixNotLeader struct{}

func (ixNotLeader) Error() string                { return "interaction: not the leader" }
func (ixNotLeader) NotLeader() (id, addr string) { return "", "" }

type ixLost struct{}

func (ixLost) Error() string        { return "interaction: leadership lost before the command committed" }
func (ixLost) OutcomeUnknown() bool { return true }

func (f *ixRep) Start(replica fsm.Replica) error {
	f.store, f.source = replica, replica.SourceIndex()
	return nil
}

// setLeader is raft gaining or losing leadership: LeaderCh is a 1-buffered
// channel whose old value is overridden.
func (f *ixRep) setLeader(v bool) {
	f.leader.Store(v)
	select {
	case f.ch <- v:
	case <-f.ch:
		f.ch <- v
	}
}

func (f *ixRep) crash() {
	f.hmu.Lock()
	f.epoch++
	f.hmu.Unlock()
	f.leader.Store(false) // before the held proposals wake: they are not committed
	f.setHold(false, true)
	f.setLeader(false)
}

func (f *ixRep) setHold(hold, _ bool) {
	f.hmu.Lock()
	defer f.hmu.Unlock()
	if f.hold && !hold {
		close(f.release)
		f.release = make(chan struct{})
	}
	f.hold = hold
}

// heldCount is the number of proposals the hold keeps: none once released.
func (f *ixRep) heldCount() int {
	f.hmu.Lock()
	defer f.hmu.Unlock()
	if !f.hold {
		return 0
	}
	return int(f.held.Load())
}

func (f *ixRep) apply(raw [][]byte) ([]fsm.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	next := f.store.AppliedIndex() + 1
	ents := make([]fsm.Entry, len(raw))
	for i, b := range raw {
		r, err := fsm.Decode(b)
		if err != nil {
			return nil, err
		}
		ents[i] = fsm.Entry{Index: next + uint64(i), Rec: r, Raw: b}
	}
	f.source += 2 // raft leaves gaps (no-ops, barriers)
	res, err := f.store.ApplyCommands([]fsm.Command{{Source: f.source, Entries: ents}})
	if err != nil {
		return nil, err
	}
	return res[0], nil
}

func (f *ixRep) Propose(ctx context.Context, raw [][]byte) ([]fsm.Result, error) {
	if !f.leader.Load() {
		return nil, ixNotLeader{}
	}
	f.hmu.Lock()
	epoch := f.epoch
	for f.hold {
		ch := f.release
		f.held.Add(1)
		f.hmu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		f.hmu.Lock()
		f.held.Add(-1)
		if ctx.Err() != nil {
			f.hmu.Unlock()
			return nil, ixLost{}
		}
	}
	lost := f.epoch != epoch
	f.hmu.Unlock()
	if lost || !f.leader.Load() {
		return nil, ixLost{}
	}
	return f.apply(raw)
}

func (f *ixRep) Leadership() <-chan bool { return f.ch }

func (f *ixRep) Barrier(ctx context.Context) error {
	if !f.leader.Load() {
		return ixNotLeader{}
	}
	return nil
}

func (f *ixRep) Leader() (string, string) { return "", "" }
func (f *ixRep) Close() error             { return nil }

// ixScripts lists the scripts, for a test that each has a header comment.
func ixScripts(t *testing.T) []string {
	paths, err := filepath.Glob("testdata/interaction/*.txt")
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

// Every script says, in its first lines, what it pins.
func TestInteractionScriptsSayWhatTheyPin(t *testing.T) {
	paths := ixScripts(t)
	if len(paths) == 0 {
		t.Fatal("no scripts in testdata/interaction")
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(b), "#") {
			t.Errorf("%s does not begin with a comment saying what it pins", p)
		}
	}
}
