package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sagaengine/saga/wal"
)

var logStoreSeed = flag.Uint64("logstore.seed", 0, "seed of TestLogStoreModel (0: from the clock)")

var lsQuiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// lsOpts are wal options with small segments, so that a few dozen entries
// span several segment files.
func lsOpts() wal.Options { return wal.Options{SegmentSize: 300, Logger: lsQuiet} }

func lsOpen(t *testing.T, dir string, opts wal.Options) *LogStore {
	t.Helper()
	s, err := OpenLogStore(dir, opts)
	if err != nil {
		t.Fatalf("open log store %s: %v", dir, err)
	}
	return s
}

// lsEntry builds a distinguishable entry: its contents depend on index and
// term, so an entry overwritten after a suffix delete is told apart.
func lsEntry(index, term uint64) *raft.Log {
	e := &raft.Log{
		Index: index,
		Term:  term,
		Type:  raft.LogType(index % 6),
		Data:  []byte(fmt.Sprintf("cmd-%d-%d", index, term)),
	}
	if index%3 == 0 {
		e.Extensions = []byte{byte(index), byte(term)}
	}
	if index%4 != 0 {
		e.AppendedAt = time.Unix(1_700_000_000+int64(index%1_000_000), int64(term%1_000_000_000))
	}
	return e
}

func lsBatch(from, to, term uint64) []*raft.Log {
	var b []*raft.Log
	for i := from; i <= to; i++ {
		b = append(b, lsEntry(i, term))
	}
	return b
}

func lsSameEntry(a, b *raft.Log) bool {
	return a.Index == b.Index && a.Term == b.Term && a.Type == b.Type &&
		bytes.Equal(a.Data, b.Data) && bytes.Equal(a.Extensions, b.Extensions) &&
		a.AppendedAt.Equal(b.AppendedAt)
}

func lsBounds(t *testing.T, s *LogStore) (uint64, uint64) {
	t.Helper()
	f, err := s.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	return f, l
}

func lsWantBounds(t *testing.T, s *LogStore, first, last uint64) {
	t.Helper()
	if f, l := lsBounds(t, s); f != first || l != last {
		t.Fatalf("store holds [%d, %d], want [%d, %d]", f, l, first, last)
	}
}

// lsWantEntries checks that every index in [from, to] reads back as the
// entry of term termOf(index), and that the indexes around are not found.
func lsWantEntries(t *testing.T, s *LogStore, from, to uint64, termOf func(uint64) uint64) {
	t.Helper()
	for i := from; i <= to; i++ {
		var got raft.Log
		if err := s.GetLog(i, &got); err != nil {
			t.Fatalf("get %d: %v", i, err)
		}
		if want := lsEntry(i, termOf(i)); !lsSameEntry(&got, want) {
			t.Fatalf("get %d = %+v, want %+v", i, got, *want)
		}
	}
	for _, i := range []uint64{0, from - 1, to + 1} {
		var got raft.Log
		if i >= from && i <= to {
			continue
		}
		if err := s.GetLog(i, &got); err != raft.ErrLogNotFound {
			t.Fatalf("get %d outside [%d, %d]: %v, want raft.ErrLogNotFound itself", i, from, to, err)
		}
	}
}

func lsStore(t *testing.T, s *LogStore, logs []*raft.Log) {
	t.Helper()
	if err := s.StoreLogs(logs); err != nil {
		t.Fatalf("store [%d, %d]: %v", logs[0].Index, logs[len(logs)-1].Index, err)
	}
}

func term1(uint64) uint64 { return 1 }

func TestLogStoreEncodingRoundTrip(t *testing.T) {
	for _, e := range []*raft.Log{
		{Index: 1, Term: 1},
		{Index: 1<<64 - 1, Term: 1<<64 - 1, Type: raft.LogConfiguration, Data: []byte("x"), Extensions: []byte("ext")},
		{Index: 7, Term: 3, Type: raft.LogCommand, Data: bytes.Repeat([]byte{0xff}, 300)},
		{Index: 8, Term: 3, AppendedAt: time.Unix(0, 0)},
		{Index: 9, Term: 3, AppendedAt: time.Unix(-5, 3)},
		{Index: 10, Term: 3, AppendedAt: time.Now()},
		{Index: 11, Term: 3, Type: 200, Extensions: []byte{0}},
	} {
		p := appendLogEntry(nil, e)
		var got raft.Log
		got.Data = []byte("stale") // every field must be overwritten
		got.Extensions = []byte("stale")
		got.AppendedAt = time.Now()
		if err := decodeLogEntry(p, &got); err != nil {
			t.Fatalf("decode %+v: %v", e, err)
		}
		if !lsSameEntry(&got, e) || got.AppendedAt.IsZero() != e.AppendedAt.IsZero() {
			t.Fatalf("round trip of %+v gave %+v", *e, got)
		}
		// Appending to a decoded field must not overwrite the next one.
		if len(got.Data) > 0 && len(got.Extensions) > 0 {
			_ = append(got.Data, 'Z')
			if !bytes.Equal(got.Extensions, e.Extensions) {
				t.Fatal("decoded Data shares capacity with Extensions")
			}
		}
	}
}

func TestLogStoreEncodingClampsFarTimes(t *testing.T) {
	for _, tc := range []struct {
		in, want time.Time
	}{
		{time.Date(2500, 1, 1, 0, 0, 0, 0, time.UTC), time.Unix(0, math.MaxInt64)},
		{time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC), time.Unix(0, math.MinInt64)},
		{time.Date(2262, 4, 11, 23, 47, 16, 854775807, time.UTC), time.Unix(0, math.MaxInt64)},
	} {
		var got raft.Log
		if err := decodeLogEntry(appendLogEntry(nil, &raft.Log{Index: 1, AppendedAt: tc.in}), &got); err != nil {
			t.Fatal(err)
		}
		if !got.AppendedAt.Equal(tc.want) {
			t.Fatalf("AppendedAt %v stored as %v, want %v", tc.in, got.AppendedAt, tc.want)
		}
	}
}

func TestDecodeLogRejectsGarbage(t *testing.T) {
	good := appendLogEntry(nil, &raft.Log{Index: 300, Term: 2, Data: []byte("abc"), Extensions: []byte("de"),
		AppendedAt: time.Unix(5, 0)})
	cases := map[string][]byte{
		"empty":             {},
		"version-only":      {logEncodingVersion},
		"unknown-version":   append([]byte{2}, good[1:]...),
		"unknown-flag":      append([]byte{logEncodingVersion, 0x82}, good[2:]...),
		"trailing-byte":     append(slices.Clone(good), 0),
		"non-minimal-index": {logEncodingVersion, 0, 0x81, 0x00, 1, 0, 0, 0},
		"overflowing-index": append([]byte{logEncodingVersion, 0}, bytes.Repeat([]byte{0xff}, 11)...),
		"huge-data-length":  {logEncodingVersion, 0, 1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 'a'},
		"data-past-end":     {logEncodingVersion, 0, 1, 1, 0, 5, 'a', 'b'},
		"no-ext-length":     {logEncodingVersion, 0, 1, 1, 0, 1, 'a'},
		"short-time":        {logEncodingVersion, logFlagAppendedAt, 1, 1, 0, 0, 0, 0},
	}
	for cut := range len(good) {
		cases[fmt.Sprintf("cut@%d", cut)] = good[:cut]
	}
	for name, p := range cases {
		var e raft.Log
		if err := decodeLogEntry(p, &e); !errors.Is(err, ErrLogCorrupt) {
			t.Errorf("%s: decode of %x returned %v, want ErrLogCorrupt", name, p, err)
		}
		if e.Index != 0 || e.Data != nil {
			t.Errorf("%s: a failed decode changed the entry: %+v", name, e)
		}
	}
}

// FuzzDecodeLog: decoding never panics, and anything it accepts is the
// one encoding of what it decoded to.
func FuzzDecodeLog(f *testing.F) {
	f.Add(appendLogEntry(nil, &raft.Log{Index: 1, Term: 1}))
	f.Add(appendLogEntry(nil, lsEntry(3, 2)))
	f.Add(appendLogEntry(nil, lsEntry(5, 9)))
	f.Add(appendLogEntry(nil, &raft.Log{Index: 1 << 63, Term: 1 << 40, Type: raft.LogBarrier,
		Data: bytes.Repeat([]byte("d"), 200), Extensions: []byte("e"), AppendedAt: time.Unix(1, 2)}))
	f.Add([]byte{logEncodingVersion, 0, 1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		var e raft.Log
		if err := decodeLogEntry(p, &e); err != nil {
			if !errors.Is(err, ErrLogCorrupt) {
				t.Fatalf("decode error does not wrap ErrLogCorrupt: %v", err)
			}
			return
		}
		if again := appendLogEntry(nil, &e); !bytes.Equal(again, p) {
			t.Fatalf("accepted %x, which re-encodes as %x", p, again)
		}
	})
}

