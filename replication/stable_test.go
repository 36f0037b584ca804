package replication

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sagaengine/saga/wal"
)

func stableOpen(t *testing.T, path string) *StableStore {
	t.Helper()
	s, err := OpenStableStore(path)
	if err != nil {
		t.Fatalf("open stable store %s: %v", path, err)
	}
	return s
}

func TestStableStoreNotFound(t *testing.T) {
	s := stableOpen(t, filepath.Join(t.TempDir(), "stable"))
	v, err := s.Get([]byte("LastVoteCand"))
	if v != nil || err == nil || err.Error() != "not found" || !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("Get of a missing key = (%q, %v), want (nil, \"not found\")", v, err)
	}
	n, err := s.GetUint64([]byte("CurrentTerm"))
	if n != 0 || err == nil || err.Error() != "not found" || !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("GetUint64 of a missing key = (%d, %v), want (0, \"not found\")", n, err)
	}
	// A key set to nothing is found, and its value is not nil (raft tests
	// the vote candidate against nil).
	if err := s.Set([]byte("empty"), nil); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get([]byte("empty")); err != nil || v == nil || len(v) != 0 {
		t.Fatalf("Get of a key set to nothing = (%v, %v)", v, err)
	}
	if _, err := s.GetUint64([]byte("empty")); !errors.Is(err, ErrStableNotUint64) {
		t.Fatalf("GetUint64 of a non-uint64 value: %v", err)
	}
}

func TestStableStorePersistsAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "dir", "stable") // directories are created
	s := stableOpen(t, path)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.SetUint64([]byte("CurrentTerm"), 7))
	must(s.SetUint64([]byte("LastVoteTerm"), 6))
	must(s.Set([]byte("LastVoteCand"), []byte("node2")))
	must(s.SetUint64([]byte("CurrentTerm"), 1<<63+5)) // overwrite
	must(s.Set([]byte{}, []byte{0, 1, 2}))            // an empty key is a key
	val := []byte("caller's buffer")
	must(s.Set([]byte("copied"), val))
	copy(val, "XXXXXXXX") // the store kept a copy
	got, _ := s.Get([]byte("LastVoteCand"))
	got[0] = 'X' // and hands out copies
	for _, st := range []*StableStore{s, stableOpen(t, path)} {
		if n, err := st.GetUint64([]byte("CurrentTerm")); err != nil || n != 1<<63+5 {
			t.Fatalf("CurrentTerm = %d, %v", n, err)
		}
		if n, err := st.GetUint64([]byte("LastVoteTerm")); err != nil || n != 6 {
			t.Fatalf("LastVoteTerm = %d, %v", n, err)
		}
		for k, want := range map[string]string{"LastVoteCand": "node2", "": "\x00\x01\x02", "copied": "caller's buffer"} {
			if v, err := st.Get([]byte(k)); err != nil || string(v) != want {
				t.Fatalf("%q = %q, %v; want %q", k, v, err, want)
			}
		}
	}
	if _, err := os.Stat(path + stableTempExt); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a temp file remains after successful sets: %v", err)
	}
}

func TestStableStoreCorruptionIsAnError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stable")
	s := stableOpen(t, path)
	if err := s.SetUint64([]byte("CurrentTerm"), 42); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("node3")); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	damaged := map[string][]byte{"empty-file": {}, "truncated-1": good[:len(good)-1], "extra-byte": append(bytes.Clone(good), 0)}
	for off := range good {
		for _, bit := range []byte{0x01, 0x80} {
			d := bytes.Clone(good)
			d[off] ^= bit
			damaged[fmt.Sprintf("flip-%d-%02x", off, bit)] = d
		}
	}
	for name, d := range damaged {
		if err := os.WriteFile(path, d, 0o640); err != nil {
			t.Fatal(err)
		}
		s, err := OpenStableStore(path)
		if s != nil || !errors.Is(err, ErrStableCorrupt) || !strings.Contains(err.Error(), path) {
			t.Fatalf("%s: open = (%v, %v), want ErrStableCorrupt naming %s", name, s, err, path)
		}
	}
}

