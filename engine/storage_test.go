package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/internal/dirtest"
	"github.com/sagaengine/saga/internal/ext4test"
	"github.com/sagaengine/saga/wal"
)

// segments lists the segment files of the engine's log in dir, oldest first.
func segments(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "wal"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if len(e.Name()) == 20 {
			out = append(out, filepath.Join(dir, "wal", e.Name()))
		}
	}
	sort.Strings(out)
	return out
}

// runSagas defines a two-step saga and completes n of them by Advance.
func runSagas(t *testing.T, e *Engine, n int) []string {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := e.Define(c, Definition{Name: "pair", Steps: []StepDef{{Name: "a"}, {Name: "b"}}}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 0; i < n; i++ {
		id, err := e.Start(c, "pair", []byte("input"), StartOptions{})
		must(t, err)
		for _, s := range []string{"a", "b"} {
			_, err := e.Advance(c, id, StepResult{Step: s})
			must(t, err)
		}
		ids = append(ids, id)
	}
	return ids
}

// After a clean Close the state holds every record, so damage to the end
// of the log loses nothing: Open drops the damaged log and continues it.
func TestTailDamageAfterCleanCloseOpensWithEverySaga(t *testing.T) {
	for _, damage := range []string{"cut", "zero-filled-4KiB"} {
		t.Run(damage, func(t *testing.T) {
			dir := t.TempDir()
			e := openT(t, dir, Options{WAL: wal.Options{SegmentSize: 16 << 10}})
			ids := runSagas(t, e, 60)
			must(t, e.Close())
			segs := segments(t, dir)
			last := segs[len(segs)-1]
			data, err := os.ReadFile(last)
			must(t, err)
			if len(data) < 4096 {
				t.Fatalf("the last segment has only %d bytes", len(data))
			}
			switch damage {
			case "cut":
				data = data[:len(data)-777]
			default:
				copy(data[len(data)-4096:], make([]byte, 4096))
			}
			must(t, os.WriteFile(last, data, 0o640))
			e = openT(t, dir, Options{})
			for _, id := range ids {
				st, err := e.Status(ctx, id)
				if err != nil || st.State != fsm.StateCompleted {
					t.Fatalf("saga %s after reopen: %v %v", id, st, err)
				}
			}
			more := runSagas(t, e, 3)
			must(t, e.Close())
			e = openT(t, dir, Options{})
			defer e.Close()
			if st, err := e.Status(ctx, more[2]); err != nil || st.State != fsm.StateCompleted {
				t.Fatalf("a saga run after the repair, after reopen: %v %v", st, err)
			}
		})
	}
}

// Damage past what the state holds may have been acknowledged: Open
// refuses, names the repair, and leaves every file as it was.
func TestOpenRefusesDamagePastTheStateWithoutChangingAFile(t *testing.T) {
	dir := t.TempDir()
	e := openT(t, dir, Options{WAL: wal.Options{SegmentSize: 16 << 10}})
	runSagas(t, e, 60)
	dir = crashImage(t, e, dir)
	segs := segments(t, dir)
	junk := make([]byte, 3000)
	for i := range junk {
		junk[i] = byte(i*7 + 1)
	}
	must(t, os.WriteFile(segs[len(segs)-1], junk, 0o640))
	before := dirtest.Files(t, dir)
	_, err := Open(dir, Options{Logger: quiet})
	if !errors.Is(err, ErrRecovery) || !errors.Is(err, wal.ErrCorrupt) || !strings.Contains(err.Error(), "wal repair --dry-run") {
		t.Fatalf("open of a damaged log: %v, want ErrRecovery and wal.ErrCorrupt naming the repair", err)
	}
	dirtest.RequireSame(t, before, dirtest.Files(t, dir))
}

// The issue this pins: the active segment unlinked under a running engine
// was not noticed, and after a crash Open started on an empty log, losing
// every acknowledged saga.
func TestUnlinkedLogFailStopsAndIsRefusedAtOpen(t *testing.T) {
	dir := t.TempDir()
	e := openT(t, dir, Options{})
	runSagas(t, e, 20)
	for _, s := range segments(t, dir) {
		must(t, os.Remove(s))
	}
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := e.Start(c, "pair", nil, StartOptions{}); !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("the first commit after the unlink: %v, want ErrOutcomeUnknown", err)
	}
	if _, err := e.Start(c, "pair", nil, StartOptions{}); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("a commit after the fail-stop: %v, want ErrPoisoned", err)
	}
	dir = crashImage(t, e, dir)
	before := dirtest.Files(t, dir)
	if _, err := Open(dir, Options{Logger: quiet}); !errors.Is(err, wal.ErrLost) {
		t.Fatalf("open after the log vanished: %v, want wal.ErrLost", err)
	}
	dirtest.RequireSame(t, before, dirtest.Files(t, dir))
	// The whole wal directory gone: refused too, not taken for a new engine.
	must(t, os.RemoveAll(filepath.Join(dir, "wal")))
	before = dirtest.Files(t, dir)
	if _, err := Open(dir, Options{Logger: quiet}); !errors.Is(err, wal.ErrLost) {
		t.Fatalf("open without a wal directory: %v, want wal.ErrLost", err)
	}
	dirtest.RequireSame(t, before, dirtest.Files(t, dir))
}

