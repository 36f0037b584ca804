package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sagaengine/saga/internal/dirtest"
)

// inspections are the offline commands that only read a data directory.
var inspections = [][]string{{"status"}, {"list"}, {"show", "a"}, {"export"}, {"recover"},
	{"wal", "verify"}, {"wal", "dump"}, {"wal", "repair", "--dry-run"}}

// requireUntouched runs sagactl --dir dir args and fails the test unless
// it exits with want (any non-zero code if want is -1) and leaves every
// entry of dir, and of the temporary directory, exactly as it was.
func requireUntouched(t *testing.T, dir string, want int, args ...string) (string, string) {
	t.Helper()
	tmp := t.TempDir() // inspection's scratch copies go here, and must go
	t.Setenv("TMPDIR", tmp)
	before := dirtest.Snapshot(t, dir)
	c, out, se := runCLI(append([]string{"--dir", dir}, args...)...)
	if (want == -1 && c == 0) || (want != -1 && c != want) {
		t.Errorf("sagactl %v: exit %d, want %d\n%s%s", args, c, want, out, se)
	}
	after := dirtest.Snapshot(t, dir)
	for p, b := range before {
		if a, ok := after[p]; !ok {
			t.Errorf("sagactl %v removed %s", args, p)
		} else if a != b {
			t.Errorf("sagactl %v changed %s: %s, was %s", args, p, a, b)
		}
	}
	for p, a := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("sagactl %v created %s (%s)", args, p, a)
		}
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		t.Errorf("sagactl %v left %d file(s) in TMPDIR, such as %s", args, len(ents), ents[0].Name())
	}
	return out, se
}

// An engine killed mid-run leaves an EXTENT file that says so (not
// clean): reading the directory must not rewrite it as a clean Close's.
func TestInspectionOfACrashedDirectoryChangesNothing(t *testing.T) {
	dir := manySegments(t, true)
	for _, cmd := range inspections {
		want := 0
		if cmd[0] == "show" {
			want = exitFailed // no saga "a": refused, and nothing changes either
		}
		requireUntouched(t, dir, want, cmd...)
	}
}

// A truncation a crash interrupted leaves tidwall's .END file: the
// engine's Open finishes it (removing and renaming segment files), an
// inspection must refuse instead.
func TestInspectionOfAnInterruptedTruncationChangesNothing(t *testing.T) {
	dir := seedDir(t)
	seg := lastSeg(t, dir)
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(seg+".END", b, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{{"status"}, {"list"}, {"show", "a"}, {"export"}, {"recover"}} {
		requireUntouched(t, dir, exitFailed, cmd...)
	}
}

// A wal/ directory that holds no log is no data directory: inspection
// says so (a usage error) and creates no segment and no EXTENT in it.
func TestInspectionOfAnEmptyLogDirectoryCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "wal"), 0o750); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{{"status"}, {"list"}, {"show", "a"}, {"export"}, {"recover"}} {
		_, se := requireUntouched(t, dir, exitUsage, cmd...)
		if !strings.Contains(se, "not a saga data directory") {
			t.Errorf("sagactl %v: %s", cmd, se)
		}
	}
}

// The wal commands refuse a --dir that does not exist, or that is no data
// directory, as a usage error (as the other offline commands do), and
// create nothing there: `wal repair` on a mistyped --dir is no success.
func TestWalCommandsRefuseWhatIsNoDataDirectory(t *testing.T) {
	for _, cmd := range [][]string{{"wal", "verify"}, {"wal", "dump"}, {"wal", "repair", "--dry-run"}, {"wal", "repair"}, {"wal", "repair", "--force"}} {
		missing := filepath.Join(t.TempDir(), "nope")
		_, se := requireUntouched(t, missing, exitUsage, cmd...)
		if _, err := os.Stat(missing); err == nil {
			t.Errorf("sagactl %v created %s", cmd, missing)
		}
		if !strings.Contains(se, "nope") {
			t.Errorf("sagactl %v on a missing directory: %s", cmd, se)
		}
		_, se = requireUntouched(t, t.TempDir(), exitUsage, cmd...)
		if !strings.Contains(se, "not a saga data directory") {
			t.Errorf("sagactl %v on an empty directory: %s", cmd, se)
		}
	}
}

// A state without Pebble's LOCK file (restored by a tool that skips lock
// files, say) gets none from an inspection: Pebble's read-only open
// creates it unless told otherwise.
func TestInspectionCreatesNoStateLockFile(t *testing.T) {
	for _, cmd := range inspections {
		dir := seedDir(t)
		if err := os.Remove(filepath.Join(dir, "state", "LOCK")); err != nil {
			t.Fatal(err)
		}
		requireUntouched(t, dir, 0, cmd...) // seedDir holds saga "a": show succeeds
	}
}

// readOnlyMount bind-mounts dir read-only (a mounted backup, say) for the
// test's duration, or skips the test where mounting is not allowed.
func readOnlyMount(t *testing.T, dir string) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(mnt, 0o750); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "--bind", dir, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot bind-mount here: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() }) // before TempDir's removal
	if out, err := exec.Command("mount", "-o", "remount,ro,bind", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot make the bind mount read-only: %v %s", err, out)
	}
	if f, err := os.Create(filepath.Join(mnt, "probe")); err == nil {
		f.Close()
		t.Fatal("the read-only mount is writable")
	}
	return mnt
}

// Inspection needs no write access: on a read-only filesystem every
// inspection works (Pebble's LOCK and tidwall's tail segment were opened
// for writing, and failed).
func TestInspectionOfAReadOnlyFilesystem(t *testing.T) {
	for _, crash := range []bool{false, true} {
		mnt := readOnlyMount(t, manySegments(t, crash))
		for _, cmd := range inspections {
			if cmd[0] == "show" {
				continue // no saga "a" here
			}
			if c, out, se := runCLI(append([]string{"--dir", mnt}, cmd...)...); c != 0 {
				t.Errorf("crashed %v: sagactl %v on a read-only filesystem: exit %d\n%s%s", crash, cmd, c, out, se)
			}
		}
	}
}
