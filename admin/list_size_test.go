package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/internal/testctx"
)

// A page of large sagas stops at about 4 MiB of their data (a page of
// 10000 such sagas was read whole into memory), and its cursor goes on:
// every saga comes once, in order, in both orders, and one saga larger
// than the bound still comes, alone.
func TestAListPageOfLargeSagasIsBoundedAndItsCursorGoesOn(t *testing.T) {
	e, _, h := fixtureWith(t, Options{Token: token})
	ctx := testctx.New(t)
	_, err := e.Define(ctx, engine.Definition{Name: "big", Steps: []engine.StepDef{{Name: "a"}}})
	must(t, err)
	var ids []string
	for i := range 12 {
		size := 900 << 10
		if i == 5 {
			size = 5 << 20
		}
		id, err := e.Start(ctx, "big", bytes.Repeat([]byte{'x'}, size), engine.StartOptions{ID: fmt.Sprintf("big-%02d", i)})
		must(t, err)
		ids = append(ids, id)
	}
	for _, order := range []string{"oldest", "newest"} {
		var got []string
		cursor, pages := "", 0
		for {
			q := url.Values{"definition": {"big"}, "order": {order}, "limit": {"1000"}}
			if cursor != "" {
				q.Set("cursor", cursor)
			}
			rec := call(h, "GET", "/v1/sagas?"+q.Encode(), "Bearer "+token, "")
			if rec.Code != http.StatusOK {
				t.Fatalf("list: %d %s", rec.Code, rec.Body.String())
			}
			var rep ListReply
			must(t, json.Unmarshal(rec.Body.Bytes(), &rep))
			pages++
			if len(rep.Sagas) > 5 {
				t.Fatalf("a page of %d sagas of 900 KiB each", len(rep.Sagas))
			}
			for _, s := range rep.Sagas {
				got = append(got, s.ID)
			}
			if cursor = rep.Next; cursor == "" {
				break
			}
			if pages > len(ids)+1 {
				t.Fatal("the cursor does not go on")
			}
		}
		want := ids
		if order == "newest" {
			want = nil
			for i := len(ids) - 1; i >= 0; i-- {
				want = append(want, ids[i])
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) || pages < 4 {
			t.Fatalf("%s: %d pages listed\n%v\nwant\n%v", order, pages, got, want)
		}
	}
}