func TestCloseAfterEIOReleasesEveryDescriptorAndReportsIt(t *testing.T) {
	fs := ext4test.Mount(t)
	base := ext4test.OpenDescriptors(t)
	e := openT(t, filepath.Join(fs.Dir, "data"), Options{})
	runSagas(t, e, 5)
	fs.Shutdown()
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := e.Start(c, "pair", nil, StartOptions{}); !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("start after EIO: %v, want ErrOutcomeUnknown", err)
	}
	if err := e.Close(); err == nil {
		t.Fatal("Close of an engine stopped by EIO returned nil")
	}
	if open := ext4test.DescriptorsUnder(t, fs.Dir); len(open) > 0 {
		t.Fatalf("descriptors still open after Close: %v", open)
	}
	if n := ext4test.OpenDescriptors(t); n > base {
		t.Fatalf("%d descriptors open after Close, %d before Open", n, base)
	}
}

func TestInvalidOptionsAreRefusedNotDefaulted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	for _, o := range []Options{{MaxBatch: -1}, {WAL: wal.Options{SegmentSize: -1}}, {WAL: wal.Options{MaxRecordSize: -1}},
		{StoreCacheSize: -1}} {
		if _, err := Open(dir, o); !errors.Is(err, ErrInvalidOptions) {
			t.Fatalf("Open(%+v): %v, want ErrInvalidOptions", o, err)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused Open created %s", dir)
	}
}

// A caller that re-sends its report after a crash (the same step, the
// same result) gets the saga as it is, not an illegal transition; a
// different result for a reported step is still refused, and a refused
// failure report names step_failed.
func TestAdvanceResentAfterACrashIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	e := openT(t, dir, Options{})
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := e.Define(c, Definition{Name: "pair", Steps: []StepDef{{Name: "a"}, {Name: "b"}}})
	must(t, err)
	id, err := e.Start(c, "pair", nil, StartOptions{})
	must(t, err)
	_, err = e.Advance(c, id, StepResult{Step: "a", Output: []byte("out-a")})
	must(t, err)
	must(t, e.Close())
	e = openT(t, dir, Options{})
	defer e.Close()
	before := e.Stats().Records
	st, err := e.Advance(c, id, StepResult{Step: "a", Output: []byte("out-a")})
	if err != nil || st.CurrentStep != "b" {
		t.Fatalf("re-sent report: %v %v", st, err)
	}
	if e.Stats().Records != before {
		t.Fatal("a re-sent report wrote a record")
	}
	if _, err := e.Advance(c, id, StepResult{Step: "a", Output: []byte("other")}); !errors.Is(err, fsm.ErrIllegalTransition) {
		t.Fatalf("a different result for a reported step: %v, want ErrIllegalTransition", err)
	}
	_, err = e.Advance(c, id, StepResult{Step: "a", Err: errors.New("late failure")})
	var te *fsm.TransitionError
	if !errors.As(err, &te) || te.Kind != fsm.KindStepFailed {
		t.Fatalf("refused failure report: %v, want a TransitionError of kind step_failed", err)
	}
	_, err = e.Advance(c, id, StepResult{Step: "b", Err: errors.New("b broke")})
	must(t, err)
	if st, err := e.Advance(c, id, StepResult{Step: "b", Err: errors.New("b broke")}); err != nil || st.State == fsm.StateInProgress {
		t.Fatalf("re-sent failure report: %v %v", st, err)
	}
}

