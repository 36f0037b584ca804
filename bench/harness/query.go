package main

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sagaengine/saga/fsm"
)

// The store of figure 12: its sagas are spread over queryDays of
// creation times, queryUsers users (each in one of queryTenants tenants,
// recorded as Meta["tenant"] as the policy layer does) and queryDefs
// definitions of 3 steps, each in versions 1 to 3 (one per third of the
// period).
const (
	queryUsers   = 1000
	queryTenants = 10
	queryDefs    = 5
	queryDays    = 30
	querySeed    = 14
)

// queryBase is the creation time of the first saga (fixed, so that two
// runs build the same store).
var queryBase = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC).UnixNano()

// querySpread is the share of sagas left in each state, in per mille.
var querySpread = []struct {
	st       fsm.SagaState
	perMille int
}{
	{fsm.StateStuck, 1}, {fsm.StateCompensating, 3}, {fsm.StateInProgress, 15},
	{fsm.StateFailed, 40}, {fsm.StateCompleted, 941},
}

// querySaga appends the records of saga j, left in state st, to recs.
// Its steps take a second each.
func querySaga(recs []*fsm.Record, j, n int, st fsm.SagaState, user int) []*fsm.Record {
	id := fmt.Sprintf("%022x", j)
	created := queryBase + int64(j)*(int64(queryDays)*24*int64(time.Hour)/int64(n))
	def := j % queryDefs
	si := &fsm.StartInfo{
		Definition: fmt.Sprintf("def%d", def), Version: 1 + 3*j/n,
		User:  fmt.Sprintf("user%d", user),
		Meta:  map[string]string{"tenant": fmt.Sprintf("t%d", user%queryTenants)},
		Input: fmt.Appendf(nil, `{"file":"f%d.pdf"}`, j),
	}
	for _, s := range []string{"upload", "parse", "expose"} {
		si.Steps = append(si.Steps, fsm.StepDef{Name: s, Action: s, Compensation: "undo_" + s})
	}
	at := created
	rec := func(k fsm.Kind, step int) *fsm.Record {
		at += int64(time.Second)
		return &fsm.Record{Kind: k, Saga: id, At: at, Step: step}
	}
	fail := &fsm.ErrorInfo{Kind: "io", Message: "parse: connection reset"}
	recs = append(recs, &fsm.Record{Kind: fsm.KindSagaStarted, Saga: id, At: at, Start: si}, rec(fsm.KindStepCompleted, 0))
	switch st {
	case fsm.StateCompleted:
		recs = append(recs, rec(fsm.KindStepCompleted, 1), rec(fsm.KindStepCompleted, 2))
	case fsm.StateInProgress:
	default: // step 1 fails; step 0 is compensated
		f := rec(fsm.KindStepFailed, 1)
		f.Err = fail
		c := rec(fsm.KindCompStarted, 0)
		c.Attempt = 1
		recs = append(recs, f, c)
		switch st {
		case fsm.StateFailed:
			recs = append(recs, rec(fsm.KindCompCompleted, 0))
		case fsm.StateStuck:
			cf := rec(fsm.KindCompFailed, 0)
			cf.Attempt, cf.Err, cf.Final = 1, fail, true
			recs = append(recs, cf)
		}
	}
	return recs
}

// buildQueryStore replays the records of n sagas into s and flushes it.
// It returns the number of log entries.
func buildQueryStore(s *fsm.Store, n int) (int, error) {
	rng := rand.New(rand.NewPCG(querySeed, 0))
	rp := s.NewReplayer()
	idx := uint64(1)
	const chunk = 10000
	for i := 0; i < n; i += chunk {
		var recs []*fsm.Record
		for j := i; j < min(n, i+chunk); j++ {
			pm, st := rng.IntN(1000), fsm.StateCompleted
			for _, sp := range querySpread {
				if pm < sp.perMille {
					st = sp.st
					break
				}
				pm -= sp.perMille
			}
			recs = querySaga(recs, j, n, st, rng.IntN(queryUsers))
		}
		es := make([]fsm.Entry, len(recs))
		for k, r := range recs {
			raw, err := fsm.Encode(r)
			if err != nil {
				return 0, err
			}
			es[k] = fsm.Entry{Index: idx, Rec: r, Raw: raw}
			idx++
		}
		if err := rp.Apply(es); err != nil {
			return 0, err
		}
	}
	if err := rp.Finish(); err != nil {
		return 0, err
	}
	return int(idx - 1), s.Flush()
}

