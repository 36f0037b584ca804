// Command demo runs a small saga workload on the embedded engine: some
// sagas complete, some fail and are compensated in reverse order, one is
// interrupted mid-compensation by closing the engine, and a reopen shows
// recovery finishing it.
//
//	go run ./examples/demo [-dir DIR]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
)

func main() {
	dir := flag.String("dir", "", "data directory (default: a new temporary directory)")
	flag.Parse()
	if child := os.Getenv(childEnv); child != "" {
		crashChild(child)
		return
	}
	if err := run(*dir, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// world is what the handlers change: it stands for the other services.
type world struct {
	mu  sync.Mutex
	log []string
}

func (w *world) do(format string, a ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.log = append(w.log, fmt.Sprintf(format, a...))
}

func (w *world) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.log
	w.log = nil
	return out
}

// gate lets the demo hold a compensation open while it "crashes" the engine.
type gate struct {
	hold    bool
	entered chan struct{}
}

func registry(w *world, g *gate) *compensation.Registry {
	reg := compensation.NewRegistry()
	fail := func(c compensation.Call, step string) error {
		if strings.Contains(string(c.Input), "fail="+step) {
			return compensation.Permanent(fmt.Errorf("%s refused for %s", step, c.SagaID))
		}
		return nil
	}
	act := func(step, verb string) {
		must(reg.RegisterAction(step, func(ctx context.Context, c compensation.Call) ([]byte, error) {
			if err := fail(c, step); err != nil {
				return nil, err
			}
			w.do("%s %s", verb, step)
			return []byte(step + "-ref"), nil
		}))
	}
	undo := func(name, verb string) {
		must(reg.Register(name, func(ctx context.Context, c compensation.Call) error {
			if g.hold && c.Step == "payment" && c.Attempt == 1 {
				close(g.entered)
				<-ctx.Done() // the engine closes while this refund is in flight
				return ctx.Err()
			}
			w.do("%s %s (key %s)", verb, c.Step, c.IdempotencyKey)
			return nil
		}))
	}
	act("order", "created")
	act("payment", "charged")
	act("inventory", "reserved")
	act("shipping", "booked")
	undo("cancel_order", "cancelled")
	undo("refund_payment", "refunded")
	undo("release_inventory", "released")
	// The seed plan's handlers for the data ingest pipeline.
	undo("delete_uploaded_file", "deleted the uploaded file of")
	undo("mark_file_as_unparsed", "marked unparsed after")
	undo("delete_embeddings", "deleted the embeddings of")
	return reg
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func run(dir string, out io.Writer) error {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "saga-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	ctx := context.Background()
	w := &world{}
	g := &gate{entered: make(chan struct{})}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	opts := engine.Options{Registry: registry(w, g), Logger: logger}
	e, err := engine.Open(dir, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "saga demo: engine data in %s\n\n", dir)

	checkout := engine.Definition{Name: "checkout", Steps: []engine.StepDef{
		{Name: "order", Action: "order", Compensation: "cancel_order"},
		{Name: "payment", Action: "payment", Compensation: "refund_payment"},
		{Name: "inventory", Action: "inventory", Compensation: "release_inventory"},
		{Name: "shipping", Action: "shipping"}, // last step: nothing after it can fail
	}}
	if _, err := e.Define(ctx, checkout); err != nil {
		return err
	}
	fmt.Fprintln(out, "1. checkout: order → payment → inventory → shipping, driven by the engine")
	for _, c := range []struct{ id, input string }{
		{"order-1001", ""},
		{"order-1002", "fail=inventory"},
		{"order-1003", "fail=shipping"},
	} {
		st, err := e.Run(ctx, "checkout", []byte(c.input), engine.StartOptions{ID: c.id, User: "user_123"})
		if err != nil {
			return err
		}
		report(out, st, w.take())
	}

	fmt.Fprintln(out, "\n2. ingest pipeline: the caller does each step and reports it (Advance)")
	ingest := engine.Definition{Name: "data_ingest_pipeline", Steps: []engine.StepDef{
		{Name: "ingest", Compensation: "delete_uploaded_file"},
		{Name: "parse", Compensation: "mark_file_as_unparsed"},
		{Name: "embed", Compensation: "delete_embeddings"},
		{Name: "expose"},
	}}
	if _, err := e.Define(ctx, ingest); err != nil {
		return err
	}
	id, err := e.Start(ctx, "data_ingest_pipeline", nil, engine.StartOptions{ID: "doc-42", IdempotencyKey: "upload:report.pdf"})
	if err != nil {
		return err
	}
	again, _ := e.Start(ctx, "data_ingest_pipeline", nil, engine.StartOptions{IdempotencyKey: "upload:report.pdf"})
	fmt.Fprintf(out, "  started %s; a retried start with the same idempotency key returned %s\n", id, again)
	for _, s := range []string{"ingest", "parse"} {
		if _, err := e.Advance(ctx, id, engine.StepResult{Step: s, Output: []byte(s + "-ok")}); err != nil {
			return err
		}
	}
	if _, err := e.Advance(ctx, id, engine.StepResult{Step: "embed", Err: errors.New("embedding service unavailable")}); err != nil {
		return err
	}
	st, err := e.Wait(ctx, id)
	if err != nil {
		return err
	}
	report(out, st, w.take())

	fmt.Fprintln(out, "\n3. SIGKILL in the middle of a compensation")
	if err := e.Close(); err != nil {
		return err
	}
	if err := killChild(dir, out); err != nil {
		return err
	}
	e, err = engine.Open(dir, opts)
	if err != nil {
		return err
	}
	defer e.Close()
	rs := e.Stats().Recovery
	fmt.Fprintf(out, "  reopened: replayed %d log entries into the state, resumed %d saga(s)\n", rs.Replayed, rs.Resumed)
	st, err = e.Wait(ctx, "order-1004")
	if err != nil {
		return err
	}
	report(out, st, w.take())

	fmt.Fprintln(out, "\n4. state after recovery")
	page, _, err := e.List(ctx, fsm.Query{Limit: 100})
	if err != nil {
		return err
	}
	for _, s := range page {
		fmt.Fprintf(out, "  %-11s %-21s %-9s completed=%v compensated=%v\n",
			s.ID, s.Definition, s.State, s.Completed, s.Compensated)
	}
	counts, _ := e.Count(ctx)
	fmt.Fprintf(out, "  %d completed, %d failed (fully compensated), %d stuck\n",
		counts[fsm.StateCompleted], counts[fsm.StateFailed], counts[fsm.StateStuck])
	return nil
}

func report(out io.Writer, st *engine.Status, effects []string) {
	fmt.Fprintf(out, "  %s: %s", st.ID, st.State)
	if st.LastError != nil {
		fmt.Fprintf(out, " (%s)", st.LastError.Message)
	}
	fmt.Fprintln(out)
	for _, e := range effects {
		fmt.Fprintf(out, "      %s\n", e)
	}
}

// childEnv names the directory in which the re-executed demo runs the
// saga that gets killed.
const childEnv = "SAGA_DEMO_CRASH_CHILD"

// killChild runs order-1004 in a child process and kills it with SIGKILL
// while the refund of its payment is in flight.
func killChild(dir string, out io.Writer) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintf(out, "  child: %s\n", line)
		if strings.HasPrefix(line, "refund in flight") {
			break
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	_ = cmd.Wait()
	fmt.Fprintln(out, "  child killed with SIGKILL")
	return nil
}

// crashChild is the process that dies: it runs a checkout whose shipping
// fails, and blocks in the refund until it is killed.
func crashChild(dir string) {
	w := &world{}
	g := &gate{hold: true, entered: make(chan struct{})}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := engine.Open(dir, engine.Options{Registry: registry(w, g), Logger: logger})
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo child:", err)
		os.Exit(1)
	}
	go func() {
		_, _ = e.Run(context.Background(), "checkout", []byte("fail=shipping"), engine.StartOptions{ID: "order-1004"})
	}()
	<-g.entered
	fmt.Printf("order-1004: shipping failed after %s\n", strings.Join(w.take(), ", "))
	fmt.Println("refund in flight (its start is durable; its end is not)")
	select {} // until SIGKILL
}