func TestStatusCarriesMetaAndDefinitionsAreListed(t *testing.T) {
	e := openT(t, t.TempDir(), Options{})
	defer e.Close()
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i, name := range []string{"b", "a", "b"} {
		_, err := e.Define(c, Definition{Name: name, Steps: []StepDef{{Name: fmt.Sprint("s", i)}}})
		must(t, err)
	}
	ds, err := e.Definitions(c)
	if err != nil || len(ds) != 2 || ds[0].Name != "a" || ds[1].Name != "b" || ds[1].Version != 2 {
		t.Fatalf("definitions: %+v %v", ds, err)
	}
	id, err := e.Start(c, "a", nil, StartOptions{Meta: map[string]string{"tenant": "t1"}})
	must(t, err)
	st, err := e.Status(c, id)
	if err != nil || st.Meta["tenant"] != "t1" {
		t.Fatalf("status meta: %v %v", st.Meta, err)
	}
}

func TestOpenWarnsOfPendingSagasWithUnregisteredHandlers(t *testing.T) {
	dir := t.TempDir()
	reg := compensation.NewRegistry()
	must(t, reg.Register("undo_a", func(context.Context, compensation.Call) error { return nil }))
	e := openT(t, dir, Options{Registry: reg})
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := e.Define(c, Definition{Name: "d", Steps: []StepDef{{Name: "a", Compensation: "undo_a"}, {Name: "b"}}})
	must(t, err)
	_, err = e.Start(c, "d", nil, StartOptions{})
	must(t, err)
	must(t, e.Close())
	var logged strings.Builder
	e = openT(t, dir, Options{Logger: slog.New(slog.NewTextHandler(&logged, nil))}) // an empty registry
	e.Close()
	if !strings.Contains(logged.String(), "handler=undo_a") {
		t.Fatalf("no warning of the unregistered handler; the log:\n%s", logged.String())
	}
}

// A saga Run started, then the engine stopped on an I/O error: the error
// says "started, not settled", never "nothing applied" (ErrPoisoned).
func TestRunInterruptedByAnIOErrorIsNotSettledNotPoisoned(t *testing.T) {
	dir := t.TempDir()
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("wait", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, nil
	}))
	e := openT(t, dir, Options{Registry: reg})
	defer e.Close()
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := e.Define(c, Definition{Name: "w", Steps: []StepDef{{Name: "s", Action: "wait"}}})
	must(t, err)
	_, err = e.Define(c, Definition{Name: "pair", Steps: []StepDef{{Name: "a"}}})
	must(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := e.Run(c, "w", nil, StartOptions{})
		done <- err
	}()
	<-started
	for _, s := range segments(t, dir) {
		must(t, os.Remove(s))
	}
	if _, err := e.Start(c, "pair", nil, StartOptions{}); !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("the commit that finds the log gone: %v", err)
	}
	close(release)
	err = <-done
	if !errors.Is(err, ErrNotSettled) || errors.Is(err, ErrPoisoned) || IsNotApplied(err) {
		t.Fatalf("Run after the engine stopped: %v; want ErrNotSettled only", err)
	}
}

