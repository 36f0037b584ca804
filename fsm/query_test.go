package fsm

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

var querySeed = flag.Uint64("query-seed", 0, "seed of the query matrix tests (0: from the clock)")

func seedT(t *testing.T) *rand.Rand {
	seed := *querySeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -query-seed %d)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed))
}

// population is a log of random sagas: ids not in creation order,
// creation times that collide, users, tenants and meta drawn from small
// sets, and transitions that spread them over every state.
type population struct {
	ids     []string
	entries []Entry
}

func randomPopulation(t testing.TB, rng *rand.Rand, n int) *population {
	p := &population{}
	var recs []*Record
	var at int64 = 1000
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%c%04d", 'a'+rng.IntN(26), i)
		steps := 1 + rng.IntN(2)
		r := startRec(id, "", []string{"s1", "s2"}[:steps]...)
		r.Start.Definition = []string{"order", "refund", "ship"}[rng.IntN(3)]
		r.Start.Version = 1 + rng.IntN(3)
		if u := rng.IntN(8); u > 0 {
			r.Start.User = fmt.Sprintf("u%d", u)
		}
		r.Start.Meta = map[string]string{}
		if tn := rng.IntN(4); tn > 0 {
			r.Start.Meta["tenant"] = fmt.Sprintf("t%d", tn)
		}
		if rng.IntN(2) == 0 {
			r.Start.Meta["region"] = []string{"eu", "us"}[rng.IntN(2)]
		}
		if rng.IntN(3) > 0 {
			at += int64(rng.IntN(3)) // 0: same creation time as the previous one
		}
		r.At = at
		recs = append(recs, r)
		p.ids = append(p.ids, id)
	}
	// Transitions at later times, in random order of sagas.
	for _, i := range rng.Perm(n) {
		at += int64(1 + rng.IntN(3))
		id := p.ids[i]
		switch rng.IntN(4) {
		case 0: // stays in progress
		case 1:
			recs = append(recs, &Record{Kind: KindStepCompleted, Saga: id, Step: 0, At: at},
				&Record{Kind: KindStepCompleted, Saga: id, Step: 1, At: at}) // the second is rejected on 1-step sagas
		case 2:
			recs = append(recs, &Record{Kind: KindStepFailed, Saga: id, Step: 0, At: at, Err: &ErrorInfo{Message: "no"}})
		case 3:
			recs = append(recs, &Record{Kind: KindStepCompleted, Saga: id, Step: 0, At: at},
				&Record{Kind: KindStepFailed, Saga: id, Step: 1, At: at, Err: &ErrorInfo{Message: "no"}})
		}
	}
	p.entries = entries(t, 1, recs...)
	return p
}

// applyInBatches applies the population through ApplyBatch, in batches
// of random sizes.
func (p *population) applyInBatches(t testing.TB, rng *rand.Rand, s *Store) {
	for i := 0; i < len(p.entries); {
		j := min(len(p.entries), i+1+rng.IntN(50))
		if _, err := s.ApplyBatch(p.entries[i:j]); err != nil {
			t.Fatal(err)
		}
		i = j
	}
}

// randomQuery draws one to three filters, an order and a page size.
func randomQuery(rng *rand.Rand, createdMax int64) Query {
	var q Query
	for n := rng.IntN(4); n > 0; n-- {
		switch rng.IntN(9) {
		case 0:
			q.State = States()[rng.IntN(len(States()))]
		case 1:
			q.Definition = []string{"order", "refund", "ship", "none"}[rng.IntN(4)]
		case 2:
			q.Definition, q.Version = []string{"order", "refund"}[rng.IntN(2)], 1+rng.IntN(3)
		case 3:
			q.User = fmt.Sprintf("u%d", 1+rng.IntN(8))
		case 4:
			q.Tenant = fmt.Sprintf("t%d", 1+rng.IntN(3))
		case 5:
			q.Meta = map[string]string{"region": []string{"eu", "us"}[rng.IntN(2)]}
		case 6:
			q.CreatedSince = 1000 + rng.Int64N(createdMax-1000)
		case 7:
			q.CreatedUntil = 1001 + rng.Int64N(createdMax-1000)
		case 8:
			q.UpdatedSince = 1000 + rng.Int64N(2*createdMax-1000)
		}
	}
	if q.CreatedUntil != 0 && q.CreatedSince >= q.CreatedUntil {
		q.CreatedSince = 0
	}
	q.Order = Order(rng.IntN(2))
	q.Limit = 1 + rng.IntN(40)
	if rng.IntN(4) == 0 {
		q.MaxBytes = 300 + rng.IntN(3000) // a page of one saga to a dozen
	}
	return q
}

