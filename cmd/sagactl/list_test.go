package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/internal/testctx"
)

// TestListFiltersAndRejectsBadFlags: list's filters combine offline,
// --count counts, and a bad flag is a usage error that opens nothing.
func TestListFiltersAndRejectsBadFlags(t *testing.T) {
	dir := t.TempDir()
	e, err := engine.Open(dir, engine.Options{Registry: registry(true), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testctx.New(t)
	if _, err := e.Define(ctx, engine.Definition{Name: "manual", Steps: []engine.StepDef{{Name: "upload", Compensation: "undo"}}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		if _, err := e.Start(ctx, "manual", nil, engine.StartOptions{ID: fmt.Sprintf("s%d", i), User: fmt.Sprintf("u%d", i%2),
			Meta: map[string]string{"tenant": fmt.Sprintf("t%d", i%3), "tier": fmt.Sprintf("g%d", i%2)}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	c, out, se := runCLI("--dir", dir, "list", "--user", "u1", "--order", "newest", "--limit", "2")
	if c != 0 || !strings.Contains(out, "s5") || !strings.Contains(out, "s3") || strings.Contains(out, "s1") || !strings.Contains(out, "--cursor") {
		t.Fatalf("list --user u1: exit %d\n%s%s", c, out, se)
	}
	cursor := out[strings.LastIndex(out, "--cursor ")+len("--cursor "):]
	c, out, se = runCLI("--dir", dir, "list", "--user", "u1", "--order", "newest", "--limit", "2", "--cursor", strings.TrimSpace(cursor))
	if c != 0 || !strings.Contains(out, "s1") || strings.Contains(out, "s3") {
		t.Fatalf("second page: exit %d\n%s%s", c, out, se)
	}
	if c, out, se := runCLI("--dir", dir, "list", "--tenant", "t0", "--meta", "tenant=t0", "--count"); c != 0 || strings.TrimSpace(out) != "2" {
		t.Fatalf("count of tenant t0: exit %d %q %s", c, out, se)
	}
	// --meta repeats, and a saga must hold every pair: of s0 and s3 (tenant
	// t0) only s3 has tier g1, which s1 and s5 have too.
	if c, out, se := runCLI("--dir", dir, "list", "--meta", "tenant=t0", "--meta", "tier=g1"); c != 0 || !strings.Contains(out, "s3") ||
		strings.Contains(out, "s0") || strings.Contains(out, "s1") || strings.Contains(out, "s5") {
		t.Fatalf("list of two meta pairs: exit %d\n%s%s", c, out, se)
	}
	for _, args := range [][]string{
		{"--order", "sideways"},
		{"--version", "2"},
		{"--meta", "novalue"},
		{"--meta", "tier=g0", "--meta", "tier=g1"},
		{"--since", "yesterday"},
		{"--cursor", "s1"},
		{"--tenant", "a", "--meta", "tenant=b"},
		{"--limit", "0"},
	} {
		c, _, se := runCLI(append([]string{"--dir", dir, "list"}, args...)...)
		if c != exitUsage || !strings.Contains(se, "invalid query") {
			t.Errorf("list %v: exit %d, want %d: %s", args, c, exitUsage, se)
		}
	}
}
