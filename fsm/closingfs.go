package fsm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// closingFS is the filesystem the store gives Pebble: it keeps every file
// Pebble opens until Pebble closes it, so that Close can release whatever
// Pebble left open. Pebble's vfs.syncingFile returns from Close on a failed
// fsync without closing its file (after an EIO every fsync fails again), so
// after a disk error its WAL file would stay open, and the filesystem busy,
// until the process exits.
type closingFS struct {
	vfs.FS
	mu   sync.Mutex
	open map[*closingFile]struct{}
}

func newClosingFS(fs vfs.FS) *closingFS {
	return &closingFS{FS: fs, open: map[*closingFile]struct{}{}}
}

type closingFile struct {
	vfs.File
	fs   *closingFS
	once sync.Once
	err  error
}

func (f *closingFile) Close() error {
	f.once.Do(func() {
		f.err = f.File.Close()
		f.fs.mu.Lock()
		delete(f.fs.open, f)
		f.fs.mu.Unlock()
	})
	return f.err
}

func (fs *closingFS) track(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	cf := &closingFile{File: f, fs: fs}
	fs.mu.Lock()
	fs.open[cf] = struct{}{}
	fs.mu.Unlock()
	return cf, nil
}

func (fs *closingFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return fs.track(fs.FS.Create(name, c))
}

func (fs *closingFS) Open(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	return fs.track(fs.FS.Open(name, opts...))
}

func (fs *closingFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return fs.track(fs.FS.OpenReadWrite(name, c, opts...))
}

func (fs *closingFS) OpenDir(name string) (vfs.File, error) {
	return fs.track(fs.FS.OpenDir(name))
}

func (fs *closingFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return fs.track(fs.FS.ReuseForWrite(oldname, newname, c))
}

// closeAll closes every file still open (after Pebble's Close) and returns
// how many there were.
func (fs *closingFS) closeAll() int {
	fs.mu.Lock()
	left := make([]*closingFile, 0, len(fs.open))
	for f := range fs.open {
		left = append(left, f)
	}
	fs.mu.Unlock()
	for _, f := range left {
		_ = f.Close()
	}
	return len(left)
}

// readOnlyFS is the filesystem of a read-only store. Pebble locks its
// directory even to read it, through a LOCK file it opens for writing,
// creating it (os.Create) when it is missing: a read-only open would leave
// a file behind, and fail on a read-only filesystem (a mounted backup) or
// a LOCK file the user may not write. Where the file is missing no Pebble
// holds it, so there is nothing to exclude and nothing is created; an
// existing one is locked as usual or, where it cannot be opened for
// writing, read-locked (which a writer's lock still excludes). The
// callers hold the data directory's own lock besides.
type readOnlyFS struct{ vfs.FS }

func (fs readOnlyFS) Lock(name string) (io.Closer, error) {
	if _, err := fs.FS.Stat(name); errors.Is(err, os.ErrNotExist) {
		return nopCloser{}, nil
	}
	c, err := fs.FS.Lock(name)
	if err == nil || fs.FS != vfs.Default || !(errors.Is(err, syscall.EROFS) || errors.Is(err, os.ErrPermission)) {
		return c, err
	}
	f, oerr := os.Open(name)
	if oerr != nil {
		return nil, err
	}
	spec := syscall.Flock_t{Type: syscall.F_RDLCK, Whence: io.SeekStart}
	if lerr := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &spec); lerr != nil {
		f.Close()
		return nil, fmt.Errorf("fsm: read-lock %s: %w", name, lerr)
	}
	return f, nil // closing it releases the lock
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }
