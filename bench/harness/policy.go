package main

import (
	"context"
	"testing"

	"github.com/sagaengine/saga/policy"
)

var workflowVar = func(ctx context.Context, s policy.Saga) error {
	return s.Step(ctx, "ingest", func(context.Context) ([]byte, error) { return nil, nil })
}

// noSagaHandle stands in for what a direct caller would pass.
type noSagaHandle struct{}

func (noSagaHandle) Step(ctx context.Context, _ string, fn func(context.Context) ([]byte, error)) error {
	_, err := fn(ctx)
	return err
}
func (noSagaHandle) ID() string { return "" }

// Group is not used by the measured workflow.
func (noSagaHandle) Group(context.Context) policy.Group { return nil }

// figPolicyOff: the disabled path of ExecuteWithSaga vs a direct call.
func figPolicyOff() Figure {
	progress("policy off vs direct call")
	m, err := policy.New(policy.Options{Logger: quiet, LookupEnv: func(string) (string, bool) { return "", false }})
	if err != nil {
		panic(err)
	}
	x := policy.NewExecutor(m, nil)
	ctx := context.Background()
	direct := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			_ = workflowVar(ctx, noSagaHandle{})
		}
	})
	off := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			_, _ = x.ExecuteWithSaga(ctx, "data_ingest_pipeline", policy.UserContext{UserID: "u"}, nil, workflowVar)
		}
	})
	return Figure{Name: "4. Policy off", Method: "testing.Benchmark: the workflow called directly vs through ExecuteWithSaga with the policy off",
		Rows: []map[string]any{
			{"path": "direct", "ns_per_call": round2(float64(direct.NsPerOp())), "allocs_per_call": direct.AllocsPerOp()},
			{"path": "policy off", "ns_per_call": round2(float64(off.NsPerOp())), "allocs_per_call": off.AllocsPerOp()},
		}}
}
