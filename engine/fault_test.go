package engine

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/wal"
)

// faultyLog injects an I/O error into the Nth append: either before the
// real append (nothing written) or after it (written and synced, but the
// caller is told it failed, as after an fsync error whose data did land).
type faultyLog struct {
	Log
	failAt      int64 // 1-based append number that fails; 0 never
	afterWrite  bool
	appends     atomic.Int64
	failedFirst atomic.Uint64 // first index of the failed append when afterWrite
}

var errDisk = errors.New("injected: input/output error")

func (f *faultyLog) Append(recs [][]byte) (uint64, error) {
	n := f.appends.Add(1)
	if n != f.failAt {
		return f.Log.Append(recs)
	}
	if f.afterWrite {
		first, err := f.Log.Append(recs)
		if err == nil {
			f.failedFirst.Store(first)
		}
	}
	return 0, errDisk
}

func TestInjectedLogFailureIsFailStop(t *testing.T) {
	for _, afterWrite := range []bool{false, true} {
		name := "before-write"
		if afterWrite {
			name = "after-write"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			reg := registry(t, &journal{}, []string{"a", "b", "c"})
			e := openT(t, dir, Options{Registry: reg})
			_, err := e.Define(ctx, def("f", "a", "b", "c"))
			must(t, err)
			must(t, e.Close())

			fl := &faultyLog{failAt: 40, afterWrite: afterWrite}
			var poisonedAt atomic.Bool
			var lateAcks atomic.Int64
			e = openT(t, dir, Options{
				Registry: reg,
				WrapLog:  func(l Log) Log { fl.Log = l; return fl },
				Hooks: Hooks{
					OnPoisoned: func(error) { poisonedAt.Store(true) },
					OnTransition: func(TransitionEvent) {
						if poisonedAt.Load() {
							lateAcks.Add(1)
						}
					},
				},
			})
			// 8 workers advance manual sagas; record what was acknowledged.
			type ack struct {
				id  string
				seq uint64
			}
			var mu sync.Mutex
			var acked []ack
			var unknown, poisoned int
			var wg sync.WaitGroup
			for w := 0; w < 8; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for k := 0; k < 10; k++ {
						id, err := e.Start(ctx, "f", nil, StartOptions{})
						if err != nil {
							mu.Lock()
							if errors.Is(err, ErrOutcomeUnknown) {
								unknown++
							} else if errors.Is(err, ErrPoisoned) {
								poisoned++
							} else {
								t.Errorf("start: unexpected error %v", err)
							}
							mu.Unlock()
							return
						}
						mu.Lock()
						acked = append(acked, ack{id, 1})
						mu.Unlock()
						for _, s := range []string{"a", "b", "c"} {
							st, err := e.Advance(ctx, id, StepResult{Step: s})
							mu.Lock()
							switch {
							case err == nil:
								acked = append(acked, ack{id, st.Saga.Seq})
							case errors.Is(err, ErrOutcomeUnknown):
								unknown++
							case errors.Is(err, ErrPoisoned):
								poisoned++
							default:
								t.Errorf("advance: unexpected error %v", err)
							}
							mu.Unlock()
							if err != nil {
								return
							}
						}
					}
				}()
			}
			wg.Wait()
			if unknown == 0 {
				t.Fatal("no call reported ErrOutcomeUnknown for the failed append")
			}
			if lateAcks.Load() != 0 {
				t.Fatalf("%d transitions applied after the log was poisoned", lateAcks.Load())
			}
			// Every later call fails fast, without touching the log.
			appends := fl.appends.Load()
			if _, err := e.Start(ctx, "f", nil, StartOptions{}); !errors.Is(err, ErrPoisoned) || !IsNotApplied(err) {
				t.Fatalf("start after poisoning: %v", err)
			}
			if fl.appends.Load() != appends {
				t.Fatal("a poisoned engine appended to the log")
			}
			_ = e.Close()

			// Reopen on a healthy disk: every acknowledged transition is there.
			e = openT(t, dir, Options{Registry: reg})
			defer e.Close()
			for _, a := range acked {
				h, err := e.History(ctx, a.id)
				if err != nil || uint64(len(h)) < a.seq {
					t.Fatalf("acknowledged transition %s#%d lost after reopen (history %d, %v)", a.id, a.seq, len(h), err)
				}
			}
			if afterWrite && fl.failedFirst.Load() > 0 && e.Stats().Recovery.LastIndex < fl.failedFirst.Load() {
				t.Fatal("records written before the injected error vanished")
			}
			// And the engine works again.
			id, err := e.Start(ctx, "f", nil, StartOptions{})
			must(t, err)
			for _, s := range []string{"a", "b", "c"} {
				_, err := e.Advance(ctx, id, StepResult{Step: s})
				must(t, err)
			}
			st, _ := e.Status(ctx, id)
			if st.State != fsm.StateCompleted {
				t.Fatal(st.State)
			}
		})
	}
}

