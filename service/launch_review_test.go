package service_test

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"connectrpc.com/connect"

	"github.com/sagaengine/saga/engine"
	sagav1 "github.com/sagaengine/saga/gen/saga/v1"
	"github.com/sagaengine/saga/service"
)

// A start re-sent with its key answers the saga it started, even when the
// definition gained a version in between whose every step has an action
// (so that the service now launches, rather than starts, that
// definition): a client's retry of its own request is not refused.
func TestAStartResentAfterTheDefinitionBecameEngineDrivenAnswersTheSaga(t *testing.T) {
	ctx := testCtx(t)
	reg := engine.NewRegistry()
	ok := func(context.Context, engine.Call) ([]byte, error) { return nil, nil }
	if err := reg.RegisterAction("pay", ok); err != nil {
		t.Fatal(err)
	}
	if err := reg.RegisterAction("ship", ok); err != nil {
		t.Fatal(err)
	}
	e, err := engine.Open(t.TempDir(), engine.Options{Registry: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	srv, err := service.New(e, service.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Define(ctx, engine.Definition{Name: "order", Steps: []engine.StepDef{{Name: "pay"}, {Name: "ship"}}}); err != nil {
		t.Fatal(err)
	}
	req := &sagav1.StartRequest{Definition: "order", IdempotencyKey: "k-1"}
	first, err := srv.Start(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Define(ctx, engine.Definition{Name: "order", Steps: []engine.StepDef{{Name: "pay", Action: "pay"}, {Name: "ship", Action: "ship"}}}); err != nil {
		t.Fatal(err)
	}
	again, err := srv.Start(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatalf("the re-sent start is refused: %v", err)
	}
	if again.Msg.Saga.Id != first.Msg.Saga.Id {
		t.Fatalf("the re-sent start answers %s, want %s", again.Msg.Saga.Id, first.Msg.Saga.Id)
	}
}
