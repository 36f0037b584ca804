package wal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	twal "github.com/tidwall/wal"

	"github.com/sagaengine/saga/internal/dirtest"
	"github.com/sagaengine/saga/internal/torn"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func payload(i int) []byte {
	return []byte(fmt.Sprintf("record-%04d-%s", i, bytes.Repeat([]byte{'x'}, i%7)))
}

func openT(t *testing.T, dir string, opts Options) *Log {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	l, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	return l
}

// writeN appends n records one batch of 'per' at a time and closes the log.
func writeN(t *testing.T, dir string, opts Options, n, per int) {
	t.Helper()
	l := openT(t, dir, opts)
	for i := 1; i <= n; i += per {
		var batch [][]byte
		for j := i; j < i+per && j <= n; j++ {
			batch = append(batch, payload(j))
		}
		first, err := l.Append(batch)
		if err != nil {
			t.Fatalf("append: %v", err)
		}
		if first != uint64(i) {
			t.Fatalf("append returned first index %d, want %d", first, i)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// asIfCrashed rewrites the EXTENT file of a log that writeN closed cleanly
// to what a process killed after its last append leaves: the extent of the
// last new segment, not clean.
func asIfCrashed(t *testing.T, dir string) {
	t.Helper()
	segs, err := segmentFiles(dir)
	if err != nil || len(segs) == 0 {
		t.Fatalf("segments: %v %v", segs, err)
	}
	last := segs[len(segs)-1].first
	if err := writeExtent(dir, Extent{TailStart: last, Last: last - 1}, false); err != nil {
		t.Fatal(err)
	}
}

func checkRecords(t *testing.T, l *Log, n int) {
	t.Helper()
	if got := l.LastIndex(); got != uint64(n) {
		t.Fatalf("last index %d, want %d", got, n)
	}
	seen := 0
	err := l.Scan(1, func(i uint64, p []byte) error {
		seen++
		if !bytes.Equal(p, payload(int(i))) {
			return fmt.Errorf("record %d = %q, want %q", i, p, payload(int(i)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != n {
		t.Fatalf("scanned %d records, want %d", seen, n)
	}
}

func TestAppendReadReopen(t *testing.T) {
	dir := t.TempDir()
	// Small segments so that the log spans many files.
	opts := Options{SegmentSize: 256}
	writeN(t, dir, opts, 100, 3)
	segs, _ := segmentFiles(dir)
	if len(segs) < 5 {
		t.Fatalf("expected many segments, got %d", len(segs))
	}
	l := openT(t, dir, opts)
	defer l.Close()
	checkRecords(t, l, 100)
	// Appending continues the sequence.
	first, err := l.Append([][]byte{payload(101)})
	if err != nil || first != 101 {
		t.Fatalf("append after reopen: %d, %v", first, err)
	}
	if st := l.Stats(); st.Syncs != 1 || st.Records != 1 {
		t.Fatalf("stats after one append: %+v", st)
	}
}

func TestBatchIsOneSync(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	defer l.Close()
	batch := make([][]byte, 64)
	for i := range batch {
		batch[i] = payload(i + 1)
	}
	if _, err := l.Append(batch); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Syncs != 1 || st.Records != 64 {
		t.Fatalf("a batch of 64 took %d syncs for %d records", st.Syncs, st.Records)
	}
}

func TestRecordTooLargeChangesNothing(t *testing.T) {
	l := openT(t, t.TempDir(), Options{MaxRecordSize: 16})
	defer l.Close()
	_, err := l.Append([][]byte{[]byte("ok"), bytes.Repeat([]byte("y"), 17)})
	if !errors.Is(err, ErrRecordTooLarge) {
		t.Fatalf("want ErrRecordTooLarge, got %v", err)
	}
	if l.LastIndex() != 0 || l.Err() != nil {
		t.Fatalf("oversized batch changed the log: last=%d err=%v", l.LastIndex(), l.Err())
	}
	if _, err := l.Append([][]byte{[]byte("ok")}); err != nil {
		t.Fatalf("log unusable after a rejected batch: %v", err)
	}
}

// lastSegment returns the path and contents of the last segment file.
func lastSegment(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	segs, err := segmentFiles(dir)
	if err != nil || len(segs) == 0 {
		t.Fatalf("segments: %v %v", segs, err)
	}
	p := segs[len(segs)-1].path
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, data
}

// entryEnds returns the end offset of every record in a segment.
func entryEnds(t *testing.T, data []byte) []int {
	var ends []int
	for off := 0; off < len(data); {
		e, err := parseEntry(data, off, 1<<20)
		if err != nil {
			t.Fatalf("parse clean segment at %d: %v", off, err)
		}
		ends = append(ends, e.end)
		off = e.end
	}
	return ends
}

func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, _ := os.ReadDir(src)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestTornTailMatrix cuts the last segment of a crashed log at every byte
// offset and zero-fills its tail: open must succeed, keep every complete
// record and accept new appends. Bytes that no interrupted write leaves
// (garbage after the last record) are refused, changing nothing.
func TestTornTailMatrix(t *testing.T) {
	const n = 12
	clean := t.TempDir()
	opts := Options{SegmentSize: 200}
	writeN(t, clean, opts, n, 1)
	asIfCrashed(t, clean)
	segs, _ := segmentFiles(clean)
	if len(segs) < 2 {
		t.Fatalf("want the records spread over several segments, got %d", len(segs))
	}
	_, data := lastSegment(t, clean)
	ends := entryEnds(t, data)
	firstInLast := n - len(ends) + 1
	complete := func(size int) int { // records kept when the segment has size bytes
		k := firstInLast - 1
		for _, e := range ends {
			if e <= size {
				k++
			}
		}
		return k
	}
	type damage struct {
		name string
		mk   func(data []byte) []byte
		keep int
	}
	var cases []damage
	for cut := 0; cut < len(data); cut++ {
		cases = append(cases, damage{fmt.Sprintf("cut@%d", cut),
			func(d []byte) []byte { return d[:cut] }, complete(cut)})
	}
	for _, z := range []int{1, 7, 64, 4096} {
		cases = append(cases, damage{fmt.Sprintf("zeros%d", z),
			func(d []byte) []byte { return append(append([]byte{}, d...), make([]byte, z)...) }, n})
	}
	garbage := []byte{0x05, 0xde, 0xad, 0xbe, 0xef, 0x01, 0xff, 0x80, 0x80, 0x80, 0x80}
	cases = append(cases,
		damage{"garbage", func(d []byte) []byte { return append(append([]byte{}, d...), garbage...) }, -1},
		damage{"huge-length", func(d []byte) []byte {
			return append(append([]byte{}, d...), 0xff, 0xff, 0xff, 0xff, 0x0f)
		}, n},
		damage{"last-record-zeroed", func(d []byte) []byte {
			c := append([]byte{}, d...)
			start := ends[len(ends)-2]
			for i := start; i < len(c); i++ {
				c[i] = 0
			}
			return c
		}, n - 1},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyDir(t, clean)
			p, d := lastSegment(t, dir)
			if err := os.WriteFile(p, c.mk(d), 0o640); err != nil {
				t.Fatal(err)
			}
			if c.keep < 0 {
				before := dirtest.Files(t, dir)
				if _, err := Open(dir, Options{SegmentSize: 200, Logger: quiet}); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("open of a log ending in garbage: %v, want ErrCorrupt", err)
				}
				dirtest.RequireSame(t, before, dirtest.Files(t, dir))
				return
			}
			l := openT(t, dir, opts)
			checkRecords(t, l, c.keep)
			if _, err := l.Append([][]byte{payload(c.keep + 1)}); err != nil {
				t.Fatalf("append after repair: %v", err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l = openT(t, dir, opts)
			checkRecords(t, l, c.keep+1)
			l.Close()
		})
	}
}

// TestBitFlipRefusesOpen flips one bit in every byte of an older record,
// in an older segment and in the last segment before its final record:
// open must refuse with a *CorruptionError naming the place.
func TestBitFlipRefusesOpen(t *testing.T) {
	clean := t.TempDir()
	opts := Options{SegmentSize: 200}
	writeN(t, clean, opts, 12, 1)
	segs, _ := segmentFiles(clean)
	targets := []struct {
		seg    string
		record int // which record of the segment to damage
	}{
		{segs[0].path, 0},
		{segs[len(segs)-1].path, 0},
	}
	for _, tg := range targets {
		data, _ := os.ReadFile(tg.seg)
		ends := entryEnds(t, data)
		start := 0
		if tg.record > 0 {
			start = ends[tg.record-1]
		}
		for off := start; off < ends[tg.record]; off++ {
			t.Run(fmt.Sprintf("%s@%d", filepath.Base(tg.seg), off), func(t *testing.T) {
				dir := copyDir(t, clean)
				p := filepath.Join(dir, filepath.Base(tg.seg))
				d, _ := os.ReadFile(p)
				d[off] ^= 0x10
				if err := os.WriteFile(p, d, 0o640); err != nil {
					t.Fatal(err)
				}
				before, _ := os.ReadFile(p)
				_, err := Open(dir, Options{SegmentSize: 200, Logger: quiet})
				var ce *CorruptionError
				if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
					t.Fatalf("open of a log with a flipped bit: want *CorruptionError, got %v", err)
				}
				if ce.Segment != p || ce.Offset != int64(start) {
					t.Fatalf("error names %s@%d, want %s@%d", ce.Segment, ce.Offset, p, start)
				}
				after, _ := os.ReadFile(p)
				if !bytes.Equal(before, after) {
					t.Fatal("a refused open modified the segment")
				}
			})
		}
	}
}

func TestMissingSegmentRefusesOpen(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 200}
	writeN(t, dir, opts, 30, 1)
	segs, _ := segmentFiles(dir)
	if len(segs) < 3 {
		t.Fatalf("want at least 3 segments, got %d", len(segs))
	}
	if err := os.Remove(segs[1].path); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{SegmentSize: 200, Logger: quiet}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a gap between segments must refuse to open, got %v", err)
	}
}

func TestTruncateFront(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 200}
	writeN(t, dir, opts, 30, 2)
	l := openT(t, dir, opts)
	starts, err := l.SegmentStarts()
	if err != nil || len(starts) < 3 {
		t.Fatalf("segment starts %v %v", starts, err)
	}
	cut := starts[2]
	if err := l.TruncateFront(cut); err != nil {
		t.Fatal(err)
	}
	if l.FirstIndex() != cut {
		t.Fatalf("first index %d, want %d", l.FirstIndex(), cut)
	}
	if _, err := l.Read(cut - 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read of a truncated index: %v", err)
	}
	if err := l.TruncateFront(40); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("truncate beyond the end: %v", err)
	}
	l.Close()
	l = openT(t, dir, opts)
	defer l.Close()
	if l.FirstIndex() != cut || l.LastIndex() != 30 {
		t.Fatalf("after reopen [%d,%d], want [%d,30]", l.FirstIndex(), l.LastIndex(), cut)
	}
	// Empty the log entirely; appends continue the sequence.
	if err := l.TruncateFront(31); err != nil {
		t.Fatal(err)
	}
	if first, err := l.Append([][]byte{payload(31)}); err != nil || first != 31 {
		t.Fatalf("append to an emptied log: %d %v", first, err)
	}
}

// faultyStore injects errors at the seam between Log and tidwall/wal.
type faultyStore struct {
	store
	failWriteAfter int // writes that succeed before the next one fails; -1 never
	partial        bool
	failSync       bool
	// failTruncateBack makes TruncateBack fail before touching the files.
	failTruncateBack bool
	// failClose makes Close fail (after closing the files).
	failClose bool
}

func (f *faultyStore) Close() error {
	err := f.store.Close()
	if f.failClose {
		return errInjected
	}
	return err
}

var errInjected = errors.New("injected I/O error")

func (f *faultyStore) WriteBatch(b *twal.Batch) error {
	if f.failWriteAfter == 0 {
		if f.partial {
			// Let the real write happen, then report failure: memory and
			// file now disagree, as after a short write.
			_ = f.store.WriteBatch(b)
		}
		return errInjected
	}
	f.failWriteAfter--
	return f.store.WriteBatch(b)
}

func (f *faultyStore) Sync() error {
	if f.failSync {
		return errInjected
	}
	return f.store.Sync()
}

func (f *faultyStore) TruncateBack(index uint64) error {
	if f.failTruncateBack {
		return errInjected
	}
	return f.store.TruncateBack(index)
}

func TestInjectedFailuresPoison(t *testing.T) {
	for _, tc := range []struct {
		name string
		fs   faultyStore
	}{
		{"write", faultyStore{failWriteAfter: 3}},
		{"partial-write", faultyStore{failWriteAfter: 3, partial: true}},
		{"sync", faultyStore{failWriteAfter: -1, failSync: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fs := tc.fs
			opts := Options{Logger: quiet, wrap: func(s store) store { fs.store = s; return &fs }}
			l, err := Open(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			acked := 0
			var failed error
			for i := 1; i <= 6; i++ {
				_, err := l.Append([][]byte{payload(acked + 1)})
				if err != nil {
					failed = err
					break
				}
				acked++
			}
			if !errors.Is(failed, ErrPoisoned) {
				t.Fatalf("want the failing append to report ErrPoisoned, got %v", failed)
			}
			// Fail-stop: nothing succeeds any more, not even with a healthy disk.
			fs.failWriteAfter, fs.failSync = -1, false
			if _, err := l.Append([][]byte{payload(99)}); !errors.Is(err, ErrPoisoned) {
				t.Fatalf("append after poisoning: %v", err)
			}
			if _, err := l.Read(1); !errors.Is(err, ErrPoisoned) && acked > 0 {
				t.Fatalf("read after poisoning: %v", err)
			}
			if err := l.Close(); !errors.Is(err, ErrPoisoned) {
				t.Fatalf("close of a poisoned log: %v", err)
			}
			// Reopen recovers: every acknowledged record is there, and the
			// unacknowledged one is either wholly there or wholly absent.
			l = openT(t, dir, Options{})
			defer l.Close()
			last := int(l.LastIndex())
			if last != acked && last != acked+1 {
				t.Fatalf("after reopen last index %d, acked %d", last, acked)
			}
			checkRecords(t, l, last)
			if _, err := l.Append([][]byte{payload(last + 1)}); err != nil {
				t.Fatalf("append after reopen: %v", err)
			}
		})
	}
}

func TestInterruptedTruncationIsSettled(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 200}
	writeN(t, dir, opts, 20, 1)
	segs, _ := segmentFiles(dir)
	// Simulate a crash inside tidwall's TruncateFront after the START file
	// was renamed into place but before older segments were removed.
	data, _ := os.ReadFile(segs[1].path)
	start := filepath.Join(dir, fmt.Sprintf("%020d.START", segs[1].first))
	if err := os.WriteFile(start, data, 0o640); err != nil {
		t.Fatal(err)
	}
	l := openT(t, dir, opts)
	defer l.Close()
	if l.FirstIndex() != segs[1].first || l.LastIndex() != 20 {
		t.Fatalf("after settling [%d,%d], want [%d,20]", l.FirstIndex(), l.LastIndex(), segs[1].first)
	}
}

// tidwall settles a .START or .END file by removing the segments before
// or after it, before anything is verified: a file of that name that no
// truncation of this log wrote (empty, damaged, or a copy of a segment
// the EXTENT file says the log reached past) removed segments of
// acknowledged records, and then the plan refused the log. Open must
// refuse such a file and change nothing.
func TestStrayTruncationFileRefusesWithoutChangingAFile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		suffix  string
		seg     int  // the segment the file is named after
		content bool // a copy of that segment, or nothing
	}{
		{"empty-START", ".START", 2, false},
		{"empty-END", ".END", 1, false},
		{"copied-END", ".END", 1, true},
		{"copied-START", ".START", 2, true}, // named after segment 2, holding segment 1's records
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{SegmentSize: 200}
			writeN(t, dir, opts, 40, 1)
			segs, _ := segmentFiles(dir)
			var data []byte
			if tc.content {
				src := segs[tc.seg]
				if tc.suffix == ".START" {
					src = segs[tc.seg-1]
				}
				data, _ = os.ReadFile(src.path)
			}
			name := filepath.Join(dir, segmentName(segs[tc.seg].first)+tc.suffix)
			if err := os.WriteFile(name, data, 0o640); err != nil {
				t.Fatal(err)
			}
			before := dirtest.Files(t, dir)
			_, err := Open(dir, Options{SegmentSize: 200, Logger: quiet})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("open with a stray %s: %v, want ErrCorrupt", filepath.Base(name), err)
			}
			dirtest.RequireSame(t, before, dirtest.Files(t, dir))
		})
	}
}

