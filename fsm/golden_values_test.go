package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// goldenValues covers every field of every durable type and every size
// class of msgpack's integers, strings, byte strings, arrays and maps.
func goldenValues() []any {
	s := fullSaga()
	big := &Saga{
		ID: strings.Repeat("i", 40), Definition: strings.Repeat("d", 300), Version: math.MaxInt32 + 1,
		State: StateFailed, Input: make([]byte, 70000), Meta: map[string]string{},
		Current: -1, Deadline: math.MinInt64, CreatedAt: -33, UpdatedAt: -200, Seq: math.MaxUint64,
		LastError: &ErrorInfo{Message: strings.Repeat("m", 70000)},
	}
	for k := 0; k < 17; k++ {
		big.Steps = append(big.Steps, Step{StepDef: &StepDef{Name: string(rune('a' + k)), Retry: RetryPolicy{
			InitialBackoff: time.Duration(-40000 * k), MaxBackoff: time.Duration(70000 * k), Multiplier: -1.5, Jitter: math.Inf(1),
			MaxAttempts: 255 + k, MaxElapsed: time.Duration(-math.MaxInt32 * int64(k))}},
			Attempts: 65535 + k, StartedAt: int64(-129 * k), EndedAt: int64(32767 * k), Output: make([]byte, 255+k)})
	}
	for k := 0; k < 20; k++ {
		big.Meta[strings.Repeat("k", k)] = strings.Repeat("v", 31+k)
	}
	r := &Record{V: RecordVersion, Kind: KindSagaStarted, Saga: "s1", At: 5, Step: 1, Attempt: 2, Output: []byte("x"),
		Err: &ErrorInfo{Message: "e"}, Final: true, Actor: "a", Reason: "r",
		Start: &StartInfo{Definition: "d", Version: 1, Driven: true, User: "u", Steps: []StepDef{*s.Steps[0].StepDef},
			IdempotencyKey: "k", Input: []byte("i"), Meta: map[string]string{"x": "y"}, Deadline: 7},
		Def: &Definition{Name: "d", Version: 2, Steps: []StepDef{*s.Steps[0].StepDef}, Timeout: time.Minute}}
	small := &Record{V: RecordVersion, Kind: KindStepCompleted, Saga: "18ea81b6da9c9b3f72ecf8", At: 1700000000000000000, Step: 2}
	return []any{s, big, r, small, r.Def}
}

// goldenSHA256 are the SHA-256 sums of goldenValues' encodings as written
// by the msgpack.Encoder-based codec (before the append-based one). Equal
// bytes matter beyond decoding: replicas compare state hashes, and a
// rolling upgrade must not make two members of one group disagree.
var goldenSHA256 = []string{
	"a0c55d9d673a0b0e49ae85e585960b07cf6da03c2285bf1d0f4c91ba0e9f94e9", // fullSaga, 248 bytes
	"c6b19aa5177d396d384c60e99dd99cba8361d7eba4d4e9b1cfa2417600e9838f", // big saga, 147528 bytes
	"5338f00045fb6bcfbb083b792f5bc42b634918fc13989e382946b0eaf835a6de", // full record, 277 bytes
	"deab64668545b9e4f08af3632ff5ec2e0e5d714a0a89a9190c4de13f83174d27", // small record, 44 bytes
	"f218c428cc15f77eaad7512f190ff697ad4c598be5a3671e95f630d6616a5e91", // definition, 125 bytes
}

func TestCodecGolden(t *testing.T) {
	for i, v := range goldenValues() {
		b := marshal(v.(appender), 0)
		if h := sha256.Sum256(b); hex.EncodeToString(h[:]) != goldenSHA256[i] {
			t.Errorf("value %d (%T, %d bytes): encoding differs from the one earlier versions wrote", i, v, len(b))
		}
		// And through msgpack.Marshal, which calls EncodeMsgpack.
		mb, err := msgpack.Marshal(v)
		if err != nil || !bytes.Equal(mb, b) {
			t.Errorf("value %d: msgpack.Marshal differs from marshal (%v)", i, err)
		}
		if err := checkMsgpack(b); err != nil {
			t.Errorf("value %d: %v", i, err)
		}
		// The decoder reads every size class back to the same value.
		back := reflect.New(reflect.TypeOf(v).Elem()).Interface().(decoder)
		if err := unmarshal(b, back); err != nil || !reflect.DeepEqual(back, v) {
			t.Errorf("value %d (%T): does not decode to itself (%v)", i, v, err)
		}
	}
}

