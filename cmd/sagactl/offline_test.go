package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/wal"

	"github.com/sagaengine/saga/internal/testctx"
)

func seedDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	e, err := engine.Open(dir, engine.Options{Registry: registry(true), Logger: quiet, WAL: wal.Options{SegmentSize: 2048}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testctx.New(t)
	if _, err := e.Define(ctx, engine.Definition{Name: "manual", Steps: []engine.StepDef{{Name: "upload", Compensation: "undo"}, {Name: "parse"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Start(ctx, "manual", nil, engine.StartOptions{ID: "a", IdempotencyKey: "k1"}); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func lastSeg(t *testing.T, dir string) string {
	ents, _ := os.ReadDir(filepath.Join(dir, "wal"))
	var segs []string
	for _, e := range ents {
		if len(e.Name()) == 20 {
			segs = append(segs, filepath.Join(dir, "wal", e.Name()))
		}
	}
	sort.Strings(segs)
	return segs[len(segs)-1]
}

func runCLI(args ...string) (int, string, string) {
	var o, e bytes.Buffer
	c := run(args, &o, &e)
	return c, o.String(), e.String()
}

// Inspection (`status`) must not cut a torn tail: that is repair's job.
func TestInspectionLeavesATornTail(t *testing.T) {
	dir := seedDir(t)
	seg := lastSeg(t, dir)
	f, _ := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte{0x40, 0x01, 0x00, 0x00})
	f.Close()
	before, _ := os.Stat(seg)
	// Inspection refuses (and says how to repair) rather than cut.
	if c, _, se := runCLI("--dir", dir, "status"); c != exitFailed || !strings.Contains(se, "wal repair") {
		t.Fatalf("status on a torn log: exit %d: %s", c, se)
	}
	after, _ := os.Stat(seg)
	if after.Size() != before.Size() {
		t.Errorf("read-only `status` truncated %s from %d to %d bytes", seg, before.Size(), after.Size())
	}
}

// On a directory that is not a data directory, `status` creates nothing.
func TestStatusCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	c, _, _ := runCLI("--dir", dir, "status")
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 0 {
		t.Errorf("status on an empty dir exited %d and created %v", c, names)
	}
}

// wal repair --dry-run creates no state when state/ is missing.
func TestRepairDryRunCreatesNothing(t *testing.T) {
	dir := seedDir(t)
	os.RemoveAll(filepath.Join(dir, "state"))
	f, _ := os.OpenFile(lastSeg(t, dir), os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte{0x40, 0x01, 0x00, 0x00})
	f.Close()
	runCLI("--dir", dir, "wal", "repair", "--dry-run")
	if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
		t.Errorf("--dry-run created %s", filepath.Join(dir, "state"))
	}
}

// Two concurrent Starts with one idempotency key can both reach the log
// (the store rejects the second deterministically): verify must replay
// exactly as the store does and call the directory healthy.
func TestVerifyAcceptsARejectedDuplicateKey(t *testing.T) {
	dir := seedDir(t)
	var startRec *fsm.Record
	wal.Verify(filepath.Join(dir, "wal"), func(i uint64, p []byte) error {
		r, err := fsm.Decode(p)
		if err == nil && r.Kind == fsm.KindSagaStarted {
			startRec = r
		}
		return nil
	})
	w, err := wal.Open(filepath.Join(dir, "wal"), wal.Options{SegmentSize: 2048, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	startRec.Saga = "b" // same idempotency key "k1", another id: the race's loser
	b, _ := fsm.Encode(startRec)
	if _, err := w.Append([][]byte{b}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	// The engine itself is fine with this log.
	e, err := engine.Open(dir, engine.Options{Registry: registry(true), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	c, out, se := runCLI("--dir", dir, "wal", "verify")
	if c != 0 {
		t.Errorf("wal verify on a healthy directory exited %d:\n%s%s", c, out, se)
	}
}

// A record larger than sagactl's default MaxRecordSize (written by an
// engine configured with a larger one) is never taken for a torn tail.
func TestLargeRecordIsNeverCut(t *testing.T) {
	for _, cmd := range [][]string{{"status"}, {"wal", "repair"}} {
		t.Run(cmd[len(cmd)-1], func(t *testing.T) {
			live := t.TempDir()
			opts := engine.Options{Registry: registry(true), Logger: quiet, WAL: wal.Options{MaxRecordSize: 32 << 20, SegmentSize: 64 << 20}}
			e, err := engine.Open(live, opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx := testctx.New(t)
			e.Define(ctx, engine.Definition{Name: "manual", Steps: []engine.StepDef{{Name: "upload", Compensation: "undo"}, {Name: "parse"}}})
			if _, err := e.Start(ctx, "manual", bytes.Repeat([]byte("x"), 9<<20), engine.StartOptions{ID: "big"}); err != nil {
				t.Fatal(err)
			}
			// The machine crashes now: the log is durable, the state not flushed.
			crash := filepath.Join(t.TempDir(), "d")
			if out, err := exec.Command("cp", "-r", live, crash).CombinedOutput(); err != nil {
				t.Fatal(err, string(out))
			}
			e.Close()
			os.Remove(filepath.Join(crash, "LOCK"))
			c, out, se := runCLI(append([]string{"--dir", crash}, cmd...)...)
			t.Logf("sagactl %v: exit %d\n%s%s", cmd, c, out, se)
			e2, err := engine.Open(crash, opts)
			if err != nil {
				t.Fatalf("engine cannot reopen: %v", err)
			}
			defer e2.Close()
			if _, err := e2.Status(ctx, "big"); err != nil {
				t.Errorf("acknowledged saga lost after `sagactl %v`: %v", cmd, err)
			}
		})
	}
}