// crashImage copies the data directory of a running engine: about what a
// SIGKILL at this instant leaves on disk (the state not flushed since its
// last checkpoint, the log's EXTENT not marked clean). Its files are
// copied one after another while checkpoints may flush and compact the
// state: a copy in which a file vanished, or whose state does not open
// (a MANIFEST naming a table copied before it was written), is made again.
// The engine is closed.
func crashImage(t *testing.T, e *Engine, dir string) string {
	t.Helper()
	defer e.Close()
	for range 20 {
		img := t.TempDir()
		err := dirtest.CopyTo(img, dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		must(t, err)
		if _, err := StoredAppliedIndex(img); err != nil {
			continue
		}
		return img
	}
	t.Fatal("no copy of the running engine's directory held a state that opens")
	return ""
}

// A state that is missing, emptied or older than the log's start leaves
// the records in between in neither: Open refuses, and must do so before
// it opens the state for writing, which would create a new Pebble store
// in the missing state's place (or rewrite the old one's MANIFEST and
// OPTIONS), so that a refused Open changed files.
func TestOpenRefusesAStateBehindTheLogWithoutChangingAFile(t *testing.T) {
	for _, damage := range []string{"removed", "emptied", "older"} {
		for _, crashed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/crashed=%v", damage, crashed), func(t *testing.T) {
				dir := t.TempDir()
				e := openT(t, dir, Options{WAL: wal.Options{SegmentSize: 16 << 10}, CheckpointEvery: 50})
				runSagas(t, e, 5)
				must(t, e.Close())
				old := dirtest.Copy(t, filepath.Join(dir, "state"))
				e = openT(t, dir, Options{WAL: wal.Options{SegmentSize: 16 << 10}, CheckpointEvery: 50})
				runSagas(t, e, 100)
				if crashed {
					dir = crashImage(t, e, dir)
				} else {
					must(t, e.Close())
				}
				if first := segments(t, dir)[0]; filepath.Base(first) <= "00000000000000000016" {
					t.Fatalf("the checkpoints did not truncate the log: it starts with %s", first)
				}
				state := filepath.Join(dir, "state")
				switch damage {
				case "removed":
					must(t, os.RemoveAll(state))
				case "emptied":
					must(t, os.RemoveAll(state))
					must(t, os.Mkdir(state, 0o750))
				case "older":
					must(t, os.RemoveAll(state))
					must(t, os.Rename(old, state))
				}
				before := dirtest.Files(t, dir)
				_, err := Open(dir, Options{Logger: quiet})
				if !errors.Is(err, ErrRecovery) || !strings.Contains(err.Error(), "log starts at") {
					t.Fatalf("open with the state %s: %v, want ErrRecovery naming the log's start", damage, err)
				}
				dirtest.RequireSame(t, before, dirtest.Files(t, dir))
			})
		}
	}
}

// A damaged state file makes Open refuse with ErrRecovery and Pebble's
// corruption error, without a panic and without changing a file.
func TestOpenRefusesACorruptStateWithoutChangingAFile(t *testing.T) {
	for _, damage := range []string{"sstable-bit-flip", "manifest-cut"} {
		t.Run(damage, func(t *testing.T) {
			dir := t.TempDir()
			e := openT(t, dir, Options{WAL: wal.Options{SegmentSize: 16 << 10}, CheckpointEvery: 50})
			runSagas(t, e, 100)
			must(t, e.Close())
			ents, err := os.ReadDir(filepath.Join(dir, "state"))
			must(t, err)
			damaged := 0
			for _, ent := range ents {
				p := filepath.Join(dir, "state", ent.Name())
				b, err := os.ReadFile(p)
				must(t, err)
				switch {
				case damage == "sstable-bit-flip" && strings.HasSuffix(ent.Name(), ".sst"):
					b[len(b)*9/10] ^= 0x5a
				case damage == "manifest-cut" && strings.HasPrefix(ent.Name(), "MANIFEST-"):
					// Short of its first record's header. Cut at half, it
					// could end at a record boundary, which Pebble reads
					// as a torn tail and opens at the version before
					// (whose tables may still be there): no damage seen.
					b = b[:5]
				default:
					continue
				}
				must(t, os.WriteFile(p, b, 0o640))
				damaged++
			}
			if damaged == 0 {
				t.Fatalf("no file to damage in %v", ents)
			}
			before := dirtest.Files(t, dir)
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("Open of a damaged state panicked: %v", r)
					}
				}()
				_, err = Open(dir, Options{Logger: quiet})
			}()
			if !errors.Is(err, ErrRecovery) {
				t.Fatalf("Open of a damaged state: %v, want ErrRecovery", err)
			}
			dirtest.RequireSame(t, before, dirtest.Files(t, dir))
		})
	}
}

