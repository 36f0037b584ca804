package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/internal/testctx"
)

func rec(id string, seq uint64) Record {
	return Record{Saga: Saga{SagaJSON: admin.SagaJSON{ID: id, Definition: "order", Version: 1, State: "COMPLETED",
		CreatedAt: time.Unix(100, 0).UTC(), UpdatedAt: time.Unix(200, 0).UTC()}, Seq: seq, Meta: map[string]string{"tenant": "t1"}},
		History: []admin.HistoryJSON{{Seq: 1, Index: 7, At: time.Unix(100, 0).UTC(), Kind: "SagaStarted"}}}
}

// readAll reads path and returns the ids read and the error that ended it.
func readAll(t *testing.T, path string, opts ReadOptions) ([]string, error) {
	t.Helper()
	var ids []string
	for r, err := range Read(testctx.New(t), path, opts) {
		if err != nil {
			return ids, err
		}
		ids = append(ids, r.Saga.ID)
	}
	return ids, nil
}

func openWriter(t *testing.T, dir string, opts Options) *Writer {
	t.Helper()
	w, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func write(t *testing.T, w *Writer, recs ...Record) {
	t.Helper()
	if err := w.Write(testctx.New(t), recs...); err != nil {
		t.Fatal(err)
	}
}

func files(t *testing.T, dir string) []string {
	t.Helper()
	fs, err := Files(dir)
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestRecordsReadBackAsWritten(t *testing.T) {
	dir := t.TempDir()
	w := openWriter(t, dir, Options{})
	want := []Record{rec("a", 3), rec("b", 4), rec("c", 5)}
	write(t, w, want[:2]...)
	write(t, w, want[2])
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var got []Record
	for r, err := range Read(testctx.New(t), dir, ReadOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	for i := range want {
		want[i].V = Version
	}
	if g, w := mustJSON(t, got), mustJSON(t, want); g != w {
		t.Fatalf("read back\n%s\nwant\n%s", g, w)
	}
	if n := len(files(t, dir)); n != 1 {
		t.Fatalf("%d files, want 1", n)
	}
}

// A file is a plain zstd stream of JSON lines to any zstd decoder: the
// batch headers are skippable frames.
func TestFileIsAZstdStreamOfJSONLines(t *testing.T) {
	dir := t.TempDir()
	w := openWriter(t, dir, Options{})
	write(t, w, rec("a", 1))
	write(t, w, rec("b", 1), rec("c", 1))
	w.Close()
	f, err := os.Open(files(t, dir)[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := zstd.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	b, err := io.ReadAll(d)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], `{"v":1,"saga":{"id":"a",`) {
		t.Fatalf("zstd stream holds %d lines: %q", len(lines), b)
	}
}

func TestFilesRotateBySizeAndByCount(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  Options
		files int
	}{
		{"count", Options{MaxFileRecords: 2}, 3}, // batches of 1: 2+2+1
		{"size", Options{MaxFileSize: 1}, 5},     // every batch crosses it
		{"none", Options{}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			w := openWriter(t, dir, tc.opts)
			var want []string
			for i := range 5 {
				id := fmt.Sprint("s", i)
				write(t, w, rec(id, 1))
				want = append(want, id)
			}
			w.Close()
			fs := files(t, dir)
			if len(fs) != tc.files {
				t.Fatalf("%d files %v, want %d", len(fs), fs, tc.files)
			}
			for _, f := range fs {
				if _, err := readAll(t, f, ReadOptions{}); err != nil {
					t.Fatalf("rotated file %s: %v", f, err)
				}
			}
			if got, err := readAll(t, dir, ReadOptions{}); err != nil || !slices.Equal(got, want) {
				t.Fatalf("directory read %v, %v; want %v", got, err, want)
			}
		})
	}
}

// A new Writer never appends to an old file: it numbers its files after
// the directory's, so names still sort in the order written, even when
// the clock went back.
func TestReopenedWriterStartsANewLaterFile(t *testing.T) {
	dir := t.TempDir()
	w := openWriter(t, dir, Options{Now: func() time.Time { return time.Unix(2000, 0) }})
	write(t, w, rec("first", 1))
	w.Close()
	w = openWriter(t, dir, Options{Now: func() time.Time { return time.Unix(1000, 0) }})
	write(t, w, rec("second", 1))
	w.Close()
	fs := files(t, dir)
	if len(fs) != 2 || !strings.HasPrefix(filepath.Base(fs[1]), "0000000002-19700101T001640.000000000Z") {
		t.Fatalf("files %v", fs)
	}
	if got, err := readAll(t, dir, ReadOptions{}); err != nil || !slices.Equal(got, []string{"first", "second"}) {
		t.Fatalf("read %v, %v", got, err)
	}
}

// eventFS records the file system calls that matter to durability, and
// fails the Sync of whatever failSync names ("file" or "dir").
type eventFS struct {
	OSFS
	mu       sync.Mutex
	events   []string
	failSync string
}

var errInjected = errors.New("injected EIO")

func (f *eventFS) log(e string) {
	f.mu.Lock()
	f.events = append(f.events, e)
	f.mu.Unlock()
}

func (f *eventFS) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.events
	f.events = nil
	return e
}

