package engine_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/sagaengine/saga/engine"
)

// An application imports package engine alone: handlers, states and
// errors are all there.
func Example() {
	dir, _ := os.MkdirTemp("", "saga-example-")
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	reg := engine.NewRegistry()
	_ = reg.RegisterAction("charge", func(ctx context.Context, c engine.Call) ([]byte, error) { return []byte("ch_1"), nil })
	_ = reg.Register("refund", func(ctx context.Context, c engine.Call) error {
		fmt.Printf("refund %s (key %s)\n", c.Output, c.IdempotencyKey)
		return nil
	})
	_ = reg.RegisterAction("ship", func(ctx context.Context, c engine.Call) ([]byte, error) {
		return nil, engine.Permanent(errors.New("no courier"))
	})
	e, err := engine.Open(dir, engine.Options{Registry: reg, Logger: quietLog})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer e.Close()
	if _, err := e.Define(ctx, engine.Definition{Name: "checkout", Steps: []engine.StepDef{
		{Name: "payment", Action: "charge", Compensation: "refund"},
		{Name: "shipping", Action: "ship"},
	}}); err != nil {
		fmt.Println(err)
		return
	}
	st, err := e.Run(ctx, "checkout", nil, engine.StartOptions{ID: "order-1"})
	fmt.Println(st.State == engine.StateFailed, err)

	_, err = e.Status(ctx, "order-2")
	fmt.Println(errors.Is(err, engine.ErrUnknownSaga))
	_, err = e.Define(ctx, engine.Definition{Name: "bad", Steps: []engine.StepDef{{Name: "x", Action: "nobody"}}})
	fmt.Println(errors.Is(err, engine.ErrUnknownHandler))
	// Output:
	// refund ch_1 (key order-1/payment/compensation)
	// true <nil>
	// true
	// true
}
