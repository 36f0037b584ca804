package testctx

import (
	"testing"
	"time"
)

func TestContextEndsBeforeTheTestTimeout(t *testing.T) {
	ctx := New(t)
	dl, ok := ctx.Deadline()
	if !ok {
		t.Fatal("no deadline")
	}
	if td, ok := t.Deadline(); ok && !dl.Before(td) {
		t.Fatalf("context deadline %v is not before the test's %v", dl, td)
	}
	if time.Until(dl) <= 0 {
		t.Fatalf("deadline %v already passed", dl)
	}
}
