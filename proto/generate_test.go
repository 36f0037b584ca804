// Package proto_test checks that the committed generated code (gen/) is
// what `make generate` makes of proto/ with the pinned tools.
package proto_test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGeneratedCodeIsFresh regenerates gen/ into a temporary directory
// with buf and the plugins pinned in tools/go.mod, and compares it with
// the committed gen/ file by file. The first run builds buf (minutes);
// later runs use the build cache.
func TestGeneratedCodeIsFresh(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("SKIPPED: no go command to run buf with; the generated code was not checked")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, "tool", "-modfile=tools/go.mod", "buf", "generate", "--output", out)
	cmd.Dir = root
	msg, err := cmd.CombinedOutput()
	if err != nil {
		if offline(string(msg)) {
			t.Skipf("SKIPPED: the pinned tools are not in the module cache and the module proxy cannot be reached, so the generated code was not checked:\n%s", msg)
		}
		t.Fatalf("go tool buf generate: %v\n%s", err, msg)
	}
	want := files(t, filepath.Join(out, "gen"))
	got := files(t, filepath.Join(root, "gen"))
	if len(want) == 0 {
		t.Fatal("buf generate wrote nothing")
	}
	for name, w := range want {
		g, ok := got[name]
		switch {
		case !ok:
			t.Errorf("gen/%s is missing: run make generate and commit it", name)
		case !bytes.Equal(g, w):
			t.Errorf("gen/%s is stale: run make generate and commit it", name)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("gen/%s is not generated from proto/ any more: run make generate (it removes it)", name)
		}
	}
}

func offline(msg string) bool {
	for _, s := range []string{"dial tcp", "no such host", "lookup ", "connection refused", "network is unreachable", "GOPROXY=off", "i/o timeout"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// files reads every file under dir, by slash path relative to dir.
func files(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		m[filepath.ToSlash(rel)] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}
