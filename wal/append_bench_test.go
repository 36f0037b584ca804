package wal

import (
	"fmt"
	"testing"
)

// BenchmarkAppend appends batches of 24 transition-sized records (the
// engine's group commit at c=64) without fsync: the CPU cost per record.
func BenchmarkAppend(b *testing.B) {
	for _, seg := range []int{256 << 10, 1 << 20, 4 << 20, 8 << 20} {
		b.Run(fmt.Sprintf("segment=%dKiB", seg>>10), func(b *testing.B) { benchAppend(b, seg) })
	}
}

func benchAppend(b *testing.B, seg int) {
	l, err := Open(b.TempDir(), Options{NoSync: true, SegmentSize: seg})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	recs := make([][]byte, 24)
	for i := range recs {
		recs[i] = make([]byte, 126)
	}
	b.SetBytes(24 * 126)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.Append(recs); err != nil {
			b.Fatal(err)
		}
	}
}
