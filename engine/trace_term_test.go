package engine

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// TestHandlerCtxAfterTermEndedOpensNoSagaSpan: a driver that reaches
// handlerCtx after its term ended (endTerm cancels the term, then endAll
// ends every open saga span) must not open a new saga span: nothing would
// ever end it on this deposed node but the saga settling.
func TestHandlerCtxAfterTermEndedOpensNoSagaSpan(t *testing.T) {
	sr, tp := recorder()
	e := &Engine{tr: newTracing(tp)}
	e.opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	term, cancel := context.WithCancel(context.Background())
	cancel()                        // the term ended...
	e.tr.endAll("leadership ended") // ...and its spans were ended
	sg := &fsm.Saga{ID: "s1", Definition: "d", Version: 1}
	c := compensation.Call{SagaID: "s1", Step: "a", Kind: compensation.KindCompensation, Attempt: 1}
	hctx, span := e.handlerCtx(term, sg, &c)
	endAttempt(span, hctx.Err(), false)
	e.tr.mu.Lock()
	n := len(e.tr.spans)
	e.tr.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d saga spans open after the term ended, want 0", n)
	}
	for _, s := range sr.Started() {
		if s.Name() == "saga d" {
			t.Fatalf("a saga span was started after the term ended")
		}
	}
}