// The files interrupted truncations do leave still settle (see
// checkPending): cut back inside a segment, and cut to an empty log from
// either end.
func TestInterruptedTruncationsOfEveryKindSettle(t *testing.T) {
	for _, tc := range []string{"back-inside-a-segment", "front-to-empty", "back-to-empty"} {
		t.Run(tc, func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{SegmentSize: 200}
			writeN(t, dir, opts, 40, 1)
			segs, _ := segmentFiles(dir)
			var name string
			var data []byte
			var first, last uint64
			switch tc {
			case "back-inside-a-segment":
				last = segs[1].first + 2
				b, _ := os.ReadFile(segs[1].path)
				data = b[:entryEnds(t, b)[2]]
				name = segmentName(segs[1].first) + ".END"
				first = 1
				if err := writeExtent(dir, Extent{TailStart: segs[1].first, Last: last}, false); err != nil {
					t.Fatal(err)
				}
			case "front-to-empty":
				name, first, last = segmentName(41)+".START", 41, 40
			case "back-to-empty":
				name, first, last = segmentName(1)+".END", 1, 0
				if err := writeExtent(dir, Extent{TailStart: 1, Last: 0}, false); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o640); err != nil {
				t.Fatal(err)
			}
			l := openT(t, dir, opts)
			defer l.Close()
			if l.FirstIndex() != first || l.LastIndex() != last {
				t.Fatalf("after settling %s: [%d,%d], want [%d,%d]", name, l.FirstIndex(), l.LastIndex(), first, last)
			}
		})
	}
}

