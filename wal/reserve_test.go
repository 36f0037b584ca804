package wal

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"
)

// tailBufferCap returns the capacity of the in-memory copy of tidwall's
// tail segment, or -1 if tidwall's fields are not where
// reserveTidwallTail expects them.
func tailBufferCap(t *testing.T, l *Log) int {
	t.Helper()
	segs := reflect.ValueOf(l.tw).Elem().FieldByName("segments")
	if !segs.IsValid() || segs.Len() == 0 {
		return -1
	}
	ebuf := segs.Index(segs.Len() - 1).Elem().FieldByName("ebuf")
	if !ebuf.IsValid() || ebuf.Kind() != reflect.Slice {
		return -1
	}
	return ebuf.Cap()
}

// TestTailBufferReserved checks that the tail segment's buffer in tidwall
// has room for a whole segment after Open, after a new segment and after
// a reopen of a log with data (so that appends never regrow it), and that
// the records stay readable. If it fails after an upgrade of tidwall/wal,
// reserveTidwallTail no longer finds its fields: appends still work, but
// regrow the buffer (see BenchmarkAppend).
func TestTailBufferReserved(t *testing.T) {
	const seg = 16 << 10
	dir := t.TempDir()
	l, err := Open(dir, Options{NoSync: true, SegmentSize: seg})
	if err != nil {
		t.Fatal(err)
	}
	want := seg + tailSlack
	if c := tailBufferCap(t, l); c < want {
		t.Fatalf("after Open the tail buffer has capacity %d, want at least %d", c, want)
	}
	rec := func(i int) []byte { return []byte(fmt.Sprintf("record %04d %s", i, bytes.Repeat([]byte{'x'}, 100))) }
	n := 0
	for ; n < 3*seg/100; n++ { // about three segments
		if _, err := l.Append([][]byte{rec(n)}); err != nil {
			t.Fatal(err)
		}
	}
	if starts, _ := l.SegmentStarts(); len(starts) < 3 {
		t.Fatalf("%d segments, want at least 3", len(starts))
	}
	if c := tailBufferCap(t, l); c < want {
		t.Fatalf("after new segments the tail buffer has capacity %d, want at least %d", c, want)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if l, err = Open(dir, Options{NoSync: true, SegmentSize: seg}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if c := tailBufferCap(t, l); c < want {
		t.Fatalf("after a reopen the tail buffer has capacity %d, want at least %d", c, want)
	}
	if _, err := l.Append([][]byte{rec(n)}); err != nil {
		t.Fatal(err)
	}
	n++
	for i := range n {
		got, err := l.Read(uint64(i + 1))
		if err != nil || !bytes.Equal(got, rec(i)) {
			t.Fatalf("record %d: %q, %v", i+1, got, err)
		}
	}
}
