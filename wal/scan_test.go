package wal

import (
	"bytes"
	"errors"
	"os"
	"testing"
)

// TestScanFromAnyIndex: Scan from any index of a log of many segments,
// after a front truncation, yields exactly the records from there on.
func TestScanFromAnyIndex(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 256}
	writeN(t, dir, opts, 200, 7)
	l := openT(t, dir, opts)
	defer l.Close()
	if err := l.TruncateFront(23); err != nil {
		t.Fatal(err)
	}
	for _, from := range []uint64{0, 1, 23, 24, 100, 199, 200, 201} {
		next := max(from, 23)
		err := l.Scan(from, func(i uint64, p []byte) error {
			if i != next {
				t.Fatalf("from %d: index %d, want %d", from, i, next)
			}
			if !bytes.Equal(p, payload(int(i))) {
				t.Fatalf("record %d = %q", i, p)
			}
			next++
			return nil
		})
		if err != nil || next != 201 {
			t.Fatalf("scan from %d: %v, ended before %d", from, err, next)
		}
	}
}

// TestScanReportsDamage: a record damaged after Open is reported by Scan
// as ErrCorrupt, after the records before it.
func TestScanReportsDamage(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 256}
	writeN(t, dir, opts, 50, 5)
	l := openT(t, dir, opts)
	defer l.Close()
	segs, err := segmentFiles(dir)
	if err != nil || len(segs) < 3 {
		t.Fatalf("segments: %v %v", segs, err)
	}
	data, err := os.ReadFile(segs[1].path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(segs[1].path, data, 0o640); err != nil {
		t.Fatal(err)
	}
	var seen uint64
	err = l.Scan(1, func(i uint64, p []byte) error { seen = i; return nil })
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("scan of a damaged segment: %v", err)
	}
	if seen < segs[1].first-1 || seen >= segs[2].first {
		t.Fatalf("scan stopped after index %d, want one in segment [%d, %d)", seen, segs[1].first, segs[2].first)
	}
}

// TestScanRecordsLargerThanItsBuffer: records that straddle refills of
// Scan's buffer, and one larger than the buffer, come back whole.
func TestScanRecordsLargerThanItsBuffer(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{})
	defer l.Close()
	sizes := []int{10, 300 << 10, 700 << 10, 5, scanBuffer + 12345, 3 * scanBuffer, 1, 400 << 10}
	var recs [][]byte
	for i, n := range sizes {
		recs = append(recs, bytes.Repeat([]byte{byte('a' + i)}, n))
	}
	if _, err := l.Append(recs); err != nil {
		t.Fatal(err)
	}
	seen := 0
	err := l.Scan(1, func(i uint64, p []byte) error {
		if !bytes.Equal(p, recs[i-1]) {
			t.Fatalf("record %d: %d bytes, want %d", i, len(p), len(recs[i-1]))
		}
		seen++
		return nil
	})
	if err != nil || seen != len(recs) {
		t.Fatalf("scan: %v after %d records, want %d", err, seen, len(recs))
	}
}
