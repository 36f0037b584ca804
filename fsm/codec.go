package fsm

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// The durable types encode themselves as msgpack arrays, field by field in
// a fixed order, instead of going through msgpack's reflection (which the
// profile showed costing more than everything else on the commit path).
//
// Compatibility rule: fields are only ever appended. A decoder fills the
// fields an older writer did not have with zero values and skips fields a
// newer writer appended. Never reorder or remove a field.

// enc appends msgpack to a byte slice. It writes exactly the bytes
// msgpack.Encoder writes for the same calls (smallest integer form,
// float64 as 0xcb, no string interning): TestEncoderMatchesMsgpack holds
// it to that, and TestCodecGolden to the bytes earlier versions wrote.
// Appending directly, instead of calling the Encoder once per field
// through its io.Writer, took encoding from 14% of the CPU at c=64 to
// a few percent.
type enc struct{ b []byte }

// appender is a durable type that appends its own encoding.
type appender interface{ appendMsgpack(w *enc) }

func (w *enc) code(c byte) { w.b = append(w.b, c) }
func (w *enc) be16(c byte, v uint16) {
	w.b = append(w.b, c, byte(v>>8), byte(v))
}
func (w *enc) be32(c byte, v uint32) {
	w.b = append(w.b, c, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}
func (w *enc) be64(c byte, v uint64) {
	w.b = append(w.b, c, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32), byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// length writes an array or map header: the fixed form under 16, then
// 16- and 32-bit forms.
func (w *enc) length(n int, fixed, c16, c32 byte) {
	switch {
	case n < 16:
		w.code(fixed | byte(n))
	case n <= math.MaxUint16:
		w.be16(c16, uint16(n))
	default:
		w.be32(c32, uint32(n))
	}
}
func (w *enc) arr(n int) { w.length(n, msgpcode.FixedArrayLow, msgpcode.Array16, msgpcode.Array32) }
func (w *enc) mapLen(n int) {
	w.length(n, msgpcode.FixedMapLow, msgpcode.Map16, msgpcode.Map32)
}
func (w *enc) str(s string) {
	n := len(s)
	switch {
	case n < 32:
		w.code(msgpcode.FixedStrLow | byte(n))
	case n < 256:
		w.b = append(w.b, msgpcode.Str8, byte(n))
	case n <= math.MaxUint16:
		w.be16(msgpcode.Str16, uint16(n))
	default:
		w.be32(msgpcode.Str32, uint32(n))
	}
	w.b = append(w.b, s...)
}
func (w *enc) u64(v uint64) {
	switch {
	case v <= math.MaxInt8:
		w.code(byte(v))
	case v <= math.MaxUint8:
		w.b = append(w.b, msgpcode.Uint8, byte(v))
	case v <= math.MaxUint16:
		w.be16(msgpcode.Uint16, uint16(v))
	case v <= math.MaxUint32:
		w.be32(msgpcode.Uint32, uint32(v))
	default:
		w.be64(msgpcode.Uint64, v)
	}
}
func (w *enc) i64(v int64) {
	switch {
	case v >= 0:
		w.u64(uint64(v))
	case v >= -32: // negative fixnum
		w.code(byte(v))
	case v >= math.MinInt8:
		w.b = append(w.b, msgpcode.Int8, byte(v))
	case v >= math.MinInt16:
		w.be16(msgpcode.Int16, uint16(v))
	case v >= math.MinInt32:
		w.be32(msgpcode.Int32, uint32(v))
	default:
		w.be64(msgpcode.Int64, uint64(v))
	}
}
func (w *enc) f64(v float64) { w.be64(msgpcode.Double, math.Float64bits(v)) }
func (w *enc) bool(v bool) {
	if v {
		w.code(msgpcode.True)
	} else {
		w.code(msgpcode.False)
	}
}
func (w *enc) bytes(b []byte) {
	if b == nil {
		w.nil()
		return
	}
	n := len(b)
	switch {
	case n < 256:
		w.b = append(w.b, msgpcode.Bin8, byte(n))
	case n <= math.MaxUint16:
		w.be16(msgpcode.Bin16, uint16(n))
	default:
		w.be32(msgpcode.Bin32, uint32(n))
	}
	w.b = append(w.b, b...)
}
func (w *enc) nil() { w.code(msgpcode.Nil) }

// value encodes a nested durable type, or nil.
func (w *enc) value(v appender, isNil bool) {
	if isNil {
		w.nil()
		return
	}
	v.appendMsgpack(w)
}

func (w *enc) strs(ss []string) {
	w.arr(len(ss))
	for _, s := range ss {
		w.str(s)
	}
}

func (w *enc) strMap(m map[string]string) {
	if m == nil {
		w.nil()
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic bytes on every node
	w.mapLen(len(m))
	for _, k := range keys {
		w.str(k)
		w.str(m[k])
	}
}

// encodeTo writes v's encoding through a msgpack.Encoder, for callers
// that go through msgpack.Marshal.
func encodeTo(e *msgpack.Encoder, v appender) error {
	var w enc
	v.appendMsgpack(&w)
	_, err := e.Writer().Write(w.b)
	return err
}

// marshal returns v's encoding in a new slice of about the right size.
func marshal(v appender, sizeHint int) []byte {
	w := enc{b: make([]byte, 0, sizeHint)}
	v.appendMsgpack(&w)
	return w.b
}

// rd reads msgpack from a byte slice, the counterpart of enc. It accepts
// what the msgpack.Decoder calls the codec used before accepted (any
// integer form for an integer, nil as a zero value, str and bin forms
// alike for strings and bytes), except ext-prefixed map headers, which no
// writer of this codec produces. Every read is bounds-checked, so a
// damaged input gives an error, never a panic; unmarshal runs
// checkMsgpack first, which also bounds allocations and nesting.
// Reading the slice directly, instead of through msgpack.Decoder and its
// reflection, made decoding (a quarter of the CPU of a replay) several
// times cheaper.
type rd struct {
	b   []byte
	p   int
	err error
	// shared, when set, lets decodeSteps and StartInfo share values with
	// earlier records (see Decoder).
	shared *Decoder
}

// decoder is a durable type that reads itself from rd.
type decoder interface{ decodeFrom(r *rd) }

func (r *rd) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

// code reads one byte; ok is false after an error.
func (r *rd) code() (c byte, ok bool) {
	if r.err != nil {
		return 0, false
	}
	if r.p >= len(r.b) {
		r.fail(errTruncated)
		return 0, false
	}
	c = r.b[r.p]
	r.p++
	return c, true
}

// take returns the next n bytes of the input (not a copy).
func (r *rd) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.p {
		r.fail(errTruncated)
		return nil
	}
	out := r.b[r.p : r.p+n]
	r.p += n
	return out
}

// be reads an n-byte big-endian unsigned number.
func (r *rd) be(n int) uint64 {
	var v uint64
	for _, x := range r.take(n) {
		v = v<<8 | uint64(x)
	}
	return v
}

func invalid(c byte, what string) error {
	return fmt.Errorf("msgpack: invalid code=%x decoding %s", c, what)
}

// intCode reads the integer that code c begins (nil reads as 0).
func (r *rd) intCode(c byte) int64 {
	if c <= msgpcode.PosFixedNumHigh || c >= msgpcode.NegFixedNumLow {
		return int64(int8(c))
	}
	switch c {
	case msgpcode.Nil:
		return 0
	case msgpcode.Uint8:
		return int64(r.be(1))
	case msgpcode.Int8:
		return int64(int8(r.be(1)))
	case msgpcode.Uint16:
		return int64(r.be(2))
	case msgpcode.Int16:
		return int64(int16(r.be(2)))
	case msgpcode.Uint32:
		return int64(r.be(4))
	case msgpcode.Int32:
		return int64(int32(r.be(4)))
	case msgpcode.Uint64, msgpcode.Int64:
		return int64(r.be(8))
	}
	r.fail(invalid(c, "integer"))
	return 0
}

func (r *rd) int64() int64 {
	c, ok := r.code()
	if !ok {
		return 0
	}
	return r.intCode(c)
}

func (r *rd) float64() float64 {
	c, ok := r.code()
	if !ok {
		return 0
	}
	switch c {
	case msgpcode.Float:
		return float64(math.Float32frombits(uint32(r.be(4))))
	case msgpcode.Double:
		return math.Float64frombits(r.be(8))
	}
	return float64(r.intCode(c))
}

func (r *rd) bool() bool {
	c, ok := r.code()
	switch {
	case !ok:
		return false
	case c == msgpcode.True:
		return true
	case c == msgpcode.False, c == msgpcode.Nil:
		return false
	}
	r.fail(invalid(c, "bool"))
	return false
}

// bytesLen reads a str or bin header: -1 for nil.
func (r *rd) bytesLen() int {
	c, ok := r.code()
	if !ok {
		return -1
	}
	switch {
	case c == msgpcode.Nil:
		return -1
	case c >= msgpcode.FixedStrLow && c <= msgpcode.FixedStrHigh:
		return int(c & msgpcode.FixedStrMask)
	case c == msgpcode.Str8, c == msgpcode.Bin8:
		return int(r.be(1))
	case c == msgpcode.Str16, c == msgpcode.Bin16:
		return int(r.be(2))
	case c == msgpcode.Str32, c == msgpcode.Bin32:
		return int(r.be(4))
	}
	r.fail(invalid(c, "string/bytes length"))
	return -1
}

func (r *rd) string() string {
	n := r.bytesLen()
	if n <= 0 {
		return ""
	}
	return string(r.take(n))
}

// bytes returns a copy: the input is often memory Pebble or the log
// reuses.
func (r *rd) bytes() []byte {
	n := r.bytesLen()
	if n < 0 || r.err != nil {
		return nil
	}
	b := r.take(n)
	if r.err != nil {
		return nil
	}
	return append(make([]byte, 0, n), b...)
}

// length reads an array or map header: -1 for nil.
func (r *rd) length(fixedLow, fixedHigh, c16, c32 byte, what string) int {
	c, ok := r.code()
	switch {
	case !ok:
		return -1
	case c == msgpcode.Nil:
		return -1
	case c >= fixedLow && c <= fixedHigh:
		return int(c - fixedLow)
	case c == c16:
		return int(r.be(2))
	case c == c32:
		return int(r.be(4))
	}
	r.fail(invalid(c, what))
	return -1
}

// isNil consumes a nil and reports true, or leaves a non-nil value.
func (r *rd) isNil() bool {
	if r.err != nil {
		return true
	}
	if r.p < len(r.b) && r.b[r.p] == msgpcode.Nil {
		r.p++
		return true
	}
	return false
}

// skip passes over one value of any type.
func (r *rd) skip() {
	if r.err != nil {
		return
	}
	end, err := valueEnd(r.b, r.p)
	if err != nil {
		r.fail(err)
		return
	}
	r.p = end
}

// dec reads the fields of one durable value, an array written by enc:
// fields beyond the array's length (an older writer) stay zero.
type dec struct {
	r    *rd
	n, i int
}

func newDec(r *rd) dec {
	return dec{r: r, n: r.length(msgpcode.FixedArrayLow, msgpcode.FixedArrayHigh, msgpcode.Array16, msgpcode.Array32, "array length")}
}

// next reports whether the writer had one more field.
func (d *dec) next() bool {
	if d.r.err != nil || d.i >= d.n {
		return false
	}
	d.i++
	return true
}
func (d *dec) str(p *string) {
	if d.next() {
		*p = d.r.string()
	}
}
func (d *dec) i64(p *int64) {
	if d.next() {
		*p = d.r.int64()
	}
}
func (d *dec) u64(p *uint64) {
	if d.next() {
		*p = uint64(d.r.int64())
	}
}
func (d *dec) int(p *int) {
	if d.next() {
		*p = int(d.r.int64())
	}
}
func (d *dec) u8(p *uint8) {
	if d.next() {
		*p = uint8(d.r.int64())
	}
}
func (d *dec) dur(p *time.Duration) {
	var v int64
	d.i64(&v)
	*p = time.Duration(v)
}
func (d *dec) f64(p *float64) {
	if d.next() {
		*p = d.r.float64()
	}
}
func (d *dec) bool(p *bool) {
	if d.next() {
		*p = d.r.bool()
	}
}
func (d *dec) bytes(p *[]byte) {
	if d.next() {
		*p = d.r.bytes()
	}
}

// present reports whether the writer had one more field and it is not
// nil: the caller then decodes the nested value from d.r.
func (d *dec) present() bool {
	return d.next() && !d.r.isNil()
}

func (d *dec) strs(p *[]string) {
	n := d.arrayLen()
	if n == 0 {
		return
	}
	*p = make([]string, 0, min(n, MaxRemoval))
	for j := 0; j < n && d.r.err == nil; j++ {
		*p = append(*p, d.r.string())
	}
}

func (d *dec) strMap(p *map[string]string) {
	if !d.next() || d.r.isNil() {
		return
	}
	n := d.r.length(msgpcode.FixedMapLow, msgpcode.FixedMapHigh, msgpcode.Map16, msgpcode.Map32, "map length")
	if d.r.err != nil {
		return
	}
	m := make(map[string]string, min(max(n, 0), 64))
	for j := 0; j < n && d.r.err == nil; j++ {
		k := d.r.string()
		m[k] = d.r.string()
	}
	*p = m
}

// arrayLen decodes an array header for a slice of nested values (their
// count is bounded by the input's size: checkMsgpack ran first).
func (d *dec) arrayLen() int {
	if !d.next() || d.r.isNil() {
		return 0
	}
	return max(d.r.length(msgpcode.FixedArrayLow, msgpcode.FixedArrayHigh, msgpcode.Array16, msgpcode.Array32, "array length"), 0)
}

// done skips fields appended by a newer writer.
func (d *dec) done() {
	for d.r.err == nil && d.i < d.n {
		d.r.skip()
		d.i++
	}
}

// decodeVia reads v from a msgpack.Decoder, for callers that go through
// msgpack.Unmarshal.
func decodeVia(md *msgpack.Decoder, v decoder) error {
	raw, err := md.DecodeRaw()
	if err != nil {
		return err
	}
	return unmarshal(raw, v)
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (p *RetryPolicy) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, p) }

func (p *RetryPolicy) appendMsgpack(w *enc) {
	w.arr(6)
	w.i64(int64(p.InitialBackoff))
	w.i64(int64(p.MaxBackoff))
	w.f64(p.Multiplier)
	w.f64(p.Jitter)
	w.i64(int64(p.MaxAttempts))
	w.i64(int64(p.MaxElapsed))
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (p *RetryPolicy) DecodeMsgpack(md *msgpack.Decoder) error { return decodeVia(md, p) }

func (p *RetryPolicy) decodeFrom(rr *rd) {
	r := newDec(rr)
	r.dur(&p.InitialBackoff)
	r.dur(&p.MaxBackoff)
	r.f64(&p.Multiplier)
	r.f64(&p.Jitter)
	r.int(&p.MaxAttempts)
	r.dur(&p.MaxElapsed)
	r.done()
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (s *StepDef) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, s) }

func (s *StepDef) appendMsgpack(w *enc) {
	// After and Child are written only when set: see
	// Definition.appendMsgpack.
	switch {
	case s.Child != "":
		w.arr(9)
	case len(s.After) > 0:
		w.arr(8)
	default:
		w.arr(7)
	}
	w.str(s.Name)
	w.str(s.Compensation)
	w.str(s.Action)
	w.value(&s.Retry, false)
	w.value(&s.CompensationRetry, false)
	w.i64(int64(s.Timeout))
	w.u64(uint64(s.OnUncertain))
	if len(s.After) > 0 || s.Child != "" {
		w.arr(len(s.After))
		for _, a := range s.After {
			w.str(a)
		}
	}
	if s.Child != "" {
		w.str(s.Child)
	}
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (s *StepDef) DecodeMsgpack(md *msgpack.Decoder) error { return decodeVia(md, s) }

func (s *StepDef) decodeFrom(rr *rd) {
	r := newDec(rr)
	r.str(&s.Name)
	r.str(&s.Compensation)
	r.str(&s.Action)
	if r.present() {
		s.Retry.decodeFrom(r.r)
	}
	if r.present() {
		s.CompensationRetry.decodeFrom(r.r)
	}
	r.dur(&s.Timeout)
	r.u8((*uint8)(&s.OnUncertain))
	if n := r.arrayLen(); n > 0 {
		s.After = make([]string, 0, min(n, 256))
		for j := 0; j < n && r.r.err == nil; j++ {
			s.After = append(s.After, r.r.string())
		}
	}
	r.str(&s.Child)
	r.done()
}

func encodeSteps(w *enc, steps []StepDef) {
	w.arr(len(steps))
	for i := range steps {
		w.value(&steps[i], false)
	}
}

func decodeSteps(r *dec, p *[]StepDef) {
	if sh := r.r.shared; sh != nil && r.r.err == nil && r.i < r.n {
		// The steps an earlier record encoded the same way: the same
		// (read-only) definitions.
		start := r.r.p
		if k := sh.lastKey; k != "" && len(r.r.b)-start >= len(k) && string(r.r.b[start:start+len(k)]) == k {
			// The plan of the last start, compared without walking it
			// (walking every start's plan to find its end was 5% of a
			// replay's CPU): a msgpack value ends where its own bytes
			// say, so input that begins with a whole encoded value holds
			// that value.
			r.r.p += len(k)
			r.i++
			*p = sh.lastSteps
			return
		}
		r.r.skip()
		if r.r.err != nil {
			return
		}
		raw := r.r.b[start:r.r.p]
		if steps, ok := sh.steps[string(raw)]; ok {
			r.i++
			*p = steps
			sh.lastKey, sh.lastSteps = string(raw), steps
			return
		}
		r.r.p = start
		defer func() {
			if r.r.err == nil {
				sh.keepSteps(raw, *p)
			}
		}()
	}
	n := r.arrayLen()
	var out []StepDef
	if n > 0 {
		out = make([]StepDef, 0, min(n, 256)) // n fits the input (checkMsgpack); 256 bounds a hostile one
	}
	for j := 0; j < n && r.r.err == nil; j++ {
		var s StepDef
		s.decodeFrom(r.r)
		out = append(out, s)
	}
	*p = out
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (d *Definition) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, d) }

func (d *Definition) appendMsgpack(w *enc) {
	// Fields added later are written only when set, so that values
	// without them keep the encoding of the writers before them.
	switch {
	case d.Retention != 0:
		w.arr(6)
	case d.Durability != DurabilityStrict:
		w.arr(5)
	default:
		w.arr(4)
	}
	w.str(d.Name)
	w.i64(int64(d.Version))
	encodeSteps(w, d.Steps)
	w.i64(int64(d.Timeout))
	if d.Durability != DurabilityStrict || d.Retention != 0 {
		w.u64(uint64(d.Durability))
	}
	if d.Retention != 0 {
		w.i64(int64(d.Retention))
	}
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (d *Definition) DecodeMsgpack(md *msgpack.Decoder) error { return decodeVia(md, d) }

func (d *Definition) decodeFrom(rr *rd) {
	r := newDec(rr)
	r.str(&d.Name)
	r.int(&d.Version)
	decodeSteps(&r, &d.Steps)
	r.dur(&d.Timeout)
	r.u8((*uint8)(&d.Durability))
	r.dur(&d.Retention)
	r.done()
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (ei *ErrorInfo) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, ei) }

func (ei *ErrorInfo) appendMsgpack(w *enc) {
	w.arr(3)
	w.str(ei.Kind)
	w.str(ei.Message)
	w.bool(ei.Retryable)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (ei *ErrorInfo) DecodeMsgpack(md *msgpack.Decoder) error { return decodeVia(md, ei) }

func (ei *ErrorInfo) decodeFrom(rr *rd) {
	r := newDec(rr)
	r.str(&ei.Kind)
	r.str(&ei.Message)
	r.bool(&ei.Retryable)
	r.done()
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (si *StartInfo) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, si) }

func (si *StartInfo) appendMsgpack(w *enc) {
	switch { // fields written only when set: see Definition.appendMsgpack
	case len(si.Trace) > 0:
		w.arr(14)
	case si.HistoryCap != 0:
		w.arr(13)
	case si.Parent != "":
		w.arr(12)
	case si.Durability != DurabilityStrict:
		w.arr(10)
	default:
		w.arr(9)
	}
	w.str(si.Definition)
	w.i64(int64(si.Version))
	encodeSteps(w, si.Steps)
	w.bool(si.Driven)
	w.str(si.User)
	w.str(si.IdempotencyKey)
	w.bytes(si.Input)
	w.strMap(si.Meta)
	w.i64(si.Deadline)
	if si.Durability != DurabilityStrict || si.Parent != "" || si.HistoryCap != 0 || len(si.Trace) > 0 {
		w.u64(uint64(si.Durability))
	}
	if si.Parent != "" || si.HistoryCap != 0 || len(si.Trace) > 0 {
		w.str(si.Parent)
		w.i64(int64(si.Depth))
	}
	if si.HistoryCap != 0 || len(si.Trace) > 0 {
		w.i64(int64(si.HistoryCap))
	}
	if len(si.Trace) > 0 {
		w.strMap(si.Trace)
	}
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (si *StartInfo) DecodeMsgpack(md *msgpack.Decoder) error { return decodeVia(md, si) }

func (si *StartInfo) decodeFrom(rr *rd) {
	r := newDec(rr)
	if rr.shared != nil {
		rr.shared.str(&r, &si.Definition)
	} else {
		r.str(&si.Definition)
	}
	r.int(&si.Version)
	decodeSteps(&r, &si.Steps)
	r.bool(&si.Driven)
	r.str(&si.User)
	r.str(&si.IdempotencyKey)
	r.bytes(&si.Input)
	r.strMap(&si.Meta)
	r.i64(&si.Deadline)
	r.u8((*uint8)(&si.Durability))
	r.str(&si.Parent)
	r.int(&si.Depth)
	r.int(&si.HistoryCap)
	r.strMap(&si.Trace)
	r.done()
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (rec *Record) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, rec) }

func (rec *Record) appendMsgpack(w *enc) {
	// Remove is written only when set, so that other records keep the
	// encoding of the writers before it.
	if rec.Remove != nil {
		w.arr(14)
	} else {
		w.arr(13)
	}
	w.u64(uint64(rec.V))
	w.u64(uint64(rec.Kind))
	w.str(rec.Saga)
	w.i64(rec.At)
	w.i64(int64(rec.Step))
	w.i64(int64(rec.Attempt))
	w.bytes(rec.Output)
	w.value(rec.Err, rec.Err == nil)
	w.bool(rec.Final)
	w.str(rec.Actor)
	w.str(rec.Reason)
	w.value(rec.Start, rec.Start == nil)
	w.value(rec.Def, rec.Def == nil)
	if rec.Remove != nil {
		rec.Remove.appendMsgpack(w)
	}
}

func (rm *Removal) appendMsgpack(w *enc) {
	w.arr(3)
	w.strs(rm.Sagas)
	w.bool(rm.KeepKeys)
	w.strs(rm.Keys)
}

func (rm *Removal) decodeFrom(rr *rd) {
	r := newDec(rr)
	r.strs(&rm.Sagas)
	r.bool(&rm.KeepKeys)
	r.strs(&rm.Keys)
	r.done()
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (rec *Record) DecodeMsgpack(md *msgpack.Decoder) error { return decodeVia(md, rec) }

func (rec *Record) decodeFrom(rr *rd) {
	r := newDec(rr)
	r.u8(&rec.V)
	r.u8((*uint8)(&rec.Kind))
	r.str(&rec.Saga)
	r.i64(&rec.At)
	r.int(&rec.Step)
	r.int(&rec.Attempt)
	r.bytes(&rec.Output)
	if r.present() {
		rec.Err = &ErrorInfo{}
		rec.Err.decodeFrom(r.r)
	}
	r.bool(&rec.Final)
	r.str(&rec.Actor)
	r.str(&rec.Reason)
	if r.present() {
		rec.Start = &StartInfo{}
		rec.Start.decodeFrom(r.r)
	}
	if r.present() {
		rec.Def = &Definition{}
		rec.Def.decodeFrom(r.r)
	}
	if r.present() {
		rec.Remove = &Removal{}
		rec.Remove.decodeFrom(r.r)
	}
	r.done()
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (st *Step) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, st) }

func (st *Step) appendMsgpack(w *enc) {
	if st.Stuck {
		w.arr(14) // written only when set: see Definition.appendMsgpack
	} else {
		w.arr(13)
	}
	w.value(st.StepDef, st.StepDef == nil)
	w.u64(uint64(st.Status))
	w.bool(st.Uncertain)
	w.i64(int64(st.Attempts))
	w.bytes(st.Output)
	w.value(st.Err, st.Err == nil)
	w.i64(st.StartedAt)
	w.i64(st.EndedAt)
	w.i64(int64(st.CompAttempts))
	w.i64(int64(st.CompRoundBase))
	w.i64(st.CompRoundStart)
	w.value(st.CompErr, st.CompErr == nil)
	w.i64(st.CompEndedAt)
	if st.Stuck {
		w.bool(true)
	}
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (st *Step) DecodeMsgpack(md *msgpack.Decoder) error { return decodeVia(md, st) }

func (st *Step) decodeFrom(rr *rd) {
	r := newDec(rr)
	if r.present() {
		st.StepDef = &StepDef{}
		st.StepDef.decodeFrom(r.r)
	}
	r.u8((*uint8)(&st.Status))
	r.bool(&st.Uncertain)
	r.int(&st.Attempts)
	r.bytes(&st.Output)
	if r.present() {
		st.Err = &ErrorInfo{}
		st.Err.decodeFrom(r.r)
	}
	r.i64(&st.StartedAt)
	r.i64(&st.EndedAt)
	r.int(&st.CompAttempts)
	r.int(&st.CompRoundBase)
	r.i64(&st.CompRoundStart)
	if r.present() {
		st.CompErr = &ErrorInfo{}
		st.CompErr.decodeFrom(r.r)
	}
	r.i64(&st.CompEndedAt)
	r.bool(&st.Stuck)
	r.done()
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (s *Saga) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, s) }

func (s *Saga) appendMsgpack(w *enc) {
	history := s.historySet()
	switch { // fields written only when set: see Definition.appendMsgpack
	case len(s.Trace) > 0:
		w.arr(25)
	case history:
		w.arr(24)
	case s.Parent != "":
		w.arr(19)
	case s.Durability != DurabilityStrict:
		w.arr(17)
	default:
		w.arr(16)
	}
	w.str(s.ID)
	w.str(s.Definition)
	w.i64(int64(s.Version))
	w.u64(uint64(s.State))
	w.bool(s.Driven)
	w.str(s.User)
	w.str(s.IdempotencyKey)
	w.bytes(s.Input)
	w.strMap(s.Meta)
	w.arr(len(s.Steps))
	for i := range s.Steps {
		w.value(&s.Steps[i], false)
	}
	w.i64(int64(s.Current))
	w.value(s.LastError, s.LastError == nil)
	w.i64(s.Deadline)
	w.i64(s.CreatedAt)
	w.i64(s.UpdatedAt)
	w.u64(s.Seq)
	if s.Durability != DurabilityStrict || s.Parent != "" || history || len(s.Trace) > 0 {
		w.u64(uint64(s.Durability))
	}
	if s.Parent != "" || history || len(s.Trace) > 0 {
		w.str(s.Parent)
		w.i64(int64(s.Depth))
	}
	if history || len(s.Trace) > 0 {
		w.i64(int64(s.HistoryCap))
		w.u64(s.HistoryRun)
		w.u64(s.HistoryDropped)
		w.u64(s.HistoryDroppedFirst)
		w.u64(s.HistoryDroppedLast)
	}
	if len(s.Trace) > 0 {
		w.strMap(s.Trace)
	}
}

// historySet reports whether any of the history cap's fields is set.
func (s *Saga) historySet() bool {
	return s.HistoryCap != 0 || s.HistoryRun != 0 || s.HistoryDropped != 0 ||
		s.HistoryDroppedFirst != 0 || s.HistoryDroppedLast != 0
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (s *Saga) DecodeMsgpack(md *msgpack.Decoder) error { return decodeVia(md, s) }

func (s *Saga) decodeFrom(rr *rd) {
	r := newDec(rr)
	r.str(&s.ID)
	r.str(&s.Definition)
	r.int(&s.Version)
	r.u8((*uint8)(&s.State))
	r.bool(&s.Driven)
	r.str(&s.User)
	r.str(&s.IdempotencyKey)
	r.bytes(&s.Input)
	r.strMap(&s.Meta)
	n := r.arrayLen()
	s.Steps = nil
	if n > 0 {
		s.Steps = make([]Step, 0, min(n, 256))
	}
	for j := 0; j < n && r.r.err == nil; j++ {
		var st Step
		st.decodeFrom(r.r)
		s.Steps = append(s.Steps, st)
	}
	r.int(&s.Current)
	if r.present() {
		s.LastError = &ErrorInfo{}
		s.LastError.decodeFrom(r.r)
	}
	r.i64(&s.Deadline)
	r.i64(&s.CreatedAt)
	r.i64(&s.UpdatedAt)
	r.u64(&s.Seq)
	r.u8((*uint8)(&s.Durability))
	r.str(&s.Parent)
	r.int(&s.Depth)
	r.int(&s.HistoryCap)
	r.u64(&s.HistoryRun)
	r.u64(&s.HistoryDropped)
	r.u64(&s.HistoryDroppedFirst)
	r.u64(&s.HistoryDroppedLast)
	r.strMap(&s.Trace)
	r.done()
}

// Decoder decodes log records as DecodeInto does, except that records
// share values with the records it decoded before them: the step
// definitions of starts whose steps are encoded alike (the starts of one
// definition version, most of them), and definition names. Replay keeps
// each start's steps as its saga's plan, so a log of a million
// transitions held hundreds of thousands of identical copies: decoding
// them was a fifth of a replay's allocations. The shared values must be
// treated as read-only, as the store treats a saga's step definitions
// (Saga.Clone shares them). A Decoder is for one goroutine.
type Decoder struct {
	steps map[string][]StepDef
	strs  map[string]string
	// lastKey is the encoding of the plan used last (a key of steps),
	// lastSteps its steps.
	lastKey   string
	lastSteps []StepDef
}

// NewDecoder returns a Decoder.
func NewDecoder() *Decoder {
	return &Decoder{steps: map[string][]StepDef{}, strs: map[string]string{}}
}

// maxShared bounds each of a Decoder's tables: past it they start over,
// so a log of ever-new plans costs a lookup per start and bounded memory.
const maxShared = 256

// Decode is DecodeInto, sharing values with earlier records (see
// Decoder).
//
// It does not walk b with checkMsgpack first, as unmarshal does: that
// walk was the costliest function of a replay (10% of BenchmarkReplayer's
// instructions) and a record needs none of it. Every read of a record's
// decodeFrom is bounds-checked; each of its slices and maps is made with
// a capacity bounded by a constant and grows only by what the input
// holds; its nesting is fixed by its type, and what it skips (fields of a
// newer writer, a plan's extent) goes through valueEnd, which keeps the
// checks. FuzzDecodeRecord checks that Decode accepts and refuses what
// DecodeInto does.
func (d *Decoder) Decode(b []byte, r *Record) error {
	*r = Record{}
	rr := rd{b: b, shared: d}
	r.decodeFrom(&rr)
	if rr.err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidRecord, rr.err)
	}
	return r.checkDecoded()
}

func (d *Decoder) keepSteps(raw []byte, steps []StepDef) {
	if len(d.steps) >= maxShared {
		clear(d.steps)
	}
	k := string(raw)
	d.steps[k] = steps
	d.lastKey, d.lastSteps = k, steps
}

// str is dec.str, returning an earlier string of the same bytes.
func (d *Decoder) str(r *dec, p *string) {
	if !r.next() {
		return
	}
	n := r.r.bytesLen()
	if n <= 0 {
		*p = ""
		return
	}
	b := r.r.take(n)
	if s, ok := d.strs[string(b)]; ok {
		*p = s
		return
	}
	if len(d.strs) >= maxShared {
		clear(d.strs)
	}
	s := string(b)
	d.strs[s] = s
	*p = s
}
