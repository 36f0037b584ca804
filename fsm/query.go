package fsm

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/cockroachdb/pebble/v2"
)

// Query indexes. Every key ends in the same sort key, the saga's creation
// time then its id, so a range scan of any of them yields sagas in
// creation order (forward: oldest first; backward: newest first), a
// created-time range is a key range of every index, and one cursor (a
// position in that order) pages through whichever index a query uses.
//
//	q/a/<sort>                          → "" (every saga)
//	q/s/<state byte><sort>              → "" (by state)
//	q/d/<str definition><sort>          → "" (by definition)
//	q/v/<str definition><version BE><sort> → "" (by definition and version)
//	q/n/<str user><sort>                → "" (by user)
//	q/m/<str key><str value><sort>      → "" (by meta key=value; the tenant is Meta["tenant"])
//	q/r/…                               → finished top-level sagas by definition and finish time (retention.go)
//	m/qindex                            → queryIndexVersion once the q/ keys are complete
//
// where <sort> is the creation time (Unix ns, sign bit flipped, BE) and
// the id, and <str> is a uvarint length and the bytes (so no value can be
// the prefix of another's key). The tenant is not a field of its own: the
// policy layer records it as Meta["tenant"] (policy.ExecuteWithSaga), so
// Query.Tenant reads the meta index.
//
// The updated time is not indexed: it changes at every transition, and
// an index on it would cost a delete and a set per transition; an updated
// range filters the sagas read through another index.
//
// The keys are written by writeSaga, in the batch that writes the saga
// (apply, replay and recovery alike) and travel in snapshots. A store
// without m/qindex (written before these indexes existed, or restored
// from such a snapshot) has them rebuilt from its sagas at OpenStore and
// after Restore; a read-only store without them is listed by a scan.
var (
	prefixQuery    = []byte("q/")
	prefixQAll     = []byte("q/a/")
	prefixQState   = []byte("q/s/")
	prefixQDef     = []byte("q/d/")
	prefixQVersion = []byte("q/v/")
	prefixQUser    = []byte("q/n/")
	prefixQMeta    = []byte("q/m/")
	keyQueryIndex  = []byte("m/qindex")
)

// queryIndexVersion is the layout of the q/ keys; a store holding another
// value (or none) has them rebuilt.
const queryIndexVersion = "3" // 2: q/r/ (retention.go); 3: q/r/ by definition version

// ErrInvalidQuery: List or Count was given a query that cannot be run (an
// unknown state or order, a version without a definition, a malformed
// cursor, an empty range). Nothing is read.
var ErrInvalidQuery = errors.New("fsm: invalid query")

// Order is the order of a List.
type Order uint8

const (
	// OrderOldest lists the oldest sagas first (the default).
	OrderOldest Order = iota
	// OrderNewest lists the newest sagas first.
	OrderNewest
)

// ParseOrder parses "oldest" or "newest" ("" is oldest).
func ParseOrder(s string) (Order, error) {
	switch s {
	case "", "oldest":
		return OrderOldest, nil
	case "newest":
		return OrderNewest, nil
	}
	return 0, fmt.Errorf("%w: order %q: want newest or oldest", ErrInvalidQuery, s)
}

func (o Order) String() string {
	if o == OrderNewest {
		return "newest"
	}
	return "oldest"
}

func appendStr(dst []byte, s string) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(s))), s...)
}

func appendTime(dst []byte, t int64) []byte {
	return binary.BigEndian.AppendUint64(dst, uint64(t)^(1<<63))
}

func appendSort(dst []byte, created int64, id string) []byte {
	return append(appendTime(dst, created), id...)
}

// queryKeys returns the q/ keys of sg, in no particular order.
func queryKeys(sg *Saga) [][]byte {
	var ks [][]byte
	var kb []byte
	_ = eachQueryKey(&kb, sg, func(k []byte) error {
		ks = append(ks, slices.Clone(k))
		return nil
	})
	return ks
}

