package replication_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/replication"
	"github.com/sagaengine/saga/replication/internal/testcerts"
)

// membersOf returns the ids in n's configuration: voters, non-voters.
func membersOf(t *testing.T, n *replication.Node) (voters, nonvoters []string) {
	t.Helper()
	servers, err := n.Servers()
	must(t, err)
	for _, s := range servers {
		if s.Voter {
			voters = append(voters, s.ID)
		} else {
			nonvoters = append(nonvoters, s.ID)
		}
	}
	return voters, nonvoters
}

func TestJoinPromotesANewMemberOnlyOnceItHasCaughtUp(t *testing.T) {
	c := newCluster(t, 1, nil)
	l := c.leader()
	c.define(l)
	runSagas(t, l, 20, "before")

	// n2 runs but cannot be reached yet.
	m2 := &member{id: "n2", dir: t.TempDir()}
	m2.addr, m2.trans = raft.NewInmemTransport("n2:7000")
	c.members = append(c.members, m2)
	c.start(m2, false, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- l.node.Join(ctx, "n2", string(m2.addr)) }()

	waitUntil(t, "n2 in the configuration", func() bool {
		v, nv := membersOf(t, l.node)
		if len(v) != 1 {
			t.Fatalf("voters while n2 is unreachable: %v, want [n1]", v)
		}
		return len(nv) == 1 && nv[0] == "n2"
	})
	select {
	case err := <-done:
		t.Fatalf("Join returned before n2 answered: %v", err)
	default:
	}
	if v, _ := membersOf(t, l.node); len(v) != 1 || v[0] != "n1" {
		t.Fatalf("voters while n2 is unreachable: %v, want [n1]", v)
	}

	c.connectAll()
	select {
	case err := <-done:
		must(t, err)
	case <-ctx.Done():
		t.Fatal("Join did not return after n2 became reachable")
	}
	if v, nv := membersOf(t, l.node); len(v) != 2 || len(nv) != 0 {
		t.Fatalf("after Join: voters %v, non-voters %v; want n1 and n2 voting", v, nv)
	}
	c.converge()
	// Joining again is a no-op.
	must(t, l.node.Join(ctx, "n2", string(m2.addr)))
}

func TestJoinOfAMemberThatNeverAnswersLeavesTheGroupAsItWas(t *testing.T) {
	c := newCluster(t, 1, nil)
	l := c.leader()
	c.define(l)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := l.node.Join(ctx, "n9", "n9:7000")
	if !errors.Is(err, replication.ErrNotCaughtUp) {
		t.Fatalf("Join of an unreachable member: %v, want ErrNotCaughtUp", err)
	}
	if !strings.Contains(err.Error(), "never voted") {
		t.Errorf("error does not say the member was removed: %v", err)
	}
	if v, nv := membersOf(t, l.node); len(v) != 1 || v[0] != "n1" || len(nv) != 0 {
		t.Fatalf("after a failed Join: voters %v, non-voters %v; want [n1] alone", v, nv)
	}
	runSagas(t, l, 3, "after") // the group of one still commits alone

	// Moving a member, or reusing an address, by a join is refused and
	// changes nothing.
	ctx, cancel = context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for _, j := range [][2]string{{"n1", "elsewhere:7000"}, {"n9", string(l.addr)}} {
		if err := l.node.Join(ctx, j[0], j[1]); !errors.Is(err, replication.ErrInvalidConfig) {
			t.Errorf("Join(%s, %s): %v, want ErrInvalidConfig", j[0], j[1], err)
		}
	}
	if v, nv := membersOf(t, l.node); len(v) != 1 || len(nv) != 0 {
		t.Fatalf("after refused joins: voters %v, non-voters %v", v, nv)
	}
}

// tlsMember opens a replicated engine on a TCP transport with mutual TLS.
func tlsMember(t *testing.T, id, caFile string, files [2]string, bootstrap bool) (*engine.Engine, *replication.Node) {
	t.Helper()
	dir := t.TempDir()
	node, err := replication.New(replication.Config{
		ID: id, Dir: filepath.Join(dir, "raft"), Bind: "127.0.0.1:0", Bootstrap: bootstrap, Logger: quiet,
		TLS:              &replication.TLSConfig{CertFile: files[0], KeyFile: files[1], CAFile: caFile},
		HeartbeatTimeout: testHeartbeat, ElectionTimeout: testHeartbeat, LeaderLeaseTimeout: testHeartbeat / 2,
	})
	must(t, err)
	e, err := engine.Open(dir, engine.Options{Replicator: node, Logger: quiet})
	must(t, err)
	t.Cleanup(func() { e.Close() })
	return e, node
}

func TestJoinNeverMakesAMemberOfAnotherCAAVoter(t *testing.T) {
	ca, certs, err := testcerts.Generate(t.TempDir(), "n1", "n3")
	must(t, err)
	otherCA, other, err := testcerts.Generate(t.TempDir(), "n2")
	must(t, err)
	e1, n1 := tlsMember(t, "n1", ca, certs["n1"], true)
	waitUntil(t, "n1 leads", func() bool { _, _, self := e1.Leader(); return self })
	_, n2 := tlsMember(t, "n2", otherCA, other["n2"], false)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = n1.Join(ctx, "n2", n2.Addr())
	if !errors.Is(err, replication.ErrNotCaughtUp) {
		t.Fatalf("Join of a member with another CA's certificate: %v, want ErrNotCaughtUp", err)
	}
	t.Logf("refused: %v", err)
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("error does not name the TLS failure: %v", err)
	}
	if v, nv := membersOf(t, n1); len(v) != 1 || len(nv) != 0 {
		t.Fatalf("after a refused Join: voters %v, non-voters %v; want [n1] alone", v, nv)
	}

	// A member with a certificate from the group's CA joins.
	_, n3 := tlsMember(t, "n3", ca, certs["n3"], false)
	ctx, cancel = context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	must(t, n1.Join(ctx, "n3", n3.Addr()))
	if v, _ := membersOf(t, n1); len(v) != 2 {
		t.Fatalf("after joining n3: voters %v", v)
	}
}
