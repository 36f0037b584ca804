package service_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	"github.com/sagaengine/saga/engine"
	sagav1 "github.com/sagaengine/saga/gen/saga/v1"
	"github.com/sagaengine/saga/service"
)

// closingAfterStart is an engine that closes between a start and the
// status read that follows it (a shutdown racing the call).
type closingAfterStart struct {
	*engine.Engine
	started atomic.Bool
}

func (e *closingAfterStart) Start(ctx context.Context, def string, in []byte, o engine.StartOptions) (string, error) {
	id, err := e.Engine.Start(ctx, def, in, o)
	e.started.Store(err == nil)
	return id, err
}

func (e *closingAfterStart) Status(ctx context.Context, id string) (*engine.Status, error) {
	if e.started.Load() {
		return nil, engine.ErrClosed
	}
	return e.Engine.Status(ctx, id)
}

// A Start whose saga is durable must not answer "nothing was applied"
// (CodeUnavailable: send it again) because the status read after it
// failed: a client that believed it would start the work twice. It
// answers CodeUnknown (look before acting again), naming the saga.
func TestAStartedSagaIsNeverAnsweredNotApplied(t *testing.T) {
	ctx := testCtx(t)
	e, err := engine.Open(t.TempDir(), engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.Define(ctx, engine.Definition{Name: "order", Steps: []engine.StepDef{{Name: "pay"}}}); err != nil {
		t.Fatal(err)
	}
	fe := &closingAfterStart{Engine: e}
	srv, err := service.New(fe, service.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = srv.Start(ctx, connect.NewRequest(&sagav1.StartRequest{Definition: "order", Id: "o-1"}))
	if _, serr := e.Status(ctx, "o-1"); serr != nil {
		t.Fatalf("the saga did not start: %v (the call: %v)", serr, err)
	}
	if code := connect.CodeOf(err); err == nil || code != connect.CodeUnknown || !strings.Contains(err.Error(), "o-1") {
		t.Fatalf("a start that is durable answered %v (%v), want CodeUnknown naming o-1", code, err)
	}
}