// eachQueryKey calls fn with each q/ key of sg, built in *kb (reused: fn
// must not keep it; Pebble's Batch.Set and Delete copy what they are
// given). Applying a batch builds the keys of every new saga: doing it in
// one buffer, instead of a slice of keys each joined from parts, took
// most of the allocations of a replay's commit.
func eachQueryKey(kb *[]byte, sg *Saga, fn func(k []byte) error) error {
	// The <sort> part goes at the end of every key: build it once at the
	// buffer's end, and each key before it, then move it.
	k := *kb
	defer func() { *kb = k }()
	put := func(build func(dst []byte) []byte) error {
		k = build(k[:0])
		k = appendSort(k, sg.CreatedAt, sg.ID)
		return fn(k)
	}
	if err := put(func(d []byte) []byte { return append(d, prefixQAll...) }); err != nil {
		return err
	}
	if err := put(func(d []byte) []byte { return append(append(d, prefixQState...), byte(sg.State)) }); err != nil {
		return err
	}
	if err := put(func(d []byte) []byte { return appendStr(append(d, prefixQDef...), sg.Definition) }); err != nil {
		return err
	}
	if err := put(func(d []byte) []byte {
		return binary.BigEndian.AppendUint64(appendStr(append(d, prefixQVersion...), sg.Definition), uint64(sg.Version))
	}); err != nil {
		return err
	}
	if sg.User != "" {
		if err := put(func(d []byte) []byte { return appendStr(append(d, prefixQUser...), sg.User) }); err != nil {
			return err
		}
	}
	if len(sg.Meta) == 0 {
		return nil
	}
	for _, mk := range slices.Sorted(maps.Keys(sg.Meta)) {
		if err := put(func(d []byte) []byte { return appendStr(appendStr(append(d, prefixQMeta...), mk), sg.Meta[mk]) }); err != nil {
			return err
		}
	}
	return nil
}

// sameQueryKeys reports whether prev and next have the same q/ keys
// (the common case: a transition that changes no indexed field).
func sameQueryKeys(prev, next *Saga) bool {
	return prev.State == next.State && prev.CreatedAt == next.CreatedAt && prev.ID == next.ID &&
		prev.Definition == next.Definition && prev.Version == next.Version && prev.User == next.User &&
		maps.Equal(prev.Meta, next.Meta)
}

// writeQueryKeys moves the q/ keys of a saga from prev's (nil: none) to
// next's, in b. kb is scratch for the keys (nil: allocate).
func writeQueryKeys(b batchWriter, kb *[]byte, prev, next *Saga) error {
	if kb == nil {
		kb = new([]byte)
	}
	if err := writeRetentionKey(b, kb, prev, next); err != nil {
		return err
	}
	if prev != nil && prev.State != next.State {
		st := *prev
		st.State = next.State
		if sameQueryKeys(&st, next) {
			// Only the state changed (the common transition): move its key.
			k := appendSort(append(append((*kb)[:0], prefixQState...), byte(prev.State)), next.CreatedAt, next.ID)
			if err := b.Delete(k, nil); err != nil {
				return err
			}
			k[len(prefixQState)] = byte(next.State)
			*kb = k
			return b.Set(k, nil, nil)
		}
	}
	if prev != nil && sameQueryKeys(prev, next) {
		return nil
	}
	if prev == nil {
		// A new saga (the common case of the rest): nothing to delete.
		return eachQueryKey(kb, next, func(k []byte) error { return b.Set(k, nil, nil) })
	}
	nk := queryKeys(next)
	for _, k := range queryKeys(prev) {
		if !slices.ContainsFunc(nk, func(n []byte) bool { return bytes.Equal(n, k) }) {
			if err := b.Delete(k, nil); err != nil {
				return err
			}
		}
	}
	for _, k := range nk {
		if err := b.Set(k, nil, nil); err != nil {
			return err
		}
	}
	return nil
}

// ensureQueryIndex rebuilds the q/ keys from the sagas when m/qindex does
// not hold queryIndexVersion: a store written before the indexes existed.
// The rebuild is idempotent (it starts by deleting every q/ key) and sets
// m/qindex in its last batch, so a crash in the middle redoes it. A
// read-only store is left as it is and listed by a scan.
func (s *Store) ensureQueryIndex(readOnly bool) error {
	v, closer, err := s.db.Get(keyQueryIndex)
	if err == nil {
		ok := string(v) == queryIndexVersion
		closer.Close()
		if ok {
			s.indexed.Store(true)
			return nil
		}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("fsm: read query index version: %w", err)
	}
	s.indexed.Store(false)
	if readOnly || s.restoring.Load() {
		return nil
	}
	b := s.db.NewBatch()
	defer func() { b.Close() }()
	if err := b.DeleteRange(prefixQuery, upperBound(prefixQuery), nil); err != nil {
		return err
	}
	// The definition index of older stores, which q/d replaces.
	if err := b.DeleteRange(prefixDefIdx, upperBound(prefixDefIdx), nil); err != nil {
		return err
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefixSaga, UpperBound: upperBound(prefixSaga)})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		var sg Saga
		if err := unmarshal(it.Value(), &sg); err != nil {
			return fmt.Errorf("fsm: rebuild query index: decode saga %s: %w", it.Key()[len(prefixSaga):], err)
		}
		if err := writeQueryKeys(b, nil, nil, &sg); err != nil {
			return err
		}
		if b.Len() >= 4<<20 {
			if err := b.Commit(pebble.NoSync); err != nil {
				return fmt.Errorf("fsm: rebuild query index: %w", err)
			}
			b.Close()
			b = s.db.NewBatch()
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	if err := b.Set(keyQueryIndex, []byte(queryIndexVersion), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("fsm: rebuild query index: %w", err)
	}
	s.indexed.Store(true)
	return nil
}

// Query selects sagas for List and Count. Zero fields do not filter;
// the filters combine (all must hold).
type Query struct {
	State      SagaState
	Definition string
	// Version, if not 0, keeps only that version of Definition (which it
	// requires).
	Version int
	User    string
	// Tenant is Meta["tenant"], where the policy layer records it.
	Tenant string
	// Meta keeps the sagas whose meta holds every one of these pairs.
	Meta map[string]string
	// CreatedSince and CreatedUntil, if not 0, keep the sagas created in
	// [CreatedSince, CreatedUntil) (Unix nanoseconds).
	CreatedSince, CreatedUntil int64
	// UpdatedSince and UpdatedUntil, if not 0, keep the sagas last
	// changed in [UpdatedSince, UpdatedUntil) (Unix nanoseconds). Not
	// indexed: they filter what another filter's index yields.
	UpdatedSince, UpdatedUntil int64
	// Order is creation order, oldest (default) or newest first.
	Order Order
	// After is the pagination cursor: the next cursor List returned for
	// the previous page ("" for the first page). It is a position in the
	// order, so it pages correctly through any filter; it must be used
	// with the Order it came from.
	After string
	// Limit bounds the page; default 100. Count ignores it.
	Limit int
	// MaxBytes, if not 0, bounds the page by its sagas' data (DataSize):
	// the page stops before the saga that would take it past MaxBytes,
	// holding one saga at least, and the next cursor goes on from its
	// last. A server sets it so that a page of large sagas is neither
	// held whole in memory nor too large a message. Count ignores it.
	MaxBytes int
}

