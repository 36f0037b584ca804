package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sagaengine/saga/fsm"
)

// Retention. Finished sagas (COMPLETED, FAILED) are removed once they
// have been finished for their retention: Definition.Retention, or else
// Options.Retention, or else DefaultRetention. STUCK and running sagas are
// never removed, and a child saga goes with its parent, never alone.
//
// A removal is a transition like any other: the engine (in a replicated
// group, the leader) picks the expired sagas from a time-ordered index,
// gives them to the Archiver if there is one and waits for it to have
// them on disk, then proposes a record naming them (fsm.KindRemoved).
// Applying it deletes each saga's value, its history and its index keys
// in one batch, on every member at the same log index; a saga the record
// names that is no longer finished and top-level is skipped. A crash at
// any point leaves each saga either whole or gone: a saga archived but not
// yet removed is archived again by the next pass (the archive's readers
// recognise the copies: see package archive).
//
// Idempotency keys are deduplicated for Options.DedupeWindow after their
// saga finished, which is at least the retention (its default). A key
// whose window outlasts its saga is kept after the saga is removed: a
// Start with it returns the removed saga's id (created false), and Status
// of that id reports ErrUnknownSaga.

// DefaultRetention is the retention of finished sagas when neither the
// definition nor Options set one: a week, long enough to look into last
// week's failures, short enough that a steady load's state stays bounded.
const DefaultRetention = 7 * 24 * time.Hour

// KeepForever as a retention or a dedupe window keeps finished sagas (or
// their idempotency keys) forever.
const KeepForever = fsm.KeepForever

// DefaultRemovalInterval is how often the engine looks for expired sagas
// when Options.RemovalInterval is 0.
const DefaultRemovalInterval = time.Minute

// ManualRemoval as Options.RemovalInterval turns the engine's removal
// loop off: expired sagas are removed only when RemoveExpired is called.
const ManualRemoval time.Duration = -1

// Archiver receives finished sagas before the engine removes them.
type Archiver interface {
	// Archive stores the sagas, each with its full history, and returns
	// nil only once they are durable: the engine removes them after that,
	// and not at all if Archive fails (it tries again at its next pass).
	// A saga may be given again after a crash; see package archive for
	// the file sink, which recognises such copies.
	Archive(ctx context.Context, sagas []ArchivedSaga) error
}

// ArchivedSaga is one saga given to an Archiver.
type ArchivedSaga struct {
	Status  *Status
	History []fsm.HistoryEntry
}

// RemovalStats is what one pass of RemoveExpired did.
type RemovalStats struct {
	// Sagas counts the sagas removed, children included.
	Sagas int
	// Archived counts the sagas given to the Archiver.
	Archived int
	// Keys counts the idempotency keys forgotten at the end of their
	// dedupe window (keys removed with their saga are not counted).
	Keys int
}

// retentionOf is the retention of the sagas of a definition version.
func (e *Engine) retentionOf(d *Definition) time.Duration {
	if d.Retention != 0 {
		return d.Retention
	}
	return e.opts.Retention
}

// keepKeys reports whether the idempotency keys of sagas kept for ret
// outlive them.
func (e *Engine) keepKeys(ret time.Duration) bool {
	w := e.opts.DedupeWindow
	return w == KeepForever || (ret != KeepForever && w > ret)
}

// RemoveExpired removes, now, every finished saga past its retention and
// forgets the idempotency keys past their dedupe window, as the engine
// does every Options.RemovalInterval. It returns what it removed, also
// when it stops at an error (a failed archive, a lost leadership, a
// closed engine); what it did not reach is left for the next pass.
func (e *Engine) RemoveExpired(ctx context.Context) (RemovalStats, error) {
	var st RemovalStats
	if e.opts.Inspect {
		return st, ErrReadOnly
	}
	// A follower cannot remove: refused before it archives anything.
	if err := e.gate(ctx); err != nil {
		return st, err
	}
	e.removeMu.Lock()
	defer e.removeMu.Unlock()
	now := e.now()
	var defs []fsm.DefinitionVersions
	if err := e.read(func() (err error) { defs, err = e.store.AllDefinitionVersions(); return err }); err != nil {
		return st, err
	}
	type version struct {
		name string
		v    int
	}
	var versions []version
	for _, dv := range defs {
		for _, v := range dv.Versions {
			versions = append(versions, version{dv.Name, v})
		}
	}
	for _, dv := range versions {
		var d *Definition
		if err := e.read(func() (err error) { d, err = e.store.Definition(dv.name, dv.v); return err }); err != nil {
			return st, err
		}
		ret := e.retentionOf(d)
		if ret == KeepForever {
			continue
		}
		// By a cursor: a saga the removal skips (one whose child is not
		// finished) stays in the index, and must not stall the pass.
		for cur := ""; ; {
			var ids []string
			if err := e.read(func() (err error) {
				ids, cur, err = e.store.ExpiredAfter(dv.name, dv.v, now-int64(ret), cur, e.opts.RemovalBatch)
				return err
			}); err != nil {
				return st, err
			}
			if len(ids) == 0 {
				break
			}
			if e.opts.Archiver != nil {
				// Only the trees archived are named: one skipped (a child
				// not finished) may finish before the record applies.
				var n int
				var err error
				if ids, n, err = e.archive(ctx, ids); err != nil {
					return st, fmt.Errorf("engine: archive before removal (nothing removed): %w", err)
				}
				st.Archived += n
			}
			if len(ids) == 0 {
				if cur == "" {
					break
				}
				continue
			}
			for _, part := range e.fitRecord(ids) {
				res, err := e.propose(ctx, []*fsm.Record{{Kind: fsm.KindRemoved, At: e.now(),
					Remove: &fsm.Removal{Sagas: part, KeepKeys: e.keepKeys(ret)}}})
				if err != nil {
					return st, err
				}
				if res[0].Err != nil {
					return st, res[0].Err
				}
				st.Sagas += len(res[0].Removed)
			}
			if cur == "" {
				break
			}
		}
	}
	if w := e.opts.DedupeWindow; w != KeepForever {
		for {
			var ks []string
			if err := e.read(func() (err error) { ks, err = e.store.ExpiredKeys(now-int64(w), e.opts.RemovalBatch); return err }); err != nil {
				return st, err
			}
			if len(ks) == 0 {
				break
			}
			for _, part := range e.fitRecord(ks) {
				res, err := e.propose(ctx, []*fsm.Record{{Kind: fsm.KindRemoved, At: e.now(), Remove: &fsm.Removal{Keys: part}}})
				if err != nil {
					return st, err
				}
				if res[0].Err != nil {
					return st, res[0].Err
				}
				st.Keys += len(part)
			}
			if len(ks) < e.opts.RemovalBatch {
				break
			}
		}
	}
	return st, nil
}

