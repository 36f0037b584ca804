package main

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/admin/raftcluster"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/replication"
)

// inmemMember opens a replicated engine on an in-memory raft transport
// (address ID:7000), closed at the test's end, and its admin.Cluster.
func inmemMember(t *testing.T, id string, bootstrap bool) (*engine.Engine, admin.Cluster, *raft.InmemTransport, string) {
	t.Helper()
	_, trans := raft.NewInmemTransport(raft.ServerAddress(id + ":7000"))
	dir := t.TempDir()
	node, err := replication.New(replication.Config{ID: id, Dir: filepath.Join(dir, "raft"), Transport: trans, Bootstrap: bootstrap,
		HeartbeatTimeout: 50 * time.Millisecond, ElectionTimeout: 50 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.Open(dir, engine.Options{Replicator: node})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, raftcluster.New(node), trans, dir
}

func TestClusterCommandsOnAReplicatedMember(t *testing.T) {
	e, cl, trans, dir := inmemMember(t, "n1", true)
	const tok = "0123456789abcdef-token"
	srv, err := admin.New(e, admin.NewObserver(), admin.Options{Token: tok, Cluster: cl})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	tf := filepath.Join(dir, "token")
	if err := os.WriteFile(tf, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, out, _ := runCLI("--addr", hs.URL, "--token-file", tf, "cluster", "status")
		if code == 0 && strings.Contains(out, "member n1: Leader") {
			if !strings.Contains(out, "n1:7000") || !strings.Contains(out, "state hash") {
				t.Fatalf("cluster status lacks the member list or the hash:\n%s", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster status never showed n1 leading: %d\n%s", code, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// n2 runs, reachable: join makes it a voter once it has caught up.
	_, _, trans2, _ := inmemMember(t, "n2", false)
	trans.Connect(trans2.LocalAddr(), trans2)
	trans2.Connect(trans.LocalAddr(), trans)
	code, out, errOut := runCLI("--addr", hs.URL, "--token-file", tf, "-o", "json", "cluster", "join", "n2", "n2:7000")
	if code != 0 || !strings.Contains(out, `"id": "n2",
      "address": "n2:7000",
      "voter": true`) {
		t.Fatalf("join: %d\n%s\n%s", code, out, errOut)
	}
	code, _, errOut = runCLI("--addr", hs.URL, "--token-file", tf, "cluster", "remove", "ghost")
	if code != exitUsage && code != exitFailed || !strings.Contains(errOut, "no member") {
		t.Fatalf("remove of an unknown member: %d %s", code, errOut)
	}
	code, out, errOut = runCLI("--addr", hs.URL, "--token-file", tf, "cluster", "remove", "n2")
	if code != 0 || strings.Contains(out, "n2:7000") {
		t.Fatalf("remove: %d\n%s\n%s", code, out, errOut)
	}
}