// Validate reports every problem of q at once, wrapping ErrInvalidQuery.
func (q *Query) Validate() error {
	var errs []string
	if q.State != 0 && !slices.Contains(States(), q.State) {
		errs = append(errs, fmt.Sprintf("unknown state %d", q.State))
	}
	if q.Version < 0 {
		errs = append(errs, fmt.Sprintf("version %d is negative", q.Version))
	}
	if q.Version != 0 && q.Definition == "" {
		errs = append(errs, "a version needs a definition")
	}
	if q.Tenant != "" && q.Meta["tenant"] != "" && q.Meta["tenant"] != q.Tenant {
		errs = append(errs, fmt.Sprintf("tenant %q and meta tenant=%q disagree", q.Tenant, q.Meta["tenant"]))
	}
	if q.Order > OrderNewest {
		errs = append(errs, fmt.Sprintf("unknown order %d", q.Order))
	}
	if q.Limit < 0 {
		errs = append(errs, fmt.Sprintf("limit %d is negative", q.Limit))
	}
	if q.MaxBytes < 0 {
		errs = append(errs, fmt.Sprintf("max bytes %d is negative", q.MaxBytes))
	}
	if q.CreatedSince != 0 && q.CreatedUntil != 0 && q.CreatedSince >= q.CreatedUntil {
		errs = append(errs, "created since is not before created until")
	}
	if q.UpdatedSince != 0 && q.UpdatedUntil != 0 && q.UpdatedSince >= q.UpdatedUntil {
		errs = append(errs, "updated since is not before updated until")
	}
	if q.After != "" {
		if _, err := decodeCursor(q.After, q.Order); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidQuery, strings.Join(errs, "; "))
	}
	return nil
}

// cursor is a position in creation order.
type cursor struct {
	created int64
	id      string
}

const cursorVersion = 1

// encodeCursor returns the opaque cursor after sg in order o.
func encodeCursor(sg *Saga, o Order) string {
	b := []byte{cursorVersion, byte(o)}
	b = appendSort(b, sg.CreatedAt, sg.ID)
	return base64.RawURLEncoding.EncodeToString(b)
}

// DataSize is about the bytes of sg's data: its input, meta, outputs and
// error messages, and a fixed charge per step (Query.MaxBytes).
func (sg *Saga) DataSize() int {
	n := 256 + len(sg.Input)
	for k, v := range sg.Meta {
		n += len(k) + len(v)
	}
	if sg.LastError != nil {
		n += len(sg.LastError.Message)
	}
	for i := range sg.Steps {
		st := &sg.Steps[i]
		n += 128 + len(st.Output)
		if st.Err != nil {
			n += len(st.Err.Message)
		}
		if st.CompErr != nil {
			n += len(st.CompErr.Message)
		}
	}
	return n
}

func decodeCursor(s string, o Order) (cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 2+8+1 || b[0] != cursorVersion {
		return cursor{}, fmt.Errorf("cursor %q is not one List returned", s)
	}
	if Order(b[1]) != o {
		return cursor{}, fmt.Errorf("cursor %q was made for order %s, not %s", s, Order(b[1]), o)
	}
	return cursor{created: int64(binary.BigEndian.Uint64(b[2:10]) ^ (1 << 63)), id: string(b[10:])}, nil
}

// meta returns the meta pairs q requires, the tenant included.
func (q *Query) meta() map[string]string {
	if q.Tenant == "" {
		return q.Meta
	}
	m := maps.Clone(q.Meta)
	if m == nil {
		m = map[string]string{}
	}
	m["tenant"] = q.Tenant
	return m
}

// Matches reports whether sg passes every filter of q (the cursor and
// the limit aside): the reference the indexes must agree with.
func (q *Query) Matches(sg *Saga) bool {
	switch {
	case q.State != 0 && sg.State != q.State,
		q.Definition != "" && sg.Definition != q.Definition,
		q.Version != 0 && sg.Version != q.Version,
		q.User != "" && sg.User != q.User,
		q.CreatedSince != 0 && sg.CreatedAt < q.CreatedSince,
		q.CreatedUntil != 0 && sg.CreatedAt >= q.CreatedUntil,
		q.UpdatedSince != 0 && sg.UpdatedAt < q.UpdatedSince,
		q.UpdatedUntil != 0 && sg.UpdatedAt >= q.UpdatedUntil:
		return false
	}
	for k, v := range q.meta() {
		if mv, ok := sg.Meta[k]; !ok || mv != v {
			return false
		}
	}
	return true
}

// plan is how List and Count read the query indexes for q: the index of
// each of its filters (the index of every saga when it has none), whose
// ranges scan intersects in sort order, and whether that intersection
// decides every filter (it does unless an updated range is asked: only
// then must the sagas be read to filter them, and Count reads them).
type plan struct {
	prefixes [][]byte // the key prefix of each index, before the sort key
	exact    bool
}

