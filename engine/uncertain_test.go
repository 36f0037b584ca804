package engine

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// A step whose action was running when the engine stopped is uncertain at
// the next Open, and recovery follows its OnUncertain policy, in
// single-node mode: UncertainRetry runs the action again (same key) and
// completes; UncertainCompensate does not run it again, compensates it with
// Uncertain set, and fails the saga.
func TestUncertainStepFollowsItsPolicyAfterARestart(t *testing.T) {
	for _, policy := range []fsm.UncertainPolicy{fsm.UncertainRetry, fsm.UncertainCompensate} {
		t.Run(policy.String(), func(t *testing.T) {
			dir := t.TempDir()
			var runs, undos, undosUncertain atomic.Int32
			started := make(chan struct{}, 8)
			var block atomic.Bool
			block.Store(true)
			reg := compensation.NewRegistry()
			must(t, reg.RegisterAction("slow", func(ctx context.Context, c compensation.Call) ([]byte, error) {
				runs.Add(1)
				started <- struct{}{}
				if block.Load() {
					<-ctx.Done() // the engine closes under it
					return nil, ctx.Err()
				}
				return []byte("done"), nil
			}))
			must(t, reg.Register("undo", func(ctx context.Context, c compensation.Call) error {
				undos.Add(1)
				if c.Uncertain {
					undosUncertain.Add(1)
				}
				return nil
			}))
			opts := Options{Registry: reg}
			e := openT(t, dir, opts)
			c, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := e.Define(c, Definition{Name: "u", Steps: []StepDef{{Name: "s", Action: "slow", Compensation: "undo", OnUncertain: policy}}})
			must(t, err)
			short, stop := context.WithCancel(c)
			var id string
			go func() {
				<-started
				stop()
			}()
			st, err := e.Run(short, "u", nil, StartOptions{})
			if !errors.Is(err, ErrNotSettled) {
				t.Fatalf("run: %v %v", st, err)
			}
			id = st.ID
			must(t, e.Close()) // the action is running: its outcome is unknown
			block.Store(false)
			e = openT(t, dir, opts)
			defer e.Close()
			final, err := e.Wait(c, id)
			if err != nil {
				t.Fatal(err)
			}
			switch policy {
			case fsm.UncertainRetry:
				if final.State != fsm.StateCompleted || runs.Load() != 2 || undos.Load() != 0 {
					t.Fatalf("retry: state %s, %d runs, %d compensations; want COMPLETED, 2, 0", final.State, runs.Load(), undos.Load())
				}
			default:
				if final.State != fsm.StateFailed || runs.Load() != 1 || undosUncertain.Load() != 1 {
					t.Fatalf("compensate: state %s, %d runs, %d uncertain compensations; want FAILED, 1, 1",
						final.State, runs.Load(), undosUncertain.Load())
				}
			}
		})
	}
}
