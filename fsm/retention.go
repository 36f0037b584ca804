package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// Retention. Finished sagas are removed by KindRemoved records, which the
// engine's retention loop proposes like any transition: the record names
// the sagas and keys to remove, so every replica, and every replay,
// removes the same ones at the same log index. Two indexes serve it:
//
//	q/r/<str definition><version BE><finished><id> → "" (finished top-level sagas, oldest first per definition version)
//	g/<finished><idempotency key>      → "" (keys kept past their saga's removal)
//
// where <finished> is the saga's UpdatedAt once it is COMPLETED or FAILED
// (Unix ns, sign bit flipped, BE), which no later transition of a
// top-level saga changes. q/r/ is a query index (rebuilt with the others;
// see query.go). A child saga is not in it: a COMPLETED child can still
// be reverted while its parent runs, so children are removed with their
// parent, which finishes only once they have.
//
// Removing a saga deletes its value, its history (one range delete), its
// index keys and its idempotency key, or keeps the key (Removal.KeepKeys):
// k/<key> then holds the saga id, a zero byte and <finished>, and g/ lists
// it for a later removal to forget (Removal.Keys). A kept key still
// refuses a second start with it (DuplicateKeyError names the removed
// saga): the dedupe window outlives the saga.
var (
	prefixQRetain = []byte("q/r/")
	prefixKept    = []byte("g/")
)

// retentionKey is the q/r/ key of sg, nil unless sg is a finished
// top-level saga.
func retentionKey(sg *Saga) []byte { return appendRetentionKey(nil, sg) }

// appendRetentionKey appends the q/r/ key of sg to dst, or returns nil
// unless sg is a finished top-level saga.
func appendRetentionKey(dst []byte, sg *Saga) []byte {
	if !hasRetentionKey(sg) {
		return nil
	}
	return appendSort(appendRetentionPrefix(dst, sg.Definition, sg.Version), sg.UpdatedAt, sg.ID)
}

func hasRetentionKey(sg *Saga) bool { return sg != nil && sg.Parent == "" && sg.State.Terminal() }

// retentionPrefix is the q/r/ prefix of a definition version's sagas.
func retentionPrefix(definition string, version int) []byte {
	return appendRetentionPrefix(nil, definition, version)
}

func appendRetentionPrefix(dst []byte, definition string, version int) []byte {
	return binary.BigEndian.AppendUint64(appendStr(append(dst, prefixQRetain...), definition), uint64(version))
}

// writeRetentionKey moves the q/r/ key of a saga from prev's (nil: none)
// to next's, in b. kb is scratch for the keys.
func writeRetentionKey(b batchWriter, kb *[]byte, prev, next *Saga) error {
	// A saga has a q/r/ key only once finished, and a top-level one
	// finishes once: the common transition has none before or after.
	if !hasRetentionKey(prev) && !hasRetentionKey(next) {
		return nil
	}
	pk, nk := retentionKey(prev), appendRetentionKey((*kb)[:0], next)
	if nk != nil {
		*kb = nk
	}
	if bytes.Equal(pk, nk) {
		return nil
	}
	if pk != nil {
		if err := b.Delete(pk, nil); err != nil {
			return err
		}
	}
	if nk != nil {
		return b.Set(nk, nil, nil)
	}
	return nil
}

func keptKey(finished int64, k string) []byte {
	return append(appendTime(slices.Clone(prefixKept), finished), k...)
}

// keptValue is the k/ value of a key kept past its saga's removal.
func keptValue(id string, finished int64) []byte {
	return appendTime(append([]byte(id), 0), finished)
}

// splitKeyValue parses a k/ value: the owning saga's id and, for a key
// kept past its saga, when the saga finished.
func splitKeyValue(v []byte) (owner string, finished int64, kept bool) {
	i := bytes.IndexByte(v, 0)
	if i < 0 || len(v) != i+9 {
		return string(v), 0, false
	}
	return string(v[:i]), int64(binary.BigEndian.Uint64(v[i+1:]) ^ (1 << 63)), true
}

