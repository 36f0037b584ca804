package wal

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/sagaengine/saga/internal/dirtest"
)

// twentyRecords opens a log of small segments in dir and appends
// "record 1" to "record 20".
func twentyRecords(t *testing.T, dir string) *Log {
	t.Helper()
	l, err := Open(dir, Options{SegmentSize: 256})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 20; i++ {
		if _, err := l.Append([][]byte{[]byte(fmt.Sprintf("record %d", i))}); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// A log opened with NoRepair reads every record and changes no file: not
// at Open, not by a refused change, not at Close; and it opens none for
// writing (a read-only filesystem is enough).
func TestNoRepairReadsAndChangesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "wal")
	l := twentyRecords(t, dir)
	if err := l.TruncateFront(5); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	before := dirtest.Snapshot(t, dir)
	r, err := Open(dir, Options{SegmentSize: 256, NoRepair: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.FirstIndex() != 5 || r.LastIndex() != 20 {
		t.Errorf("read-only log holds %d..%d, want 5..20", r.FirstIndex(), r.LastIndex())
	}
	for i := uint64(5); i <= 20; i++ {
		if p, err := r.Read(i); err != nil || !bytes.Equal(p, fmt.Appendf(nil, "record %d", i)) {
			t.Errorf("Read(%d) = %q, %v", i, p, err)
		}
	}
	n := 0
	if err := r.Scan(1, func(uint64, []byte) error { n++; return nil }); err != nil || n != 16 {
		t.Errorf("Scan: %d records, %v", n, err)
	}
	if _, err := r.Append([][]byte{[]byte("x")}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Append: %v, want ErrReadOnly", err)
	}
	if err := r.TruncateFront(10); !errors.Is(err, ErrReadOnly) {
		t.Errorf("TruncateFront: %v, want ErrReadOnly", err)
	}
	if err := r.TruncateBack(10); !errors.Is(err, ErrReadOnly) {
		t.Errorf("TruncateBack: %v, want ErrReadOnly", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	dirtest.RequireSame(t, before, dirtest.Snapshot(t, dir))

	// Where there is no log, Open with NoRepair creates none.
	empty := filepath.Join(t.TempDir(), "wal")
	if err := os.Mkdir(empty, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(empty, Options{NoRepair: true}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("NoRepair Open of an empty directory: %v, want ErrReadOnly", err)
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Errorf("NoRepair Open of an empty directory created %v", ents)
	}
}

// A truncation a crash interrupted (its .START file left) is reported by
// Verify and PlanRepair, which change nothing; NoRepair's Open refuses it.
func TestVerifyReportsAPendingTruncation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "wal")
	if err := twentyRecords(t, dir).Close(); err != nil {
		t.Fatal(err)
	}
	if rep, err := Verify(dir, nil); err != nil || rep.PendingTruncation {
		t.Fatalf("a log without a pending truncation: %+v, %v", rep, err)
	}
	segs, err := segmentFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	// tidwall names the file of a pending front truncation after the
	// segment it keeps, with .START.
	if err := os.WriteFile(segs[len(segs)-1].path+".START", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	before := dirtest.Snapshot(t, dir)
	if rep, err := Verify(dir, nil); err != nil || !rep.PendingTruncation {
		t.Errorf("Verify of a log with a .START file: %+v, %v", rep, err)
	}
	if p, err := PlanRepair(dir, 0); err != nil || !p.Report.PendingTruncation {
		t.Errorf("PlanRepair of a log with a .START file: %+v, %v", p, err)
	}
	if _, err := Open(dir, Options{SegmentSize: 256, NoRepair: true}); !errors.Is(err, ErrRepairNeeded) {
		t.Errorf("NoRepair Open of a log with a .START file: %v, want ErrRepairNeeded", err)
	}
	dirtest.RequireSame(t, before, dirtest.Snapshot(t, dir))
}