// plan returns q's plan. Its indexes come most selective first by kind (a
// user's sagas are usually fewer than a definition's), so the scan starts
// with the one that is likely to skip the most.
func (q *Query) plan() plan {
	var ps [][]byte
	if q.User != "" {
		ps = append(ps, appendStr(slices.Clone(prefixQUser), q.User))
	}
	m := q.meta()
	for _, k := range slices.Sorted(maps.Keys(m)) {
		ps = append(ps, appendStr(appendStr(slices.Clone(prefixQMeta), k), m[k]))
	}
	if q.Definition != "" {
		if q.Version != 0 {
			ps = append(ps, binary.BigEndian.AppendUint64(appendStr(slices.Clone(prefixQVersion), q.Definition), uint64(q.Version)))
		} else {
			ps = append(ps, appendStr(slices.Clone(prefixQDef), q.Definition))
		}
	}
	if q.State != 0 {
		ps = append(ps, key(prefixQState, []byte{byte(q.State)}))
	}
	if len(ps) == 0 {
		ps = append(ps, slices.Clone(prefixQAll))
	}
	return plan{prefixes: ps, exact: q.UpdatedSince == 0 && q.UpdatedUntil == 0}
}

// bounds returns the key range of the index with this prefix that q (its
// created range and its cursor) covers.
func (q *Query) bounds(prefix []byte, cur *cursor) (lo, hi []byte) {
	lo, hi = prefix, upperBound(prefix)
	if q.CreatedSince != 0 {
		lo = appendTime(slices.Clone(prefix), q.CreatedSince)
	}
	if q.CreatedUntil != 0 {
		hi = appendTime(slices.Clone(prefix), q.CreatedUntil)
	}
	if cur != nil {
		k := appendSort(slices.Clone(prefix), cur.created, cur.id)
		if q.Order == OrderNewest {
			if bytes.Compare(k, hi) < 0 {
				hi = k
			}
		} else if k = append(k, 0); bytes.Compare(k, lo) > 0 {
			lo = k
		}
	}
	return lo, hi
}

