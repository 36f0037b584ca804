// Package testctx gives tests a context with a deadline, so that a call a
// broken invariant would block fails at the call with "context deadline
// exceeded" and a message, instead of hanging until go test kills the
// binary with a goroutine dump.
package testctx

import (
	"context"
	"testing"
	"time"
)

// Without a -timeout (go test -timeout 0) a test's calls get this long.
const noTimeout = 10 * time.Minute

// New returns a context that ends when t ends, and before the test
// binary's -timeout: a minute before it, or a tenth of the time left when
// that is less, so the failing test still has time to report.
func New(t testing.TB) context.Context {
	t.Helper()
	deadline := time.Now().Add(noTimeout)
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			deadline = dl.Add(-min(time.Minute, time.Until(dl)/10))
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	t.Cleanup(cancel)
	return ctx
}
