package main

import (
	"log/slog"
	"testing"
	"time"
)

// The harness reads raft's warnings, as replication forwards them, to say
// why a leader was lost.
func TestRaftEventsCountLeaseAndHeartbeatLosses(t *testing.T) {
	ev := &raftEvents{}
	l := slog.New(ev)
	l.Warn(`[WARN]  raft: failed to contact: server-id=n2 time=153.2ms`)
	l.Warn(`[WARN]  raft: failed to contact: server-id=n3 time=1.5s`)
	l.Warn(`[WARN]  raft: failed to contact quorum of nodes, stepping down`)
	l.Warn(`[WARN]  raft: heartbeat timeout reached, starting election: last-leader-addr=127.0.0.1:1 last-leader-id=n1`)
	l.Info(`[INFO]  raft: entering follower state`)
	s, e, gap := ev.reset()
	if s != 1 || e != 1 || gap != 1500*time.Millisecond {
		t.Fatalf("step-downs %d, elections %d, gap %v; want 1, 1, 1.5s", s, e, gap)
	}
	if s, e, gap := ev.reset(); s != 0 || e != 0 || gap != 0 {
		t.Fatalf("reset kept %d %d %v", s, e, gap)
	}
}