// scan calls fn with each id, in q's order, that every index of p holds
// in range, until fn returns false. Every index ends in the same sort key,
// so one index is a range scan and several are intersected by a leapfrog
// join (Veldhuizen, "Leapfrog Triejoin", 2014): the iterators take turns
// to seek to the sort key the previous one stands on (forward: the first
// at or after it; newest first: the last at or before it), and a key on
// which all of them land is in every index. Each seek moves its iterator
// to a key of its index further in the order, and each iterator moves at
// least once per turn, so the keys read are at most about the number of
// indexes times the size, in range, of the smallest; far fewer when the
// matches of the filters cluster. Nothing but the sizes of the indexes
// in range bounds it, at any store size: there are no probes to run out.
func (s *Store) scan(src iterSource, q *Query, p plan, cur *cursor, fn func(id string) (bool, error)) error {
	n := len(p.prefixes)
	its := make([]*pebble.Iterator, 0, n)
	defer func() {
		for _, it := range its {
			it.Close()
		}
	}()
	for _, prefix := range p.prefixes {
		lo, hi := q.bounds(prefix, cur)
		it, err := src.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			return err
		}
		its = append(its, it)
	}
	newest := q.Order == OrderNewest
	var buf []byte
	// at returns the sort key iterator i stands on after a move that
	// returned ok (nil at the end of its range).
	at := func(i int, ok bool) ([]byte, error) {
		if !ok {
			return nil, its[i].Error()
		}
		s.querySteps.Add(1)
		k := its[i].Key()
		if len(k) <= len(p.prefixes[i])+8 {
			return nil, fmt.Errorf("fsm: malformed query index key %q", k)
		}
		return k[len(p.prefixes[i]):], nil
	}
	// reach moves iterator i to the first key at or after target in q's
	// order. Forward, Pebble starts a SeekGE from where the iterator
	// stands (a step in between would stop it). A SeekLT starts afresh
	// and costs about 60 Prevs (measured), and the next key of the index
	// with fewer keys is often far enough: so newest first, an iterator
	// whose last step reached its target steps once before it seeks, and
	// one whose step fell short seeks the next stepRetry times before it
	// tries again. At most one move in stepRetry+1 reads a key in vain.
	const stepRetry = 8
	stepped := make([]bool, n) // its last step reached its target
	retry := make([]int, n)    // seeks left before it steps again
	for i := 1; i < n; i++ {
		retry[i] = -1 // not positioned before its first seek
	}
	reach := func(i int, target []byte) ([]byte, error) {
		if newest && (stepped[i] || retry[i] == 0) {
			k, err := at(i, its[i].Prev())
			if k == nil || bytes.Compare(k, target) <= 0 {
				stepped[i] = true
				return k, err
			}
			stepped[i], retry[i] = false, stepRetry
		} else if retry[i] > 0 {
			retry[i]--
		}
		buf = append(append(buf[:0], p.prefixes[i]...), target...)
		var ok bool
		if newest {
			// The last key at or before target: every key after it is
			// at or after target+"\x00".
			ok = its[i].SeekLT(append(buf, 0))
		} else {
			ok = its[i].SeekGE(buf)
		}
		retry[i] = max(retry[i], 0)
		return at(i, ok)
	}
	var ok bool
	if newest {
		ok = its[0].Last()
	} else {
		ok = its[0].First()
	}
	k, err := at(0, ok)
	if k == nil {
		return err
	}
	target := slices.Clone(k) // the sort key agree iterators stand on
	agree := 1
	for i := 1 % n; ; i = (i + 1) % n {
		if agree == n {
			more, ferr := fn(string(target[8:]))
			if ferr != nil || !more {
				return ferr
			}
			// Every iterator stands on target: move one past it.
			if newest {
				ok = its[i].Prev()
			} else {
				ok = its[i].Next()
			}
			k, err = at(i, ok)
		} else {
			k, err = reach(i, target)
		}
		if k == nil {
			return err
		}
		if bytes.Equal(k, target) {
			agree++
		} else {
			target, agree = append(target[:0], k...), 1
		}
	}
}

// List returns the sagas matching q in its order, and the cursor of the
// next page ("" when no more match). It intersects the indexes of its
// filters (see scan), so it reads only the sagas that pass them, and
// checks the updated range on those; a page is full unless no more
// sagas match. An invalid query returns an error wrapping
// ErrInvalidQuery.
func (s *Store) List(q Query) ([]*Saga, string, error) {
	if err := q.Validate(); err != nil {
		return nil, "", err
	}
	if q.Limit == 0 {
		q.Limit = 100
	}
	var cur *cursor
	if q.After != "" {
		c, _ := decodeCursor(q.After, q.Order)
		cur = &c
	}
	if !s.indexed.Load() {
		return s.listByScan(&q, cur)
	}
	snap := s.db.NewSnapshot()
	defer snap.Close()
	var out []*Saga
	next, size := "", 0
	err := s.scan(snap, &q, q.plan(), cur, func(id string) (bool, error) {
		sg, err := s.getFrom(snap, id)
		if err != nil {
			return false, err
		}
		if !q.Matches(sg) {
			return true, nil
		}
		if q.MaxBytes > 0 {
			size += sg.DataSize()
		}
		if len(out) == q.Limit || q.MaxBytes > 0 && size > q.MaxBytes && len(out) > 0 {
			next = encodeCursor(out[len(out)-1], q.Order)
			return false, nil
		}
		out = append(out, sg.DeepCopy())
		return true, nil
	})
	if err != nil {
		return nil, "", err
	}
	return out, next, nil
}

// getFrom reads a saga from a snapshot (the live cache may be newer than
// the snapshot the index was read from, so it is not used).
func (s *Store) getFrom(src *pebble.Snapshot, id string) (*Saga, error) {
	v, closer, err := src.Get(sagaKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("fsm: query index names a missing saga %s", id)
	}
	if err != nil {
		return nil, fmt.Errorf("fsm: read saga %s: %w", id, err)
	}
	defer closer.Close()
	var sg Saga
	if err := unmarshal(v, &sg); err != nil {
		return nil, fmt.Errorf("fsm: decode saga %s: %w", id, err)
	}
	return &sg, nil
}

