package archive

import (
	"encoding/json"
	"fmt"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
)

// Version is the version of the record format this package writes, the
// "v" of every line. A reader refuses a line of a later version with
// ErrVersion rather than guess at it; fields added to version 1 are
// optional, so a version 1 reader ignores fields it does not know.
const Version = 1

// Record is one line of an archive: one finished saga and its history.
type Record struct {
	V       int                 `json:"v"`
	Saga    Saga                `json:"saga"`
	History []admin.HistoryJSON `json:"history"`
}

// Saga is a saga as the admin API shows it (admin.SagaJSON, the same
// fields under the same names), with what the API leaves out and an
// archive must keep: the idempotency key, the meta data and the input.
type Saga struct {
	admin.SagaJSON
	IdempotencyKey string            `json:"idempotency_key,omitempty"`
	Meta           map[string]string `json:"meta,omitempty"`
	// Input is the saga's input as given to Start (base64 in JSON).
	Input []byte `json:"input,omitempty"`
	// Seq is the number of transitions applied to the saga (the length
	// of its history, with the records its history cap dropped): with
	// ID, it tells two copies of one saga apart.
	Seq uint64 `json:"seq"`
}

// NewRecord builds the record of a saga from its status and its history
// (engine.Engine.Status and History).
func NewRecord(st *engine.Status, history []fsm.HistoryEntry) Record {
	r := Record{V: Version, Saga: Saga{SagaJSON: admin.NewSagaJSON(st), Meta: st.Meta}, History: []admin.HistoryJSON{}}
	if st.Saga != nil {
		r.Saga.IdempotencyKey, r.Saga.Input, r.Saga.Seq = st.Saga.IdempotencyKey, st.Saga.Input, st.Saga.Seq
	}
	for _, he := range history {
		r.History = append(r.History, admin.NewHistoryJSON(he, st.Saga))
	}
	return r
}

// Show is the record as the admin API's GET /v1/sagas/{id} shows a saga.
func (r Record) Show() *admin.ShowReply {
	return &admin.ShowReply{Saga: r.Saga.SagaJSON, History: r.History}
}

// decodeLine parses one line; off locates it in errors.
func decodeLine(line []byte, where string) (Record, error) {
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		return Record{}, fmt.Errorf("%w: %s: %v", ErrCorrupt, where, err)
	}
	if r.V != Version {
		return Record{}, fmt.Errorf("%w: %s: version %d (this reader knows %d)", ErrVersion, where, r.V, Version)
	}
	if r.Saga.ID == "" {
		return Record{}, fmt.Errorf("%w: %s: a record without a saga id", ErrCorrupt, where)
	}
	return r, nil
}
