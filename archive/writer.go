package archive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/sagaengine/saga/engine"
)

// FS is the file system the Writer writes through: the seam at which
// tests inject failed and observed fsyncs. Errors are returned as the
// os package returns them.
type FS interface {
	// MkdirAll creates dir and its parents, as os.MkdirAll.
	MkdirAll(dir string) error
	// ReadDir lists the names in dir.
	ReadDir(dir string) ([]string, error)
	// Create creates a new file for writing; it fails if name exists.
	Create(name string) (File, error)
	// OpenDir opens a directory, for Sync.
	OpenDir(dir string) (File, error)
}

// File is an open file or directory of an FS.
type File interface {
	Write(p []byte) (int, error)
	Sync() error
	Close() error
}

// OSFS is the operating system's file system.
type OSFS struct{}

func (OSFS) MkdirAll(dir string) error { return os.MkdirAll(dir, 0o755) }

func (OSFS) ReadDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, err
}

func (OSFS) Create(name string) (File, error) {
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
}

func (OSFS) OpenDir(dir string) (File, error) { return os.Open(dir) }

// Options configure a Writer. The zero value works.
type Options struct {
	// FS is where the files go. Default: OSFS.
	FS FS
	// MaxFileSize rotates the file once it holds this many bytes: the
	// batch that crosses it is the file's last (a batch is never split,
	// so a file may be larger by one batch). Default: 64 MiB. The reader
	// holds one file in memory at a time.
	MaxFileSize int64
	// MaxFileRecords rotates the file once it holds this many records
	// (again after the batch that reaches it). Default: 0, no limit.
	MaxFileRecords int
	// Now is the clock that names files. Default: time.Now.
	Now func() time.Time
	// Logger logs file creation and rotation at debug level. Default:
	// slog.Default().
	Logger *slog.Logger
}

