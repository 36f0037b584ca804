package fsm

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

func fullSaga() *Saga {
	rp := RetryPolicy{InitialBackoff: time.Second, MaxBackoff: time.Minute, Multiplier: 2, Jitter: 0.2, MaxAttempts: 5, MaxElapsed: time.Hour}
	return &Saga{
		ID: "s1", Definition: "order", Version: 3, State: StateStuck, Driven: true, User: "u1",
		IdempotencyKey: "k", Input: []byte("in"), Meta: map[string]string{"b": "2", "a": "1"},
		Steps: []Step{{
			StepDef: &StepDef{Name: "pay", Compensation: "refund", Action: "charge", Retry: rp, CompensationRetry: rp,
				Timeout: time.Second, OnUncertain: UncertainRetry},
			Status: StepCompensating, Uncertain: true, Attempts: 2, Output: []byte("o"),
			Err: &ErrorInfo{Kind: "k", Message: "m", Retryable: true}, StartedAt: 1, EndedAt: 2,
			CompAttempts: 4, CompRoundBase: 2, CompRoundStart: 3, CompErr: &ErrorInfo{Message: "c"}, CompEndedAt: 5,
		}, {StepDef: &StepDef{Name: "ship"}}},
		Current: 0, LastError: &ErrorInfo{Message: "x"}, Deadline: 9, CreatedAt: 1, UpdatedAt: 8, Seq: 12,
	}
}

func TestCodecRoundTrip(t *testing.T) {
	s := fullSaga()
	b, err := msgpack.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var got Saga
	if err := msgpack.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, &got) {
		t.Fatalf("saga round trip:\n%+v\n%+v", s, &got)
	}
	b2, _ := msgpack.Marshal(&got)
	if string(b) != string(b2) {
		t.Fatal("encoding is not deterministic (map order?)")
	}
	r := &Record{Kind: KindSagaStarted, Saga: "s1", At: 5, Step: 1, Attempt: 2, Output: []byte("x"),
		Err: &ErrorInfo{Message: "e"}, Final: true, Actor: "a", Reason: "r",
		Start: &StartInfo{Definition: "d", Version: 1, Driven: true, User: "u",
			IdempotencyKey: "k", Input: []byte("i"), Meta: map[string]string{"x": "y"}, Deadline: 7},
		Def: &Definition{Name: "d", Version: 2, Steps: []StepDef{*s.Steps[0].StepDef}, Timeout: time.Minute}}
	r.Start.Steps = []StepDef{*s.Steps[0].StepDef}
	rb, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	var rr Record
	if err := msgpack.Unmarshal(rb, &rr); err != nil || !reflect.DeepEqual(r, &rr) {
		t.Fatalf("record round trip: %v\n%+v\n%+v", err, r, &rr)
	}
}

// TestCodecEvolution: a reader fills fields an older writer lacked with
// zero values and skips fields a newer writer appended.
func TestCodecEvolution(t *testing.T) {
	older, _ := msgpack.Marshal([]any{"pay", "refund"}) // a StepDef with 2 of its fields
	var s StepDef
	if err := msgpack.Unmarshal(older, &s); err != nil || s.Name != "pay" || s.Compensation != "refund" || s.Action != "" {
		t.Fatalf("older writer: %+v %v", s, err)
	}
	newer, _ := msgpack.Marshal([]any{"k", "m", true, "future", 42})
	var ei ErrorInfo
	if err := msgpack.Unmarshal(newer, &ei); err != nil || ei.Message != "m" || !ei.Retryable {
		t.Fatalf("newer writer: %+v %v", ei, err)
	}
}

