package service_test

import (
	"fmt"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	sagav1 "github.com/sagaengine/saga/gen/saga/v1"
)

const year = 365 * 86400 // seconds

// A timeout whose deadline cannot be a time (past 2262, the end of int64
// Unix nanoseconds) or a duration time.Duration cannot hold (about 292
// years) is refused and changes nothing: such a start used to record a
// deadline in the 17th century, which was never armed, and such a
// definition started every saga that way.
func TestDurationsOutOfRangeAreRefused(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.define(t, ctx)
	before := f.lastIndex(t)
	for _, secs := range []int64{250 * year, 1000 * year, 315576000000} {
		_, err := f.client.Start(ctx, connect.NewRequest(&sagav1.StartRequest{Definition: "checkout", Timeout: &durationpb.Duration{Seconds: secs}}))
		wantCode(t, fmt.Sprintf("a start with a timeout of %d years", secs/year), err, connect.CodeInvalidArgument)
		_, err = f.client.Define(ctx, connect.NewRequest(&sagav1.DefineRequest{Definition: &sagav1.Definition{Name: "long",
			Timeout: &durationpb.Duration{Seconds: secs}, Steps: []*sagav1.StepDef{{Name: "a"}}}}))
		wantCode(t, fmt.Sprintf("a definition with a timeout of %d years", secs/year), err, connect.CodeInvalidArgument)
	}
	_, err := f.client.Define(ctx, connect.NewRequest(&sagav1.DefineRequest{Definition: &sagav1.Definition{Name: "long",
		Steps: []*sagav1.StepDef{{Name: "a", Timeout: &durationpb.Duration{Seconds: 1000 * year}}}}}))
	wantCode(t, "a step timeout time.Duration cannot hold", err, connect.CodeInvalidArgument)
	if f.lastIndex(t) != before {
		t.Fatal("a refused request wrote to the log")
	}
	// A long timeout that fits is taken, its deadline where it says.
	res, err := f.client.Start(ctx, connect.NewRequest(&sagav1.StartRequest{Definition: "checkout", Timeout: &durationpb.Duration{Seconds: 100 * year}}))
	if err != nil {
		t.Fatal(err)
	}
	sg := res.Msg.Saga
	if got := sg.Deadline.AsTime().Sub(sg.CreatedAt.AsTime()); got.Seconds() != 100*year {
		t.Fatalf("a 100-year timeout recorded a deadline %v after the start", got)
	}
}
