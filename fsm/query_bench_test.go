package fsm

import (
	"fmt"
	"os"
	"strconv"
	"testing"
)

// BenchmarkQuery measures the common queries over a store of
// SAGA_QUERY_N sagas (default 100000; the figure is 10^6):
// 1000 users, 10 tenants, 5 definitions, 1 saga in 1000 STUCK. It
// reports the index keys and sagas visited per query (keys/op).
func BenchmarkQuery(b *testing.B) {
	n := 100000
	if v := os.Getenv("SAGA_QUERY_N"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	s, err := OpenStore(b.TempDir(), StoreOptions{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rp := s.NewReplayer()
	const chunk = 10000
	idx := uint64(1)
	for i := 0; i < n; i += chunk {
		var recs []*Record
		for j := i; j < min(n, i+chunk); j++ {
			r := startRec(fmt.Sprintf("%022x", j), "", "a")
			r.At = int64(j) * 1000
			r.Start.Definition = fmt.Sprintf("def%d", j%5)
			r.Start.User = fmt.Sprintf("user%d", j%1000)
			r.Start.Meta = map[string]string{"tenant": fmt.Sprintf("t%d", j%10)}
			recs = append(recs, r)
			if j%1000 == 3 {
				recs = append(recs, &Record{Kind: KindStepFailed, Saga: r.Saga, At: r.At + 1, Err: &ErrorInfo{Message: "x"}})
			} else if j%3 == 0 {
				recs = append(recs, &Record{Kind: KindStepCompleted, Saga: r.Saga, At: r.At + 1})
			}
		}
		es := entries(b, idx, recs...)
		idx += uint64(len(es))
		if err := rp.Apply(es); err != nil {
			b.Fatal(err)
		}
	}
	if err := rp.Finish(); err != nil {
		b.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		q     Query
		count bool
	}{
		{"newest100", Query{Order: OrderNewest, Limit: 100}, false},
		{"user100", Query{User: "user7", Limit: 100}, false},
		{"userNewest100", Query{User: "user7", Order: OrderNewest, Limit: 100}, false},
		{"stateFailed", Query{State: StateFailed, Limit: 100}, false},
		{"tenantCompleted100", Query{Tenant: "t3", State: StateCompleted, Order: OrderNewest, Limit: 100}, false},
		{"defVersionSince100", Query{Definition: "def2", Version: 1, CreatedSince: int64(n/2) * 1000, Limit: 100}, false},
		{"userUpdatedSince", Query{User: "user7", UpdatedSince: int64(n/2) * 1000, Limit: 100}, false},
		{"countUser", Query{User: "user7"}, true},
		{"countTenantFailed", Query{Tenant: "t3", State: StateFailed}, true},
		// Two filters that match many sagas each and none together (t3
		// holds j%10 == 3, def1 j%5 == 1): the worst case of the join,
		// which visits both in turn.
		{"tenantDefDisjointNewest100", Query{Tenant: "t3", Definition: "def1", Order: OrderNewest, Limit: 100}, false},
		{"countTenantDefDisjoint", Query{Tenant: "t3", Definition: "def1"}, true},
		{"tenantInProgressNewest100", Query{Tenant: "t3", State: StateInProgress, Order: OrderNewest, Limit: 100}, false},
	} {
		b.Run(c.name, func(b *testing.B) {
			s.querySteps.Store(0)
			for i := 0; i < b.N; i++ {
				var err error
				if c.count {
					_, err = s.Count(c.q)
				} else {
					_, _, err = s.List(c.q)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(s.querySteps.Load())/float64(b.N), "keys/op")
		})
	}
}