// TestUndecodableLogEntryRefusesOpen: a record that passes its checksum
// but does not decode (written by a bug, or a newer version) stops Open
// with ErrRecovery instead of being skipped.
func TestUndecodableLogEntryRefusesOpen(t *testing.T) {
	dir := t.TempDir()
	e := openT(t, dir, Options{Registry: registry(t, &journal{}, []string{"a"})})
	_, err := e.Define(ctx, def("x", "a"))
	must(t, err)
	for i := 0; i < 10; i++ {
		_, err := e.Start(ctx, "x", nil, StartOptions{})
		must(t, err)
	}
	must(t, e.Close())
	// Append a garbage record behind the state's back.
	w, err := wal.Open(filepath.Join(dir, "wal"), wal.Options{Logger: quiet})
	must(t, err)
	_, err = w.Append([][]byte{{0x93, 0x01, 0x02}})
	must(t, err)
	must(t, w.Close())
	if _, err := Open(dir, Options{Logger: quiet}); !errors.Is(err, ErrRecovery) {
		t.Fatalf("open over an undecodable entry: %v", err)
	}
}

// durableLog records which records have been appended durably (Append
// returned), as keys naming the call each one announces.
type durableLog struct {
	Log
	seen sync.Map
}

func (d *durableLog) Append(recs [][]byte) (uint64, error) {
	first, err := d.Log.Append(recs)
	if err != nil {
		return first, err
	}
	for _, b := range recs {
		r, derr := fsm.Decode(b)
		if derr != nil {
			continue
		}
		switch r.Kind {
		case fsm.KindSagaStarted:
			d.seen.Store(fmt.Sprintf("action/%s/0/1", r.Saga), true)
		case fsm.KindStepCompleted:
			d.seen.Store(fmt.Sprintf("action/%s/%d/1", r.Saga, r.Step+1), true)
		case fsm.KindStepStarted:
			d.seen.Store(fmt.Sprintf("action/%s/%d/%d", r.Saga, r.Step, r.Attempt), true)
		case fsm.KindCompStarted:
			d.seen.Store(fmt.Sprintf("compensation/%s/%d/%d", r.Saga, r.Step, r.Attempt), true)
		}
	}
	return first, nil
}

// TestHandlersRunOnlyAfterTheirRecordIsDurable: persist before side
// effect. Every action and compensation attempt checks, when it is called,
// that the record announcing exactly that attempt has been appended.
func TestHandlersRunOnlyAfterTheirRecordIsDurable(t *testing.T) {
	dl := &durableLog{}
	var violations atomic.Int64
	check := func(c compensation.Call) {
		if _, ok := dl.seen.Load(fmt.Sprintf("%s/%s/%d/%d", c.Kind, c.SagaID, c.StepIndex, c.Attempt)); !ok {
			violations.Add(1)
			t.Errorf("%s of %s step %d attempt %d ran before its record was durable", c.Kind, c.SagaID, c.StepIndex, c.Attempt)
		}
	}
	var calls atomic.Int64
	reg := compensation.NewRegistry()
	must(t, reg.RegisterAction("act", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		check(c)
		if c.StepIndex == 2 && c.Attempt < 2 {
			return nil, errors.New("transient") // retried: a StepStarted record each time
		}
		if c.StepIndex == 3 && strings.HasSuffix(c.SagaID, "f") {
			return nil, compensation.Permanent(errors.New("no"))
		}
		return nil, nil
	}))
	must(t, reg.Register("undo", func(ctx context.Context, c compensation.Call) error {
		check(c)
		if calls.Add(1)%3 == 0 {
			return errors.New("transient") // a CompStarted record per attempt
		}
		return nil
	}))
	e := openT(t, t.TempDir(), Options{Registry: reg, WrapLog: func(l Log) Log { dl.Log = l; return dl }})
	defer e.Close()
	d := Definition{Name: "p"}
	for k := 0; k < 4; k++ {
		d.Steps = append(d.Steps, StepDef{Name: fmt.Sprintf("s%d", k), Action: "act", Compensation: "undo",
			Retry:             RetryPolicy{MaxAttempts: 3},
			CompensationRetry: RetryPolicy{MaxAttempts: 5}})
	}
	_, err := e.Define(ctx, d)
	must(t, err)
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("p%02d-%c", i, "sf"[i%2])
			if _, err := e.Run(waitCtx(t), "p", nil, StartOptions{ID: id}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if calls.Load() == 0 || violations.Load() != 0 {
		t.Fatalf("%d compensation calls, %d violations", calls.Load(), violations.Load())
	}
}