func TestVerifyAndRepair(t *testing.T) {
	opts := Options{SegmentSize: 200}
	// A torn tail of a crashed log: Verify reports it and changes nothing;
	// Repair cuts it.
	dir := t.TempDir()
	writeN(t, dir, opts, 12, 1)
	asIfCrashed(t, dir)
	p, data := lastSegment(t, dir)
	next := appendFrame(nil, 13, payload(13))
	torn := append(append(append([]byte{}, data...), byte(len(next))), next[:7]...)
	if err := os.WriteFile(p, torn, 0o640); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(dir, nil)
	if err != nil || rep.Torn == nil || rep.Torn.Bytes != 8 || rep.Corrupt != nil || rep.Records != 12 {
		t.Fatalf("verify torn: %+v %v", rep, err)
	}
	if after, _ := os.ReadFile(p); len(after) != len(torn) {
		t.Fatal("Verify modified the log")
	}
	plan, err := Repair(dir, 0, false)
	if err != nil || plan.Truncate == nil || !plan.Safe {
		t.Fatalf("repair torn: %+v %v", plan, err)
	}
	if rep, _ = Verify(dir, nil); rep.Torn != nil || rep.Records != 12 {
		t.Fatalf("after repair: %+v", rep)
	}

	// Corruption: refused without force (nothing changes), cut with it.
	dir = t.TempDir()
	writeN(t, dir, opts, 30, 1)
	segs, _ := segmentFiles(dir)
	victim := segs[1]
	d, _ := os.ReadFile(victim.path)
	d[3] ^= 0x40
	if err := os.WriteFile(victim.path, d, 0o640); err != nil {
		t.Fatal(err)
	}
	rep, err = Verify(dir, nil)
	if err != nil || rep.Corrupt == nil || rep.Corrupt.Index != victim.first || rep.DroppedByForce < 30-victim.first {
		t.Fatalf("verify corrupt: %+v %v", rep, err)
	}
	before := dirtest.Files(t, dir)
	if _, err := Repair(dir, 0, false); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("repair without force: %v", err)
	}
	dirtest.RequireSame(t, before, dirtest.Files(t, dir))
	if _, err := Repair(dir, 0, true); err != nil {
		t.Fatal(err)
	}
	l := openT(t, dir, opts)
	defer l.Close()
	if l.LastIndex() != victim.first-1 {
		t.Fatalf("after a forced repair the log ends at %d, want %d", l.LastIndex(), victim.first-1)
	}
	checkRecords(t, l, int(victim.first-1))
}

