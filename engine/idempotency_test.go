package engine

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// keyLog gathers the idempotency key of every handler call, by handler.
type keyLog struct {
	mu   sync.Mutex
	keys map[string][]string
}

func (k *keyLog) add(handler, key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keys[handler] = append(k.keys[handler], key)
}

func (k *keyLog) get(handler string) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.keys[handler]...)
}

// Every attempt of one step's action, and of its compensation, carries the
// same idempotency key, across retries and across a restart of the engine
// (invariant 7): saga id, step and kind, and nothing that changes.
func TestIdempotencyKeyIsIdenticalAcrossRetriesAndRestarts(t *testing.T) {
	dir := t.TempDir()
	keys := &keyLog{keys: map[string][]string{}}
	var actionCalls, undoCalls atomic.Int32
	var undoWorks atomic.Bool
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("do_a", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		keys.add("do_a", c.IdempotencyKey)
		if actionCalls.Add(1) < 3 {
			return nil, errors.New("transient")
		}
		return []byte("a"), nil
	}))
	must(t, reg.RegisterAction("do_b", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		return nil, compensation.Permanent(errors.New("b refused"))
	}))
	must(t, reg.Register("undo_a", func(ctx context.Context, c compensation.Call) error {
		keys.add("undo_a", c.IdempotencyKey)
		undoCalls.Add(1)
		if !undoWorks.Load() {
			return errors.New("down")
		}
		return nil
	}))
	fast := RetryPolicy{InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, Multiplier: 2}
	opts := Options{Registry: reg}
	e := openT(t, dir, opts)
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := e.Define(c, Definition{Name: "keys", Steps: []StepDef{
		{Name: "a", Action: "do_a", Compensation: "undo_a", Retry: RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Millisecond}, CompensationRetry: fast},
		{Name: "b", Action: "do_b"},
	}})
	must(t, err)
	// Run returns (not settled) once the compensation has failed: it
	// cannot settle while the handler is down.
	short, cancelShort := context.WithCancel(c)
	go func() {
		for undoCalls.Load() == 0 && c.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		cancelShort()
	}()
	st, err := e.Run(short, "keys", nil, StartOptions{})
	cancelShort()
	if !errors.Is(err, ErrNotSettled) {
		t.Fatalf("run with a failing compensation: %v %v", st, err)
	}
	for undoCalls.Load() < 3 {
		if c.Err() != nil {
			t.Fatal("the compensation was not retried")
		}
		time.Sleep(time.Millisecond)
	}
	must(t, e.Close())
	undoWorks.Store(true)
	e = openT(t, dir, opts)
	defer e.Close()
	final, err := e.Wait(c, st.ID)
	if err != nil || final.State != fsm.StateFailed {
		t.Fatalf("after the restart: %v %v", final, err)
	}
	for handler, kind := range map[string]compensation.Kind{"do_a": compensation.KindAction, "undo_a": compensation.KindCompensation} {
		want := compensation.IdempotencyKey(st.ID, "a", kind)
		got := keys.get(handler)
		if len(got) < 3 {
			t.Fatalf("%s ran %d times, want at least 3", handler, len(got))
		}
		for i, k := range got {
			if k != want {
				t.Fatalf("%s call %d had key %q, want %q for every call (all: %q)", handler, i+1, k, want, got)
			}
		}
	}
}