// Count returns the number of sagas matching q (its cursor and limit
// aside). Unless it has an updated range, the intersection of its
// filters' indexes decides it (see scan), and it counts index keys
// without reading the sagas.
func (s *Store) Count(q Query) (int, error) {
	q.After, q.Limit, q.MaxBytes = "", 0, 0
	if err := q.Validate(); err != nil {
		return 0, err
	}
	if !s.indexed.Load() {
		q.Limit = int(^uint(0) >> 1)
		page, _, err := s.listByScan(&q, nil)
		return len(page), err
	}
	snap := s.db.NewSnapshot()
	defer snap.Close()
	p := q.plan()
	n := 0
	err := s.scan(snap, &q, p, nil, func(id string) (bool, error) {
		if !p.exact {
			sg, err := s.getFrom(snap, id)
			if err != nil {
				return false, err
			}
			if !q.Matches(sg) {
				return true, nil
			}
		}
		n++
		return true, nil
	})
	return n, err
}

// listByScan is List over a store without query indexes (read-only and
// written before they existed): it reads every saga.
func (s *Store) listByScan(q *Query, cur *cursor) ([]*Saga, string, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefixSaga, UpperBound: upperBound(prefixSaga)})
	if err != nil {
		return nil, "", err
	}
	defer it.Close()
	var all []*Saga
	for it.First(); it.Valid(); it.Next() {
		s.querySteps.Add(1)
		var sg Saga
		if err := unmarshal(it.Value(), &sg); err != nil {
			return nil, "", fmt.Errorf("fsm: decode saga %s: %w", it.Key()[len(prefixSaga):], err)
		}
		if !q.Matches(&sg) {
			continue
		}
		if cur != nil {
			c := compareSort(sg.CreatedAt, sg.ID, cur.created, cur.id)
			if q.Order == OrderOldest && c <= 0 || q.Order == OrderNewest && c >= 0 {
				continue
			}
		}
		all = append(all, &sg)
	}
	if err := it.Error(); err != nil {
		return nil, "", err
	}
	sort.Slice(all, func(i, j int) bool {
		c := compareSort(all[i].CreatedAt, all[i].ID, all[j].CreatedAt, all[j].ID)
		if q.Order == OrderNewest {
			return c > 0
		}
		return c < 0
	})
	n, size := min(len(all), q.Limit), 0
	for i := 0; i < n && q.MaxBytes > 0; i++ {
		if size += all[i].DataSize(); size > q.MaxBytes && i > 0 {
			n = i
			break
		}
	}
	if len(all) > n {
		return all[:n], encodeCursor(all[n-1], q.Order), nil
	}
	return all, "", nil
}

// compareSort compares two positions in creation order.
func compareSort(c1 int64, id1 string, c2 int64, id2 string) int {
	switch {
	case c1 < c2:
		return -1
	case c1 > c2:
		return 1
	}
	return strings.Compare(id1, id2)
}

// DefinitionVersions is a definition's name and every version stored.
type DefinitionVersions struct {
	Name     string
	Versions []int // ascending
}

// AllDefinitionVersions returns every definition with its versions, by
// name. It reads keys only.
func (s *Store) AllDefinitionVersions() ([]DefinitionVersions, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefixDef, UpperBound: upperBound(prefixDef)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []DefinitionVersions
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[len(prefixDef):]
		if len(k) < 9 || k[len(k)-9] != 0 {
			return nil, fmt.Errorf("fsm: malformed definition key %q", it.Key())
		}
		name, v := string(k[:len(k)-9]), int(binary.BigEndian.Uint64(k[len(k)-8:]))
		if n := len(out); n > 0 && out[n-1].Name == name {
			out[n-1].Versions = append(out[n-1].Versions, v)
		} else {
			out = append(out, DefinitionVersions{Name: name, Versions: []int{v}})
		}
	}
	return out, it.Error()
}