// fitRecord cuts the ids or keys of a removal into parts whose records
// fit Options.WAL.MaxRecordSize: an idempotency key is as long as a start
// record allows, and a page of them can be far over it.
func (e *Engine) fitRecord(items []string) [][]string {
	budget := e.opts.WAL.MaxRecordSize - 256 // the record's other fields
	var parts [][]string
	start, size := 0, 0
	for i, it := range items {
		n := len(it) + 5 // a msgpack str header is at most 5 bytes
		if i > start && size+n > budget {
			parts = append(parts, items[start:i])
			start, size = i, 0
		}
		size += n
	}
	return append(parts, items[start:])
}

// archive gives the sagas, and the children a removal takes with them,
// to the Archiver, and returns the ids of the top-level sagas it gave
// (with their trees: the ones the removal may name) and how many sagas
// it gave.
func (e *Engine) archive(ctx context.Context, ids []string) ([]string, int, error) {
	var batch []ArchivedSaga
	// add adds the tree of id to batch; false: the removal skips it (a
	// saga in it is not finished), and so does the archive.
	var add func(id string, parent string) (bool, error)
	add = func(id, parent string) (bool, error) {
		var sg *fsm.Saga
		var h []fsm.HistoryEntry
		err := e.read(func() (err error) {
			if sg, err = e.store.Get(id); err != nil {
				return err
			}
			h, err = e.store.History(id)
			return err
		})
		if errors.Is(err, fsm.ErrUnknownSaga) {
			return parent != "", nil // a child that never started; a parent already gone
		}
		if err != nil {
			return false, err
		}
		if sg.Parent != parent {
			return parent != "", nil // not its child: the step never started one
		}
		if !sg.State.Terminal() {
			return false, nil // what the removal skips
		}
		batch = append(batch, ArchivedSaga{Status: statusOf(sg), History: h})
		for i := range sg.Steps {
			if sg.Steps[i].StepDef != nil && sg.Steps[i].Child != "" {
				if ok, err := add(fsm.ChildID(id, i), id); err != nil || !ok {
					return false, err
				}
			}
		}
		return true, nil
	}
	var archived []string
	for _, id := range ids {
		n := len(batch)
		ok, err := add(id, "")
		if err != nil {
			return nil, 0, err
		}
		if !ok {
			batch = batch[:n]
			continue
		}
		archived = append(archived, id)
	}
	if len(batch) == 0 {
		return nil, 0, nil
	}
	if err := e.opts.Archiver.Archive(ctx, batch); err != nil {
		return nil, 0, err
	}
	return archived, len(batch), nil
}

// retentionLoop runs RemoveExpired every RemovalInterval, on the leader.
func (e *Engine) retentionLoop() {
	defer e.bg.Done()
	if e.opts.RemovalInterval == ManualRemoval {
		return
	}
	for {
		t := e.opts.Clock.NewTimer(e.opts.RemovalInterval)
		select {
		case <-e.ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		st, err := e.RemoveExpired(e.ctx) // a follower's is refused at once (ErrNotLeader)
		if err != nil && e.ctx.Err() == nil && !errors.Is(err, ErrNotLeader) {
			e.opts.Logger.Warn("engine: removal of expired sagas stopped", "err", err, "removed", st.Sagas, "archived", st.Archived)
		} else if st.Sagas > 0 || st.Keys > 0 {
			e.opts.Logger.Debug("engine: removed expired sagas", "sagas", st.Sagas, "keys", st.Keys, "archived", st.Archived)
		}
	}
}
