package fsm

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// A live batch of one record, the usual one at low concurrency, must not
// pay for room sized for a replay's thousands: a slab of 256 overlays
// per batch once tripled the bytes a saga allocated (24 KB to 78 KB in
// engine BenchmarkRun4Steps/c=1). Bytes, not time: the bound holds on a
// loaded machine.
func TestASingleRecordBatchAllocatesLittle(t *testing.T) {
	if raceOn {
		t.Skip("the race detector changes what is allocated")
	}
	s := openStoreT(t, vfs.NewMem())
	defer s.Close()
	const n = 400
	for i := range n {
		applyAll(t, s, []*Record{startRec(fmt.Sprintf("warm-%03d", i), "", "a", "b")})
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		applyAll(t, s, []*Record{startRec(fmt.Sprintf("s-%03d", i), "", "a", "b")})
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / n
	t.Logf("%d bytes allocated per single-record batch", per)
	if per > 8<<10 {
		t.Fatalf("a single-record batch allocates %d bytes, want at most %d", per, 8<<10)
	}
}