func TestParseStableRejectsWellSummedGarbage(t *testing.T) {
	// Bodies with a valid checksum that do not parse.
	sum := appendStableCRC
	head := append([]byte(stableMagic), stableVersion)
	cases := map[string][]byte{
		"bad-magic":       sum(append([]byte("NOTMAGIC"), stableVersion, 0)),
		"bad-version":     sum(append([]byte(stableMagic), 9, 0)),
		"huge-count":      sum(append(bytes.Clone(head), 0xff, 0xff, 0xff, 0xff, 0x0f)),
		"count-too-big":   sum(append(bytes.Clone(head), 2, 0, 0)),
		"key-past-end":    sum(append(bytes.Clone(head), 1, 9, 'k', 0)),
		"value-past-end":  sum(append(bytes.Clone(head), 1, 1, 'k', 9)),
		"duplicate-key":   sum(append(bytes.Clone(head), 2, 1, 'k', 0, 1, 'k', 0)),
		"trailing":        sum(append(bytes.Clone(head), 1, 1, 'k', 0, 0)),
		"unreadable-size": sum(append(bytes.Clone(head), 1, 0x80)),
	}
	for name, data := range cases {
		if _, err := parseStable(data); err == nil {
			t.Errorf("%s: parse of %x succeeded", name, data)
		}
	}
	if kv, err := parseStable(sum(append(bytes.Clone(head), 1, 1, 'k', 0))); err != nil || len(kv) != 1 {
		t.Fatalf("a valid hand-made file: %v %v", kv, err)
	}
}

func FuzzParseStable(f *testing.F) {
	f.Add(encodeStable(map[string][]byte{}))
	f.Add(encodeStable(map[string][]byte{"CurrentTerm": {0, 0, 0, 0, 0, 0, 0, 3}, "LastVoteCand": []byte("n1")}))
	f.Add([]byte(stableMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		kv, err := parseStable(data)
		if err != nil {
			return
		}
		// Sorted keys and minimal uvarints are not enforced on reading, so
		// the re-encoding may differ from data; it must parse to the same map.
		kv2, err := parseStable(encodeStable(kv))
		if err != nil || len(kv2) != len(kv) {
			t.Fatalf("re-encoding of an accepted file does not parse back: %v", err)
		}
		for k, v := range kv {
			if v == nil || !bytes.Equal(kv2[k], v) {
				t.Fatalf("key %q changed on re-encoding (or is nil)", k)
			}
		}
	})
}

func TestStableStoreRemovesLeftoverTemp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stable")
	s := stableOpen(t, path)
	if err := s.SetUint64([]byte("CurrentTerm"), 3); err != nil {
		t.Fatal(err)
	}
	// A Set that crashed before its rename leaves a temp file, whole or torn.
	if err := os.WriteFile(path+stableTempExt, []byte("torn half-written"), 0o640); err != nil {
		t.Fatal(err)
	}
	s = stableOpen(t, path)
	if _, err := os.Stat(path + stableTempExt); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("leftover temp file still there: %v", err)
	}
	if n, err := s.GetUint64([]byte("CurrentTerm")); err != nil || n != 3 {
		t.Fatalf("CurrentTerm after a leftover temp = %d, %v", n, err)
	}
	// Also when the real file was never written.
	path2 := filepath.Join(t.TempDir(), "stable")
	if err := os.WriteFile(path2+stableTempExt, []byte("x"), 0o640); err != nil {
		t.Fatal(err)
	}
	s = stableOpen(t, path2)
	if _, err := s.Get([]byte("CurrentTerm")); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("store with only a leftover temp: %v", err)
	}
}

