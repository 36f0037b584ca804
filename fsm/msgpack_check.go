package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// errTruncated: a length or count in the input promises more than is there.
var errTruncated = errors.New("msgpack: a length runs past the end of the input")

// checkMsgpack walks the first msgpack value of b and checks that every
// length and element count fits in what remains. msgpack's decoder trusts
// declared lengths: a 10-byte input declaring a 3 GB string made it
// allocate 3 GB (found by FuzzDecodeRecord), and a deeply nested value
// overflows its recursive Skip. Checked first, decoding bytes from a
// damaged log or store costs memory linear in their size and bounded
// stack.
func checkMsgpack(b []byte) error {
	_, err := valueEnd(b, 0)
	return err
}

// valueEnd walks the msgpack value that starts at b[p] with the checks of
// checkMsgpack and returns the offset just past it.
func valueEnd(b []byte, p int) (int, error) {
	pending := 1 // values still to read
	// open holds, for each container being read, how many of its values
	// are still to come: its length is the nesting depth, which is bounded
	// (msgpack's Skip recurses once per level).
	var stack [maxDepth]uint64
	open := stack[:0]
	need := func(n uint64) error {
		if n > uint64(len(b)-p) {
			return errTruncated
		}
		return nil
	}
	for pending > 0 {
		if p >= len(b) {
			return 0, errTruncated
		}
		c := b[p]
		p++
		pending--
		for len(open) > 0 && open[len(open)-1] == 0 {
			open = open[:len(open)-1]
		}
		if len(open) > 0 {
			open[len(open)-1]--
		}
		var skip, items uint64 // bytes to skip; values to add
		switch {
		case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			items = 2 * uint64(c&0x0f)
		case c >= 0x90 && c <= 0x9f:
			items = uint64(c & 0x0f)
		case c >= 0xa0 && c <= 0xbf:
			skip = uint64(c & 0x1f)
		default:
			var size int // bytes of the length/count field
			switch c {
			case 0xcc, 0xd0:
				skip = 1
			case 0xcd, 0xd1:
				skip = 2
			case 0xca, 0xce, 0xd2:
				skip = 4
			case 0xcb, 0xcf, 0xd3:
				skip = 8
			case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext: type + 1,2,4,8,16
				skip = 1 + 1<<(c-0xd4)
			case 0xc4, 0xd9, 0xc7: // bin8, str8, ext8
				size = 1
			case 0xc5, 0xda, 0xc8:
				size = 2
			case 0xc6, 0xdb, 0xc9:
				size = 4
			case 0xdc, 0xde:
				size = 2
			case 0xdd, 0xdf:
				size = 4
			default:
				return 0, fmt.Errorf("msgpack: invalid code %#x", c)
			}
			if size > 0 {
				if err := need(uint64(size)); err != nil {
					return 0, err
				}
				var n uint64
				switch size {
				case 1:
					n = uint64(b[p])
				case 2:
					n = uint64(binary.BigEndian.Uint16(b[p:]))
				case 4:
					n = uint64(binary.BigEndian.Uint32(b[p:]))
				}
				p += size
				switch c {
				case 0xdc, 0xdd:
					items = n
				case 0xde, 0xdf:
					items = 2 * n
				case 0xc7, 0xc8, 0xc9:
					skip = n + 1 // the ext type byte
				default:
					skip = n
				}
			}
		}
		if err := need(skip); err != nil {
			return 0, err
		}
		p += int(skip)
		// Every value takes at least one byte: more values than bytes left
		// cannot be there.
		if uint64(pending)+items > uint64(len(b)-p) {
			return 0, errTruncated
		}
		if items > 0 {
			if len(open) == maxDepth {
				return 0, fmt.Errorf("msgpack: nested deeper than %d levels", maxDepth)
			}
			open = append(open, items)
		}
		pending += int(items)
	}
	return p, nil
}

// maxDepth bounds nesting; the codec's deepest value (a record's start
// info: steps, a step, its retry policy) is about 6 levels.
const maxDepth = 32

// unmarshal decodes msgpack after checkMsgpack.
func unmarshal(b []byte, v decoder) error {
	if err := checkMsgpack(b); err != nil {
		return err
	}
	// A reader passed to an interface method escapes to the heap: one
	// allocation per decode. The hot types are called directly, which
	// keeps theirs on the stack (a million a replay, 26% of its
	// allocations in BenchmarkReplayer).
	switch v := v.(type) {
	case *Record:
		r := rd{b: b}
		v.decodeFrom(&r)
		return r.err
	case *Saga:
		r := rd{b: b}
		v.decodeFrom(&r)
		return r.err
	}
	r := rd{b: b}
	v.decodeFrom(&r)
	return r.err
}
