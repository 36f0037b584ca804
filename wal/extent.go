package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

// extentFile is the name, in the log's directory, of the durable record of
// how far the log reached. tidwall/wal ignores names shorter than 20 bytes.
const extentFile = "EXTENT"

// Extent is the log's durable record of its own reach, kept in the file
// EXTENT beside the segments. Without it a log whose segment files vanished
// (unlinked under a running engine, or removed by hand) cannot be told from
// a new one. It is rewritten (temp file, fsync, rename, directory fsync)
// only when the set of segments changes, at Open and at Close, never on
// the commit path:
//
//   - when a new tail segment is created, and before TruncateBack;
//   - at Open, after any repair, with Clean false;
//   - at Close of a healthy log, with Clean true and the exact last index.
type Extent struct {
	// TailStart is the first index of the tail segment when the extent was
	// written: a log whose last segment starts before it lost its tail.
	TailStart uint64 `json:"tail_start"`
	// Last is an index the log held when the extent was written: every
	// record up to it was durable. Exact when Clean.
	Last uint64 `json:"last"`
	// Clean is true when a Close wrote the extent: the log ends at Last
	// exactly, and nothing was appended since.
	Clean bool `json:"clean"`
}

// extentSize is the encoded size: magic, TailStart, Last, Clean, CRC32C.
const extentSize = 8 + 8 + 8 + 1 + 4

var extentMagic = [8]byte{'s', 'a', 'g', 'a', 'e', 'x', 't', '1'}

func (x Extent) encode() []byte {
	b := make([]byte, 0, extentSize)
	b = append(b, extentMagic[:]...)
	b = binary.BigEndian.AppendUint64(b, x.TailStart)
	b = binary.BigEndian.AppendUint64(b, x.Last)
	clean := byte(0)
	if x.Clean {
		clean = 1
	}
	b = append(b, clean)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// ErrBadExtent is returned by Open, Verify and Plan when the EXTENT file
// exists but cannot be read: the log's reach is unknown, and nothing is
// changed.
var ErrBadExtent = errors.New("wal: the EXTENT file is damaged")

// ReadExtent reads the extent of the log in dir; nil when the log has none
// (a new log, or one written before extents existed).
func ReadExtent(dir string) (*Extent, error) {
	b, err := os.ReadFile(filepath.Join(dir, extentFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("wal: read %s: %w", extentFile, err)
	}
	if len(b) != extentSize || [8]byte(b[:8]) != extentMagic ||
		crc32.Checksum(b[:extentSize-4], castagnoli) != binary.BigEndian.Uint32(b[extentSize-4:]) || b[24] > 1 {
		return nil, fmt.Errorf("%w: %s in %s (%d bytes) fails its checksum; restore it from a backup, or remove it to accept "+
			"the log as it is without the check that no acknowledged record is missing", ErrBadExtent, extentFile, dir, len(b))
	}
	return &Extent{
		TailStart: binary.BigEndian.Uint64(b[8:16]),
		Last:      binary.BigEndian.Uint64(b[16:24]),
		Clean:     b[24] == 1,
	}, nil
}

// writeExtent replaces the EXTENT file atomically and durably (unless
// noSync, for tests and benchmarks that skip every fsync).
func writeExtent(dir string, x Extent, noSync bool) error {
	tmp := filepath.Join(dir, extentFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("wal: write %s: %w", extentFile, err)
	}
	_, err = f.Write(x.encode())
	if err == nil && !noSync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, extentFile))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("wal: write %s: %w", extentFile, err)
	}
	if noSync {
		return nil
	}
	return syncDir(dir)
}