// TestLargeRecordIsNotTakenForDamage: a record larger than the reader's
// MaxRecordSize (written under a larger limit) is read, never cut.
func TestLargeRecordIsNotTakenForDamage(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{MaxRecordSize: 1 << 20})
	big := bytes.Repeat([]byte("x"), 200<<10)
	if _, err := l.Append([][]byte{[]byte("small"), big}); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(l.Close())
	rep, err := Verify(dir, nil)
	if err != nil || rep.Torn != nil || rep.Corrupt != nil || rep.Records != 2 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	l = openT(t, dir, Options{MaxRecordSize: 64 << 10})
	defer l.Close()
	got, err := l.Read(2)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("large record after reopen with a smaller limit: %d bytes, %v", len(got), err)
	}
}

// checkTailMirror checks that the tail size Append mirrors from tidwall's
// segment rule equals the size of the last segment file: when they drift,
// Append misses the directory fsync a new segment file needs.
func checkTailMirror(t *testing.T, l *Log) {
	t.Helper()
	_, data := lastSegment(t, l.dir)
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.tailSize != len(data) {
		t.Fatalf("mirrored tail size %d, last segment file has %d bytes", l.tailSize, len(data))
	}
}

// appendCountingSegments appends payload(i) for i in [from, to] one at a
// time and checks that each append that created a segment file also
// fsynced the directory.
func appendCountingSegments(t *testing.T, l *Log, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		before, _ := segmentFiles(l.dir)
		dirSyncs := l.Stats().DirSyncs
		first, err := l.Append([][]byte{payload(i)})
		if err != nil || first != uint64(i) {
			t.Fatalf("append %d: first=%d err=%v", i, first, err)
		}
		after, _ := segmentFiles(l.dir)
		if len(after) > len(before) && l.Stats().DirSyncs == dirSyncs {
			t.Fatalf("append %d created a segment file without fsyncing the directory", i)
		}
		checkTailMirror(t, l)
	}
}