// A log closed cleanly at index L can never be behind its state: the
// state applies only what the log holds. A state with applied index A > L
// beside such a log means the wal directory was replaced by an older one
// (a backup): the records after A, acknowledged, are in no file here.
// Open took the clean EXTENT for proof that the state held everything and
// continued the log, empty, from A+1: the sagas started after A were gone
// without a word. It must refuse, and change nothing.
func TestOpenRefusesAnOlderCleanLogBesideANewerStateWithoutChangingAFile(t *testing.T) {
	for _, junk := range []bool{false, true} {
		t.Run(fmt.Sprintf("junk-after-the-clean-end=%v", junk), func(t *testing.T) {
			olderCleanLogBesideANewerState(t, junk)
		})
	}
}

// olderCleanLogBesideANewerState is the test above; with junk, bytes
// follow the old log's clean end, which Open cuts (they were never part
// of the log) only if the state does not say the log is an older copy.
func olderCleanLogBesideANewerState(t *testing.T, junk bool) {
	dir := t.TempDir()
	e := openT(t, dir, Options{CheckpointEvery: 40})
	runSagas(t, e, 5)
	must(t, e.Close())
	oldLog := dirtest.Copy(t, filepath.Join(dir, "wal"))
	e = openT(t, dir, Options{CheckpointEvery: 40})
	runSagas(t, e, 30)
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	late, err := e.Start(c, "pair", nil, StartOptions{})
	must(t, err)
	dir = crashImage(t, e, dir)
	applied, err := StoredAppliedIndex(dir)
	must(t, err)
	if old, err := wal.ReadExtent(oldLog); err != nil || old == nil || !old.Clean || old.Last >= applied {
		t.Fatalf("the old log's extent %+v (%v) is not clean and behind the state's applied index %d", old, err, applied)
	}
	must(t, os.RemoveAll(filepath.Join(dir, "wal")))
	must(t, os.Rename(oldLog, filepath.Join(dir, "wal")))
	if junk {
		segs := segments(t, dir)
		f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
		must(t, err)
		_, err = f.Write([]byte("junk after the clean end of the log"))
		must(t, errors.Join(err, f.Close()))
	}
	before := dirtest.Files(t, dir)
	e, err = Open(dir, Options{Logger: quiet})
	if err == nil {
		_, serr := e.Status(ctx, late)
		e.Close()
		t.Fatalf("Open of a newer state beside an older clean log succeeded (the saga started last: %v)", serr)
	}
	dirtest.RequireSame(t, before, dirtest.Files(t, dir))
	// With junk the log is damaged past the state's index too: the
	// refusal may name either.
	if !errors.Is(err, ErrRecovery) || !(errors.Is(err, wal.ErrLost) || junk && errors.Is(err, wal.ErrCorrupt)) {
		t.Fatalf("Open of a newer state beside an older clean log: %v, want ErrRecovery and wal.ErrLost", err)
	}
}

