package fsm

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestFamilyFindsEachPrefix: family, a switch, agrees with the list of
// families it stands for.
func TestFamilyFindsEachPrefix(t *testing.T) {
	for i, p := range families {
		if got := family(append(append([]byte(nil), p...), "id"...)); got != i {
			t.Errorf("family(%q…) = %d, want %d", p, got, i)
		}
	}
	for _, k := range []string{"", "s", "h/x", "q/", "q/z/x", "q/a", "x/t/x", "x/s", "d/x", "g/x", "m"} {
		if got := family([]byte(k)); got != len(families) {
			t.Errorf("family(%q) = %d, want %d (none)", k, got, len(families))
		}
	}
}

// TestSortedWriterWritesInKeyOrder: a sortedWriter gives the batch its
// writes in key order, and writes of one key in the order made, so the
// batch holds what writing them directly would.
func TestSortedWriterWritesInKeyOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	prefixes := []string{"k/", "m/", "q/a/", "q/s/", "q/r/", "s/", "x/s/", "d/", "zz"}
	db, err := pebble.Open("db", &pebble.Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	direct, sorted := db.NewIndexedBatch(), db.NewIndexedBatch()
	var w sortedWriter
	for i := range 3000 {
		k := []byte(prefixes[rng.IntN(len(prefixes))] + string(rune('a'+rng.IntN(26))) + string(rune('a'+rng.IntN(26))))
		v := []byte{byte(i)}
		if rng.IntN(3) == 0 {
			_ = direct.Delete(k, nil)
			_ = w.Delete(k, nil)
		} else {
			_ = direct.Set(k, v, nil)
			_ = w.Set(k, v, nil)
		}
	}
	if err := w.writeTo(sorted); err != nil {
		t.Fatal(err)
	}
	// In key order: each key after the one before.
	var prev []byte
	r := sorted.Reader()
	for {
		_, k, _, ok, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if bytes.Compare(k, prev) < 0 {
			t.Fatalf("key %q written after %q", k, prev)
		}
		prev = append(prev[:0], k...)
	}
	// The same contents.
	read := func(b *pebble.Batch) map[string]string {
		it, err := b.NewIter(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer it.Close()
		m := map[string]string{}
		for it.First(); it.Valid(); it.Next() {
			m[string(it.Key())] = string(it.Value())
		}
		return m
	}
	got, want := read(sorted), read(direct)
	if len(got) != len(want) {
		t.Fatalf("%d keys after a sortedWriter, %d written directly", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("key %q: %q after a sortedWriter, %q written directly", k, got[k], v)
		}
	}
}
