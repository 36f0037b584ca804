package service_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sagaengine/saga/engine"
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

// settlesAtTheTimeout is an engine whose saga settles just as a Wait's
// own timeout fires: Wait reports the timeout, Status the settled saga.
type settlesAtTheTimeout struct{ *engine.Engine }

func (e settlesAtTheTimeout) Wait(ctx context.Context, id string) (*engine.Status, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// Settled says what the saga answered is: a saga found COMPLETED once the
// wait's timeout passed is settled, not "the timeout passed".
func TestWaitPastItsTimeoutSaysWhetherTheSagaSettled(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.define(t, ctx)
	sg := f.start(t, ctx, "")
	for _, step := range []string{"payment", "shipping"} {
		if _, err := f.advance(ctx, sg.Id, step, "ok"); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := service.New(settlesAtTheTimeout{f.eng}, service.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := srv.Wait(ctx, connect.NewRequest(&sagav1.WaitRequest{SagaId: sg.Id, Timeout: durationpb.New(time.Millisecond)}))
	if err != nil {
		t.Fatal(err)
	}
	if w.Msg.Saga.State != sagav1.SagaState_SAGA_STATE_COMPLETED || !w.Msg.Settled {
		t.Fatalf("a completed saga answered at the wait's timeout: state %v, settled %v", w.Msg.Saga.State, w.Msg.Settled)
	}
}
