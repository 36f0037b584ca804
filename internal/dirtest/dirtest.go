// Package dirtest has the file-tree helpers of the storage tests: copy a
// data directory as a crash would leave it, and check that a command that
// refused left every file as it was.
package dirtest

import (
	"os"
	"path/filepath"
	"testing"
)

// Copy copies the tree under src into a new temporary directory and
// returns it. Copied while an engine runs, it is what a SIGKILL at that
// instant leaves on disk.
func Copy(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if info.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o750)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o640)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// Files maps the path of every file under dir, relative to it, to its bytes.
func Files(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// RequireSame fails the test for every file of before that was changed or
// removed in after, and every file after has that before had not.
func RequireSame(t testing.TB, before, after map[string]string) {
	t.Helper()
	for p, b := range before {
		if a, ok := after[p]; !ok {
			t.Errorf("%s was removed", p)
		} else if a != b {
			t.Errorf("%s was changed (%d bytes, was %d)", p, len(a), len(b))
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s was created", p)
		}
	}
}
