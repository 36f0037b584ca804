package fsm

import (
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

type dec struct {
	d    *msgpack.Decoder
	n, i int
	err  error
}

func newDec(d *msgpack.Decoder) *dec {
	n, err := d.DecodeArrayLen()
	return &dec{d: d, n: n, err: err}
}

// next reports whether the writer had one more field.
func (r *dec) next() bool {
	if r.err != nil || r.i >= r.n {
		return false
	}
	r.i++
	return true
}
func (r *dec) str(p *string) {
	if r.next() {
		*p, r.err = r.d.DecodeString()
	}
}
func (r *dec) i64(p *int64) {
	if r.next() {
		*p, r.err = r.d.DecodeInt64()
	}
}
func (r *dec) u64(p *uint64) {
	if r.next() {
		*p, r.err = r.d.DecodeUint64()
	}
}
func (r *dec) int(p *int) {
	if r.next() {
		var v int64
		v, r.err = r.d.DecodeInt64()
		*p = int(v)
	}
}
func (r *dec) u8(p *uint8) {
	if r.next() {
		*p, r.err = r.d.DecodeUint8()
	}
}
func (r *dec) dur(p *time.Duration) {
	var v int64
	r.i64(&v)
	*p = time.Duration(v)
}
func (r *dec) f64(p *float64) {
	if r.next() {
		*p, r.err = r.d.DecodeFloat64()
	}
}
func (r *dec) bool(p *bool) {
	if r.next() {
		*p, r.err = r.d.DecodeBool()
	}
}
func (r *dec) bytes(p *[]byte) {
	if r.next() {
		*p, r.err = r.d.DecodeBytes()
	}
}

// isNil consumes a nil and reports true, or leaves a non-nil value.
func (r *dec) isNil() bool {
	c, err := r.d.PeekCode()
	if err != nil {
		r.err = err
		return true
	}
	if c == msgpcode.Nil {
		r.err = r.d.DecodeNil()
		return true
	}
	return false
}

// value decodes a nested custom type; alloc is called when it is not nil.
func (r *dec) value(alloc func() msgpack.CustomDecoder) {
	if r.next() && !r.isNil() && r.err == nil {
		r.err = alloc().DecodeMsgpack(r.d)
	}
}

func (r *dec) strMap(p *map[string]string) {
	if !r.next() || r.isNil() || r.err != nil {
		return
	}
	n, err := r.d.DecodeMapLen()
	if err != nil {
		r.err = err
		return
	}
	m := make(map[string]string, min(n, 64))
	for j := 0; j < n && r.err == nil; j++ {
		var k, v string
		if k, r.err = r.d.DecodeString(); r.err == nil {
			v, r.err = r.d.DecodeString()
		}
		m[k] = v
	}
	*p = m
}

// arrayLen decodes an array header for a slice of nested values, bounded
// by the bytes left so a hostile length cannot force a huge allocation.
func (r *dec) arrayLen() int {
	if !r.next() || r.isNil() || r.err != nil {
		return 0
	}
	n, err := r.d.DecodeArrayLen()
	if err != nil {
		r.err = err
		return 0
	}
	if n < 0 {
		return 0
	}
	return n
}

// done skips fields appended by a newer writer.
func (r *dec) done() error {
	for r.err == nil && r.i < r.n {
		r.err = r.d.Skip()
		r.i++
	}
	return r.err
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
func (p *RetryPolicy) DecodeMsgpack(d *msgpack.Decoder) error {
	r := newDec(d)
	r.dur(&p.InitialBackoff)
	r.dur(&p.MaxBackoff)
	r.f64(&p.Multiplier)
	r.f64(&p.Jitter)
	r.int(&p.MaxAttempts)
	r.dur(&p.MaxElapsed)
	return r.done()
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (s *StepDef) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, s) }

func (s *StepDef) appendMsgpack(w *enc) {
	w.arr(7)
	w.str(s.Name)
	w.str(s.Compensation)
	w.str(s.Action)
	w.value(&s.Retry, false)
	w.value(&s.CompensationRetry, false)
	w.i64(int64(s.Timeout))
	w.u64(uint64(s.OnUncertain))
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (s *StepDef) DecodeMsgpack(d *msgpack.Decoder) error {
	r := newDec(d)
	r.str(&s.Name)
	r.str(&s.Compensation)
	r.str(&s.Action)
	r.value(func() msgpack.CustomDecoder { return &s.Retry })
	r.value(func() msgpack.CustomDecoder { return &s.CompensationRetry })
	r.dur(&s.Timeout)
	r.u8((*uint8)(&s.OnUncertain))
	return r.done()
}

func encodeSteps(w *enc, steps []StepDef) {
	w.arr(len(steps))
	for i := range steps {
		w.value(&steps[i], false)
	}
}

func decodeSteps(r *dec, p *[]StepDef) {
	n := r.arrayLen()
	var out []StepDef
	for j := 0; j < n && r.err == nil; j++ {
		var s StepDef
		r.err = s.DecodeMsgpack(r.d)
		out = append(out, s)
	}
	*p = out
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (d *Definition) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, d) }

func (d *Definition) appendMsgpack(w *enc) {
	w.arr(4)
	w.str(d.Name)
	w.i64(int64(d.Version))
	encodeSteps(w, d.Steps)
	w.i64(int64(d.Timeout))
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (d *Definition) DecodeMsgpack(dd *msgpack.Decoder) error {
	r := newDec(dd)
	r.str(&d.Name)
	r.int(&d.Version)
	decodeSteps(r, &d.Steps)
	r.dur(&d.Timeout)
	return r.done()
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
func (ei *ErrorInfo) DecodeMsgpack(d *msgpack.Decoder) error {
	r := newDec(d)
	r.str(&ei.Kind)
	r.str(&ei.Message)
	r.bool(&ei.Retryable)
	return r.done()
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (si *StartInfo) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, si) }

func (si *StartInfo) appendMsgpack(w *enc) {
	w.arr(9)
	w.str(si.Definition)
	w.i64(int64(si.Version))
	encodeSteps(w, si.Steps)
	w.bool(si.Driven)
	w.str(si.User)
	w.str(si.IdempotencyKey)
	w.bytes(si.Input)
	w.strMap(si.Meta)
	w.i64(si.Deadline)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (si *StartInfo) DecodeMsgpack(d *msgpack.Decoder) error {
	r := newDec(d)
	r.str(&si.Definition)
	r.int(&si.Version)
	decodeSteps(r, &si.Steps)
	r.bool(&si.Driven)
	r.str(&si.User)
	r.str(&si.IdempotencyKey)
	r.bytes(&si.Input)
	r.strMap(&si.Meta)
	r.i64(&si.Deadline)
	return r.done()
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (rec *Record) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, rec) }

func (rec *Record) appendMsgpack(w *enc) {
	w.arr(13)
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
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (rec *Record) DecodeMsgpack(d *msgpack.Decoder) error {
	r := newDec(d)
	r.u8(&rec.V)
	r.u8((*uint8)(&rec.Kind))
	r.str(&rec.Saga)
	r.i64(&rec.At)
	r.int(&rec.Step)
	r.int(&rec.Attempt)
	r.bytes(&rec.Output)
	r.value(func() msgpack.CustomDecoder { rec.Err = &ErrorInfo{}; return rec.Err })
	r.bool(&rec.Final)
	r.str(&rec.Actor)
	r.str(&rec.Reason)
	r.value(func() msgpack.CustomDecoder { rec.Start = &StartInfo{}; return rec.Start })
	r.value(func() msgpack.CustomDecoder { rec.Def = &Definition{}; return rec.Def })
	return r.done()
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (st *Step) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, st) }

func (st *Step) appendMsgpack(w *enc) {
	w.arr(13)
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
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (st *Step) DecodeMsgpack(d *msgpack.Decoder) error {
	r := newDec(d)
	r.value(func() msgpack.CustomDecoder { st.StepDef = &StepDef{}; return st.StepDef })
	r.u8((*uint8)(&st.Status))
	r.bool(&st.Uncertain)
	r.int(&st.Attempts)
	r.bytes(&st.Output)
	r.value(func() msgpack.CustomDecoder { st.Err = &ErrorInfo{}; return st.Err })
	r.i64(&st.StartedAt)
	r.i64(&st.EndedAt)
	r.int(&st.CompAttempts)
	r.int(&st.CompRoundBase)
	r.i64(&st.CompRoundStart)
	r.value(func() msgpack.CustomDecoder { st.CompErr = &ErrorInfo{}; return st.CompErr })
	r.i64(&st.CompEndedAt)
	return r.done()
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (s *Saga) EncodeMsgpack(e *msgpack.Encoder) error { return encodeTo(e, s) }

func (s *Saga) appendMsgpack(w *enc) {
	w.arr(16)
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
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (s *Saga) DecodeMsgpack(d *msgpack.Decoder) error {
	r := newDec(d)
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
	for j := 0; j < n && r.err == nil; j++ {
		var st Step
		r.err = st.DecodeMsgpack(r.d)
		s.Steps = append(s.Steps, st)
	}
	r.int(&s.Current)
	r.value(func() msgpack.CustomDecoder { s.LastError = &ErrorInfo{}; return s.LastError })
	r.i64(&s.Deadline)
	r.i64(&s.CreatedAt)
	r.i64(&s.UpdatedAt)
	r.u64(&s.Seq)
	return r.done()
}
