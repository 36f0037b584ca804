package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/internal/testctx"
)

const retentionChildEnv = "SAGA_RETENTION_CRASH_CHILD"

// retentionEngine opens the engine of the crash test: sagas are removed
// a millisecond after they finish, every few milliseconds, through the
// archive in dir/archive.
func retentionEngine(dir string, w *Writer, interval time.Duration) (*engine.Engine, error) {
	reg := compensation.NewRegistry()
	if err := reg.RegisterAction("ok", func(context.Context, compensation.Call) ([]byte, error) { return []byte("ok"), nil }); err != nil {
		return nil, err
	}
	o := engine.Options{Registry: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Retention: time.Millisecond, RemovalInterval: interval, RemovalBatch: 7}
	if w != nil {
		o.Archiver = w
	}
	return engine.Open(filepath.Join(dir, "engine"), o)
}

// TestRetentionCrashChild is the child process of
// TestKillDuringArchiveAndRemovalLosesNoSaga: it runs sagas one after
// another, appending the id of each that completed to dir/acked (fsynced),
// while the engine archives and removes them, until it is killed.
func TestRetentionCrashChild(t *testing.T) {
	dir := os.Getenv(retentionChildEnv)
	if dir == "" {
		t.Skip("the child of the retention crash test")
	}
	w, err := Open(filepath.Join(dir, "archive"), Options{MaxFileRecords: 25})
	if err != nil {
		t.Fatal(err)
	}
	e, err := retentionEngine(dir, w, 2*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Define(context.Background(), engine.Definition{Name: "ok", Steps: []engine.StepDef{{Name: "a", Action: "ok"}}}); err != nil {
		t.Fatal(err)
	}
	acked, err := os.OpenFile(filepath.Join(dir, "acked"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	life := os.Getenv("SAGA_RETENTION_CRASH_LIFE")
	for n := 0; ; n++ {
		id := fmt.Sprintf("s-%s-%05d", life, n)
		st, err := e.Run(context.Background(), "ok", nil, engine.StartOptions{ID: id})
		if err != nil || st.State != fsm.StateCompleted {
			t.Fatalf("saga %s: %v, %v", id, st, err)
		}
		if _, err := acked.WriteString(id + "\n"); err != nil {
			t.Fatal(err)
		}
		if err := acked.Sync(); err != nil {
			t.Fatal(err)
		}
	}
}

func ackedIDs(t *testing.T, dir string) []string {
	b, err := os.ReadFile(filepath.Join(dir, "acked"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	// Only whole lines: a kill can cut the last one (the child
	// acknowledges a saga once its line and the newline are synced).
	lines := strings.Split(string(b), "\n")
	return lines[:len(lines)-1]
}

// SIGKILLs at random moments of a workload whose sagas are archived and
// removed a millisecond after they finish lose no saga: every
// acknowledged saga is afterwards in the engine or in the archive (or
// both, if the kill fell between the archive's sync and the removal);
// copies in the archive are identical (same seq), as package archive
// documents.
func TestKillDuringArchiveAndRemovalLosesNoSaga(t *testing.T) {
	if testing.Short() {
		t.Skip("kills child processes")
	}
	kills := 6
	if s := os.Getenv("SAGA_CRASH_KILLS"); s != "" {
		kills, _ = strconv.Atoi(s)
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("retention crash test: %d kills, seed %d", kills, seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	dir := t.TempDir()
	for k := 0; k < kills; k++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestRetentionCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), retentionChildEnv+"="+dir, fmt.Sprintf("SAGA_RETENTION_CRASH_LIFE=%d", k))
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill once the child has acknowledged a few more sagas (so that
		// removals run), at a random moment after that.
		want := len(ackedIDs(t, dir)) + 10
		for deadline := time.Now().Add(2 * time.Minute); len(ackedIDs(t, dir)) < want; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatalf("life %d acknowledged nothing in 2 minutes:\n%s", k, out.String())
			}
		}
		time.Sleep(time.Duration(rng.IntN(50)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("life %d ended by itself (%v):\n%s", k, err, out.String())
		}
	}
	ctx := testctx.New(t)
	e, err := retentionEngine(dir, nil, engine.ManualRemoval)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	archived := map[string][]Record{}
	for r, err := range Read(ctx, filepath.Join(dir, "archive"), ReadOptions{TolerateTornTail: true}) {
		if err != nil {
			t.Fatalf("read the archive: %v", err)
		}
		archived[r.Saga.ID] = append(archived[r.Saga.ID], r)
	}
	acked := ackedIDs(t, dir)
	var removed, both, copies int
	for _, id := range acked {
		_, err := e.Status(ctx, id)
		inEngine := err == nil
		if err != nil && !errors.Is(err, engine.ErrUnknownSaga) {
			t.Fatal(err)
		}
		rs := archived[id]
		switch {
		case !inEngine && len(rs) == 0:
			t.Errorf("saga %s was acknowledged, and is neither in the engine nor in the archive", id)
		case !inEngine:
			removed++
		case len(rs) > 0:
			both++
		}
		for _, r := range rs[min(1, len(rs)):] {
			copies++
			if r.Saga.Seq != rs[0].Saga.Seq || len(r.History) != len(rs[0].History) {
				t.Errorf("saga %s: archive copies differ (seq %d and %d)", id, rs[0].Saga.Seq, r.Saga.Seq)
			}
		}
		for _, r := range rs {
			if r.Saga.State != "COMPLETED" || len(r.History) == 0 {
				t.Errorf("saga %s archived as %s with %d history entries", id, r.Saga.State, len(r.History))
			}
		}
	}
	t.Logf("%d sagas acknowledged: %d removed (archived), %d archived and still in the engine, %d duplicate archive records", len(acked), removed, both, copies)
	if removed == 0 {
		t.Fatal("no saga was removed: the test exercised nothing")
	}
}
