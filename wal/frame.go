package wal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Frame layout of one record, stored as the data of one tidwall/wal entry
// (which itself prefixes it with a uvarint length):
//
//	offset 0   1 byte   format version (FormatVersion)
//	offset 1   8 bytes  log index, big endian
//	offset 9   4 bytes  CRC32C (Castagnoli) of bytes [0,9) followed by the payload
//	offset 13  payload
//
// The index inside the frame binds a record to its position: a segment file
// renamed, copied or spliced into the wrong place fails verification.
const (
	// FormatVersion is the version byte of every frame this package writes.
	FormatVersion = 1
	// HeaderSize is the number of bytes a frame adds to its payload.
	HeaderSize = 13
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendFrame appends the frame of payload at index to dst.
func appendFrame(dst []byte, index uint64, payload []byte) []byte {
	start := len(dst)
	dst = append(dst, FormatVersion)
	dst = binary.BigEndian.AppendUint64(dst, index)
	dst = append(dst, 0, 0, 0, 0)
	crc := crc32.Update(0, castagnoli, dst[start:start+9])
	crc = crc32.Update(crc, castagnoli, payload)
	binary.BigEndian.PutUint32(dst[start+9:], crc)
	return append(dst, payload...)
}

// DecodeFrame checks a frame and returns its index and payload (a sub-slice
// of frame). It never allocates and never panics, whatever the input.
// maxPayload bounds the payload size; 0 means no bound.
func DecodeFrame(frame []byte, maxPayload int) (index uint64, payload []byte, err error) {
	if len(frame) < HeaderSize {
		return 0, nil, fmt.Errorf("frame of %d bytes is shorter than its %d-byte header", len(frame), HeaderSize)
	}
	if frame[0] > FormatVersion && frameCRCMatches(frame) {
		// Not damage: a whole frame, its checksum valid, of a format this
		// build does not know. A bit flipped in the version byte fails the
		// checksum (it covers that byte) and is damage, as below.
		return 0, nil, fmt.Errorf("%w: frame format version %d (this build reads %d)", ErrNewerFormat, frame[0], FormatVersion)
	}
	if frame[0] != FormatVersion {
		return 0, nil, fmt.Errorf("unknown frame format version %d", frame[0])
	}
	if maxPayload > 0 && len(frame)-HeaderSize > maxPayload {
		return 0, nil, fmt.Errorf("payload of %d bytes exceeds the %d-byte maximum", len(frame)-HeaderSize, maxPayload)
	}
	index = binary.BigEndian.Uint64(frame[1:9])
	want := binary.BigEndian.Uint32(frame[9:13])
	crc := crc32.Update(0, castagnoli, frame[:9])
	crc = crc32.Update(crc, castagnoli, frame[HeaderSize:])
	if crc != want {
		return 0, nil, fmt.Errorf("checksum mismatch (stored %08x, computed %08x)", want, crc)
	}
	return index, frame[HeaderSize:], nil
}

// frameCRCMatches reports whether frame's stored CRC32C is that of its
// header and payload (frame is at least HeaderSize long).
func frameCRCMatches(frame []byte) bool {
	crc := crc32.Update(0, castagnoli, frame[:9])
	crc = crc32.Update(crc, castagnoli, frame[HeaderSize:])
	return crc == binary.BigEndian.Uint32(frame[9:13])
}

// entry is one parsed tidwall entry inside a segment file.
type entry struct {
	offset  int // offset of the uvarint length in the segment
	end     int // one past the last byte
	index   uint64
	payload []byte
}

// parseEntry parses the tidwall entry (uvarint length + frame) at data[off:]
// and verifies its frame. maxFrame bounds the frame length read from the
// uvarint before anything is sliced or allocated.
func parseEntry(data []byte, off, maxFrame int) (entry, error) {
	size, n := binary.Uvarint(data[off:])
	if n <= 0 {
		return entry{}, fmt.Errorf("unreadable length prefix")
	}
	if size > uint64(maxFrame) {
		return entry{}, fmt.Errorf("length prefix %d exceeds the maximum frame size %d", size, maxFrame)
	}
	if uint64(len(data)-off-n) < size {
		return entry{}, fmt.Errorf("record of %d bytes runs past the end of the segment", size)
	}
	start := off + n
	end := start + int(size)
	idx, payload, err := DecodeFrame(data[start:end], 0)
	if err != nil {
		return entry{}, err
	}
	return entry{offset: off, end: end, index: idx, payload: payload}, nil
}

// uvarintLen is the encoded size of x as a uvarint.
func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}