func TestTruncateBack(t *testing.T) {
	opts := Options{SegmentSize: 200}
	for _, tc := range []struct {
		name string
		keep func(starts []uint64) uint64
	}{
		{"inside-an-older-segment", func(s []uint64) uint64 { return s[1] + 1 }},
		{"last-of-an-older-segment", func(s []uint64) uint64 { return s[2] - 1 }},
		{"first-of-a-segment", func(s []uint64) uint64 { return s[2] }},
		{"inside-the-tail", func(s []uint64) uint64 { return s[len(s)-1] + 1 }},
		{"everything", func(s []uint64) uint64 { return 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeN(t, dir, opts, 40, 3)
			l := openT(t, dir, opts)
			starts, err := l.SegmentStarts()
			if err != nil || len(starts) < 4 {
				t.Fatalf("segment starts %v %v", starts, err)
			}
			keep := tc.keep(starts)
			if err := l.TruncateBack(keep); err != nil {
				t.Fatal(err)
			}
			if l.LastIndex() != keep || l.FirstIndex() != 1 {
				t.Fatalf("after truncate back to %d: [%d,%d]", keep, l.FirstIndex(), l.LastIndex())
			}
			if _, err := l.Read(keep + 1); !errors.Is(err, ErrNotFound) {
				t.Fatalf("read of a truncated index: %v", err)
			}
			checkTailMirror(t, l)
			if after, _ := l.SegmentStarts(); after[len(after)-1] > max(keep, 1) {
				t.Fatalf("segments %v remain after truncating back to %d", after, keep)
			}
			checkRecords(t, l, int(keep))
			// Appends continue at keep+1, through several new segments.
			appendCountingSegments(t, l, int(keep)+1, int(keep)+25)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l = openT(t, dir, opts)
			defer l.Close()
			checkRecords(t, l, int(keep)+25)
			checkTailMirror(t, l)
			appendCountingSegments(t, l, int(keep)+26, int(keep)+30)
		})
	}
}

