package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/replication"
)

// Raft timers of the replicated figures: shorter than raft's defaults so
// that a failover is measured in a few hundred milliseconds, long enough
// not to elect spuriously on a loaded 2-core machine.
const (
	benchHeartbeat = 200 * time.Millisecond
	benchElection  = 200 * time.Millisecond
	benchLease     = 100 * time.Millisecond
)

// benchMember is one member of a 3-node loopback group.
type benchMember struct {
	id, dir, addr string
	e             *engine.Engine
}

func openMember(m *benchMember, bootstrap bool) error {
	node, err := replication.New(replication.Config{ID: m.id, Dir: filepath.Join(m.dir, "raft"), Bind: m.addr,
		Bootstrap: bootstrap, Logger: slog.New(events), HeartbeatTimeout: benchHeartbeat, ElectionTimeout: benchElection,
		LeaderLeaseTimeout: benchLease})
	if err != nil {
		return err
	}
	m.addr = node.Addr()
	reg := compensation.NewRegistry()
	_ = reg.RegisterAction("work", func(ctx context.Context, c compensation.Call) ([]byte, error) { return nil, nil })
	_ = reg.Register("undo", func(ctx context.Context, c compensation.Call) error { return nil })
	m.e, err = engine.Open(m.dir, engine.Options{Replicator: node, Registry: reg, Logger: quiet})
	return err
}

// newGroup starts n1 alone, then joins n2 and n3 through it (the
// documented join flow), all on 127.0.0.1 with real fsyncs.
func newGroup() ([]*benchMember, error) {
	var ms []*benchMember
	for i := 1; i <= 3; i++ {
		dir, _ := os.MkdirTemp("", "saga-bench-raft-")
		ms = append(ms, &benchMember{id: "n" + strconv.Itoa(i), dir: dir, addr: "127.0.0.1:0"})
	}
	if err := openMember(ms[0], true); err != nil {
		return nil, err
	}
	if _, err := waitLeader(ms, nil, 10*time.Second); err != nil {
		return nil, err
	}
	for _, m := range ms[1:] {
		if err := openMember(m, false); err != nil {
			return nil, err
		}
		node := ms[0].e.Replicator().(*replication.Node)
		if err := node.Join(context.Background(), m.id, m.addr); err != nil {
			return nil, err
		}
	}
	d := engine.Definition{Name: "bench"}
	for k := 0; k < 4; k++ {
		d.Steps = append(d.Steps, engine.StepDef{Name: "s" + strconv.Itoa(k), Action: "work", Compensation: "undo"})
	}
	if _, err := ms[0].e.Define(context.Background(), d); err != nil {
		return nil, err
	}
	return ms, nil
}

func closeGroup(ms []*benchMember) {
	for _, m := range ms {
		if m.e != nil {
			m.e.Close()
		}
		os.RemoveAll(m.dir)
	}
}

// waitLeader returns the member whose engine leads (skipping except).
func waitLeader(ms []*benchMember, except *benchMember, limit time.Duration) (*benchMember, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		for _, m := range ms {
			if m.e == nil || m == except {
				continue
			}
			if _, _, self := m.e.Leader(); self {
				return m, nil
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil, errors.New("no leader")
}

// figReplication: 3-node loopback throughput and latency vs single node,
// and the time from a leader's death to the first acknowledged write on
// the new leader.
func figReplication(single map[string]float64) (Figure, Figure, map[string]float64) {
	fig := Figure{Name: "9. Replication: 3-node group on loopback vs single node",
		Method: fmt.Sprintf("3 engine members in one process, raft over TCP on 127.0.0.1, every member fsyncs its own raft log; "+
			"4-step no-op saga run on the leader; timers heartbeat %v, election %v, lease %v; failover: the leader is closed "+
			"without handing over leadership, then writes are tried on the others until one is acknowledged",
			benchHeartbeat, benchElection, benchLease)}
	fo10 := Figure{Name: "10. Failover: leader killed → first acknowledged write on the new leader",
		Method: "same group as figure 9; the leader is closed (no leadership hand-over), writes are tried on the other members every millisecond; the killed member is then reopened on its directories"}
	out := map[string]float64{}
	ms, err := newGroup()
	if err != nil {
		progress("replication: %v", err)
		return fig, fo10, out
	}
	defer closeGroup(ms)
	dur := 3 * time.Second
	kills := 20
	if *quick {
		dur, kills = 500*time.Millisecond, 5
	}
	for _, c := range []int{1, 64} {
		progress("replication: 3-node throughput c=%d", c)
		l, err := waitLeader(ms, nil, 10*time.Second)
		if err != nil {
			progress("replication: %v", err)
			return fig, fo10, out
		}
		r := &rig{e: l.e}
		events.reset()
		t := time.Now()
		n, lat, fails := r.runFor(c, dur)
		stepDowns, elections, gap := events.reset()
		el := time.Since(t).Seconds()
		rate := float64(n) / el
		base := single[fmt.Sprintf("happy/%d", c)]
		row := map[string]any{"concurrency": c, "sagas_per_s_3node": round(rate), "sagas_per_s_single": round(base),
			"ratio": round2(rate / max(base, 1)), "p50_ms": round2(percentile(lat, 0.5)), "p99_ms": round2(percentile(lat, 0.99)),
			// Why a leader was lost, if one was: its lease ran out (and
			// the longest a follower went unheard), or a follower's
			// heartbeat timer fired.
			"lease_step_downs": stepDowns, "follower_elections": elections, "max_contact_gap_ms": round2(float64(gap.Microseconds()) / 1000)}
		// A leadership change during the point fails some sagas ("outcome
		// unknown"): the point says so and the run goes on.
		fails.mark(row)
		fig.Rows = append(fig.Rows, row)
		out[fmt.Sprintf("ratio/%d", c)] = rate / max(base, 1)
	}
	progress("replication: %d leader kills", kills)
	var fo []float64
	for k := 0; k < kills; k++ {
		l, err := waitLeader(ms, nil, 10*time.Second)
		if err != nil {
			progress("replication: %v", err)
			break
		}
		t0 := time.Now()
		l.e.Close()
		l.e = nil
		for {
			var acked bool
			for _, m := range ms {
				if m.e == nil {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, err := m.e.Start(ctx, "bench", nil, engine.StartOptions{})
				cancel()
				if err == nil {
					acked = true
					break
				}
			}
			if acked {
				break
			}
			if time.Since(t0) > 30*time.Second {
				progress("replication: no write acknowledged 30s after a kill")
				return fig, fo10, out
			}
			time.Sleep(time.Millisecond)
		}
		fo = append(fo, float64(time.Since(t0).Microseconds())/1000)
		if err := openMember(l, false); err != nil {
			progress("replication: restart %s: %v", l.id, err)
			break
		}
	}
	if len(fo) > 0 {
		sort.Float64s(fo)
		fo10.Rows = append(fo10.Rows, map[string]any{"failover_kills": len(fo), "failover_median_ms": round2(median(fo)),
			"failover_p99_ms": round2(percentile(fo, 0.99)), "failover_max_ms": round2(fo[len(fo)-1])})
		out["failover_median_ms"], out["failover_p99_ms"] = median(fo), percentile(fo, 0.99)
	}
	return fig, fo10, out
}
