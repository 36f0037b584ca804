package archive

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/sagaengine/saga/internal/testctx"
	"github.com/sagaengine/saga/internal/torn"
)

// threeBatches writes batches {a}, {b c}, {d} to one file and returns it
// with the offsets where the second and third batches start.
func threeBatches(t *testing.T) (name string, b2, b3 int64) {
	t.Helper()
	dir := t.TempDir()
	w := openWriter(t, dir, Options{})
	size := func() int64 {
		fi, err := os.Stat(files(t, dir)[0])
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	write(t, w, rec("a", 1))
	b2 = size()
	write(t, w, rec("b", 1), rec("c", 1))
	b3 = size()
	write(t, w, rec("d", 1))
	w.Close()
	return files(t, dir)[0], b2, b3
}

// A crash mid-Write leaves a file cut inside its last batch. Cut at every
// byte of the last batch: strict reading yields the earlier batches then
// ErrTornTail; tolerant reading yields the earlier batches, no error.
func TestTornTailIsReportedOrIgnored(t *testing.T) {
	name, b2, b3 := threeBatches(t)
	whole, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	cut := name + ".cut"
	for n := b3 + 1; n < int64(len(whole)); n++ {
		if err := os.WriteFile(cut, whole[:n], 0o644); err != nil {
			t.Fatal(err)
		}
		ids, err := readAll(t, cut, ReadOptions{})
		if !errors.Is(err, ErrTornTail) || !slices.Equal(ids, []string{"a", "b", "c"}) {
			t.Fatalf("cut at %d of %d: read %v, %v; want a b c then ErrTornTail", n, len(whole), ids, err)
		}
		ids, err = readAll(t, cut, ReadOptions{TolerateTornTail: true})
		if err != nil || !slices.Equal(ids, []string{"a", "b", "c"}) {
			t.Fatalf("cut at %d, tolerant: read %v, %v; want a b c", n, ids, err)
		}
	}
	// A batch is all or nothing: cut inside the second, none of it.
	os.WriteFile(cut, whole[:b2+(b3-b2)/2], 0o644)
	if ids, err := readAll(t, cut, ReadOptions{}); !errors.Is(err, ErrTornTail) || !slices.Equal(ids, []string{"a"}) {
		t.Fatalf("cut inside batch 2: %v, %v", ids, err)
	}
	// A file that grew before its data was written ends in zeros.
	os.WriteFile(cut, append(whole[:b3:b3], make([]byte, 100)...), 0o644)
	if ids, err := readAll(t, cut, ReadOptions{}); !errors.Is(err, ErrTornTail) || !slices.Equal(ids, []string{"a", "b", "c"}) {
		t.Fatalf("zeros after batch 2: %v, %v", ids, err)
	}
}

func TestCorruptionIsReportedNotSkipped(t *testing.T) {
	name, b2, b3 := threeBatches(t)
	whole, _ := os.ReadFile(name)
	plain, _ := zstd.NewWriter(nil)
	defer plain.Close()
	for _, tc := range []struct {
		name string
		data []byte
		want []string
	}{
		{"a flipped byte in batch 2", flip(whole, (b2+b3)/2), []string{"a"}},
		{"a bad header after batch 1", flip(whole, b2), []string{"a"}},
		{"not an archive", []byte("hello, this is not an archive file\n"), nil},
		{"plain zstd", plain.EncodeAll([]byte(`{"v":1,"saga":{"id":"a"}}`+"\n"), nil), nil},
		{"empty", nil, nil}, // no batches: not an error
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := t.TempDir() + "/f" + Suffix
			os.WriteFile(p, tc.data, 0o644)
			ids, err := readAll(t, p, ReadOptions{TolerateTornTail: true})
			if !slices.Equal(ids, tc.want) || (tc.data != nil) != errors.Is(err, ErrCorrupt) {
				t.Fatalf("read %v, %v; want %v then ErrCorrupt", ids, err, tc.want)
			}
		})
	}
}

func flip(b []byte, at int64) []byte {
	c := slices.Clone(b)
	c[at] ^= 0xff
	return c
}

