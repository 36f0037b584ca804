// Package dirtest has the file-tree helpers of the storage tests: copy a
// data directory as a crash would leave it, and check that a command that
// refused left every file as it was.
package dirtest

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Copy copies the tree under src into a new temporary directory and
// returns it. src must be still: a tree in use is copied file by file at
// different instants (see CopyTo).
func Copy(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	if err := CopyTo(dst, src); err != nil {
		t.Fatal(err)
	}
	return dst
}

// CopyTo copies the tree under src into dst, file by file; an error
// wrapping os.ErrNotExist says a file vanished while it was copied (src
// is in use).
func CopyTo(dst, src string) error {
	return filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
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

// Snapshot maps every entry under dir (directories included, dir itself
// as "."), relative to it, to its type and mode, and for a file its size
// and the SHA-256 of its bytes: what RequireSame compares to show that a
// command left a directory exactly as it was, a created or removed empty
// directory and a changed mode included.
func Snapshot(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if !info.Mode().IsRegular() {
			out[rel] = info.Mode().String()
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[rel] = fmt.Sprintf("%s %d %x", info.Mode(), len(b), sha256.Sum256(b))
		return nil
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return out
}
