// Package loggen writes saga logs for recovery measurements: a log of n
// transitions that no state has seen, as a crash leaves it.
package loggen

import (
	"fmt"
	"path/filepath"

	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/wal"
)

// Steps of every generated saga: three compensable steps and a last one.
var Steps = []fsm.StepDef{{Name: "a", Compensation: "undo"}, {Name: "b", Compensation: "undo"},
	{Name: "c", Compensation: "undo"}, {Name: "d"}}

// Write appends n transitions to the log of the data directory dir: the
// first 'pending' sagas stop with step b failed (a compensation of a is
// pending), the others complete. Ids have the engine's generated form. It
// returns the number of sagas.
func Write(dir string, n, pending int, opts wal.Options) (int, error) {
	opts.NoSync = true // generation only: the measurement is of replay
	w, err := wal.Open(filepath.Join(dir, "wal"), opts)
	if err != nil {
		return 0, err
	}
	var batch [][]byte
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, err := w.Append(batch)
		batch = batch[:0]
		return err
	}
	written, sagas := 0, 0
	for written < n {
		sagas++
		id := fmt.Sprintf("%022x", sagas) // the form of engine-generated ids
		at := int64(sagas)
		recs := []*fsm.Record{{Kind: fsm.KindSagaStarted, Saga: id, At: at,
			Start: &fsm.StartInfo{Definition: "bench", Version: 1, Steps: Steps}}}
		if sagas <= pending {
			recs = append(recs,
				&fsm.Record{Kind: fsm.KindStepCompleted, Saga: id, At: at, Step: 0},
				&fsm.Record{Kind: fsm.KindStepFailed, Saga: id, At: at, Step: 1, Err: &fsm.ErrorInfo{Message: "x"}})
		} else {
			for k := range Steps {
				recs = append(recs, &fsm.Record{Kind: fsm.KindStepCompleted, Saga: id, At: at, Step: k})
			}
		}
		for _, r := range recs {
			if written == n {
				break
			}
			b, err := fsm.Encode(r)
			if err != nil {
				return 0, err
			}
			batch = append(batch, b)
			written++
			if len(batch) == 4096 {
				if err := flush(); err != nil {
					return 0, err
				}
			}
		}
	}
	if err := flush(); err != nil {
		return 0, err
	}
	return sagas, w.Close()
}