func TestTruncateBackBounds(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 200}
	writeN(t, dir, opts, 30, 2)
	l := openT(t, dir, opts)
	defer l.Close()
	// At or beyond the end: nothing to do.
	for _, idx := range []uint64{30, 31, 1 << 40} {
		if err := l.TruncateBack(idx); err != nil || l.LastIndex() != 30 {
			t.Fatalf("truncate back to %d: last=%d err=%v", idx, l.LastIndex(), err)
		}
	}
	starts, _ := l.SegmentStarts()
	cut := starts[2]
	if err := l.TruncateFront(cut); err != nil {
		t.Fatal(err)
	}
	if err := l.TruncateBack(cut - 2); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("truncate back before the first index: %v", err)
	}
	// cut-1 empties the log; appends continue at cut.
	if err := l.TruncateBack(cut - 1); err != nil {
		t.Fatal(err)
	}
	if l.FirstIndex() != cut || l.LastIndex() != cut-1 {
		t.Fatalf("emptied log: [%d,%d], want [%d,%d]", l.FirstIndex(), l.LastIndex(), cut, cut-1)
	}
	if first, err := l.Append([][]byte{payload(int(cut))}); err != nil || first != cut {
		t.Fatalf("append to a log emptied from the back: %d %v", first, err)
	}
	checkTailMirror(t, l)
}

// TestTruncateFrontInsideTail: a TruncateFront inside the tail segment
// shrinks that segment; the mirrored tail size must follow, or a later
// Append misses the directory fsync of a new segment.
func TestTruncateFrontInsideTail(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 200}
	writeN(t, dir, opts, 20, 1)
	l := openT(t, dir, opts)
	defer l.Close()
	starts, _ := l.SegmentStarts()
	tail := starts[len(starts)-1]
	if tail >= 20 {
		t.Fatalf("want several records in the tail segment, it starts at %d", tail)
	}
	if err := l.TruncateFront(tail + 1); err != nil {
		t.Fatal(err)
	}
	checkTailMirror(t, l)
	appendCountingSegments(t, l, 21, 60)
}

func TestTruncateBackFailurePoisons(t *testing.T) {
	dir := t.TempDir()
	writeN(t, dir, Options{}, 10, 1)
	fs := &faultyStore{failWriteAfter: -1, failTruncateBack: true}
	l, err := Open(dir, Options{Logger: quiet, wrap: func(s store) store { fs.store = s; return fs }})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.TruncateBack(5); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("failed truncate back: %v", err)
	}
	fs.failTruncateBack = false
	if _, err := l.Append([][]byte{payload(6)}); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("append after a failed truncate back: %v", err)
	}
	if err := l.TruncateBack(5); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("truncate back after poisoning: %v", err)
	}
	_ = l.Close()
	l = openT(t, dir, Options{})
	defer l.Close()
	checkRecords(t, l, 10) // the injected failure happened before tidwall touched the files
}

// TestConcurrentReads reads older segments from several goroutines (run
// with -race): tidwall's Read mutates its segment cache under a read lock,
// so Log.Read must serialize the calls into it.
func TestConcurrentReads(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 200}
	writeN(t, dir, opts, 120, 4)
	l := openT(t, dir, opts)
	defer l.Close()
	errs := make(chan error, 4)
	for g := range 4 {
		go func() {
			for round := range 20 {
				for i := 1 + (g+round)%7; i <= 120; i += 7 {
					p, err := l.Read(uint64(i))
					if err == nil && !bytes.Equal(p, payload(i)) {
						err = fmt.Errorf("record %d = %q", i, p)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestTruncateFrontAtSegmentStartCopiesNothing: a cut at a segment start
// removes the older segment files and leaves every other file as it was
// (tidwall's own TruncateFront would copy the segment at the cut).
func TestTruncateFrontAtSegmentStartCopiesNothing(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 200}
	writeN(t, dir, opts, 40, 3)
	fs := &faultyStore{failWriteAfter: -1}
	o := opts
	o.Logger = quiet
	o.wrap = func(s store) store { fs.store = s; return fs }
	l, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	starts, _ := l.SegmentStarts()
	if len(starts) < 5 {
		t.Fatalf("want several segments, got %v", starts)
	}
	identity := func() map[string]os.FileInfo {
		segs, _ := segmentFiles(dir)
		m := map[string]os.FileInfo{}
		for _, sg := range segs {
			info, err := os.Stat(sg.path)
			if err != nil {
				t.Fatal(err)
			}
			m[filepath.Base(sg.path)] = info
		}
		return m
	}
	for _, cut := range []uint64{starts[2], starts[len(starts)-1]} {
		before := identity()
		if err := l.TruncateFront(cut); err != nil {
			t.Fatal(err)
		}
		after := identity()
		for name, info := range after {
			old, ok := before[name]
			if !ok || !os.SameFile(old, info) || !old.ModTime().Equal(info.ModTime()) || old.Size() != info.Size() {
				t.Fatalf("cut at %d rewrote or created %s", cut, name)
			}
		}
		if got, _ := l.SegmentStarts(); got[0] != cut || l.FirstIndex() != cut || l.LastIndex() != 40 {
			t.Fatalf("after a cut at %d: segments %v, [%d,%d]", cut, got, l.FirstIndex(), l.LastIndex())
		}
		for i := cut; i <= 40; i++ {
			if p, err := l.Read(i); err != nil || !bytes.Equal(p, payload(int(i))) {
				t.Fatalf("read %d after the cut: %q %v", i, p, err)
			}
		}
		checkTailMirror(t, l)
	}
	appendCountingSegments(t, l, 41, 60)
	// The reopened tidwall is wrapped like the first: injection still works.
	fs.failWriteAfter = 0
	if _, err := l.Append([][]byte{payload(61)}); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("append through the re-wrapped store: %v", err)
	}
	_ = l.Close()
	l = openT(t, dir, opts)
	defer l.Close()
	if l.FirstIndex() != starts[len(starts)-1] || l.LastIndex() != 60 {
		t.Fatalf("after reopen [%d,%d]", l.FirstIndex(), l.LastIndex())
	}
}

func TestTruncateFrontDropFailurePoisons(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 200}
	writeN(t, dir, opts, 30, 2)
	fs := &faultyStore{failWriteAfter: -1, failClose: true}
	l, err := Open(dir, Options{SegmentSize: 200, Logger: quiet, wrap: func(s store) store { fs.store = s; return fs }})
	if err != nil {
		t.Fatal(err)
	}
	starts, _ := l.SegmentStarts()
	if err := l.TruncateFront(starts[2]); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("a failed drop: %v", err)
	}
	if _, err := l.Read(starts[2]); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("read after a failed drop: %v", err)
	}
	if err := l.Close(); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("close after a failed drop: %v", err)
	}
	l = openT(t, dir, opts)
	defer l.Close()
	checkRecords(t, l, 30) // the failure came before any file was removed
}

