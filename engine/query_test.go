package engine

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/sagaengine/saga/fsm"
)

func ids(ss []*Status) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.Saga.ID
	}
	return out
}

// TestListFiltersByUserAndTenantAcrossReopen: the engine lists a user's
// sagas of one tenant newest first, counts them, and gives the same
// answers after a reopen.
func TestListFiltersByUserAndTenantAcrossReopen(t *testing.T) {
	ctx := waitCtx(t)
	dir := t.TempDir()
	e := openT(t, dir, Options{})
	_, err := e.Define(ctx, Definition{Name: "manual", Steps: []StepDef{{Name: "a"}}})
	must(t, err)
	var want []string
	for i := 0; i < 30; i++ {
		id, err := e.Start(ctx, "manual", nil, StartOptions{User: fmt.Sprintf("u%d", i%3),
			Meta: map[string]string{"tenant": fmt.Sprintf("t%d", i%2)}})
		must(t, err)
		if i%6 == 1 { // user u1, tenant t1
			want = append(want, id)
		}
	}
	slices.Reverse(want)
	q := fsm.Query{User: "u1", Tenant: "t1", Order: fsm.OrderNewest, Limit: 2}
	check := func(e *Engine) {
		t.Helper()
		var got []string
		for qq := q; ; {
			page, next, err := e.List(ctx, qq)
			must(t, err)
			got = append(got, ids(page)...)
			if next == "" {
				break
			}
			qq.After = next
		}
		if !slices.Equal(got, want) {
			t.Fatalf("listed %v, want %v", got, want)
		}
		if n, err := e.CountQuery(ctx, q); err != nil || n != len(want) {
			t.Fatalf("count %d, %v; want %d", n, err, len(want))
		}
		dv, err := e.DefinitionVersions(ctx)
		if err != nil || len(dv) != 1 || dv[0].Name != "manual" || !slices.Equal(dv[0].Versions, []int{1}) {
			t.Fatalf("definition versions %v, %v", dv, err)
		}
	}
	check(e)
	must(t, e.Close())
	e = openT(t, dir, Options{})
	defer e.Close()
	check(e)
	if _, _, err := e.List(ctx, fsm.Query{Version: 1}); !errors.Is(err, ErrInvalidQuery) {
		t.Fatalf("a version without a definition: %v", err)
	}
}