// randomJoinQuery draws two to five indexed filters (so List and Count
// intersect as many indexes), sometimes a created or updated range, an
// order and a page size.
func randomJoinQuery(rng *rand.Rand, createdMax int64) Query {
	var q Query
	fs := rng.Perm(5)[:2+rng.IntN(4)]
	for _, f := range fs {
		switch f {
		case 0:
			q.State = States()[rng.IntN(len(States()))]
		case 1:
			q.Definition = []string{"order", "refund", "ship"}[rng.IntN(3)]
			if rng.IntN(2) == 0 {
				q.Version = 1 + rng.IntN(3)
			}
		case 2:
			q.User = fmt.Sprintf("u%d", 1+rng.IntN(7))
		case 3:
			q.Tenant = fmt.Sprintf("t%d", 1+rng.IntN(3))
		case 4:
			q.Meta = map[string]string{"region": []string{"eu", "us"}[rng.IntN(2)]}
		}
	}
	switch rng.IntN(6) {
	case 0:
		q.CreatedSince = 1000 + rng.Int64N(createdMax-1000)
	case 1:
		q.CreatedUntil = 1001 + rng.Int64N(createdMax-1000)
	case 2:
		q.CreatedSince = 1000 + rng.Int64N(createdMax-1000)
		q.CreatedUntil = q.CreatedSince + 1 + rng.Int64N(createdMax/4)
	case 3:
		q.UpdatedSince = 1000 + rng.Int64N(2*createdMax-1000)
	}
	q.Order = Order(rng.IntN(2))
	q.Limit = 1 + rng.IntN(10)
	return q
}

// reference is the brute-force answer: every saga read by id, filtered
// field by field (independently of Query.Matches), sorted by creation.
func reference(t testing.TB, s *Store, ids []string, q Query) []string {
	t.Helper()
	var out []*Saga
	for _, id := range ids {
		sg, err := s.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		ok := (q.State == 0 || sg.State == q.State) &&
			(q.Definition == "" || sg.Definition == q.Definition) &&
			(q.Version == 0 || sg.Version == q.Version) &&
			(q.User == "" || sg.User == q.User) &&
			(q.Tenant == "" || sg.Meta["tenant"] == q.Tenant) &&
			(q.CreatedSince == 0 || sg.CreatedAt >= q.CreatedSince) &&
			(q.CreatedUntil == 0 || sg.CreatedAt < q.CreatedUntil) &&
			(q.UpdatedSince == 0 || sg.UpdatedAt >= q.UpdatedSince) &&
			(q.UpdatedUntil == 0 || sg.UpdatedAt < q.UpdatedUntil)
		for k, v := range q.Meta {
			if mv, has := sg.Meta[k]; !has || mv != v {
				ok = false
			}
		}
		if ok {
			out = append(out, sg)
		}
	}
	slices.SortFunc(out, func(a, b *Saga) int {
		c := compareSort(a.CreatedAt, a.ID, b.CreatedAt, b.ID)
		if q.Order == OrderNewest {
			return -c
		}
		return c
	})
	ids2 := make([]string, len(out))
	for i, sg := range out {
		ids2[i] = sg.ID
	}
	return ids2
}

// listAll pages through q and returns the ids in the order listed,
// failing on a page that is short before the end.
func listAll(t testing.TB, s *Store, q Query) []string {
	t.Helper()
	var got []string
	for pages := 0; ; pages++ {
		page, next, err := s.List(q)
		if err != nil {
			t.Fatalf("%+v: %v", q, err)
		}
		size := 0
		for _, sg := range page {
			size += sg.DataSize()
		}
		switch {
		case q.MaxBytes > 0 && size > q.MaxBytes && len(page) > 1:
			t.Fatalf("%+v: a page of %d sagas holds %d bytes", q, len(page), size)
		case next != "" && len(page) != q.Limit && q.MaxBytes == 0:
			t.Fatalf("%+v: a page of %d before the end", q, len(page))
		case next != "" && len(page) == 0:
			t.Fatalf("%+v: an empty page before the end", q)
		}
		for _, sg := range page {
			got = append(got, sg.ID)
		}
		if next == "" {
			return got
		}
		if pages > 10000 {
			t.Fatalf("%+v: pagination does not end", q)
		}
		q.After = next
	}
}