func BenchmarkEncodeRecord(b *testing.B) {
	r := &Record{Kind: KindStepCompleted, Saga: "18ea81b6da9c9b3f72ecf8", At: 1, Step: 2, Output: []byte("out")}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := Encode(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecode: the records a replay reads (a 4-step saga's start,
// the largest, and a step completion) and a stored saga.
func BenchmarkDecode(b *testing.B) {
	start, _ := Encode(startRec("18ea81b6da9c9b3f72ecf8", "key-1", "a", "b", "c", "d"))
	done, _ := Encode(&Record{Kind: KindStepCompleted, Saga: "18ea81b6da9c9b3f72ecf8", At: 1, Step: 2, Output: []byte("out")})
	saga := marshal(fullSaga(), 0)
	for _, c := range []struct {
		name string
		b    []byte
		dec  func([]byte) error
	}{
		{"record=start", start, func(b []byte) error { _, err := Decode(b); return err }},
		{"record=completed", done, func(b []byte) error { _, err := Decode(b); return err }},
		{"saga", saga, func(b []byte) error { var sg Saga; return unmarshal(b, &sg) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if err := c.dec(c.b); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decodes/s")
			b.ReportMetric(float64(len(c.b)), "bytes")
		})
	}
}

func BenchmarkApply(b *testing.B) {
	s := fullSaga()
	s.State, s.Current = StateInProgress, 0
	s.Steps[0].Status = StepRunning
	r := &Record{Kind: KindStepCompleted, Saga: "s1", At: 1, Step: 0}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := Apply(s, r); err != nil {
			b.Fatal(err)
		}
	}
}

// TestHostileLengthsAreCheap: a short input declaring a huge string,
// array or map is refused before anything is allocated for it.
func TestHostileLengthsAreCheap(t *testing.T) {
	for _, in := range [][]byte{
		[]byte("\x9d02\xa200,00\xdb\xc0\u00a0\xa0"),      // str32 of 3 GB (from FuzzDecodeRecord)
		{0x9d, 0x01, 0x02, 0xc6, 0xff, 0xff, 0xff, 0xff}, // bin32
		{0xdd, 0xff, 0xff, 0xff, 0xff, 0x01},             // array32
		{0xdf, 0x7f, 0xff, 0xff, 0xff, 0x01, 0x01},       // map32
		{0xc1}, // never used
		append(bytes.Repeat([]byte{0x91}, 100000), 0xc0), // nested 100,000 deep
	} {
		// AllocsPerRun counts the whole process's allocations: over 100
		// runs, a background goroutine's few (a closed store's last
		// work) do not lift the average past the bound.
		allocs := testing.AllocsPerRun(100, func() {
			if _, err := Decode(in); err == nil {
				t.Fatalf("%d-byte hostile input decoded", len(in))
			}
		})
		if allocs > 8 {
			t.Fatalf("%d-byte hostile input: %.0f allocations to refuse", len(in), allocs)
		}
	}
	// Everything the codec writes passes the check.
	s := fullSaga()
	b, _ := msgpack.Marshal(s)
	if err := checkMsgpack(b); err != nil {
		t.Fatal(err)
	}
	r, _ := Encode(&Record{Kind: KindDefine, Def: &Definition{Name: "d", Version: 1, Steps: []StepDef{{Name: "a"}}}})
	if err := checkMsgpack(r); err != nil {
		t.Fatal(err)
	}
}

// TestTraceContextIsWrittenOnlyWhenSet: a start without a trace context
// keeps the encoding of the writers before the field (the golden sums
// hold the bytes), and one with it round-trips, through the start record
// into the saga's state and through the state's own encoding.
func TestTraceContextIsWrittenOnlyWhenSet(t *testing.T) {
	rec := startRec("s1", "", "a", "b")
	plain, err := Encode(rec)
	if err != nil {
		t.Fatal(err)
	}
	rec.Start.Trace = map[string]string{}
	empty, _ := Encode(rec)
	if !bytes.Equal(plain, empty) {
		t.Fatal("an empty trace context changed the start record's encoding")
	}
	tc := map[string]string{
		"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"tracestate":  "congo=t61rcWkgMzE",
		"baggage":     "tenant=acme",
	}
	rec.Start.Trace = tc
	b, _ := Encode(rec)
	if bytes.Equal(b, plain) {
		t.Fatal("the trace context was not written")
	}
	back, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Start.Trace, tc) {
		t.Fatalf("start record trace: %v, want %v", back.Start.Trace, tc)
	}
	sg, err := Apply(nil, back)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(sg.Trace, tc) {
		t.Fatalf("saga trace after apply: %v, want %v", sg.Trace, tc)
	}
	var got Saga
	if err := unmarshal(marshal(sg, 0), &got); err != nil || !reflect.DeepEqual(got.Trace, tc) {
		t.Fatalf("saga trace after a round trip: %v (%v), want %v", got.Trace, err, tc)
	}
	sg.Trace = nil
	withTrace := marshal(&got, 0)
	got.Trace = nil
	if without := marshal(&got, 0); bytes.Equal(without, withTrace) || !bytes.Equal(without, marshal(sg, 0)) {
		t.Fatal("a saga without a trace context does not keep the encoding it had before the field")
	}
}

// TestDecoderMatchesDecodeInto: a Decoder, which shares step definitions
// and definition names between records, decodes every record as
// DecodeInto does, and fails where it fails.
func TestDecoderMatchesDecodeInto(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	log := randomLog(t, rng, 3000)
	for i := range 600 { // more plans than a Decoder keeps
		r := startRec(fmt.Sprintf("p%d", i), "", "x", fmt.Sprintf("y%d", i%300))
		r.Start.Definition = fmt.Sprintf("def%d", i%400)
		log = append(log, entries(t, uint64(len(log)+1), r)...)
	}
	d := NewDecoder()
	for pass := range 2 { // the second pass finds the plans kept
		for _, e := range log {
			var want, got Record
			if err := DecodeInto(e.Raw, &want); err != nil {
				t.Fatal(err)
			}
			if err := d.Decode(e.Raw, &got); err != nil {
				t.Fatalf("pass %d: %v", pass, err)
			}
			if !reflect.DeepEqual(&got, &want) {
				t.Fatalf("pass %d: the Decoder read %+v, DecodeInto %+v", pass, got, want)
			}
		}
	}
	raw := log[0].Raw
	for n := range len(raw) {
		var a, b Record
		errA, errB := DecodeInto(raw[:n], &a), d.Decode(raw[:n], &b)
		if (errA == nil) != (errB == nil) {
			t.Fatalf("%d bytes: DecodeInto %v, Decoder %v", n, errA, errB)
		}
	}
}