// Expired returns up to limit ids of finished top-level sagas of a
// definition version that finished before the time (Unix ns), oldest
// first: the candidates for a removal. Each version has its own
// retention (the definition a saga started with decides, as for
// everything else about it).
func (s *Store) Expired(definition string, version int, before int64, limit int) ([]string, error) {
	ids, _, err := s.ExpiredAfter(definition, version, before, "", limit)
	return ids, err
}

// ExpiredAfter is Expired from a cursor: after is "" or the next cursor
// a previous call returned, and next is the cursor of the candidates
// after these ("" when there are no more). A removal skips a candidate
// whose tree is not finished (a child still STUCK or running), which
// stays first in the index: a pass pages on past it.
func (s *Store) ExpiredAfter(definition string, version int, before int64, after string, limit int) (ids []string, next string, err error) {
	p := retentionPrefix(definition, version)
	lower := p
	if after != "" {
		if !bytes.HasPrefix([]byte(after), p) || len(after) < len(p)+8 {
			return nil, "", fmt.Errorf("%w: bad retention cursor", ErrInvalidQuery)
		}
		lower = append([]byte(after), 0) // the least key after it
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: appendTime(slices.Clone(p), before)})
	if err != nil {
		return nil, "", err
	}
	defer it.Close()
	var last string
	for it.First(); it.Valid() && len(ids) < limit; it.Next() {
		last = string(it.Key()) // a copy: the iterator reuses its key
		ids = append(ids, last[len(p)+8:])
	}
	if len(ids) == limit && it.Valid() {
		next = last
	}
	return ids, next, it.Error()
}

// ExpiredKeys returns up to limit idempotency keys kept past their
// sagas' removal whose sagas finished before the time, oldest first.
func (s *Store) ExpiredKeys(before int64, limit int) ([]string, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefixKept, UpperBound: appendTime(slices.Clone(prefixKept), before)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var ks []string
	for it.First(); it.Valid() && len(ks) < limit; it.Next() {
		ks = append(ks, string(it.Key()[len(prefixKept)+8:]))
	}
	return ks, it.Error()
}

// lookup returns the saga as this batch sees it: nil if it does not exist
// or this batch removed it.
func (a *applier) lookup(id string) (*Saga, error) {
	if o, ok := a.ov[id]; ok {
		return o.saga, nil
	}
	sg, err := a.s.get(id)
	if errors.Is(err, ErrUnknownSaga) {
		return nil, nil
	}
	return sg, err
}

// keyValue returns the k/ value of an idempotency key as this batch sees
// it (nil: free).
func (a *applier) keyValue(k string) ([]byte, error) {
	if v, ok := a.keys[k]; ok {
		if v == "" {
			return nil, nil
		}
		return []byte(v), nil
	}
	return a.s.keyValue(k)
}

// remove applies a KindRemoved record and returns the sagas it removed
// (each listed saga, then its children), as they were. An error is an I/O
// error.
func (a *applier) remove(r *Record) ([]*Saga, error) {
	var removed []*Saga
	for _, id := range r.Remove.Sagas {
		sg, err := a.lookup(id)
		if err != nil {
			return nil, err
		}
		if sg == nil || sg.Parent != "" || !sg.State.Terminal() {
			continue
		}
		// A parent resolved by hand can finish before its child: the tree
		// stays whole until every saga in it has finished (a child left
		// behind would never be removed: it is no candidate of its own).
		if done, err := a.treeFinished(sg); err != nil || !done {
			if err != nil {
				return nil, err
			}
			continue
		}
		if removed, err = a.removeTree(sg, r.Remove.KeepKeys, removed); err != nil {
			return nil, err
		}
	}
	for _, k := range r.Remove.Keys {
		v, err := a.keyValue(k)
		if err != nil {
			return nil, err
		}
		_, finished, kept := splitKeyValue(v)
		if !kept {
			continue // free, or held by a saga that still exists
		}
		if err := a.b.Delete(idemKey(k), nil); err != nil {
			return nil, err
		}
		if err := a.b.Delete(keptKey(finished, k), nil); err != nil {
			return nil, err
		}
		a.keys[k] = ""
	}
	return removed, nil
}

