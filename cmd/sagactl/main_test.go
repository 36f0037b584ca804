package main

import (
	"strings"
	"testing"
)

func TestVersionAndUsage(t *testing.T) {
	var out, errOut strings.Builder
	if code := run([]string{"version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "sagactl ") {
		t.Fatalf("version: %d %q %q", code, out.String(), errOut.String())
	}
	for _, args := range [][]string{{}, {"bogus"}, {"version", "extra"}} {
		out.Reset()
		errOut.Reset()
		if code := run(args, &out, &errOut); code != 2 || errOut.Len() == 0 {
			t.Fatalf("%v: exit %d, stderr %q", args, code, errOut.String())
		}
	}
}