func checkQueries(t *testing.T, rng *rand.Rand, s *Store, ids []string, createdMax int64, n int) {
	t.Helper()
	// Every single-filter query first (those Count answers from index keys
	// alone), then random combinations.
	var qs []Query
	for _, st := range States() {
		qs = append(qs, Query{State: st, Limit: 7}, Query{State: st, Order: OrderNewest, Limit: 50})
	}
	for i := 1; i < 9; i++ {
		qs = append(qs, Query{User: fmt.Sprintf("u%d", i), Limit: 9}, Query{Tenant: fmt.Sprintf("t%d", i%4), Limit: 11})
	}
	for i := 0; i < n; i++ {
		qs = append(qs, randomQuery(rng, createdMax), randomJoinQuery(rng, createdMax))
	}
	for _, q := range qs {
		want := reference(t, s, ids, q)
		if got := listAll(t, s, q); !slices.Equal(got, want) {
			t.Fatalf("query %+v:\n got %v\nwant %v", q, got, want)
		}
		if c, err := s.Count(q); err != nil || c != len(want) {
			t.Fatalf("count %+v = %d, %v; want %d", q, c, err, len(want))
		}
	}
}

func createdMax(t testing.TB, p *population) int64 {
	var m int64
	for _, e := range p.entries {
		m = max(m, e.Rec.At)
	}
	return m
}

