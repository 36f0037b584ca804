package wal

import (
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sagaengine/saga/internal/dirtest"
	"github.com/sagaengine/saga/internal/ext4test"
)

// cutLastSegment keeps the first keep bytes of the last segment and pads
// it with pad zero bytes.
func cutLastSegment(t *testing.T, dir string, keep, pad int) {
	t.Helper()
	p, data := lastSegment(t, dir)
	if err := os.WriteFile(p, append(append([]byte{}, data[:keep]...), make([]byte, pad)...), 0o640); err != nil {
		t.Fatal(err)
	}
}

func TestDamageAfterCleanCloseRefusesWithoutChangingAFile(t *testing.T) {
	opts := Options{SegmentSize: 4096}
	for _, tc := range []struct {
		name string
		mk   func(t *testing.T, dir string, ends []int)
	}{
		// A cut inside the last batch of records: they were acknowledged.
		{"cut", func(t *testing.T, dir string, ends []int) { cutLastSegment(t, dir, ends[len(ends)-3]+5, 0) }},
		// The last 4 KiB zero-filled.
		{"zero-filled-tail", func(t *testing.T, dir string, ends []int) {
			_, data := lastSegment(t, dir)
			cutLastSegment(t, dir, max(0, len(data)-4096), min(4096, len(data)))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeN(t, dir, opts, 400, 8)
			_, data := lastSegment(t, dir)
			tc.mk(t, dir, entryEnds(t, data))
			before := dirtest.Files(t, dir)
			_, err := Open(dir, Options{SegmentSize: 4096, Logger: quiet})
			var refused *RefusedError
			if !errors.Is(err, ErrLost) || !errors.As(err, &refused) {
				t.Fatalf("open of a cleanly closed log missing its last records: %v, want ErrLost", err)
			}
			dirtest.RequireSame(t, before, dirtest.Files(t, dir))
			// The dry run (the plan) and the real repair agree, and the real
			// one refuses without force, still changing nothing.
			plan, err := PlanRepair(dir, 0)
			if err != nil || plan.Safe || plan.Lost == 0 {
				t.Fatalf("plan: %+v %v", plan, err)
			}
			if _, err := Repair(dir, 0, false); !errors.Is(err, ErrLost) {
				t.Fatalf("repair without force: %v", err)
			}
			dirtest.RequireSame(t, before, dirtest.Files(t, dir))
		})
	}
}

func TestDamageTheStateHoldsOpensWithoutLoss(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 4096}
	writeN(t, dir, opts, 400, 8)
	_, data := lastSegment(t, dir)
	cutLastSegment(t, dir, len(data)-4096/2, 4096)
	held := func() (uint64, error) { return 400, nil }
	l := openT(t, dir, Options{SegmentSize: 4096, Applied: held})
	if l.FirstIndex() != 401 || l.LastIndex() != 400 {
		t.Fatalf("log continues at [%d, %d], want empty from 401", l.FirstIndex(), l.LastIndex())
	}
	if first, err := l.Append([][]byte{payload(401)}); err != nil || first != 401 {
		t.Fatalf("append after the restart: %d %v", first, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openT(t, dir, Options{SegmentSize: 4096, Applied: held})
	defer l.Close()
	if p, err := l.Read(401); err != nil || string(p) != string(payload(401)) {
		t.Fatalf("read back: %q %v", p, err)
	}
}

func TestTailSegmentUnlinkedOrReplacedPoisonsTheNextAppend(t *testing.T) {
	for _, how := range []string{"unlinked", "replaced"} {
		t.Run(how, func(t *testing.T) {
			dir := t.TempDir()
			l := openT(t, dir, Options{})
			defer l.Close()
			if _, err := l.Append([][]byte{payload(1)}); err != nil {
				t.Fatal(err)
			}
			p, _ := lastSegment(t, dir)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if how == "replaced" {
				if err := os.WriteFile(p, nil, 0o640); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := l.Append([][]byte{payload(2)}); !errors.Is(err, ErrPoisoned) {
				t.Fatalf("append to a %s segment: %v, want ErrPoisoned", how, err)
			}
			if err := l.Err(); err == nil || !errors.Is(l.poison, ErrVanished) {
				t.Fatalf("poison cause: %v, want ErrVanished", l.poison)
			}
		})
	}
}

func TestOpenRefusesALogWhoseSegmentsVanished(t *testing.T) {
	for _, tc := range []struct {
		name   string
		remove func(segs []segmentFile) []segmentFile
	}{
		{"tail", func(s []segmentFile) []segmentFile { return s[len(s)-1:] }},
		{"all", func(s []segmentFile) []segmentFile { return s }},
		{"only-segment", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			size := 300
			if tc.remove == nil {
				size = 1 << 20 // one segment
			}
			l := openT(t, dir, Options{SegmentSize: size})
			for i := 1; i <= 40; i++ {
				if _, err := l.Append([][]byte{payload(i)}); err != nil {
					t.Fatal(err)
				}
			}
			// The process dies here: copy what it leaves on disk.
			crashed := copyDir(t, dir)
			l.Close()
			segs, _ := segmentFiles(crashed)
			victims := segs
			if tc.remove != nil {
				victims = tc.remove(segs)
			}
			for _, s := range victims {
				if err := os.Remove(s.path); err != nil {
					t.Fatal(err)
				}
			}
			before := dirtest.Files(t, crashed)
			if _, err := Open(crashed, Options{SegmentSize: size, Logger: quiet}); !errors.Is(err, ErrLost) {
				t.Fatalf("open after the segments vanished: %v, want ErrLost", err)
			}
			dirtest.RequireSame(t, before, dirtest.Files(t, crashed))
		})
	}
}

func TestSegmentOfRandomBytesIsDamageNotATornTail(t *testing.T) {
	dir := t.TempDir()
	writeN(t, dir, Options{SegmentSize: 300}, 40, 1)
	asIfCrashed(t, dir)
	p, data := lastSegment(t, dir)
	junk := make([]byte, max(len(data), 256))
	if _, err := rand.Read(junk); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, junk, 0o640); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(dir, nil)
	if err != nil || rep.Corrupt == nil || rep.Torn != nil {
		t.Fatalf("verify of a segment of random bytes: torn=%+v corrupt=%+v %v", rep.Torn, rep.Corrupt, err)
	}
	before := dirtest.Files(t, dir)
	if _, err := Open(dir, Options{SegmentSize: 300, Logger: quiet}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open: %v, want ErrCorrupt", err)
	}
	dirtest.RequireSame(t, before, dirtest.Files(t, dir))
}