// children returns the child sagas of sg as this batch sees them: those
// its child steps started (found by ChildID) that name sg as their
// parent.
func (a *applier) children(sg *Saga) ([]*Saga, error) {
	var out []*Saga
	for i := range sg.Steps {
		if sg.Steps[i].StepDef == nil || sg.Steps[i].Child == "" {
			continue
		}
		c, err := a.lookup(ChildID(sg.ID, i))
		if err != nil {
			return nil, err
		}
		if c != nil && c.Parent == sg.ID {
			out = append(out, c)
		}
	}
	return out, nil
}

// treeFinished reports whether every child saga below sg is finished.
func (a *applier) treeFinished(sg *Saga) (bool, error) {
	cs, err := a.children(sg)
	if err != nil {
		return false, err
	}
	for _, c := range cs {
		if !c.State.Terminal() {
			return false, nil
		}
		if done, err := a.treeFinished(c); err != nil || !done {
			return false, err
		}
	}
	return true, nil
}

// removeTree deletes sg, its history and its keys, then its children
// (found by ChildID, and only those that name sg as their parent and are
// finished: a parent finishes after its children), appending their ids
// to removed.
func (a *applier) removeTree(sg *Saga, keepKeys bool, removed []*Saga) ([]*Saga, error) {
	b, id := a.b, sg.ID
	cs, err := a.children(sg) // every one finished: remove checked treeFinished
	if err != nil {
		return nil, err
	}
	// What Pebble holds for the saga: its state before this batch if the
	// batch touched it (the batch's own value is only written at commit),
	// or the value just read.
	inStore := sg
	if o, touched := a.ov[id]; touched {
		inStore = o.before
	}
	if inStore != nil {
		if err := b.Delete(sagaKey(id), nil); err != nil {
			return nil, err
		}
		if err := b.Delete(stateKey(inStore.State, id), nil); err != nil {
			return nil, err
		}
		for _, k := range append(queryKeys(inStore), retentionKey(inStore)) {
			if k != nil {
				if err := b.Delete(k, nil); err != nil {
					return nil, err
				}
			}
		}
	}
	// The range delete covers the history this batch deferred, which
	// must come before it in the batch.
	if err := a.writeHistory(id); err != nil {
		return nil, err
	}
	hp := histPrefix(id)
	if err := b.DeleteRange(hp, upperBound(hp), nil); err != nil {
		return nil, err
	}
	if k := sg.IdempotencyKey; k != "" {
		if keepKeys {
			v := keptValue(id, sg.UpdatedAt)
			if err := b.Set(idemKey(k), v, nil); err != nil {
				return nil, err
			}
			if err := b.Set(keptKey(sg.UpdatedAt, k), nil, nil); err != nil {
				return nil, err
			}
			a.keys[k] = string(v)
		} else {
			if err := b.Delete(idemKey(k), nil); err != nil {
				return nil, err
			}
			a.keys[k] = ""
		}
	}
	// The batch now sees no such saga: commit writes nothing for it, and
	// a start of the same id later in the batch makes a new one.
	// The overlay's before becomes nil too: what Pebble holds of the
	// saga is deleted by this batch.
	o := a.touch(id, nil)
	o.before, o.saga, o.owned = nil, nil, false
	removed = append(removed, sg)
	for _, c := range cs {
		if removed, err = a.removeTree(c, keepKeys, removed); err != nil {
			return nil, err
		}
	}
	return removed, nil
}
