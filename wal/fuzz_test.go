package wal

import (
	"encoding/binary"
	"testing"
)

// FuzzDecodeFrame: the frame decoder never panics, never accepts a frame
// whose checksum does not cover it, and round-trips what appendFrame wrote.
func FuzzDecodeFrame(f *testing.F) {
	f.Add(appendFrame(nil, 1, []byte("hello")), 0)
	f.Add(appendFrame(nil, 1<<40, nil), 16)
	f.Add([]byte{FormatVersion, 0, 0}, 0)
	f.Add(make([]byte, HeaderSize), 0)
	f.Fuzz(func(t *testing.T, frame []byte, max int) {
		idx, p, err := DecodeFrame(frame, max)
		if err != nil {
			return
		}
		again := appendFrame(nil, idx, p)
		if string(again) != string(frame) {
			t.Fatalf("accepted frame %x does not re-encode to itself (%x)", frame, again)
		}
	})
}

// FuzzSegmentReader: parsing arbitrary segment bytes never panics, never
// reads past the data, and only returns verified records.
func FuzzSegmentReader(f *testing.F) {
	seg := func(recs ...[]byte) []byte {
		var out []byte
		for i, r := range recs {
			fr := appendFrame(nil, uint64(i+1), r)
			out = binary.AppendUvarint(out, uint64(len(fr)))
			out = append(out, fr...)
		}
		return out
	}
	f.Add(seg([]byte("a"), []byte("bb")))
	f.Add(append(seg([]byte("a")), 0, 0, 0))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		for off := 0; off < len(data); {
			e, err := parseEntry(data, off, 1<<16)
			if err != nil {
				validFrameAfter(data, off+1, 1, 1<<16)
				return
			}
			if e.end <= off || e.end > len(data) {
				t.Fatalf("entry [%d,%d) outside data of %d bytes", off, e.end, len(data))
			}
			if _, _, err := DecodeFrame(data[e.end-len(e.payload)-HeaderSize:e.end], 0); err != nil {
				t.Fatalf("parseEntry returned an unverifiable record: %v", err)
			}
			off = e.end
		}
	})
}