func TestUnknownVersionIsRefused(t *testing.T) {
	dir := t.TempDir()
	w := openWriter(t, dir, Options{})
	write(t, w, rec("a", 1))
	w.Close()
	// Rewrite the file's one line with version 2, in a valid batch.
	r := rec("a", 1)
	r.V = 2
	line, _ := json.Marshal(r)
	enc, _ := zstd.NewWriter(nil)
	defer enc.Close()
	if err := os.WriteFile(files(t, dir)[0], encodeBatch(enc, append(line, '\n'), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readAll(t, dir, ReadOptions{}); !errors.Is(err, ErrVersion) {
		t.Fatalf("read of a version 2 line: %v", err)
	}
}

func TestFindReturnsTheLatestCopy(t *testing.T) {
	dir := t.TempDir()
	w := openWriter(t, dir, Options{MaxFileRecords: 1})
	write(t, w, rec("a", 3))
	write(t, w, rec("b", 1))
	write(t, w, rec("a", 5)) // archived again, later
	write(t, w, rec("a", 4))
	w.Close()
	ctx := testctx.New(t)
	r, err := Find(ctx, dir, "a", ReadOptions{})
	if err != nil || r.Saga.Seq != 5 {
		t.Fatalf("Find a: seq %d, %v; want 5", r.Saga.Seq, err)
	}
	if _, err := Find(ctx, dir, "zz", ReadOptions{}); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "zz") {
		t.Fatalf("Find of an unknown id: %v", err)
	}
	if _, err := Find(ctx, dir+"/missing", "a", ReadOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Find in a missing file: %v", err)
	}
}

// bigLastBatch writes batches {a}, {b c} and a last one {d} that spans
// several sectors, and returns the file's bytes and where {d} starts.
func bigLastBatch(t *testing.T) (whole []byte, last int) {
	t.Helper()
	dir := t.TempDir()
	w := openWriter(t, dir, Options{})
	write(t, w, rec("a", 1))
	write(t, w, rec("b", 1), rec("c", 1))
	fi, err := os.Stat(files(t, dir)[0])
	if err != nil {
		t.Fatal(err)
	}
	d := rec("d", 1)
	rng := rand.New(rand.NewPCG(1, 2))
	noise := make([]byte, 6000)
	for i := range noise {
		noise[i] = "0123456789abcdef"[rng.IntN(16)]
	}
	d.Saga.Meta = map[string]string{"noise": string(noise)} // compresses to a few sectors
	write(t, w, d)
	w.Close()
	whole, err = os.ReadFile(files(t, dir)[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(whole)-int(fi.Size()) < 4*torn.SectorSize {
		t.Fatalf("the last batch is %d bytes: want several sectors", len(whole)-int(fi.Size()))
	}
	return whole, int(fi.Size())
}

// A crash can leave the file at its full length with some sectors of its
// last Write never written: they read as zeros. That is a torn tail, as a
// cut is (wal.Verify says the same of the log): the earlier batches are
// read, and TolerateTornTail ends the file there. Damage that is not
// what a tear leaves stays ErrCorrupt.
func TestZeroedSectorsOfTheLastBatchAreATornTail(t *testing.T) {
	whole, last := bigLastBatch(t)
	p := filepath.Join(t.TempDir(), "f"+Suffix)
	check := func(what string, data []byte, want error) {
		t.Helper()
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		ids, err := readAll(t, p, ReadOptions{})
		if !errors.Is(err, want) || !slices.Equal(ids, []string{"a", "b", "c"}) {
			t.Fatalf("%s: read %v, %v; want a b c then %v", what, ids, err, want)
		}
		ids, err = readAll(t, p, ReadOptions{TolerateTornTail: true})
		if want == ErrTornTail && (err != nil || !slices.Equal(ids, []string{"a", "b", "c"})) {
			t.Fatalf("%s, tolerant: read %v, %v; want a b c", what, ids, err)
		}
	}
	// Every sector from some one on never written (the header's too).
	for s := (last/torn.SectorSize + 1) * torn.SectorSize; s < len(whole); s += torn.SectorSize {
		data := slices.Clone(whole)
		clear(data[s:])
		check(fmt.Sprintf("zeros from offset %d of %d (last batch at %d)", s, len(whole), last), data, ErrTornTail)
	}
	// One sector in the middle of the last batch never written.
	for s := (last/torn.SectorSize + 1) * torn.SectorSize; s+torn.SectorSize < len(whole); s += torn.SectorSize {
		data := slices.Clone(whole)
		clear(data[s : s+torn.SectorSize])
		check(fmt.Sprintf("sector at %d zeroed", s), data, ErrTornTail)
	}
	// A header cut after each of its bytes, zeros after.
	for n := 1; n < headerSize; n++ {
		data := slices.Clone(whole)
		clear(data[last+n:])
		check(fmt.Sprintf("header cut after %d bytes, then zeros", n), data, ErrTornTail)
	}
	// Not a tear: a flipped byte, a few zeroed bytes, bytes after the batch.
	check("a flipped byte in the last batch", flip(whole, int64(last+headerSize+100)), ErrCorrupt)
	data := slices.Clone(whole)
	clear(data[last+headerSize+100 : last+headerSize+104])
	check("four zeroed bytes in the last batch", data, ErrCorrupt)
	data = slices.Clone(whole)
	clear(data[last+headerSize:])
	check("a zeroed batch, then a byte after its end", append(data, 7), ErrCorrupt)
}
