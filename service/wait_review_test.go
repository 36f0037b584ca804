package service_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	sagav1 "github.com/sagaengine/saga/gen/saga/v1"
	"github.com/sagaengine/saga/service"
)

// A Wait whose timeout is set to zero is a poll: it answers the saga as
// it is now. Only an unset timeout means the default wait (30s); zero
// used to be taken for unset, and held the call for the default.
func TestWaitOfZeroIsAPoll(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.define(t, ctx)
	sg := f.start(t, ctx, "")
	srv, err := service.New(f.eng, service.Options{DefaultWait: time.Minute, MaxWait: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// Well short of the default: a call held for it fails here.
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	w, err := srv.Wait(pctx, connect.NewRequest(&sagav1.WaitRequest{SagaId: sg.Id, Timeout: durationpb.New(0)}))
	if err != nil {
		t.Fatalf("a wait of zero: %v", err)
	}
	if w.Msg.Settled || w.Msg.Saga.State != sagav1.SagaState_SAGA_STATE_IN_PROGRESS {
		t.Fatalf("a wait of zero on a running saga: %v", w.Msg)
	}
}
