// Command console serves the web console over an engine with a few
// sagas to look at: some completed, some failed and compensated, and
// one STUCK whose refund fails until an operator retries it (the
// "payment service" comes back after the first failure).
//
//	go run ./examples/console [-addr 127.0.0.1:7070] [-dir DIR]
//
// It prints the token to log in with (or reads SAGA_ADMIN_TOKEN) and,
// with SAGA_VIEWER_TOKEN, accepts that one as read-only.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/admin/console"
	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/policy"
)

func main() {
	addr := flag.String("addr", admin.DefaultAddr, "where the admin API and the console listen")
	dir := flag.String("dir", "", "data directory (default: a new temporary directory)")
	flag.Parse()
	if err := run(*addr, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "console:", err)
		os.Exit(1)
	}
}

func run(addr, dir string) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "saga-console-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	token := os.Getenv("SAGA_ADMIN_TOKEN")
	if token == "" {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		token = hex.EncodeToString(b)
		fmt.Fprintf(os.Stderr, "log in with the token %s\n", token)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	var back atomic.Bool // the payment service is down until the first refund fails
	reg := compensation.NewRegistry()
	for _, err := range []error{
		reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return nil, nil }),
		reg.RegisterAction("declined", func(context.Context, compensation.Call) ([]byte, error) {
			return nil, compensation.Permanent(errors.New("card declined"))
		}),
		reg.Register("undo", func(context.Context, compensation.Call) error { return nil }),
		reg.Register("refund", func(context.Context, compensation.Call) error {
			if back.Swap(true) {
				return nil
			}
			return errors.New("payment service down")
		}),
	} {
		if err != nil {
			return err
		}
	}
	obs := admin.NewObserver()
	e, err := engine.Open(dir, engine.Options{Registry: reg, Logger: log, Hooks: obs.Hooks()})
	if err != nil {
		return err
	}
	defer e.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, d := range []engine.Definition{
		{Name: "order", Steps: []engine.StepDef{{Name: "reserve", Action: "ok", Compensation: "undo"}, {Name: "ship", Action: "ok"}}},
		{Name: "checkout", Steps: []engine.StepDef{{Name: "reserve", Action: "ok", Compensation: "undo"}, {Name: "charge", Action: "declined"}}},
		{Name: "payment", Steps: []engine.StepDef{{Name: "charge", Action: "ok", Compensation: "refund",
			CompensationRetry: engine.RetryPolicy{MaxAttempts: 1}}, {Name: "ship", Action: "declined"}}},
	} {
		if _, err := e.Define(ctx, d); err != nil {
			return err
		}
	}
	for i, def := range []string{"order", "order", "checkout", "order", "payment", "checkout", "order"} {
		opts := engine.StartOptions{ID: fmt.Sprintf("%s-%d", def, i+1), User: []string{"ada", "grace"}[i%2],
			Meta: map[string]string{"tenant": "acme"}}
		if _, err := e.Run(ctx, def, nil, opts); err != nil {
			return err
		}
	}
	pm, err := policy.New(policy.Options{Logger: log, LookupEnv: func(string) (string, bool) { return "", false }})
	if err != nil {
		return err
	}
	defer pm.Close()
	ui, err := console.New(e, obs, console.Options{Token: token, ReadOnlyToken: os.Getenv("SAGA_VIEWER_TOKEN"), Policy: pm, Logger: log})
	if err != nil {
		return err
	}
	srv, err := admin.New(e, obs, admin.Options{Addr: addr, Token: token, Policy: pm, Logger: log, Console: ui})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "the console is at http://%s/ui/ (Ctrl-C stops it)\n", srv.Addr())
	<-ctx.Done()
	return srv.Close()
}