// A crash inside the first Open, while Pebble created the state (its LOCK
// written, its MANIFEST not yet made current), leaves a state directory
// that holds no store: no transition was applied, and Open goes on from
// the log. Such a directory beside a log that no longer starts at 1 is
// still refused, and nothing changes.
func TestOpenAfterACrashWhilePebbleCreatedTheState(t *testing.T) {
	for _, left := range [][]string{{"LOCK"}, {"LOCK", "MANIFEST-000001"}} {
		t.Run(strings.Join(left, "+"), func(t *testing.T) {
			dir := t.TempDir()
			w, err := wal.Open(filepath.Join(dir, "wal"), wal.Options{Logger: quiet})
			must(t, err)
			must(t, w.Close())
			state := filepath.Join(dir, "state")
			must(t, os.MkdirAll(state, 0o750))
			for _, name := range left {
				must(t, os.WriteFile(filepath.Join(state, name), nil, 0o640))
			}
			e, err := Open(dir, Options{Logger: quiet})
			if err != nil {
				t.Fatalf("open after a crash in the state's creation: %v", err)
			}
			runSagas(t, e, 2)
			must(t, e.Close())
			e = openT(t, dir, Options{})
			if e.recovery.AppliedIndex == 0 {
				t.Errorf("reopened: the state applied nothing")
			}
			must(t, e.Close())
		})
	}
	t.Run("beside-a-truncated-log", func(t *testing.T) {
		dir := t.TempDir()
		e := openT(t, dir, Options{WAL: wal.Options{SegmentSize: 16 << 10}, CheckpointEvery: 50})
		runSagas(t, e, 100)
		must(t, e.Close())
		if first := segments(t, dir)[0]; filepath.Base(first) <= "00000000000000000001" {
			t.Fatalf("the checkpoints did not truncate the log: it starts with %s", first)
		}
		state := filepath.Join(dir, "state")
		must(t, os.RemoveAll(state))
		must(t, os.MkdirAll(state, 0o750))
		must(t, os.WriteFile(filepath.Join(state, "LOCK"), nil, 0o640))
		before := dirtest.Files(t, dir)
		if _, err := Open(dir, Options{Logger: quiet}); !errors.Is(err, ErrRecovery) {
			t.Fatalf("open: %v, want ErrRecovery", err)
		}
		dirtest.RequireSame(t, before, dirtest.Files(t, dir))
	})
}

// A crash inside a checkpoint's front truncation leaves its .START file:
// once Open settles it, the log starts at the file's index. A state
// removed meanwhile (so behind that start) must be refused before the
// settling, which deletes segments and renames the file: the refused
// Open changes nothing.
func TestOpenRefusesAStateBehindAPendingTruncationWithoutChangingAFile(t *testing.T) {
	dir := t.TempDir()
	e := openT(t, dir, Options{WAL: wal.Options{SegmentSize: 16 << 10}, CheckpointEvery: 1 << 20})
	runSagas(t, e, 100)
	must(t, e.Close())
	segs := segments(t, dir)
	if len(segs) < 3 || filepath.Base(segs[0]) != "00000000000000000001" {
		t.Fatalf("want a log of 3 segments or more from index 1, have %v", segs)
	}
	// What tidwall's TruncateFront writes first, before it removes the
	// segments before it: the kept segment's records, as NAME.START.
	keep := segs[len(segs)/2]
	b, err := os.ReadFile(keep)
	must(t, err)
	must(t, os.WriteFile(keep+".START", b, 0o640))
	must(t, os.RemoveAll(filepath.Join(dir, "state")))
	before := dirtest.Files(t, dir)
	_, err = Open(dir, Options{Logger: quiet})
	if !errors.Is(err, ErrRecovery) || !strings.Contains(err.Error(), "log starts at") {
		t.Fatalf("open with the state removed and a truncation pending: %v, want ErrRecovery naming the log's start", err)
	}
	dirtest.RequireSame(t, before, dirtest.Files(t, dir))
}

// WAL.NoRepair opens the log for reading only (inspection's mode): an
// engine that could start nothing is refused at Open, and with Inspect
// it opens.
func TestWALNoRepairWithoutInspectIsRefused(t *testing.T) {
	dir := t.TempDir()
	e := openT(t, dir, Options{})
	runSagas(t, e, 2)
	must(t, e.Close())
	before := dirtest.Files(t, dir)
	if _, err := Open(dir, Options{Logger: quiet, WAL: wal.Options{NoRepair: true}}); !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), "Inspect") {
		t.Fatalf("WAL.NoRepair without Inspect: %v, want ErrInvalidOptions naming Inspect", err)
	}
	dirtest.RequireSame(t, before, dirtest.Files(t, dir))
	e, err := Open(dir, Options{Logger: quiet, Inspect: true, WAL: wal.Options{NoRepair: true}})
	must(t, err)
	must(t, e.Close())
}
