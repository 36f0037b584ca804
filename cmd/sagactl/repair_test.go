package main

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/internal/dirtest"
	"github.com/sagaengine/saga/wal"
)

// manySegments runs sagas over several small segments. With crash, the
// data directory is copied while the engine runs (what a SIGKILL leaves:
// no flush, no clean EXTENT); otherwise it is closed cleanly.
func manySegments(t *testing.T, crash bool) string {
	t.Helper()
	dir := t.TempDir()
	e, err := engine.Open(dir, engine.Options{Registry: registry(true), Logger: quiet, WAL: wal.Options{SegmentSize: 2048}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := e.Define(ctx, engine.Definition{Name: "manual", Steps: []engine.StepDef{{Name: "upload", Compensation: "undo"}, {Name: "parse"}}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 40; i++ {
		id, err := e.Start(ctx, "manual", nil, engine.StartOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"upload", "parse"} {
			if _, err := e.Advance(ctx, id, engine.StepResult{Step: s}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if crash {
		img := dirtest.Copy(t, dir)
		e.Close()
		return img
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func flipLastSegment(t *testing.T, dir string) {
	t.Helper()
	seg := lastSeg(t, dir)
	b, err := os.ReadFile(seg)
	if err != nil || len(b) < 40 {
		t.Fatalf("last segment: %d bytes, %v", len(b), err)
	}
	b[20] ^= 0x10
	if err := os.WriteFile(seg, b, 0o640); err != nil {
		t.Fatal(err)
	}
}

var planLine = regexp.MustCompile(`(?m)^plan: .*$`)

// A repair that needs --force refuses without it, changing nothing, and
// its dry run says what the forced run does.
func TestRefusedRepairChangesNothingAndDryRunSaysForce(t *testing.T) {
	dir := manySegments(t, true)
	flipLastSegment(t, dir)
	before := files(t, dir)
	c, dry, se := runCLI("--dir", dir, "wal", "repair", "--dry-run")
	if c != 0 || !strings.Contains(dry, "needs --force") || !planLine.MatchString(dry) {
		t.Fatalf("dry run: exit %d\n%s%s", c, dry, se)
	}
	dirtest.RequireSame(t, before, files(t, dir))
	c, out, se := runCLI("--dir", dir, "wal", "repair")
	if c != exitRefused || !strings.Contains(se, "nothing was changed") {
		t.Fatalf("repair without --force: exit %d\n%s%s", c, out, se)
	}
	dirtest.RequireSame(t, before, files(t, dir))
	c, out, se = runCLI("--dir", dir, "wal", "repair", "--force")
	if c != 0 || planLine.FindString(out) != planLine.FindString(dry) {
		t.Fatalf("forced repair: exit %d, its plan differs from the dry run's:\n%s\n---\n%s%s", c, dry, out, se)
	}
	if c, out, se := runCLI("--dir", dir, "status"); c != 0 {
		t.Fatalf("status after the forced repair: exit %d\n%s%s", c, out, se)
	}
}

// After a clean Close the state holds every record: a damaged last segment
// is repaired without --force and without loss, as the dry run says.
func TestRepairOfDamageTheStateHoldsLosesNothing(t *testing.T) {
	dir := manySegments(t, false)
	flipLastSegment(t, dir)
	c, dry, se := runCLI("--dir", dir, "wal", "repair", "--dry-run")
	if c != 0 || strings.Contains(dry, "needs --force") || !strings.Contains(dry, "nothing is lost") {
		t.Fatalf("dry run: exit %d\n%s%s", c, dry, se)
	}
	c, out, se := runCLI("--dir", dir, "wal", "repair")
	if c != 0 || planLine.FindString(out) != planLine.FindString(dry) {
		t.Fatalf("repair: exit %d\n%s%s", c, out, se)
	}
	c, out, se = runCLI("--dir", dir, "status")
	if c != 0 || !regexp.MustCompile(`COMPLETED +40`).MatchString(out) {
		t.Fatalf("status after the repair: exit %d\n%s%s", c, out, se)
	}
}

// A segment of random bytes is damage: verify exits non-zero.
func TestVerifyFailsOnASegmentOfRandomBytes(t *testing.T) {
	dir := manySegments(t, true)
	seg := lastSeg(t, dir)
	junk := make([]byte, 2048)
	for i := range junk {
		junk[i] = byte(i*131 + 7)
	}
	if err := os.WriteFile(seg, junk, 0o640); err != nil {
		t.Fatal(err)
	}
	c, out, se := runCLI("--dir", dir, "wal", "verify")
	if c == 0 || !strings.Contains(out, "CORRUPT") {
		t.Fatalf("verify of a random segment: exit %d\n%s%s", c, out, se)
	}
}

// After a crash the stored state has applied nothing recent: verify says
// what it did not compare instead of a bare "ok".
func TestVerifyAfterCrashSaysWhatItDidNotCompare(t *testing.T) {
	dir := manySegments(t, true)
	c, out, se := runCLI("--dir", dir, "wal", "verify")
	if c != 0 || !strings.Contains(out, "not compared: ") || !strings.Contains(out, "has not applied yet") {
		t.Fatalf("verify after a crash: exit %d\n%s%s", c, out, se)
	}
}

func TestWalDumpPastTheEndFails(t *testing.T) {
	dir := manySegments(t, false)
	c, out, se := runCLI("--dir", dir, "wal", "dump", "--from", "999999")
	if c != exitFailed || !strings.Contains(se, "past the end of the log") {
		t.Fatalf("dump past the end: exit %d\n%s%s", c, out, se)
	}
}

// files is every file of a data directory but its lock, with its bytes.
func files(t *testing.T, dir string) map[string]string {
	t.Helper()
	f := dirtest.Files(t, dir)
	delete(f, "LOCK")
	return f
}
