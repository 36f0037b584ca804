package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/policy"
	"github.com/sagaengine/saga/wal"
)

// The CLI is tested by scripts (testdata/script/*.txtar) that run the
// real binary against real data directories and a real admin API.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"sagactl":  func() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) },
		"sagaseed": func() { os.Exit(seedMain()) },
		"sagahost": func() { os.Exit(hostMain()) },
	})
}

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// exitcode N cmd args...: run sagactl in-process, expect exit code N.
			"exitcode": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) < 2 || args[1] != "sagactl" {
					ts.Fatalf("usage: exitcode N sagactl args...")
				}
				want, err := strconv.Atoi(args[0])
				ts.Check(err)
				for i, a := range args {
					args[i] = os.Expand(a, ts.Getenv)
				}
				if got := run(args[2:], ts.Stdout(), ts.Stderr()); got != want {
					ts.Fatalf("sagactl exited %d, want %d", got, want)
				}
			},
			// waitfile PATH: wait (up to 20s) for PATH to exist.
			"waitfile": func(ts *testscript.TestScript, neg bool, args []string) {
				for i := 0; i < 400; i++ {
					if _, err := os.Stat(ts.MkAbs(args[0])); err == nil {
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
				ts.Fatalf("%s never appeared", args[0])
			},
			// damage DIR tail|checkpointed: damage the log of a data dir.
			"damage": func(ts *testscript.TestScript, neg bool, args []string) {
				dir := filepath.Join(ts.MkAbs(args[0]), "wal")
				ents, err := os.ReadDir(dir)
				ts.Check(err)
				var segs []string
				for _, e := range ents {
					if len(e.Name()) == 20 {
						segs = append(segs, filepath.Join(dir, e.Name()))
					}
				}
				switch args[1] {
				case "tail": // an incomplete last write
					f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
					ts.Check(err)
					_, err = f.Write([]byte{0x40, 0x01, 0x00, 0x00})
					ts.Check(err)
					ts.Check(f.Close())
				case "checkpointed": // a flipped bit in the first segment
					b, err := os.ReadFile(segs[0])
					ts.Check(err)
					b[5] ^= 0x20
					ts.Check(os.WriteFile(segs[0], b, 0o640))
				default:
					ts.Fatalf("damage: tail or checkpointed")
				}
			},
		},
	})
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// registry of the test sagas. broken says whether "undo_broken" fails
// (the outage that makes stuck-1 STUCK) or works (it is over).
func registry(broken bool) *compensation.Registry {
	reg := compensation.NewRegistry()
	_ = reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return []byte("done"), nil })
	_ = reg.RegisterAction("boom", func(context.Context, compensation.Call) ([]byte, error) {
		return nil, compensation.Permanent(errors.New("payment declined"))
	})
	_ = reg.Register("undo", func(context.Context, compensation.Call) error { return nil })
	_ = reg.Register("undo_broken", func(context.Context, compensation.Call) error {
		if broken {
			return errors.New("refund service unavailable")
		}
		return nil
	})
	return reg
}

// seedMain creates a data directory with one saga in each interesting
// state: order-1 COMPLETED, failed-1 FAILED, stuck-1 STUCK, manual-1
// IN_PROGRESS. Small log segments give the log several files.
func seedMain() int {
	dir := os.Args[1]
	e, err := engine.Open(dir, engine.Options{Registry: registry(true), Logger: quiet, WAL: wal.Options{SegmentSize: 2048}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer e.Close()
	// A script's child process: bounded, so a broken engine fails the script.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	defs := []engine.Definition{
		{Name: "order", Steps: []engine.StepDef{{Name: "pay", Action: "ok", Compensation: "undo"},
			{Name: "reserve", Action: "ok", Compensation: "undo"}, {Name: "ship", Action: "ok"}}},
		{Name: "failing", Steps: []engine.StepDef{{Name: "pay", Action: "ok", Compensation: "undo"}, {Name: "ship", Action: "boom"}}},
		{Name: "stucky", Steps: []engine.StepDef{{Name: "pay", Action: "ok", Compensation: "undo_broken",
			CompensationRetry: engine.RetryPolicy{MaxAttempts: 1}}, {Name: "ship", Action: "boom"}}},
		{Name: "manual", Steps: []engine.StepDef{{Name: "upload", Compensation: "undo"}, {Name: "parse"}}},
		// The seed plan's data mapping: both sides analyzed at once.
		{Name: "mapping", Steps: []engine.StepDef{{Name: "fetch", Action: "ok", Compensation: "undo"},
			{Name: "analyze_source", Action: "ok", Compensation: "undo", After: []string{"fetch"}},
			{Name: "analyze_target", Action: "ok", Compensation: "undo", After: []string{"fetch"}},
			{Name: "map", Action: "boom", After: []string{"analyze_source", "analyze_target"}}}},
	}
	for _, d := range defs {
		if _, err := e.Define(ctx, d); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	for i := 0; i < 20; i++ { // enough records for several segments
		if _, err := e.Run(ctx, "order", nil, engine.StartOptions{ID: fmt.Sprintf("order-%d", i+1)}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	for _, r := range []struct{ def, id string }{{"failing", "failed-1"}, {"stucky", "stuck-1"}, {"mapping", "mapping-1"}} {
		if _, err := e.Run(ctx, r.def, nil, engine.StartOptions{ID: r.id}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if _, err := e.Start(ctx, "manual", nil, engine.StartOptions{ID: "manual-1", User: "alice"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// hostMain runs an engine with its admin API: sagahost DIR ADDR TOKENFILE.
// The refund outage is over: undo_broken works now.
func hostMain() int {
	dir, addr, tokenFile := os.Args[1], os.Args[2], os.Args[3]
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	reg := registry(false)
	obs := admin.NewObserver()
	e, err := engine.Open(dir, engine.Options{Registry: reg, Logger: quiet, Hooks: obs.Hooks()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer e.Close()
	pm, err := policy.New(policy.Options{Registry: reg, Logger: quiet, LookupEnv: func(string) (string, bool) { return "", false }})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv, err := admin.New(e, obs, admin.Options{Addr: addr, Token: strings.TrimSpace(string(token)), Policy: pm, Logger: quiet})
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Close()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return 0
}