// TestStableStoreFailedSetKeepsOldValue injects a failure at each I/O step
// of a Set: the error is returned, memory keeps the old value, and before
// the rename the file does too.
func TestStableStoreFailedSetKeepsOldValue(t *testing.T) {
	errInjected := errors.New("injected I/O error")
	for _, step := range []string{"fsync", "rename", "dirsync"} {
		t.Run(step, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "stable")
			s := stableOpen(t, path)
			if err := s.SetUint64([]byte("CurrentTerm"), 5); err != nil {
				t.Fatal(err)
			}
			switch step {
			case "fsync":
				s.syncFile = func(*os.File) error { return errInjected }
			case "rename":
				s.rename = func(string, string) error { return errInjected }
			case "dirsync":
				s.syncDir = func(string) error { return errInjected }
			}
			if err := s.SetUint64([]byte("CurrentTerm"), 6); !errors.Is(err, errInjected) {
				t.Fatalf("failed set returned %v", err)
			}
			if n, err := s.GetUint64([]byte("CurrentTerm")); err != nil || n != 5 {
				t.Fatalf("after a failed set CurrentTerm = %d, %v; want the old 5", n, err)
			}
			if _, err := os.Stat(path + stableTempExt); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a failed set left its temp file: %v", err)
			}
			s.syncFile, s.rename, s.syncDir = (*os.File).Sync, os.Rename, stableSyncDir
			if step == "dirsync" {
				// The rename happened: the file holds 6, not known durable.
				// Rewriting memory's 5 would move the term back on disk.
				if err := s.Set([]byte("LastVoteCand"), []byte("n2")); !errors.Is(err, ErrStablePoisoned) {
					t.Fatalf("set after a failed directory fsync: %v", err)
				}
				if n, _ := stableOpen(t, path).GetUint64([]byte("CurrentTerm")); n != 6 {
					t.Fatalf("after the rename the file holds %d, want 6", n)
				}
				return
			}
			if n, _ := stableOpen(t, path).GetUint64([]byte("CurrentTerm")); n != 5 {
				t.Fatalf("after a failed set the file holds %d, want 5", n)
			}
			// Healthy again: a Set works and keeps the other keys.
			if err := s.Set([]byte("LastVoteCand"), []byte("n3")); err != nil {
				t.Fatal(err)
			}
			r := stableOpen(t, path)
			if n, _ := r.GetUint64([]byte("CurrentTerm")); n != 5 {
				t.Fatalf("after recovery the file holds CurrentTerm %d, want 5", n)
			}
			if v, _ := r.Get([]byte("LastVoteCand")); string(v) != "n3" {
				t.Fatalf("after recovery LastVoteCand = %q", v)
			}
		})
	}
}

// TestStableStoreReadOnlyDir makes a real write fail (not as root, which
// ignores permissions).
func TestStableStoreReadOnlyDir(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores directory permissions")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "stable")
	s := stableOpen(t, path)
	if err := s.SetUint64([]byte("CurrentTerm"), 5); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o700)
	if err := s.SetUint64([]byte("CurrentTerm"), 6); err == nil {
		t.Fatal("a set in a read-only directory succeeded")
	}
	if n, _ := s.GetUint64([]byte("CurrentTerm")); n != 5 {
		t.Fatalf("after a failed set CurrentTerm = %d, want 5", n)
	}
	if n, _ := stableOpen(t, path).GetUint64([]byte("CurrentTerm")); n != 5 {
		t.Fatalf("after a failed set the file holds %d, want 5", n)
	}
}

func TestNegativeWALSizesInConfigAreRefused(t *testing.T) {
	for _, w := range []wal.Options{{SegmentSize: -1}, {MaxRecordSize: -1}} {
		c := Config{ID: "a", Dir: t.TempDir(), Bind: "127.0.0.1:0", WAL: w}
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("Validate with WAL %+v: %v, want ErrInvalidConfig", w, err)
		}
	}
}
