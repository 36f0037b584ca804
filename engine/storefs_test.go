package engine_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/internal/dirtest"
)

// stateReadFault fails every read of a state file once armed.
func stateReadFault(armed *atomic.Bool) vfs.FS {
	return errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if armed.Load() && op.Kind.ReadOrWrite() == errorfs.OpIsRead && strings.Contains(op.Path, string(filepath.Separator)+"state") {
			return errorfs.ErrInjected
		}
		return nil
	}))
}

// Options.StoreFS reaches every Pebble access, Open's probe of the stopped
// state included: a state disk that fails reads makes Open refuse with the
// disk's error and change no file; without the fault, every saga is there.
func TestStateDiskReadErrorAtOpenRefusesAndChangesNoFile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	reg := compensation.NewRegistry()
	e, err := engine.Open(dir, engine.Options{Registry: reg, Logger: quietLog, CheckpointEvery: 8})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Define(ctx, engine.Definition{Name: "manual", Steps: []engine.StepDef{{Name: "s1"}}}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := e.Start(ctx, "manual", nil, engine.StartOptions{ID: fmt.Sprintf("m%02d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	before := dirtest.Files(t, dir)

	var armed atomic.Bool
	armed.Store(true)
	_, err = engine.Open(dir, engine.Options{Registry: reg, Logger: quietLog, StoreFS: stateReadFault(&armed)})
	if !errors.Is(err, errorfs.ErrInjected) {
		t.Fatalf("Open on a state disk that fails reads: %v, want the injected error", err)
	}
	dirtest.RequireSame(t, before, dirtest.Files(t, dir))

	armed.Store(false)
	e, err = engine.Open(dir, engine.Options{Registry: reg, Logger: quietLog, StoreFS: stateReadFault(&armed)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if n, err := e.Count(ctx); err != nil || n[engine.StateInProgress] != 20 {
		t.Fatalf("after the fault: %v %v, want 20 IN_PROGRESS", n, err)
	}
}