func (f *eventFS) Create(name string) (File, error) {
	f.log("create " + filepath.Base(name)[:10])
	file, err := f.OSFS.Create(name)
	return &eventFile{File: file, fs: f, kind: "file"}, err
}

func (f *eventFS) OpenDir(dir string) (File, error) {
	file, err := f.OSFS.OpenDir(dir)
	return &eventFile{File: file, fs: f, kind: "dir"}, err
}

type eventFile struct {
	File
	fs   *eventFS
	kind string
}

func (f *eventFile) Write(p []byte) (int, error) {
	f.fs.log("write " + f.kind)
	return f.File.Write(p)
}

func (f *eventFile) Sync() error {
	f.fs.mu.Lock()
	fail := f.fs.failSync == f.kind
	f.fs.mu.Unlock()
	if fail {
		f.fs.log("sync " + f.kind + " failed")
		return errInjected
	}
	f.fs.log("sync " + f.kind)
	return f.File.Sync()
}

// Write returns once the batch is fsynced, and the directory too when
// the batch starts a file: what the caller's removal relies on.
func TestWriteReturnsOnlyAfterFsync(t *testing.T) {
	fsys := &eventFS{}
	w := openWriter(t, t.TempDir(), Options{FS: fsys, MaxFileRecords: 2})
	for _, step := range []struct {
		recs []Record
		want []string
	}{
		{[]Record{rec("a", 1)}, []string{"create 0000000001", "write file", "sync file", "sync dir"}},
		{[]Record{rec("b", 1)}, []string{"write file", "sync file"}},
		{[]Record{rec("c", 1)}, []string{"create 0000000002", "write file", "sync file", "sync dir"}}, // rotated
	} {
		write(t, w, step.recs...)
		if got := fsys.take(); !slices.Equal(got, step.want) {
			t.Fatalf("writing %s: %v before Write returned, want %v", step.recs[0].Saga.ID, got, step.want)
		}
	}
}

// A failed fsync fails the Write: the caller must keep the sagas. The
// writer is poisoned, and a new Writer starts a new file.
func TestFailedFsyncFailsTheBatchAndPoisonsTheWriter(t *testing.T) {
	for _, kind := range []string{"file", "dir"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			fsys := &eventFS{failSync: kind}
			w := openWriter(t, dir, Options{FS: fsys})
			ctx := testctx.New(t)
			if err := w.Write(ctx, rec("a", 1)); !errors.Is(err, errInjected) {
				t.Fatalf("Write with a failing %s fsync: %v, want the fsync's error", kind, err)
			}
			if err := w.Write(ctx, rec("b", 1)); !errors.Is(err, ErrPoisoned) || !errors.Is(err, errInjected) {
				t.Fatalf("Write after a failed fsync: %v, want ErrPoisoned wrapping the cause", err)
			}
			w.Close()
			fsys.failSync = ""
			w2 := openWriter(t, dir, Options{FS: fsys})
			write(t, w2, rec("a", 1))
			if n := len(files(t, dir)); n != 2 {
				t.Fatalf("%d files, want the poisoned one and a new one", n)
			}
		})
	}
}