// EnsureDefaults fills the unset fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.FS == nil {
		o.FS = OSFS{}
	}
	if o.MaxFileSize == 0 {
		o.MaxFileSize = 64 << 20
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports every problem with the options at once.
func (o *Options) Validate() error {
	var errs []error
	if o.MaxFileSize < 0 {
		errs = append(errs, fmt.Errorf("archive: MaxFileSize %d is negative", o.MaxFileSize))
	}
	if o.MaxFileRecords < 0 {
		errs = append(errs, fmt.Errorf("archive: MaxFileRecords %d is negative", o.MaxFileRecords))
	}
	return errors.Join(errs...)
}

// Suffix ends the name of every archive file.
const Suffix = ".jsonl.zst"

// Writer appends records to the archive files of a directory. It is safe
// for concurrent use; mu serialises Write, Close and every field.
//
// Ordering contract: Write returns nil only once its records are on
// stable storage, the file fsynced, and the directory fsynced when the
// file is new. Only then may the caller remove the sagas from the
// engine. On an error nothing of the batch counts as archived: the
// caller keeps the sagas, and the Writer is poisoned. A batch that
// failed may still reach the file (written, its fsync failed); archiving
// the sagas again then stores two copies, which the reader tells apart
// by (id, seq): see Find.
type Writer struct {
	dir  string
	opts Options
	enc  *zstd.Encoder

	mu      sync.Mutex
	seq     uint64 // the last file's sequence number
	cur     File   // nil until the first Write and after a rotation
	name    string
	size    int64
	records int
	err     error // sticky: ErrPoisoned or ErrClosed
}

// Open prepares a Writer on dir, creating dir if needed. It never appends
// to an existing file: its first Write starts a new file, numbered after
// the files dir holds.
func Open(dir string, opts Options) (*Writer, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	missing := missingDirs(opts.FS, dir)
	if err := opts.FS.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	// A directory MkdirAll created is durable only once its parent is
	// synced: until then a crash can lose it, and with it every file a
	// Write acknowledged (whose sagas the engine then removed).
	for _, d := range missing {
		if err := syncDir(opts.FS, filepath.Dir(d)); err != nil {
			return nil, fmt.Errorf("archive: %w", err)
		}
	}
	names, err := opts.FS.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	w := &Writer{dir: dir, opts: opts}
	for _, n := range names {
		if s, ok := fileSeq(n); ok {
			w.seq = max(w.seq, s)
		}
	}
	w.enc, err = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	return w, nil
}

// fileName names file seq created at t: the zero-padded sequence number
// first, so that names sort in creation order, then the UTC time.
func fileName(seq uint64, t time.Time) string {
	return fmt.Sprintf("%010d-%s%s", seq, t.UTC().Format("20060102T150405.000000000Z"), Suffix)
}

// fileSeq is the sequence number of an archive file's name.
func fileSeq(name string) (uint64, bool) {
	num, _, ok := strings.Cut(name, "-")
	if !ok || len(num) != 10 || !strings.HasSuffix(name, Suffix) {
		return 0, false
	}
	s, err := strconv.ParseUint(num, 10, 64)
	return s, err == nil
}

// Write appends the records as one batch (several, if their lines are
// over maxBatchLines bytes) and returns once they are durable (see the
// Writer's ordering contract). A record's V is set to Version. It fails
// without writing for a record without a saga id or over maxBatchLines
// bytes, and with ctx's error when ctx is done before it starts writing.
func (w *Writer) Write(ctx context.Context, recs ...Record) error {
	var lines []byte
	// starts[i] is where the lines of batch i start, and counts[i] how
	// many records they hold: a Write over maxBatchLines is several
	// batches.
	var starts, counts []int
	for i := range recs {
		r := recs[i]
		if r.Saga.ID == "" {
			return fmt.Errorf("archive: record %d has no saga id", i)
		}
		r.V = Version
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("archive: saga %s: %w", r.Saga.ID, err)
		}
		if len(b)+1 > maxBatchLines {
			return fmt.Errorf("archive: saga %s: its record is %d bytes, over the %d of a batch", r.Saga.ID, len(b)+1, maxBatchLines)
		}
		if len(starts) == 0 || len(lines)-starts[len(starts)-1]+len(b)+1 > maxBatchLines {
			starts, counts = append(starts, len(lines)), append(counts, 0)
		}
		lines = append(append(lines, b...), '\n')
		counts[len(counts)-1]++
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(recs) == 0 {
		return nil
	}
	var batches []byte
	for i, start := range starts {
		end := len(lines)
		if i+1 < len(starts) {
			end = starts[i+1]
		}
		batches = append(batches, encodeBatch(w.enc, lines[start:end], counts[i])...)
	}
	if err := w.append(batches, len(recs)); err != nil {
		w.err = fmt.Errorf("%w: %w", ErrPoisoned, err)
		return fmt.Errorf("archive: %s: %w", w.name, err)
	}
	return nil
}

// append writes the batches of one Write, rotating first if the file is
// full, and syncs.
func (w *Writer) append(batch []byte, n int) error {
	if w.cur != nil && (w.size >= w.opts.MaxFileSize || (w.opts.MaxFileRecords > 0 && w.records >= w.opts.MaxFileRecords)) {
		// Every batch in it is synced already: closing loses nothing.
		err := w.cur.Close()
		w.opts.Logger.Debug("archive: rotated", "file", w.name, "bytes", w.size, "records", w.records)
		w.cur = nil
		if err != nil {
			return err
		}
	}
	created := false
	if w.cur == nil {
		w.seq++
		w.name = filepath.Join(w.dir, fileName(w.seq, w.opts.Now()))
		f, err := w.opts.FS.Create(w.name)
		if err != nil {
			return err
		}
		w.cur, w.size, w.records, created = f, 0, 0, true
		w.opts.Logger.Debug("archive: new file", "file", w.name)
	}
	if _, err := w.cur.Write(batch); err != nil {
		return err
	}
	w.size += int64(len(batch))
	w.records += n
	if err := w.cur.Sync(); err != nil {
		return err
	}
	if created {
		// The file's name is durable only once its directory is synced.
		return w.syncDir()
	}
	return nil
}

// missingDirs lists dir and those of its parents that do not exist, dir
// first: what MkdirAll(dir) creates.
func missingDirs(fsys FS, dir string) []string {
	var missing []string
	for p := filepath.Clean(dir); ; {
		d, err := fsys.OpenDir(p)
		if err == nil {
			d.Close()
			return missing
		}
		if !errors.Is(err, os.ErrNotExist) {
			return missing // MkdirAll reports it
		}
		missing = append(missing, p)
		parent := filepath.Dir(p)
		if parent == p {
			return missing
		}
		p = parent
	}
}

func (w *Writer) syncDir() error { return syncDir(w.opts.FS, w.dir) }

func syncDir(fsys FS, dir string) error {
	d, err := fsys.OpenDir(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	return errors.Join(err, d.Close())
}

// Close closes the current file (each batch in it is synced already).
// Write after Close returns ErrClosed.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if errors.Is(w.err, ErrClosed) {
		return nil
	}
	w.err = ErrClosed
	var err error
	if w.cur != nil {
		err = w.cur.Close()
		w.cur = nil
	}
	return errors.Join(err, w.enc.Close())
}

// Files lists the archive files of dir in the order they were written.
func Files(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range ents {
		if _, ok := fileSeq(e.Name()); ok && e.Type().IsRegular() {
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	return files, nil // os.ReadDir sorts by name: by sequence number
}

// Archive makes a Writer an engine.Archiver: the sagas become one batch
// (Write), durable when it returns, so the engine removes them only once
// they are on disk.
func (w *Writer) Archive(ctx context.Context, sagas []engine.ArchivedSaga) error {
	recs := make([]Record, len(sagas))
	for i, s := range sagas {
		recs[i] = NewRecord(s.Status, s.History)
	}
	return w.Write(ctx, recs...)
}

var _ engine.Archiver = (*Writer)(nil)