// TestQueryMatrixMatchesBruteForce: random sagas, random combined
// filters and orders, every page compared with a brute-force filter of
// the same sagas; paging returns each match exactly once, in order.
func TestQueryMatrixMatchesBruteForce(t *testing.T) {
	rng := seedT(t)
	s, err := OpenStore(t.TempDir(), StoreOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := randomPopulation(t, rng, 400)
	p.applyInBatches(t, rng, s)
	checkQueries(t, rng, s, p.ids, createdMax(t, p), 300)
}

// TestQueryIndexesSurviveReplayRebuildAndSnapshot: a store built by the
// Replayer (recovery's path), a store whose indexes were rebuilt at Open
// (one written before they existed), a read-only store without them
// (listed by a scan) and a store restored from a snapshot answer every
// query like the store built entry batch by entry batch.
func TestQueryIndexesSurviveReplayRebuildAndSnapshot(t *testing.T) {
	rng := seedT(t)
	p := randomPopulation(t, rng, 300)
	cmax := createdMax(t, p)
	ref, err := OpenStore(t.TempDir(), StoreOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	p.applyInBatches(t, rng, ref)
	refHash := mustHash(t, ref)

	replayed, err := OpenStore(t.TempDir(), StoreOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer replayed.Close()
	rp := replayed.NewReplayer()
	rp.limit = 4 << 10 // several batch commits
	for i := 0; i < len(p.entries); i += 37 {
		if err := rp.Apply(p.entries[i:min(len(p.entries), i+37)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := rp.Finish(); err != nil {
		t.Fatal(err)
	}
	if h := mustHash(t, replayed); !bytes.Equal(h, refHash) {
		t.Fatalf("replayed store hash %x, want %x", h, refHash)
	}

	// A store as written before the query indexes: no q/ keys, no marker.
	dir := t.TempDir()
	old, err := OpenStore(dir, StoreOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	p.applyInBatches(t, rng, old)
	b := old.db.NewBatch()
	if err := b.DeleteRange(prefixQuery, upperBound(prefixQuery), nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(keyQueryIndex, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := OpenStore(dir, StoreOptions{Logger: quiet, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if ro.indexed.Load() {
		t.Fatal("a read-only store without query indexes claims them")
	}
	checkQueries(t, rng, ro, p.ids, cmax, 50)
	ro.Close()
	rebuilt, err := OpenStore(dir, StoreOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer rebuilt.Close()
	if !rebuilt.indexed.Load() {
		t.Fatal("query indexes not rebuilt at Open")
	}
	if h := mustHash(t, rebuilt); !bytes.Equal(h, refHash) {
		t.Fatalf("rebuilt store hash %x, want %x", h, refHash)
	}

	// A snapshot of a store without the indexes restores with them.
	snapSrc, err := OpenStore(t.TempDir(), StoreOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer snapSrc.Close()
	p.applyInBatches(t, rng, snapSrc)
	if err := snapSrc.db.DeleteRange(prefixQuery, upperBound(prefixQuery), pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if err := snapSrc.db.Delete(keyQueryIndex, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	snapshot := snapshotBytes(t, snapSrc)
	restored, err := OpenStore(t.TempDir(), StoreOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	if err := restored.Restore(bytes.NewReader(snapshot)); err != nil {
		t.Fatal(err)
	}
	if h := mustHash(t, restored); !bytes.Equal(h, refHash) {
		t.Fatalf("restored store hash %x, want %x", h, refHash)
	}

	for i := 0; i < 100; i++ {
		q := randomQuery(rng, cmax)
		want := listAll(t, ref, q)
		for name, s := range map[string]*Store{"replayed": replayed, "rebuilt": rebuilt, "restored": restored} {
			if got := listAll(t, s, q); !slices.Equal(got, want) {
				t.Fatalf("%s store, query %+v:\n got %v\nwant %v", name, q, got, want)
			}
		}
	}
}

// TestListOneUserReadsTheUserIndex: listing the 100 sagas of one user
// among 20000 visits about 100 index keys, not the store.
func TestListOneUserReadsTheUserIndex(t *testing.T) {
	s, err := OpenStore(t.TempDir(), StoreOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 20000
	var recs []*Record
	for i := 0; i < n; i++ {
		r := startRec(fmt.Sprintf("%022x", i), "", "a")
		r.At = int64(i)
		r.Start.User = fmt.Sprintf("user%d", i%997)
		if i%200 == 7 {
			r.Start.User = "x"
		}
		r.Start.Meta = map[string]string{"tenant": fmt.Sprintf("t%d", i%3)}
		recs = append(recs, r)
	}
	for i := 0; i < n; i += 5000 {
		if _, err := s.ApplyBatch(entries(t, uint64(i+1), recs[i:i+5000]...)); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []Query{
		{User: "x", Limit: 100},
		{User: "x", Limit: 100, Order: OrderNewest},
		{User: "x", State: StateInProgress, Tenant: "t1", Limit: 100}, // the user index is the smallest
	} {
		s.querySteps.Store(0)
		page, next, err := s.List(q)
		steps := s.querySteps.Load()
		if err != nil || next != "" {
			t.Fatalf("%+v: next %q, %v", q, next, err)
		}
		want := 100
		if q.Tenant != "" {
			want = 0
			for _, sg := range page {
				if sg.Meta["tenant"] == "t1" {
					want++
				}
			}
		}
		if len(page) != want || want == 0 {
			t.Fatalf("%+v: %d sagas, want %d", q, len(page), want)
		}
		// The scan; with several filters, the join moves each of the
		// three iterators at most once per key of the user's 100 (and
		// newest first, may step in vain once in stepRetry+1 moves).
		bound := int64(101)
		if q.State != 0 {
			bound = 3 * 101 * 9 / 8
		}
		if steps > bound {
			t.Fatalf("%+v visited %d keys among %d sagas, want at most %d", q, steps, n, bound)
		}
		t.Logf("%+v: %d sagas, %d keys visited", q, len(page), steps)
	}
	s.querySteps.Store(0)
	if c, err := s.Count(Query{User: "x"}); err != nil || c != 100 || s.querySteps.Load() > 101 {
		t.Fatalf("count of user x = %d, %v, after %d steps", c, err, s.querySteps.Load())
	}
}

// TestTwoLargeFiltersReadAboutTheSmallerOne: a tenant of 15000 sagas
// and a state of 2000, which share 20, among 20000. Both are too large
// for a probe to tell which is smaller; a List or a Count of both reads
// at most about twice the state's 2000 keys (the two indexes are
// intersected in sort order), not the tenant's 15000, in both orders,
// page after page.
func TestTwoLargeFiltersReadAboutTheSmallerOne(t *testing.T) {
	s, err := OpenStore(t.TempDir(), StoreOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n, nFailed, nBoth = 20000, 2000, 20
	var recs []*Record
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%022x", i)
		r := startRec(id, "", "a")
		r.At = int64(1000 + i)
		tenant := "big"
		switch {
		case i%10 == 0 && i%1000 != 0: // failed, not in the big tenant
			tenant = "small"
		case i%10 != 0 && i%4 == 1:
			tenant = "other"
		}
		r.Start.Meta = map[string]string{"tenant": tenant}
		recs = append(recs, r)
		if i%10 == 0 {
			recs = append(recs, &Record{Kind: KindStepFailed, Saga: id, At: r.At, Err: &ErrorInfo{Message: "no"}})
		}
	}
	for i := 0; i < len(recs); i += 5000 {
		j := min(len(recs), i+5000)
		if _, err := s.ApplyBatch(entries(t, uint64(i+1), recs[i:j]...)); err != nil {
			t.Fatal(err)
		}
	}
	big, err := s.Count(Query{Tenant: "big"})
	if err != nil || big < 10000 {
		t.Fatalf("tenant big holds %d sagas, %v", big, err)
	}
	// Two iterators, each moved at most once per key of the smaller
	// index and the key that ends the range; newest first, a step in
	// vain at most once in stepRetry+1 moves.
	const bound = 2 * (nFailed + 1) * 9 / 8
	for _, q := range []Query{
		{Tenant: "big", State: StateFailed, Limit: 100},
		{Tenant: "big", State: StateFailed, Limit: 100, Order: OrderNewest},
		{Tenant: "big", State: StateFailed, Limit: 7},
		{Tenant: "big", State: StateFailed, Limit: 7, Order: OrderNewest},
	} {
		var got []string
		for {
			s.querySteps.Store(0)
			page, next, err := s.List(q)
			if err != nil {
				t.Fatal(err)
			}
			if steps := s.querySteps.Load(); steps > bound {
				t.Fatalf("%+v visited %d keys, want at most %d (the tenant holds %d, the state %d)", q, steps, bound, big, nFailed)
			}
			for _, sg := range page {
				got = append(got, sg.ID)
			}
			if next == "" {
				break
			}
			q.After = next
		}
		if len(got) != nBoth {
			t.Fatalf("%+v listed %d sagas, want %d", q, len(got), nBoth)
		}
	}
	s.querySteps.Store(0)
	if c, err := s.Count(Query{Tenant: "big", State: StateFailed}); err != nil || c != nBoth {
		t.Fatalf("count = %d, %v; want %d", c, err, nBoth)
	}
	if steps := s.querySteps.Load(); steps > bound {
		t.Fatalf("count visited %d keys, want at most %d", steps, bound)
	}
}

func TestQueryRejectsBadQueriesAndCursors(t *testing.T) {
	s := openStoreT(t, vfs.NewMem())
	defer s.Close()
	var recs []*Record
	for i := 0; i < 3; i++ {
		r := startRec(fmt.Sprintf("s%d", i), "", "a")
		r.At = int64(10 + i)
		recs = append(recs, r)
	}
	if _, err := s.ApplyBatch(entries(t, 1, recs...)); err != nil {
		t.Fatal(err)
	}
	_, next, err := s.List(Query{Limit: 1})
	if err != nil || next == "" {
		t.Fatal(next, err)
	}
	for _, q := range []Query{
		{Version: 2},
		{State: 99},
		{Order: 7},
		{Limit: -1},
		{CreatedSince: 5, CreatedUntil: 5},
		{UpdatedSince: 9, UpdatedUntil: 2},
		{Tenant: "a", Meta: map[string]string{"tenant": "b"}},
		{After: "not a cursor"},
		{After: "s1"}, // an id is not a cursor
		{After: next, Order: OrderNewest},
	} {
		if _, _, err := s.List(q); !errors.Is(err, ErrInvalidQuery) {
			t.Errorf("List(%+v) = %v, want ErrInvalidQuery", q, err)
		}
		if _, err := s.Count(q); q.After == "" && q.Limit >= 0 && !errors.Is(err, ErrInvalidQuery) {
			t.Errorf("Count(%+v) = %v, want ErrInvalidQuery", q, err)
		}
	}
	if _, err := ParseOrder("sideways"); !errors.Is(err, ErrInvalidQuery) {
		t.Fatalf("ParseOrder: %v", err)
	}
}

func TestAllDefinitionVersions(t *testing.T) {
	s := openStoreT(t, vfs.NewMem())
	defer s.Close()
	var recs []*Record
	for _, nv := range []struct {
		name string
		n    int
	}{{"b", 2}, {"a", 3}} {
		for i := 0; i < nv.n; i++ {
			recs = append(recs, &Record{Kind: KindDefine, Def: &Definition{Name: nv.name, Version: i + 1, Steps: []StepDef{{Name: fmt.Sprint("s", i), Compensation: "u"}}}})
		}
	}
	if _, err := s.ApplyBatch(entries(t, 1, recs...)); err != nil {
		t.Fatal(err)
	}
	got, err := s.AllDefinitionVersions()
	want := []DefinitionVersions{{"a", []int{1, 2, 3}}, {"b", []int{1, 2}}}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, %v; want %v", got, err, want)
	}
}
