package main

import (
	"os"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	if child := os.Getenv(childEnv); child != "" {
		crashChild(child) // the re-executed test binary plays the child
		return
	}
	os.Exit(m.Run())
}

func TestDemo(t *testing.T) {
	var out strings.Builder
	if err := run(t.TempDir(), &out); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{
		"order-1001: COMPLETED",
		"released inventory (key order-1003/inventory/compensation)\n      refunded payment (key order-1003/payment/compensation)\n      cancelled order",
		"returned doc-42",
		"child killed with SIGKILL",
		"resumed 1 saga(s)",
		"1 completed, 4 failed (fully compensated), 0 stuck",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q:\n%s", want, s)
		}
	}
}
