package main

import (
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sagaengine/saga/wal"
)

// newerFormat rewrites every frame of dir's log in a frame format one
// newer than this build writes, with valid checksums: the log of a newer
// version.
func newerFormat(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "wal"))
	if err != nil {
		t.Fatal(err)
	}
	tab := crc32.MakeTable(crc32.Castagnoli)
	for _, e := range ents {
		if len(e.Name()) != 20 {
			continue
		}
		p := filepath.Join(dir, "wal", e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(b); {
			size, n := binary.Uvarint(b[off:])
			if n <= 0 || size < wal.HeaderSize || off+n+int(size) > len(b) {
				t.Fatalf("%s: no frame at offset %d", p, off)
			}
			f := b[off+n : off+n+int(size)]
			f[0] = wal.FormatVersion + 1
			crc := crc32.Update(0, tab, f[:9])
			binary.BigEndian.PutUint32(f[9:13], crc32.Update(crc, tab, f[wal.HeaderSize:]))
			off += n + int(size)
		}
		if err := os.WriteFile(p, b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
}

// A log written by a newer version is no damage to repair: every command
// refuses, saying so, and leaves every file as it was. (Taken for
// corruption, `wal repair` removed every segment of a cleanly closed one
// without --force, and --force cut a crashed one to nothing.)
func TestLogOfANewerVersionIsRefusedAndKept(t *testing.T) {
	for _, crash := range []bool{false, true} {
		for _, cmd := range [][]string{{"status"}, {"show", "a"}, {"recover"}, {"export"}, {"wal", "verify"}, {"wal", "dump"},
			{"wal", "repair", "--dry-run"}, {"wal", "repair"}, {"wal", "repair", "--force"}} {
			dir := manySegments(t, crash)
			newerFormat(t, dir)
			want := exitFailed
			if cmd[len(cmd)-1] == "--dry-run" {
				want = 0 // it says what the real run does: refuse
			}
			out, se := requireUntouched(t, dir, want, cmd...)
			if !strings.Contains(out+se, "newer version") {
				t.Errorf("crashed %v: sagactl %v does not say the log is of a newer version:\n%s%s", crash, cmd, out, se)
			}
		}
	}
}
