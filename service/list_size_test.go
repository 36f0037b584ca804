package service_test

import (
	"bytes"
	"fmt"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/sagaengine/saga/engine"
	sagav1 "github.com/sagaengine/saga/gen/saga/v1"
)

// A page of large sagas stops under 2 MiB encoded (a gRPC client refuses
// a message over 4 MiB by default, and the server held the whole page),
// and its cursor goes on: every saga is listed once, in order, in both
// orders, and a saga larger than the bound still comes, alone.
func TestAListPageOfLargeSagasIsBoundedAndItsCursorGoesOn(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.define(t, ctx)
	var ids []string
	for i := range 12 {
		size := 600 << 10
		if i == 5 {
			size = 3 << 20 // over the bound alone
		}
		// Through the engine: the service bounds a request to 1 MiB (here
		// 64 KiB), but a saga's outputs, from handlers, grow it too.
		id, err := f.eng.Start(ctx, "checkout", bytes.Repeat([]byte{'x'}, size), engine.StartOptions{ID: fmt.Sprintf("big-%02d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, order := range []sagav1.Order{sagav1.Order_ORDER_OLDEST, sagav1.Order_ORDER_NEWEST} {
		var got []string
		cursor, pages := "", 0
		for {
			res, err := f.client.List(ctx, connect.NewRequest(&sagav1.ListRequest{Order: order, Limit: 100, Cursor: cursor}))
			if err != nil {
				t.Fatal(err)
			}
			pages++
			if n := proto.Size(res.Msg); n > 2<<20+1<<10 && len(res.Msg.Sagas) > 1 {
				t.Fatalf("a page of %d sagas takes %d bytes", len(res.Msg.Sagas), n)
			}
			for _, sg := range res.Msg.Sagas {
				got = append(got, sg.Id)
			}
			if cursor = res.Msg.NextCursor; cursor == "" {
				break
			}
			if pages > len(ids)+1 {
				t.Fatal("the cursor does not go on")
			}
		}
		want := ids
		if order == sagav1.Order_ORDER_NEWEST {
			want = nil
			for i := len(ids) - 1; i >= 0; i-- {
				want = append(want, ids[i])
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) || pages < 4 {
			t.Fatalf("%v: %d pages listed\n%v\nwant\n%v", order, pages, got, want)
		}
	}
}