// settle waits, up to a minute, until the size and the number of the
// files under dir have not changed for 2 s, and returns the size.
func settle(dir string) int64 {
	last, files := dirBytes(dir)
	still := 0
	for end := time.Now().Add(time.Minute); still < 4 && time.Now().Before(end); {
		time.Sleep(500 * time.Millisecond)
		b, f := dirBytes(dir)
		if b == last && f == files {
			still++
		} else {
			last, files, still = b, f, 0
		}
	}
	return last
}

// dirBytes is the size and the number of the files under dir.
func dirBytes(dir string) (size int64, files int) {
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				size += fi.Size()
				files++
			}
		}
		return nil
	})
	return size, files
}

// figQueries: the latency of the common queries over a store of 10^6
// sagas, and the keys each reads, against a full scan of the same store.
func figQueries() Figure {
	n, reps, bigReps, scanReps := 1000000, 1000, 20, 3
	if *quick {
		n, reps, bigReps, scanReps = 100000, 200, 10, 3
	}
	progress("queries: building a store of %d sagas", n)
	dir, err := os.MkdirTemp("", "saga-query-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	s, err := fsm.OpenStore(dir, fsm.StoreOptions{Logger: quiet})
	if err != nil {
		panic(err)
	}
	defer s.Close()
	t := time.Now()
	records, err := buildQueryStore(s, n)
	if err != nil {
		panic(err)
	}
	build := time.Since(t)
	// Let the compactions the flush started finish, so that the queries
	// run against a settled store and do not share the cores with them.
	t = time.Now()
	bytes := settle(dir)
	settled := time.Since(t)
	states, err := s.CountByState()
	if err != nil {
		panic(err)
	}
	var spread []string
	for _, st := range fsm.States() {
		spread = append(spread, fmt.Sprintf("%s %d", st, states[st]))
	}

	rng := rand.New(rand.NewPCG(querySeed, 1))
	day := int64(24 * time.Hour)
	// The queries, each built afresh at every repetition from rng.
	type query struct {
		name  string
		reps  int
		count bool
		page2 bool // time the page after the first, through its cursor
		q     func() fsm.Query
	}
	user := func() string { return fmt.Sprintf("user%d", rng.IntN(queryUsers)) }
	tenant := func() string { return fmt.Sprintf("t%d", rng.IntN(queryTenants)) }
	anyState := func() fsm.SagaState { return fsm.States()[rng.IntN(len(fsm.States()))] }
	qs := []query{
		{"user: 100 newest", reps, false, false, func() fsm.Query {
			return fsm.Query{User: user(), Order: fsm.OrderNewest, Limit: 100}
		}},
		{"tenant + STUCK: 100 newest", reps, false, false, func() fsm.Query {
			return fsm.Query{Tenant: tenant(), State: fsm.StateStuck, Order: fsm.OrderNewest, Limit: 100}
		}},
		{"state: page 1 of 100, newest", reps, false, false, func() fsm.Query {
			return fsm.Query{State: anyState(), Order: fsm.OrderNewest, Limit: 100}
		}},
		{"state: page 2 of 100, newest (cursor)", reps, false, true, func() fsm.Query {
			return fsm.Query{State: anyState(), Order: fsm.OrderNewest, Limit: 100}
		}},
		{"definition + version + 1-day created range: 100", reps, false, false, func() fsm.Query {
			// A day inside the third of the period the version ran in.
			v := 1 + rng.IntN(3)
			since := queryBase + int64(v-1)*queryDays/3*day + rng.Int64N(queryDays/3-1)*day
			return fsm.Query{Definition: fmt.Sprintf("def%d", rng.IntN(queryDefs)), Version: v,
				CreatedSince: since, CreatedUntil: since + day, Limit: 100}
		}},
		{"count: user", reps, true, false, func() fsm.Query { return fsm.Query{User: user()} }},
		{"count: state STUCK", reps, true, false, func() fsm.Query { return fsm.Query{State: fsm.StateStuck} }},
		{"count: state COMPLETED", bigReps, true, false, func() fsm.Query { return fsm.Query{State: fsm.StateCompleted} }},
		// No index serves an updated-time filter alone: this Count reads
		// every saga, as a store without the query indexes would.
		{"full scan: count by updated time (not indexed)", scanReps, true, false, func() fsm.Query {
			return fsm.Query{UpdatedSince: 1}
		}},
	}
	run := func(c query) (lat, keys, found []float64) {
		for range c.reps {
			q := c.q()
			if c.page2 {
				_, next, err := s.List(q)
				if err != nil {
					panic(err)
				}
				q.After = next
			}
			k0, t0 := s.QueryReads(), time.Now()
			var got int
			var err error
			if c.count {
				got, err = s.Count(q)
			} else {
				var page []*fsm.Saga
				page, _, err = s.List(q)
				got = len(page)
			}
			d := time.Since(t0)
			if err != nil {
				panic(err)
			}
			lat = append(lat, float64(d.Microseconds())/1000)
			keys = append(keys, float64(s.QueryReads()-k0))
			found = append(found, float64(got))
		}
		return lat, keys, found
	}
	fig := Figure{Name: fmt.Sprintf("12. Query latency at %d sagas", n),
		Method: fmt.Sprintf("one fsm.Store (Pebble, 32 MiB block cache) built by fsm.Replayer from %d log entries in %.1f s and flushed, then List and Count "+
			"called in turn from one goroutine. Sagas: %d users (uniform, seed %d), each in one of %d tenants (Meta[\"tenant\"]), %d definitions of 3 steps "+
			"in versions 1–3 (one per third of the period), created over %d days; states: %s. Each repetition draws its user, tenant, state or range at random; "+
			"p50 is the median. keys_read is the change of Store.QueryReads (query index keys visited; each List also reads the sagas it returns or skips), median over the repetitions; "+
			"x_faster_than_scan is the full scan's median over the query's. disk: %.0f bytes per saga (the store's directory, sagas, histories and indexes, "+
			"after the flush and %.1f s of compactions, until its size held still).",
			records, build.Seconds(), queryUsers, querySeed, queryTenants, queryDefs, queryDays, strings.Join(spread, ", "), float64(bytes)/float64(n), settled.Seconds())}
	if *quick {
		fig.Name += " (-quick: 10^5, not 10^6)"
	}
	var scanP50 float64
	for i := len(qs) - 1; i >= 0; i-- { // the scan first: the ratios need it
		c := qs[i]
		progress("queries: %s × %d", c.name, c.reps)
		lat, keys, found := run(c)
		if i == len(qs)-1 {
			scanP50 = median(lat)
		}
		row := map[string]any{"query": c.name, "repetitions": c.reps, "p50_ms": round3(median(lat)), "p99_ms": round3(percentile(lat, 0.99)),
			"keys_read": int64(round(median(keys))), "results": int64(round(median(found))), "x_faster_than_scan": int64(round(scanP50 / median(lat)))}
		fig.Rows = append([]map[string]any{row}, fig.Rows...)
	}
	return fig
}

func round3(x float64) float64 { return float64(int64(x*1000+0.5)) / 1000 }
