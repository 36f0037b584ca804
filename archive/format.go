package archive

import (
	"github.com/klauspost/compress/zstd"

	"encoding/binary"
	"errors"
	"hash/crc32"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrTornTail is returned by the reader for a file that ends inside a
	// batch: the last Write of a process that crashed before it returned.
	// The records before it are intact; the torn batch was never
	// acknowledged. ReadOptions.TolerateTornTail ends the file there
	// instead.
	ErrTornTail = errors.New("archive: torn tail")
	// ErrCorrupt is returned by the reader for bytes that are not what the
	// Writer writes: a bad checksum, a bad frame header, a line that is
	// not a record, or a file that is not an archive at all.
	ErrCorrupt = errors.New("archive: corrupt")
	// ErrVersion is returned by the reader for a record of a format
	// version it does not know.
	ErrVersion = errors.New("archive: unknown record version")
	// ErrNotFound is returned by Find when no record has the id.
	ErrNotFound = errors.New("archive: saga not found")
	// ErrPoisoned is returned by Write after a write or fsync failed: the
	// writer refuses further writes (after a failed fsync the page cache
	// may have dropped the data; writing on would hide the loss). Open a
	// new Writer, which starts a new file.
	ErrPoisoned = errors.New("archive: writer poisoned by an earlier failure")
	// ErrClosed is returned by Write after Close.
	ErrClosed = errors.New("archive: writer closed")
)

// A file is a sequence of batches, one per Write. A batch is a zstd
// skippable frame (which zstd tools skip) holding the batch's header,
// then the zstd frame of its lines:
//
//	magic    uint32 LE  0x184D2A5A (skippable frame, user nibble 0xA)
//	size     uint32 LE  12
//	length   uint32 LE  the length in bytes of the zstd frame that follows
//	records  uint32 LE  the number of lines in it
//	crc      uint32 LE  CRC-32C (Castagnoli) of that zstd frame
//	frame    length bytes: one zstd frame (with its own content checksum)
const (
	batchMagic  = 0x184D2A5A
	headerSize  = 20
	payloadSize = headerSize - 8
	// maxFrame bounds a frame's length so that a corrupt header does not
	// make the reader allocate gigabytes.
	maxFrame = 1 << 30
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// maxLines bounds the decoded lines of a batch the reader accepts, so
// that a damaged frame cannot make it allocate more. maxBatchLines
// bounds those of a batch the Writer writes, well below (zstd can grow
// incompressible data a little): every batch it acknowledges is one the
// reader reads. A Write of more is cut into several batches. Variables
// for the tests.
var (
	maxLines      uint64 = maxFrame
	maxBatchLines        = maxFrame / 4
)

type batchHeader struct {
	length, records, crc uint32
}

func (h batchHeader) append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, batchMagic)
	b = binary.LittleEndian.AppendUint32(b, payloadSize)
	b = binary.LittleEndian.AppendUint32(b, h.length)
	b = binary.LittleEndian.AppendUint32(b, h.records)
	return binary.LittleEndian.AppendUint32(b, h.crc)
}

// parseHeader reads a header; ok is false when b is not one the Writer
// writes (a batch has a record, and its frame a byte, at least: a header
// whose last fields are zeros is one whose end never reached the disk).
func parseHeader(b []byte) (h batchHeader, ok bool) {
	if len(b) < headerSize || binary.LittleEndian.Uint32(b) != batchMagic || binary.LittleEndian.Uint32(b[4:]) != payloadSize {
		return h, false
	}
	h = batchHeader{binary.LittleEndian.Uint32(b[8:]), binary.LittleEndian.Uint32(b[12:]), binary.LittleEndian.Uint32(b[16:])}
	return h, h.length > 0 && h.records > 0 && h.length <= maxFrame
}

// encodeBatch is the batch of n lines, each ending in a newline.
func encodeBatch(enc *zstd.Encoder, lines []byte, n int) []byte {
	frame := enc.EncodeAll(lines, nil)
	h := batchHeader{length: uint32(len(frame)), records: uint32(n), crc: crc32.Checksum(frame, castagnoli)}
	return append(h.append(make([]byte, 0, headerSize+len(frame))), frame...)
}
