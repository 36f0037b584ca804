package archive

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"iter"
	"os"

	"github.com/klauspost/compress/zstd"

	"github.com/sagaengine/saga/internal/torn"
)

// ReadOptions configure reading. The zero value is strict.
type ReadOptions struct {
	// TolerateTornTail ends a file quietly at a torn tail (see
	// ErrTornTail) instead of yielding ErrTornTail. Default: false.
	TolerateTornTail bool
}

// Read yields the records of path, an archive file or a directory of
// them (in the order written, see Files), in the order they were
// written. It stops at the first error, which it yields with a zero
// Record: ErrTornTail, ErrCorrupt, ErrVersion (wrapped, with the file and
// offset), an os error, or ctx's error. Every record yielded before an
// error is intact. Read changes nothing on disk.
func Read(ctx context.Context, path string, opts ReadOptions) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		files := []string{path}
		if fi, err := os.Stat(path); err != nil {
			yield(Record{}, err)
			return
		} else if fi.IsDir() {
			if files, err = Files(path); err != nil {
				yield(Record{}, err)
				return
			}
		}
		dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxLines))
		if err != nil {
			yield(Record{}, fmt.Errorf("archive: %w", err))
			return
		}
		defer dec.Close()
		for _, f := range files {
			if !readFile(ctx, dec, f, opts, yield) {
				return
			}
		}
	}
}

// readFile yields the records of one file; false when the reading ends.
func readFile(ctx context.Context, dec *zstd.Decoder, name string, opts ReadOptions, yield func(Record, error) bool) bool {
	data, err := os.ReadFile(name)
	if err != nil {
		yield(Record{}, err)
		return false
	}
	fail := func(kind error, off int, format string, args ...any) bool {
		if kind == ErrTornTail && opts.TolerateTornTail {
			return true
		}
		yield(Record{}, fmt.Errorf("%w: %s at offset %d: %s", kind, name, off, fmt.Sprintf(format, args...)))
		return false
	}
	for off := 0; off < len(data); {
		if err := ctx.Err(); err != nil {
			yield(Record{}, err)
			return false
		}
		rest := data[off:]
		if allZero(rest) {
			// A crash after the file grew but before its data was
			// written can leave zeros.
			return fail(ErrTornTail, off, "%d zero bytes after the last batch", len(rest))
		}
		h, ok := parseHeader(rest)
		switch {
		case !ok && tornAt(data, off):
			return fail(ErrTornTail, off, "a batch header cut short (%d bytes to the end of the file)", len(rest))
		case !ok && off == 0:
			return fail(ErrCorrupt, off, "not an archive file (no batch header; a file the archive Writer wrote starts with %08x)", batchMagic)
		case !ok:
			return fail(ErrCorrupt, off, "bad batch header")
		case headerSize+int(h.length) > len(rest):
			return fail(ErrTornTail, off, "a batch of %d bytes, %d of them written", headerSize+int(h.length), len(rest))
		}
		frame := rest[headerSize : headerSize+int(h.length)]
		if crc32.Checksum(frame, castagnoli) != h.crc {
			if tornAt(data, off) {
				return fail(ErrTornTail, off, "the last batch (%d bytes) fails its checksum, with a sector of it never written (zeros)", headerSize+int(h.length))
			}
			return fail(ErrCorrupt, off, "batch checksum mismatch")
		}
		lines, err := dec.DecodeAll(frame, nil)
		if err != nil {
			return fail(ErrCorrupt, off, "zstd: %v", err)
		}
		if !bytes.HasSuffix(lines, []byte("\n")) || bytes.Count(lines, []byte("\n")) != int(h.records) {
			return fail(ErrCorrupt, off, "the batch holds %d lines, its header says %d", bytes.Count(lines, []byte("\n")), h.records)
		}
		for i, line := range bytes.SplitAfter(lines[:len(lines)-1], []byte("\n")) {
			r, err := decodeLine(line, fmt.Sprintf("%s at offset %d, line %d", name, off, i+1))
			if !yield(r, err) || err != nil {
				return false
			}
		}
		off += headerSize + int(h.length)
	}
	return true
}

// Find returns the record of saga id in path (a file or a directory).
// When the archive holds several records of the id, it returns the
// latest: that of the saga created last (an id is free again once its
// saga is removed, so a later saga can have it), and of its copies (a
// batch archived again after a failed Write or a crash before removal)
// the one with the highest seq. ErrNotFound when there is none; an error
// of Read when reading fails.
func Find(ctx context.Context, path, id string, opts ReadOptions) (Record, error) {
	var found *Record
	for r, err := range Read(ctx, path, opts) {
		if err != nil {
			return Record{}, err
		}
		if r.Saga.ID == id && (found == nil || later(r.Saga, found.Saga)) {
			found = &r
		}
	}
	if found == nil {
		return Record{}, fmt.Errorf("%w: %s in %s", ErrNotFound, id, path)
	}
	return *found, nil
}

// tornAt reports whether data from off, where no valid batch starts, is
// what a Write that a crash interrupted leaves of its batch, as
// wal.Verify judges the log's tail: a prefix of the batch's header, then
// only zeros (the sectors that never reached the disk), or a batch cut
// short by the end of the file, or a batch of its full length, nothing
// but zeros after it, that fails its checksum with a sector of its frame
// all zeros (at least 16 bytes of it, so that a zero byte or two of
// damage does not pass for a lost sector). Anything else is damage.
func tornAt(data []byte, off int) bool {
	rest := data[off:]
	fixed := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, batchMagic), payloadSize)
	for i := range min(len(fixed), len(rest)) {
		if rest[i] != fixed[i] {
			return allZero(rest[i:])
		}
	}
	if len(rest) < headerSize {
		return true
	}
	length, records := binary.LittleEndian.Uint32(rest[8:]), binary.LittleEndian.Uint32(rest[12:])
	if length == 0 || records == 0 || length > maxFrame {
		// Not a header the Writer writes: its last bytes never landed.
		return allZero(rest[headerSize:])
	}
	end := headerSize + int(length)
	if end > len(rest) {
		return true
	}
	if !allZero(rest[end:]) {
		return false
	}
	return torn.LostSector(data, off+headerSize, off+end)
}

func allZero(b []byte) bool { return torn.AllZero(b) }

// later reports whether a is a later record of a saga id than b, or as
// late: a later saga (created after b's, which was removed before the id
// could start another), or a copy of the same one with as high a seq.
func later(a, b Saga) bool {
	if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
		return c > 0
	}
	return a.Seq >= b.Seq
}