// tidwall's TruncateFront to LastIndex+1 (the engine's checkpoint when the
// tail segment is empty, a raft log emptied after a snapshot) writes an
// empty START file named after the index the log continues from, removes
// every segment oldest first, then renames the START file. A crash after
// any of those removals, the last included, leaves a log that settles to
// an empty one continuing from there.
func TestInterruptedTruncationToEmptySettlesAtEveryRemoval(t *testing.T) {
	opts := Options{SegmentSize: 200}
	probe := t.TempDir()
	writeN(t, probe, opts, 40, 1)
	n, _ := segmentFiles(probe)
	for removed := 0; removed <= len(n); removed++ {
		t.Run(fmt.Sprintf("after-%d-of-%d-removals", removed, len(n)), func(t *testing.T) {
			dir := t.TempDir()
			writeN(t, dir, opts, 40, 1)
			segs, _ := segmentFiles(dir)
			if err := os.WriteFile(filepath.Join(dir, segmentName(41)+".START"), nil, 0o640); err != nil {
				t.Fatal(err)
			}
			for _, s := range segs[:removed] {
				if err := os.Remove(s.path); err != nil {
					t.Fatal(err)
				}
			}
			l := openT(t, dir, opts)
			defer l.Close()
			if l.FirstIndex() != 41 || l.LastIndex() != 40 {
				t.Fatalf("after settling: [%d,%d], want [41,40]", l.FirstIndex(), l.LastIndex())
			}
		})
	}
}

// An empty START file alone in a log whose EXTENT file says it reached
// past the file's name is no truncation's: Open refuses and changes nothing.
func TestLoneEmptyStartShortOfTheExtentIsRefused(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 200}
	writeN(t, dir, opts, 40, 1)
	segs, _ := segmentFiles(dir)
	for _, s := range segs {
		if err := os.Remove(s.path); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, segmentName(30)+".START"), nil, 0o640); err != nil {
		t.Fatal(err)
	}
	before := dirtest.Files(t, dir)
	if _, err := Open(dir, Options{SegmentSize: 200, Logger: quiet}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open: %v, want ErrCorrupt", err)
	}
	dirtest.RequireSame(t, before, dirtest.Files(t, dir))
}

// A last record of its full length that fails its checksum is a torn
// write when a sector of it reads all zeros (the disk never wrote that
// sector), and damage when it does not (a flipped byte).
func TestFullLengthLastRecordWithALostSectorIsATornTail(t *testing.T) {
	for _, c := range []struct {
		name   string
		damage func(d []byte, start int)
		torn   bool
	}{
		{"sector-lost", func(d []byte, start int) {
			s := (start/torn.SectorSize + 1) * torn.SectorSize // the first sector boundary inside it
			clear(d[s:min(s+torn.SectorSize, len(d))])
		}, true},
		{"byte-flipped", func(d []byte, _ int) { d[len(d)-5] ^= 0x40 }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openT(t, dir, Options{})
			for i := 1; i <= 3; i++ {
				if _, err := l.Append([][]byte{bytes.Repeat([]byte{byte('a' + i)}, 700)}); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			asIfCrashed(t, dir)
			p, d := lastSegment(t, dir)
			ends := entryEnds(t, d)
			c.damage(d, ends[len(ends)-2])
			if err := os.WriteFile(p, d, 0o640); err != nil {
				t.Fatal(err)
			}
			l, err := Open(dir, Options{Logger: quiet})
			switch {
			case c.torn && err != nil:
				t.Fatalf("a last record with a lost sector: %v, want a torn tail cut", err)
			case c.torn:
				last := l.LastIndex()
				l.Close()
				if last != 2 {
					t.Fatalf("after cutting the torn last record the log ends at %d, want 2", last)
				}
			case !errors.Is(err, ErrCorrupt):
				t.Fatalf("a last record with a flipped byte: %v, want ErrCorrupt", err)
			}
		})
	}
}