func TestLogStoreEmpty(t *testing.T) {
	dir := t.TempDir()
	s := lsOpen(t, dir, lsOpts())
	lsWantBounds(t, s, 0, 0)
	var e raft.Log
	if err := s.GetLog(1, &e); err != raft.ErrLogNotFound {
		t.Fatalf("get from an empty store: %v", err)
	}
	if err := s.DeleteRange(1, 10); err != nil {
		t.Fatalf("delete from an empty store: %v", err)
	}
	if !s.IsMonotonic() {
		t.Fatal("the store must declare itself monotonic")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LastIndex(); !errors.Is(err, ErrLogStoreClosed) {
		t.Fatalf("last index of a closed store: %v", err)
	}
	if err := s.StoreLog(lsEntry(1, 1)); !errors.Is(err, ErrLogStoreClosed) {
		t.Fatalf("store into a closed store: %v", err)
	}
	s = lsOpen(t, dir, lsOpts())
	defer s.Close()
	lsWantBounds(t, s, 0, 0)
}

func TestLogStoreRejectsGapsAndChangesNothing(t *testing.T) {
	s := lsOpen(t, t.TempDir(), lsOpts())
	defer s.Close()
	lsStore(t, s, lsBatch(1, 10, 1))
	records := s.Stats().Records
	bad := map[string][]*raft.Log{
		"gap-after-last":     lsBatch(12, 13, 1),
		"overlaps-last":      lsBatch(10, 11, 1),
		"gap-inside":         {lsEntry(11, 1), lsEntry(13, 1)},
		"backwards-inside":   {lsEntry(11, 1), lsEntry(12, 1), lsEntry(11, 1)},
		"index-zero":         {lsEntry(0, 1)},
		"start-before-first": lsBatch(1, 2, 1),
	}
	for name, b := range bad {
		if err := s.StoreLogs(b); !errors.Is(err, ErrLogNotContiguous) {
			t.Errorf("%s: %v, want ErrLogNotContiguous", name, err)
		}
	}
	if err := s.DeleteRange(3, 5); !errors.Is(err, ErrDeleteInside) {
		t.Errorf("delete inside: %v, want ErrDeleteInside", err)
	}
	if got := s.Stats().Records; got != records {
		t.Fatalf("rejected calls wrote %d records", got-records)
	}
	lsWantBounds(t, s, 1, 10)
	lsWantEntries(t, s, 1, 10, term1)
	// Empty batches and ranges outside the log are no-ops.
	if err := s.StoreLogs(nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]uint64{{11, 20}, {5, 4}, {0, 0}} {
		if err := s.DeleteRange(r[0], r[1]); err != nil {
			t.Fatalf("delete %v: %v", r, err)
		}
	}
	lsWantBounds(t, s, 1, 10)
	// An empty store accepts any start, once.
	if err := s.DeleteRange(1, 10); err != nil {
		t.Fatal(err)
	}
	lsStore(t, s, lsBatch(500, 501, 2))
	if err := s.StoreLogs(lsBatch(503, 503, 2)); !errors.Is(err, ErrLogNotContiguous) {
		t.Fatalf("gap after a restart: %v", err)
	}
}

// TestLogStoreOffsetAcrossFullDelete: raft empties the log after
// installing a snapshot and continues at the snapshot's index + 1, far
// above the wal's next index, or below it.
func TestLogStoreOffsetAcrossFullDelete(t *testing.T) {
	dir := t.TempDir()
	s := lsOpen(t, dir, lsOpts())
	lsStore(t, s, lsBatch(1, 40, 1))
	if err := s.DeleteRange(1, 40); err != nil {
		t.Fatal(err)
	}
	lsWantBounds(t, s, 0, 0)
	const high = 1_000_000
	lsStore(t, s, lsBatch(high, high+29, 2))
	lsStore(t, s, lsBatch(high+30, high+30, 2))
	lsWantBounds(t, s, high, high+30)
	lsWantEntries(t, s, high, high+30, func(uint64) uint64 { return 2 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = lsOpen(t, dir, lsOpts())
	lsWantBounds(t, s, high, high+30)
	lsWantEntries(t, s, high, high+30, func(uint64) uint64 { return 2 })
	var e raft.Log
	if err := s.GetLog(40, &e); err != raft.ErrLogNotFound {
		t.Fatalf("an entry of before the full delete: %v", err)
	}
	// Delete everything with a range wider than the log, then continue
	// below the wal's next index (71): the offset wraps.
	if err := s.DeleteRange(1, high+1000); err != nil {
		t.Fatal(err)
	}
	lsStore(t, s, lsBatch(3, 20, 3))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = lsOpen(t, dir, lsOpts())
	defer s.Close()
	lsWantBounds(t, s, 3, 20)
	lsWantEntries(t, s, 3, 20, func(uint64) uint64 { return 3 })
	lsStore(t, s, lsBatch(21, 60, 3))
	if err := s.DeleteRange(10, 60); err != nil { // suffix, through the wrapped offset
		t.Fatal(err)
	}
	lsWantEntries(t, s, 3, 9, func(uint64) uint64 { return 3 })
}

// TestLogStoreSuffixDeleteThenAppend is raft's conflict path on a
// follower: DeleteRange(conflict, last) then StoreLogs from conflict.
func TestLogStoreSuffixDeleteThenAppend(t *testing.T) {
	dir := t.TempDir()
	s := lsOpen(t, dir, lsOpts())
	lsStore(t, s, lsBatch(100, 160, 1)) // starts above 1: offset in play
	starts, err := s.log.SegmentStarts()
	if err != nil || len(starts) < 4 {
		t.Fatalf("want several segments, got %v %v", starts, err)
	}
	conflict := starts[1] + 2 + s.offset // inside an older segment: later segments go
	if err := s.DeleteRange(conflict, 160); err != nil {
		t.Fatal(err)
	}
	lsWantBounds(t, s, 100, conflict-1)
	lsStore(t, s, lsBatch(conflict, 175, 2))
	termOf := func(i uint64) uint64 {
		if i >= conflict {
			return 2
		}
		return 1
	}
	lsWantEntries(t, s, 100, 175, termOf)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = lsOpen(t, dir, lsOpts())
	defer s.Close()
	lsWantBounds(t, s, 100, 175)
	lsWantEntries(t, s, 100, 175, termOf)
	// A suffix delete of one entry, then of everything but the first.
	if err := s.DeleteRange(175, 175); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(101, 1<<40); err != nil {
		t.Fatal(err)
	}
	lsWantBounds(t, s, 100, 100)
	lsStore(t, s, lsBatch(101, 101, 3))
	lsWantEntries(t, s, 100, 101, func(i uint64) uint64 {
		if i == 100 {
			return 1
		}
		return 3
	})
}

// segmentIdentities maps each segment file name of dir to its FileInfo.
func segmentIdentities(t *testing.T, dir string) map[string]os.FileInfo {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]os.FileInfo{}
	for _, e := range ents {
		info, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = info
	}
	return out
}

// TestLogStorePrefixCompactionAtSegmentStarts: compaction drops whole
// segments only, never rewriting one, and keeps every entry from the new
// first index on readable.
func TestLogStorePrefixCompactionAtSegmentStarts(t *testing.T) {
	dir := t.TempDir()
	s := lsOpen(t, dir, lsOpts())
	const base = 1000 // raft index of the first entry; the wal starts at 1
	for i := uint64(base); i < base+120; i += 7 {
		lsStore(t, s, lsBatch(i, min(i+6, base+119), 1))
	}
	last := uint64(base + 119)
	starts, _ := s.log.SegmentStarts()
	if len(starts) < 5 {
		t.Fatalf("want many segments, got %v", starts)
	}
	// Raft's compaction: DeleteRange(FirstIndex, snapshot index).
	for _, hi := range []uint64{
		starts[1] + s.offset - 2, // before the second segment: nothing to drop
		starts[2] + s.offset + 3, // inside the third segment: drop two
		starts[3] + s.offset - 1, // just before the fourth: drop the third
		starts[4] + s.offset + 1,
	} {
		before := segmentIdentities(t, dir)
		first, _ := lsBounds(t, s)
		if err := s.DeleteRange(first, hi); err != nil {
			t.Fatal(err)
		}
		newFirst, newLast := lsBounds(t, s)
		if newLast != last || newFirst > hi+1 || newFirst < first {
			t.Fatalf("compaction to %d: store holds [%d, %d]", hi, newFirst, newLast)
		}
		// The new first is the largest segment start at or before hi+1.
		want := first
		for _, st := range starts {
			if st+s.offset <= hi+1 && st+s.offset > want {
				want = st + s.offset
			}
		}
		if newFirst != want {
			t.Fatalf("compaction to %d kept from %d, want the segment start %d", hi, newFirst, want)
		}
		// Every segment file that remains is the very file it was.
		after := segmentIdentities(t, dir)
		for name, info := range after {
			old, ok := before[name]
			if !ok || !os.SameFile(old, info) || old.Size() != info.Size() || !old.ModTime().Equal(info.ModTime()) {
				t.Fatalf("compaction to %d rewrote or created segment %s", hi, name)
			}
		}
		lsWantEntries(t, s, newFirst, last, term1)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = lsOpen(t, dir, lsOpts())
	defer s.Close()
	first, _ := lsBounds(t, s)
	lsWantEntries(t, s, first, last, term1)
	lsStore(t, s, lsBatch(last+1, last+5, 2))
}

// lsWriteRaw writes payloads directly into a wal, bypassing the LogStore.
func lsWriteRaw(t *testing.T, dir string, payloads ...[]byte) {
	t.Helper()
	l, err := wal.Open(dir, wal.Options{Logger: lsQuiet})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(payloads); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestLogStoreOpenChecksIndexes(t *testing.T) {
	enc := func(i uint64) []byte { return appendLogEntry(nil, lsEntry(i, 1)) }
	for name, tc := range map[string]struct {
		payloads [][]byte
		wantOpen bool
	}{
		"consistent":        {[][]byte{enc(5), enc(6), enc(7)}, true},
		"span-too-long":     {[][]byte{enc(5), enc(6), enc(8)}, false},
		"span-too-short":    {[][]byte{enc(5), enc(6), enc(6)}, false},
		"backwards":         {[][]byte{enc(9), enc(6), enc(7)}, false},
		"index-zero":        {[][]byte{enc(0), enc(1)}, false},
		"garbage-first":     {[][]byte{[]byte("garbage"), enc(6)}, false},
		"garbage-last":      {[][]byte{enc(5), []byte{logEncodingVersion}}, false},
		"single-garbage":    {[][]byte{{}}, false},
		"middle-misplaced":  {[][]byte{enc(5), enc(9), enc(7)}, true}, // open checks the ends only
		"middle-is-garbage": {[][]byte{enc(5), []byte("x"), enc(7)}, true},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			lsWriteRaw(t, dir, tc.payloads...)
			s, err := OpenLogStore(dir, wal.Options{Logger: lsQuiet})
			if !tc.wantOpen {
				var ce *LogCorruptionError
				if !errors.As(err, &ce) || !errors.Is(err, ErrLogCorrupt) {
					t.Fatalf("open: %v, want a *LogCorruptionError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			lsWantBounds(t, s, 5, 7)
			for i := uint64(5); i <= 7; i++ {
				var e raft.Log
				err := s.GetLog(i, &e)
				intact := bytes.Equal(tc.payloads[i-5], enc(i))
				if intact && err != nil {
					t.Fatalf("get %d: %v", i, err)
				}
				if !intact && !errors.Is(err, ErrLogCorrupt) {
					t.Fatalf("get of damaged %d: %v, want ErrLogCorrupt", i, err)
				}
			}
		})
	}
}

// TestLogStoreModel runs random operations against a map model, reopening
// the store now and then. Rerun a failure with -logstore.seed=N.
func TestLogStoreModel(t *testing.T) {
	seed := *logStoreSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -logstore.seed=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x5a6a))
	dir := t.TempDir()
	opts := lsOpts()
	opts.NoSync = true // the model checks logic; the wal's tests check durability
	s := lsOpen(t, dir, opts)
	defer func() { s.Close() }()

	model := map[uint64]*raft.Log{}
	var first, last uint64 // 0, 0 when empty
	term := uint64(1)
	check := func(step int, what string) {
		t.Helper()
		f, l := lsBounds(t, s)
		if f != first || l != last {
			t.Fatalf("step %d (%s): store holds [%d, %d], model [%d, %d]", step, what, f, l, first, last)
		}
	}
	for step := range 1500 {
		var what string
		switch r := rng.IntN(100); {
		case r < 35: // append a batch
			start := last + 1
			if last == 0 {
				switch rng.IntN(3) {
				case 0:
					start = 1
				case 1:
					start = 1 + rng.Uint64N(50)
				default:
					start = 1 + rng.Uint64N(1<<62)
				}
			}
			n := 1 + rng.Uint64N(8)
			term += rng.Uint64N(2)
			b := lsBatch(start, start+n-1, term)
			what = fmt.Sprintf("store [%d, %d]", start, start+n-1)
			if err := s.StoreLogs(b); err != nil {
				t.Fatalf("step %d: %s: %v", step, what, err)
			}
			for _, e := range b {
				model[e.Index] = e
			}
			if first == 0 {
				first = start
			}
			last = start + n - 1
		case r < 45 && last > first: // suffix delete (a conflict)
			lo := first + 1 + rng.Uint64N(last-first)
			hi := last + rng.Uint64N(3)
			what = fmt.Sprintf("delete suffix [%d, %d]", lo, hi)
			if err := s.DeleteRange(lo, hi); err != nil {
				t.Fatalf("step %d: %s: %v", step, what, err)
			}
			for i := lo; i <= last; i++ {
				delete(model, i)
			}
			last = lo - 1
		case r < 55 && last > first: // prefix compaction
			lo := first - min(first-1, rng.Uint64N(3))
			hi := first + rng.Uint64N(last-first)
			what = fmt.Sprintf("compact [%d, %d]", lo, hi)
			if err := s.DeleteRange(lo, hi); err != nil {
				t.Fatalf("step %d: %s: %v", step, what, err)
			}
			f, _ := lsBounds(t, s)
			starts, _ := s.log.SegmentStarts()
			if f < first || f > hi+1 || (f != first && !slices.Contains(starts, f-s.offset)) {
				t.Fatalf("step %d: %s: first index %d is neither the old first %d nor a segment start <= %d",
					step, what, f, first, hi+1)
			}
			for i := first; i < f; i++ {
				delete(model, i)
			}
			first = f
		case r < 58 && last > 0: // delete everything (after a snapshot install)
			lo := first - min(first-1, rng.Uint64N(3))
			hi := last + rng.Uint64N(3)
			what = fmt.Sprintf("delete all [%d, %d]", lo, hi)
			if err := s.DeleteRange(lo, hi); err != nil {
				t.Fatalf("step %d: %s: %v", step, what, err)
			}
			clear(model)
			first, last = 0, 0
		case r < 62 && last >= first+2: // refused: inside
			what = "delete inside"
			if err := s.DeleteRange(first+1, last-1); !errors.Is(err, ErrDeleteInside) {
				t.Fatalf("step %d: %s: %v", step, what, err)
			}
		case r < 66 && last > 0: // refused: a gap
			what = "store with a gap"
			if err := s.StoreLogs(lsBatch(last+2, last+3, term)); !errors.Is(err, ErrLogNotContiguous) {
				t.Fatalf("step %d: %s: %v", step, what, err)
			}
		case r < 72:
			what = "reopen"
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = lsOpen(t, dir, opts)
		default: // read
			i := first + rng.Uint64N(last-first+7) - min(first, 3)
			what = fmt.Sprintf("get %d", i)
			var got raft.Log
			err := s.GetLog(i, &got)
			want, ok := model[i]
			switch {
			case !ok && err != raft.ErrLogNotFound:
				t.Fatalf("step %d: %s: %v, want raft.ErrLogNotFound", step, what, err)
			case ok && err != nil:
				t.Fatalf("step %d: %s: %v", step, what, err)
			case ok && !lsSameEntry(&got, want):
				t.Fatalf("step %d: %s = %+v, want %+v", step, what, got, *want)
			}
		}
		check(step, what)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = lsOpen(t, dir, opts)
	check(-1, "final reopen")
	for i, want := range model {
		var got raft.Log
		if err := s.GetLog(i, &got); err != nil || !lsSameEntry(&got, want) {
			t.Fatalf("final: get %d = %+v, %v; want %+v", i, got, err, *want)
		}
	}
}

// TestLogStoreConcurrent: raft reads entries from its replication
// goroutines while its main loop appends and compacts (run with -race).
func TestLogStoreConcurrent(t *testing.T) {
	s := lsOpen(t, t.TempDir(), wal.Options{SegmentSize: 2048, Logger: lsQuiet, NoSync: true})
	defer s.Close()
	lsStore(t, s, lsBatch(1, 10, 1))
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				f, err1 := s.FirstIndex()
				l, err2 := s.LastIndex()
				if err := errors.Join(err1, err2); err != nil {
					errs <- err
					return
				}
				for i := f; i <= l && i > 0; i += 3 {
					var e raft.Log
					err := s.GetLog(i, &e)
					if err == raft.ErrLogNotFound {
						continue // compacted meanwhile
					}
					if err != nil || !lsSameEntry(&e, lsEntry(i, 1)) {
						errs <- fmt.Errorf("get %d: %+v %v", i, e, err)
						return
					}
				}
			}
		})
	}
	for i := uint64(11); i < 2000; i += 10 {
		lsStore(t, s, lsBatch(i, i+9, 1))
		if i%200 == 1 {
			f, _ := s.FirstIndex()
			if err := s.DeleteRange(f, i-100); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// testCountFSM counts the commands it applied; its snapshot is the count.
type testCountFSM struct {
	mu sync.Mutex
	n  uint64
}

func (f *testCountFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	return f.n
}

func (f *testCountFSM) count() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

func (f *testCountFSM) Snapshot() (raft.FSMSnapshot, error) {
	return testCountSnapshot(f.count()), nil
}

func (f *testCountFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var b [8]byte
	if _, err := io.ReadFull(rc, b[:]); err != nil {
		return err
	}
	f.mu.Lock()
	f.n = binary.BigEndian.Uint64(b[:])
	f.mu.Unlock()
	return nil
}

type testCountSnapshot uint64

func (s testCountSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(binary.BigEndian.AppendUint64(nil, uint64(s))); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (testCountSnapshot) Release() {}

// testRaftNode is one single-node raft on a LogStore and StableStore in dir.
type testRaftNode struct {
	r      *raft.Raft
	fsm    *testCountFSM
	logs   *LogStore
	stable *StableStore
}

func testRaftConfig() *raft.Config {
	conf := raft.DefaultConfig()
	conf.LocalID = "node1"
	conf.HeartbeatTimeout = 50 * time.Millisecond
	conf.ElectionTimeout = 50 * time.Millisecond
	conf.LeaderLeaseTimeout = 50 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	conf.SnapshotThreshold = 1 << 20 // snapshots only when the test asks
	conf.TrailingLogs = 10
	conf.LogOutput = io.Discard
	conf.LogLevel = "ERROR"
	return conf
}

func startTestRaft(t *testing.T, dir string, bootstrap bool) *testRaftNode {
	t.Helper()
	conf := testRaftConfig()
	logs := lsOpen(t, filepath.Join(dir, "log"), wal.Options{SegmentSize: 2048, Logger: lsQuiet})
	stable, err := OpenStableStore(filepath.Join(dir, "stable"))
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := raft.NewFileSnapshotStore(filepath.Join(dir, "snaps"), 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	addr, trans := raft.NewInmemTransport("node1-addr")
	if bootstrap {
		cfg := raft.Configuration{Servers: []raft.Server{{ID: conf.LocalID, Address: addr}}}
		if err := raft.BootstrapCluster(conf, logs, stable, snaps, trans, cfg); err != nil {
			t.Fatal(err)
		}
	}
	fsm := &testCountFSM{}
	r, err := raft.NewRaft(conf, fsm, logs, stable, snaps, trans)
	if err != nil {
		t.Fatal(err)
	}
	return &testRaftNode{r: r, fsm: fsm, logs: logs, stable: stable}
}

func (n *testRaftNode) waitLeader(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n.r.State() != raft.Leader {
		if time.Now().After(deadline) {
			t.Fatalf("no leader after 10s (state %v)", n.r.State())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (n *testRaftNode) apply(t *testing.T, count int) {
	t.Helper()
	futures := make([]raft.ApplyFuture, count)
	for i := range futures {
		futures[i] = n.r.Apply([]byte(fmt.Sprintf("cmd-%d", i)), 5*time.Second)
	}
	for i, f := range futures {
		if err := f.Error(); err != nil {
			t.Fatalf("apply %d: %v", i, err)
		}
	}
}

func (n *testRaftNode) stop(t *testing.T) {
	t.Helper()
	if err := n.r.Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	if err := n.logs.Close(); err != nil {
		t.Fatal(err)
	}
}

func (n *testRaftNode) currentTerm(t *testing.T) uint64 {
	t.Helper()
	term, err := n.stable.GetUint64([]byte("CurrentTerm"))
	if err != nil {
		t.Fatal(err)
	}
	return term
}

// TestLogStoreRaftSingleNode runs a real single-node raft on the stores,
// compacts its log through a snapshot, restarts it on the same files and
// checks that log, term and state survived.
func TestLogStoreRaftSingleNode(t *testing.T) {
	dir := t.TempDir()
	n := startTestRaft(t, dir, true)
	n.waitLeader(t)
	n.apply(t, 200)
	lastIndex := n.r.LastIndex()
	if lastIndex < 202 { // configuration, leader's no-op, 200 commands
		t.Fatalf("raft last index %d after 200 commands", lastIndex)
	}
	// A snapshot makes raft compact: DeleteRange(first, last-TrailingLogs).
	if err := n.r.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	first, _ := n.logs.FirstIndex()
	if first <= 1 || first > lastIndex-10+1 {
		t.Fatalf("after compaction the log starts at %d (last %d, 10 trailing)", first, lastIndex)
	}
	term := n.currentTerm(t)
	n.stop(t)

	// The files alone hold what raft needs to come back.
	logs := lsOpen(t, filepath.Join(dir, "log"), wal.Options{Logger: lsQuiet})
	if f, l := lsBounds(t, logs); f != first || l != lastIndex {
		t.Fatalf("reopened log holds [%d, %d], want [%d, %d]", f, l, first, lastIndex)
	}
	var e raft.Log
	if err := logs.GetLog(lastIndex, &e); err != nil || string(e.Data) != "cmd-199" || e.Term != term {
		t.Fatalf("last entry after reopen: %+v %v", e, err)
	}
	if err := logs.Close(); err != nil {
		t.Fatal(err)
	}

	n = startTestRaft(t, dir, false)
	defer n.stop(t)
	if got := n.r.LastIndex(); got != lastIndex {
		t.Fatalf("restarted raft's last index %d, want %d", got, lastIndex)
	}
	if got := n.currentTerm(t); got < term {
		t.Fatalf("restarted raft's term %d, before %d", got, term)
	}
	n.waitLeader(t)
	n.apply(t, 1)
	if err := n.r.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if got := n.fsm.count(); got != 201 {
		t.Fatalf("after restart the FSM counts %d commands, want 201", got)
	}
	if got := n.currentTerm(t); got <= term {
		t.Fatalf("a new election must raise the term above %d, got %d", term, got)
	}
}

// TestLogStoreRaftRestoreMovesOffset: a user snapshot restore makes raft
// (seeing a monotonic store) delete its whole log and continue at an
// index far beyond it.
func TestLogStoreRaftRestoreMovesOffset(t *testing.T) {
	dir := t.TempDir()
	n := startTestRaft(t, dir, true)
	n.waitLeader(t)
	n.apply(t, 20)
	const snapIndex = 5000
	state := binary.BigEndian.AppendUint64(nil, 1000)
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: snapIndex, Term: 1, Size: int64(len(state))}
	if err := n.r.Restore(meta, bytes.NewReader(state), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	n.apply(t, 10)
	first, last := lsBounds(t, n.logs)
	// Raft burns snapIndex+1 for the restored snapshot; its no-op follows.
	if first != snapIndex+2 || last != snapIndex+12 {
		t.Fatalf("after restore the log holds [%d, %d], want [%d, %d]", first, last, snapIndex+2, snapIndex+12)
	}
	if got := n.fsm.count(); got != 1010 {
		t.Fatalf("FSM counts %d, want 1010", got)
	}
	n.stop(t)

	n = startTestRaft(t, dir, false)
	defer n.stop(t)
	if f, l := lsBounds(t, n.logs); f != first || l != last {
		t.Fatalf("reopened log holds [%d, %d], want [%d, %d]", f, l, first, last)
	}
	n.waitLeader(t)
	n.apply(t, 1)
	if got := n.fsm.count(); got != 1011 {
		t.Fatalf("after restart the FSM counts %d, want 1011", got)
	}
}