func TestWriteRefusesWithoutWriting(t *testing.T) {
	fsys := &eventFS{}
	w := openWriter(t, t.TempDir(), Options{FS: fsys})
	ctx, cancel := context.WithCancel(testctx.New(t))
	cancel()
	if err := w.Write(ctx, rec("a", 1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Write on a done context: %v", err)
	}
	if err := w.Write(testctx.New(t), rec("", 1)); err == nil {
		t.Fatal("Write of a record without an id succeeded")
	}
	if ev := fsys.take(); len(ev) != 0 {
		t.Fatalf("refused writes touched the disk: %v", ev)
	}
	w.Close()
	if err := w.Write(testctx.New(t), rec("a", 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
}

func TestOptionsValidateReportsEveryProblem(t *testing.T) {
	_, err := Open(t.TempDir(), Options{MaxFileSize: -1, MaxFileRecords: -1})
	if err == nil || !strings.Contains(err.Error(), "MaxFileSize") || !strings.Contains(err.Error(), "MaxFileRecords") {
		t.Fatalf("Open with two bad options: %v", err)
	}
}

// Concurrent Writes each land whole, once, across rotations.
func TestConcurrentWritesLandWholeAndOnce(t *testing.T) {
	dir := t.TempDir()
	w := openWriter(t, dir, Options{MaxFileRecords: 3})
	var wg sync.WaitGroup
	errs := make(chan error, 8*5) // one per Write: no sender blocks
	for g := range 8 {
		wg.Go(func() {
			for i := range 5 {
				errs <- w.Write(testctx.New(t), rec(fmt.Sprint(g, "-", i, "a"), 1), rec(fmt.Sprint(g, "-", i, "b"), 1))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	ids, err := readAll(t, dir, ReadOptions{})
	if err != nil || len(ids) != 80 {
		t.Fatalf("read %d ids, %v; want 80", len(ids), err)
	}
	seen := map[string]bool{}
	for i, id := range ids {
		if seen[id] || (strings.HasSuffix(id, "a") && ids[i+1] != strings.TrimSuffix(id, "a")+"b") {
			t.Fatalf("batch of %s split or doubled: %v", id, ids)
		}
		seen[id] = true
	}
}

// dirSyncFS records the directories whose Sync returned.
type dirSyncFS struct {
	OSFS
	mu     sync.Mutex
	synced []string
}

func (f *dirSyncFS) OpenDir(dir string) (File, error) {
	d, err := f.OSFS.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	return &dirSyncFile{File: d, fs: f, dir: filepath.Clean(dir)}, nil
}

type dirSyncFile struct {
	File
	fs  *dirSyncFS
	dir string
}

func (f *dirSyncFile) Sync() error {
	err := f.File.Sync()
	if err == nil {
		f.fs.mu.Lock()
		f.fs.synced = append(f.fs.synced, f.dir)
		f.fs.mu.Unlock()
	}
	return err
}

// A directory Open creates is durable only once its parent is synced:
// without that, a crash after the first Write returned (and the engine
// removed the sagas) can lose the directory with every file in it. Open
// creates the missing parents too, and each of them needs the same.
func TestACreatedDirectoryIsDurableBeforeTheFirstWriteReturns(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "data", "archive")
	fsys := &dirSyncFS{}
	w := openWriter(t, dir, Options{FS: fsys})
	write(t, w, rec("a", 1))
	fsys.mu.Lock()
	synced := slices.Clone(fsys.synced)
	fsys.mu.Unlock()
	for _, d := range []string{base, filepath.Join(base, "data"), dir} {
		if !slices.Contains(synced, d) {
			t.Errorf("%s was not synced before Write returned (synced: %v)", d, synced)
		}
	}
	// An existing directory: nothing above it is synced again.
	fsys2 := &dirSyncFS{}
	w2 := openWriter(t, dir, Options{FS: fsys2})
	write(t, w2, rec("b", 1))
	if got := fsys2.synced; !slices.Equal(got, []string{dir}) {
		t.Errorf("reopened on an existing directory: synced %v, want only %s", got, dir)
	}
}

// bigRecords returns n records of about size bytes each, incompressible.
func bigRecords(n, size int) []Record {
	rng := rand.New(rand.NewPCG(3, 4))
	recs := make([]Record, n)
	for i := range recs {
		recs[i] = rec(fmt.Sprint("big-", i), 1)
		recs[i].Saga.Input = make([]byte, size)
		for j := range recs[i].Saga.Input {
			recs[i].Saga.Input[j] = byte(rng.Uint32())
		}
	}
	return recs
}

// A Write is acknowledged only if the reader can read it back: one whose
// lines are over what the reader decodes of a batch becomes several
// batches (the engine removes the sagas once Write returns; a batch the
// reader refuses would lose them, and stop every read of the directory
// there). A record over the limit on its own is refused, unwritten.
func TestAWriteOverTheReadersLimitReadsBack(t *testing.T) {
	defer func(l uint64, b int) { maxLines, maxBatchLines = l, b }(maxLines, maxBatchLines)
	maxLines, maxBatchLines = 1<<20, 1<<18
	dir := t.TempDir()
	w := openWriter(t, dir, Options{})
	recs := bigRecords(50, 45<<10) // 60 KiB lines: 3 MB in all
	write(t, w, recs...)
	ids, err := readAll(t, dir, ReadOptions{})
	if err != nil || len(ids) != len(recs) {
		t.Fatalf("read %d of %d records back, %v", len(ids), len(recs), err)
	}
	for i, id := range ids {
		if id != recs[i].Saga.ID {
			t.Fatalf("record %d is %s, want %s", i, id, recs[i].Saga.ID)
		}
	}
	before, err := os.ReadFile(files(t, dir)[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(testctx.New(t), bigRecords(1, 300<<10)...); err == nil || !strings.Contains(err.Error(), "big-0") {
		t.Fatalf("Write of a record over the batch limit: %v, want an error naming it", err)
	}
	if after, _ := os.ReadFile(files(t, dir)[0]); len(after) != len(before) {
		t.Fatalf("the refused Write wrote %d bytes", len(after)-len(before))
	}
	write(t, w, rec("after", 1)) // refused, not poisoned
}

// The same at the real limits (a gigabyte of lines): opt in with
// SAGA_ARCHIVE_BIG=1; it needs about 5 GB of memory.
func TestAWriteOverTheReadersLimitReadsBackAtScale(t *testing.T) {
	if os.Getenv("SAGA_ARCHIVE_BIG") == "" {
		t.Skip("writes a gigabyte: set SAGA_ARCHIVE_BIG=1")
	}
	dir := t.TempDir()
	w := openWriter(t, dir, Options{})
	recs := make([]Record, 100)
	for i := range recs {
		recs[i] = rec(fmt.Sprint("s-", i), 1)
		recs[i].Saga.Input = make([]byte, 8<<20) // the engine's largest input
	}
	write(t, w, recs...)
	if ids, err := readAll(t, dir, ReadOptions{}); err != nil || len(ids) != len(recs) {
		t.Fatalf("read %d of %d records back, %v", len(ids), len(recs), err)
	}
}