// TestEncoderMatchesMsgpack holds each primitive of enc to the bytes
// msgpack.Encoder writes for the same value, at every size boundary.
func TestEncoderMatchesMsgpack(t *testing.T) {
	var ref bytes.Buffer
	me := msgpack.NewEncoder(&ref)
	check := func(what string, mine func(w *enc), theirs func() error) {
		t.Helper()
		ref.Reset()
		if err := theirs(); err != nil {
			t.Fatal(err)
		}
		var w enc
		mine(&w)
		if !bytes.Equal(w.b, ref.Bytes()) {
			t.Errorf("%s: enc wrote % x, msgpack.Encoder % x", what, w.b, ref.Bytes())
		}
	}
	var ints []int64
	for _, b := range []int64{0, 31, 32, 127, 128, 255, 256, math.MaxUint16, math.MaxUint16 + 1, math.MaxUint32, math.MaxUint32 + 1,
		math.MaxInt8, math.MaxInt16, math.MaxInt32, math.MaxInt64} {
		ints = append(ints, b-1, b, b+1, -b-1, -b, -b+1)
	}
	ints = append(ints, math.MinInt64, math.MinInt64+1, -32, -33, math.MinInt8, math.MinInt16, math.MinInt32)
	for _, v := range ints {
		check(fmt.Sprint("i64 ", v), func(w *enc) { w.i64(v) }, func() error { return me.EncodeInt(v) })
		u := uint64(v)
		check(fmt.Sprint("u64 ", u), func(w *enc) { w.u64(u) }, func() error { return me.EncodeUint(u) })
	}
	for _, f := range []float64{0, -1.5, 2, math.Inf(-1), math.NaN(), math.SmallestNonzeroFloat64} {
		check(fmt.Sprint("f64 ", f), func(w *enc) { w.f64(f) }, func() error { return me.EncodeFloat64(f) })
	}
	for _, v := range []bool{true, false} {
		check(fmt.Sprint("bool ", v), func(w *enc) { w.bool(v) }, func() error { return me.EncodeBool(v) })
	}
	check("nil", func(w *enc) { w.nil() }, func() error { return me.EncodeNil() })
	check("nil bytes", func(w *enc) { w.bytes(nil) }, func() error { return me.EncodeBytes(nil) })
	for _, n := range []int{0, 1, 15, 16, 31, 32, 255, 256, math.MaxUint16, math.MaxUint16 + 1} {
		s := strings.Repeat("x", n)
		check(fmt.Sprint("str ", n), func(w *enc) { w.str(s) }, func() error { return me.EncodeString(s) })
		b := []byte(s)
		check(fmt.Sprint("bytes ", n), func(w *enc) { w.bytes(b) }, func() error { return me.EncodeBytes(b) })
		check(fmt.Sprint("arr ", n), func(w *enc) { w.arr(n) }, func() error { return me.EncodeArrayLen(n) })
		check(fmt.Sprint("map ", n), func(w *enc) { w.mapLen(n) }, func() error { return me.EncodeMapLen(n) })
	}
}

// TestDecoderMatchesMsgpack holds each primitive of rd to what
// msgpack.Decoder returns for the same bytes: every first byte, followed
// by payload bytes that make every length form readable, must give the
// same value, or an error from both.
func TestDecoderMatchesMsgpack(t *testing.T) {
	payloads := [][]byte{
		{0x00, 0x00, 0x00, 0x03, 'a', 'b', 'c', 0xff, 0xfe, 0x01, 0x02}, // small lengths
		{0xff, 0xfe, 0x80, 0x01, 0x7f, 0x80, 0x00, 0x01, 0x02},          // high bits: signs
		{0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},          // the smallest negatives
		{0x3f, 0xf8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},          // 1.5 as a double
	}
	type prim struct {
		name   string
		mine   func(r *rd) any
		theirs func(d *msgpack.Decoder) (any, error)
	}
	prims := []prim{
		{"int64", func(r *rd) any { return r.int64() }, func(d *msgpack.Decoder) (any, error) { return d.DecodeInt64() }},
		{"uint64", func(r *rd) any { return uint64(r.int64()) }, func(d *msgpack.Decoder) (any, error) { return d.DecodeUint64() }},
		{"float64", func(r *rd) any { return math.Float64bits(r.float64()) }, func(d *msgpack.Decoder) (any, error) {
			f, err := d.DecodeFloat64() // compared as bits: NaN is not equal to itself
			return math.Float64bits(f), err
		}},
		{"bool", func(r *rd) any { return r.bool() }, func(d *msgpack.Decoder) (any, error) { return d.DecodeBool() }},
		{"string", func(r *rd) any { return r.string() }, func(d *msgpack.Decoder) (any, error) { return d.DecodeString() }},
		{"bytes", func(r *rd) any { return r.bytes() }, func(d *msgpack.Decoder) (any, error) { return d.DecodeBytes() }},
		{"array", func(r *rd) any {
			return r.length(msgpcode.FixedArrayLow, msgpcode.FixedArrayHigh, msgpcode.Array16, msgpcode.Array32, "")
		}, func(d *msgpack.Decoder) (any, error) { return d.DecodeArrayLen() }},
		{"map", func(r *rd) any {
			return r.length(msgpcode.FixedMapLow, msgpcode.FixedMapHigh, msgpcode.Map16, msgpcode.Map32, "")
		}, func(d *msgpack.Decoder) (any, error) { return d.DecodeMapLen() }},
	}
	for _, pr := range prims {
		for c := 0; c < 256; c++ {
			if pr.name == "map" && msgpcode.IsExt(byte(c)) {
				continue // ext-prefixed map headers: not accepted here (see rd)
			}
			for _, payload := range payloads {
				for cut := 1; cut <= 1+len(payload); cut++ { // also truncated inputs
					in := append([]byte{byte(c)}, payload...)[:cut]
					r := rd{b: in}
					got := pr.mine(&r)
					if (pr.name == "string" || pr.name == "bytes") && checkMsgpack(in) != nil {
						// A length past the end: msgpack.Decoder would allocate
						// all of it first (up to 4 GB). rd must refuse it.
						if r.err == nil {
							t.Fatalf("%s % x: rd accepted a truncated value", pr.name, in)
						}
						continue
					}
					want, werr := pr.theirs(msgpack.NewDecoder(bytes.NewReader(in)))
					if (r.err != nil) != (werr != nil) {
						t.Fatalf("%s % x: rd error %v, msgpack.Decoder error %v", pr.name, in, r.err, werr)
					}
					if r.err == nil && !reflect.DeepEqual(got, want) {
						t.Fatalf("%s % x: rd read %#v, msgpack.Decoder %#v", pr.name, in, got, want)
					}
				}
			}
		}
	}
}
