package engine

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sagaengine/saga/fsm"
)

// Re-sends of one start (the same id and the same idempotency key) that
// race each other all answer the saga: the key says "the same request".
// Apply refuses the later start records because the id exists (it looks
// at the key only for a new id), so the engine must answer those from
// the key too, not with ErrSagaExists.
func TestRacingResendsOfAStartWithItsKeyAllAnswerTheSaga(t *testing.T) {
	e := openT(t, t.TempDir(), Options{Registry: registry(t, &journal{}, []string{"a", "b"})})
	defer e.Close()
	_, err := e.Define(ctx, def("x", "a", "b"))
	must(t, err)
	for round := 0; round < 20; round++ {
		id, key := fmt.Sprintf("order-%d", round), fmt.Sprintf("key-%d", round)
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, 8)
		ids := make([]string, 8)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				ids[i], errs[i] = e.Start(ctx, "x", nil, StartOptions{ID: id, IdempotencyKey: key})
			}()
		}
		close(start)
		wg.Wait()
		for i := range errs {
			if errs[i] != nil || ids[i] != id {
				t.Fatalf("round %d: re-send %d: %q, %v (want %q, nil)", round, i, ids[i], errs[i], id)
			}
		}
	}
}

// Launch starts and drives a saga without waiting; a key used already
// answers its saga (created false) whether the saga is engine-driven,
// caller-driven, or removed after its retention with its key kept.
func TestLaunchDrivesANewSagaAndAnswersAKeyUsedAlready(t *testing.T) {
	e, clk := retentionEngine(t, Options{Retention: time.Hour, DedupeWindow: 2 * time.Hour})
	id, created, err := e.Launch(ctx, "fails", nil, StartOptions{IdempotencyKey: "k-launch"})
	if err != nil || !created {
		t.Fatalf("launch: %q %v %v", id, created, err)
	}
	st, err := e.Wait(waitCtx(t), id)
	if err != nil || st.State != fsm.StateFailed {
		t.Fatalf("the launched saga was not driven: %v %v", st, err)
	}
	if again, created, err := e.Launch(ctx, "fails", nil, StartOptions{IdempotencyKey: "k-launch"}); err != nil || created || again != id {
		t.Fatalf("re-sent launch: %q %v %v, want %q false nil", again, created, err, id)
	}
	manual, err := e.Start(ctx, "driven", nil, StartOptions{IdempotencyKey: "k-manual"})
	must(t, err)
	if got, created, err := e.Launch(ctx, "ok", nil, StartOptions{IdempotencyKey: "k-manual"}); err != nil || created || got != manual {
		t.Fatalf("launch with a caller-driven saga's key: %q %v %v, want %q false nil", got, created, err, manual)
	}
	clk.Advance(61 * time.Minute)
	if _, err := e.RemoveExpired(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Status(ctx, id); !errors.Is(err, ErrUnknownSaga) {
		t.Fatalf("the saga was not removed: %v", err)
	}
	if got, created, err := e.Launch(ctx, "fails", nil, StartOptions{IdempotencyKey: "k-launch"}); err != nil || created || got != id {
		t.Fatalf("launch with a kept key: %q %v %v, want %q false nil", got, created, err, id)
	}
}
