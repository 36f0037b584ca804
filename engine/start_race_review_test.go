package engine

import (
	"fmt"
	"sync"
	"testing"
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