func TestDamagedExtentRefusesWithoutChangingAFile(t *testing.T) {
	dir := t.TempDir()
	writeN(t, dir, Options{}, 5, 1)
	if err := os.WriteFile(filepath.Join(dir, extentFile), []byte("not an extent"), 0o640); err != nil {
		t.Fatal(err)
	}
	before := dirtest.Files(t, dir)
	if _, err := Open(dir, Options{Logger: quiet}); !errors.Is(err, ErrBadExtent) {
		t.Fatalf("open: %v, want ErrBadExtent", err)
	}
	dirtest.RequireSame(t, before, dirtest.Files(t, dir))
}

func TestTruncateBackThenReopenIsNotALoss(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 200}
	l := openT(t, dir, opts)
	appendCountingSegments(t, l, 1, 30)
	if err := l.TruncateBack(7); err != nil {
		t.Fatal(err)
	}
	crashed := copyDir(t, dir) // as a crash right after the truncation leaves it
	l.Close()
	l = openT(t, crashed, opts)
	defer l.Close()
	checkRecords(t, l, 7)
}

func TestInvalidOptionsAreRefusedNotDefaulted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "wal")
	for _, o := range []Options{{SegmentSize: -1}, {MaxRecordSize: -1}} {
		if _, err := Open(dir, o); !errors.Is(err, ErrInvalidOptions) {
			t.Fatalf("Open(%+v): %v, want ErrInvalidOptions", o, err)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused Open created %s", dir)
	}
}

func TestCloseAfterEIOReleasesDescriptors(t *testing.T) {
	fs := ext4test.Mount(t)
	base := ext4test.OpenDescriptors(t)
	l, err := Open(filepath.Join(fs.Dir, "wal"), Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append([][]byte{payload(1)}); err != nil {
		t.Fatal(err)
	}
	fs.Shutdown()
	if _, err := l.Append([][]byte{payload(2)}); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("append after EIO: %v, want ErrPoisoned", err)
	}
	if err := l.Close(); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("close of a poisoned log: %v, want ErrPoisoned", err)
	}
	if open := ext4test.DescriptorsUnder(t, fs.Dir); len(open) > 0 {
		t.Fatalf("descriptors still open after Close: %v", open)
	}
	if n := ext4test.OpenDescriptors(t); n > base {
		t.Fatalf("%d descriptors open after Close, %d before Open", n, base)
	}
}

// A forced repair that restarts the log after the state's applied index
// counts, as lost, the valid records after the damage that only the log
// held.
func TestForcedPlanCountsTheRecordsItDropsPastTheState(t *testing.T) {
	dir := t.TempDir()
	writeN(t, dir, Options{SegmentSize: 300}, 40, 1)
	asIfCrashed(t, dir)
	segs, _ := segmentFiles(dir)
	victim := segs[len(segs)-2] // holds records the state has and, after them, ones it has not
	d, _ := os.ReadFile(victim.path)
	d[3] ^= 0x40
	if err := os.WriteFile(victim.path, d, 0o640); err != nil {
		t.Fatal(err)
	}
	applied := victim.first + 1
	plan, err := PlanRepair(dir, applied)
	if err != nil || plan.Safe || plan.Restart != applied+1 {
		t.Fatalf("plan: %+v %v", plan, err)
	}
	if want := 40 - applied; plan.Lost < want {
		t.Fatalf("the plan drops records %d..40 but counts %d lost, want at least %d", applied+1, plan.Lost, want)
	}
}

// A state past the index a log was closed at proves the log an older
// copy, not that the state holds everything: Open refuses with ErrLost
// and changes nothing (it continued the log, empty, after the state).
func TestCleanLogBehindTheStateIsRefusedAsLost(t *testing.T) {
	dir := t.TempDir()
	writeN(t, dir, Options{SegmentSize: 200}, 40, 1)
	before := dirtest.Files(t, dir)
	_, err := Open(dir, Options{SegmentSize: 200, Logger: quiet, Applied: func() (uint64, error) { return 60, nil }})
	var refused *RefusedError
	if !errors.As(err, &refused) || !errors.Is(err, ErrLost) {
		t.Fatalf("open of a clean log ending at 40 beside a state at 60: %v, want a refusal matching ErrLost", err)
	}
	dirtest.RequireSame(t, before, dirtest.Files(t, dir))
}
