package fsm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// A damaged block of a state file is an error of the call that reads it,
// never a panic: Pebble's default reaction to a checksum mismatch is
// Logger.Fatalf, which (here, as Pebble requires) does not return, so one
// flipped bit in an sstable brought the process down, from OpenStore or
// from any later read.
func TestCorruptSSTableIsAnErrorNotAPanic(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, StoreOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	idx := uint64(1)
	for i := range 300 {
		id := fmt.Sprintf("s%04d", i)
		ids = append(ids, id)
		if _, err := s.ApplyBatch(entries(t, idx, startRec(id, "", "a", "b"))); err != nil {
			t.Fatal(err)
		}
		idx++
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	if len(ssts) == 0 {
		t.Fatal("no sstable after Close")
	}
	for _, at := range []float64{0.05, 0.25, 0.5, 0.75, 0.95} {
		t.Run(fmt.Sprint(at), func(t *testing.T) {
			img := t.TempDir()
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				b, err := os.ReadFile(filepath.Join(dir, e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				if strings.HasSuffix(e.Name(), ".sst") {
					b[int(float64(len(b))*at)] ^= 0x5a
				}
				if err := os.WriteFile(filepath.Join(img, e.Name()), b, 0o640); err != nil {
					t.Fatal(err)
				}
			}
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("a damaged sstable panicked: %v", r)
				}
			}()
			s, err := OpenStore(img, StoreOptions{Logger: quiet})
			if err != nil {
				if !pebble.IsCorruptionError(err) {
					t.Fatalf("open of a damaged store: %v, want a corruption error", err)
				}
				return
			}
			defer s.CloseNoFlush()
			failed := 0
			for _, id := range ids {
				_, err := s.Get(id)
				if err == nil {
					_, err = s.History(id)
				}
				if err != nil {
					if !pebble.IsCorruptionError(err) {
						t.Fatalf("get %s: %v, want a corruption error", id, err)
					}
					failed++
				}
			}
			if _, err := s.CountByState(); err != nil && !pebble.IsCorruptionError(err) {
				t.Fatalf("count: %v, want a corruption error", err)
			}
			t.Logf("open succeeded; %d of %d reads failed", failed, len(ids))
		})
	}
}
