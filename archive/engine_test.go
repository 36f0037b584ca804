package archive

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"testing"

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
