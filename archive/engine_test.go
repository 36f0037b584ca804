package archive

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/internal/testctx"
)

// A finished saga of a real engine reads back from the archive as the
// admin API shows it, with its meta data and idempotency key.
func TestEngineSagaReadsBackAsTheAPIShowsIt(t *testing.T) {
	ctx := testctx.New(t)
	reg := compensation.NewRegistry()
	_ = reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return []byte("done"), nil })
	_ = reg.RegisterAction("boom", func(context.Context, compensation.Call) ([]byte, error) {
		return nil, compensation.Permanent(errors.New("payment declined"))
	})
	_ = reg.Register("undo", func(context.Context, compensation.Call) error { return nil })
	e, err := engine.Open(t.TempDir(), engine.Options{Registry: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.Define(ctx, engine.Definition{Name: "order", Steps: []engine.StepDef{
		{Name: "pay", Action: "ok", Compensation: "undo"}, {Name: "ship", Action: "boom"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Run(ctx, "order", []byte(`{"cart":7}`), engine.StartOptions{ID: "o-1", IdempotencyKey: "k-1",
		Meta: map[string]string{"tenant": "acme"}}); err != nil {
		t.Fatal(err)
	}
	st, err := e.Status(ctx, "o-1")
	if err != nil {
		t.Fatal(err)
	}
	h, err := e.History(ctx, "o-1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	w := openWriter(t, dir, Options{})
	write(t, w, NewRecord(st, h))
	got, err := Find(ctx, dir, "o-1", ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want, err := admin.BuildShow(ctx, e, "o-1")
	if err != nil {
		t.Fatal(err)
	}
	if g, w := mustJSON(t, got.Show()), mustJSON(t, want); g != w {
		t.Fatalf("archived saga shows as\n%s\nthe API shows\n%s", g, w)
	}
	if got.Saga.State != "FAILED" || got.Saga.Meta["tenant"] != "acme" || got.Saga.IdempotencyKey != "k-1" ||
		string(got.Saga.Input) != `{"cart":7}` || got.Saga.Seq != uint64(len(h)) || len(h) == 0 {
		t.Fatalf("archived saga lost data: %+v", got.Saga)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// An id is free again once its saga is removed (README, "Ids"): the
// archive then holds two sagas under it, and Find returns the later one,
// even when the earlier one has more transitions (a higher seq).
func TestFindReturnsTheLaterSagaOfAReusedID(t *testing.T) {
	ctx := testctx.New(t)
	reg := compensation.NewRegistry()
	_ = reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return []byte("done"), nil })
	_ = reg.RegisterAction("boom", func(context.Context, compensation.Call) ([]byte, error) {
		return nil, compensation.Permanent(errors.New("payment declined"))
	})
	_ = reg.Register("undo", func(context.Context, compensation.Call) error { return nil })
	dir := t.TempDir()
	w := openWriter(t, dir, Options{})
	e, err := engine.Open(t.TempDir(), engine.Options{Registry: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Retention: time.Nanosecond, RemovalInterval: engine.ManualRemoval, Archiver: w})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, d := range []engine.Definition{
		{Name: "failing", Steps: []engine.StepDef{{Name: "pay", Action: "ok", Compensation: "undo"}, {Name: "ship", Action: "boom"}}},
		{Name: "simple", Steps: []engine.StepDef{{Name: "pay", Action: "ok"}}},
	} {
		if _, err := e.Define(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	var seqs []uint64
	for _, def := range []string{"failing", "simple"} {
		st, err := e.Run(ctx, def, nil, engine.StartOptions{ID: "o-1"})
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, st.Saga.Seq)
		for { // until the removal (after its archive) took it
			if st, err := e.RemoveExpired(ctx); err != nil {
				t.Fatal(err)
			} else if st.Sagas == 1 {
				break
			}
			if err := ctx.Err(); err != nil {
				t.Fatalf("saga %s of %s never removed: %v", "o-1", def, err)
			}
		}
	}
	if seqs[0] <= seqs[1] {
		t.Fatalf("seqs %v: the test wants the earlier saga to have the higher seq", seqs)
	}
	got, err := Find(ctx, dir, "o-1", ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Saga.Definition != "simple" || got.Saga.State != "COMPLETED" {
		t.Fatalf("Find returned the saga of %s (%s, seq %d), want the later one, of simple", got.Saga.Definition, got.Saga.State, got.Saga.Seq)
	}
}
