package raftcluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
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

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const token = "0123456789abcdef-secret"

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// call serves one request, with a deadline.
func call(h http.Handler, method, path, auth, body string) *httptest.ResponseRecorder {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req := httptest.NewRequestWithContext(ctx, method, path, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// openMember opens a replicated engine on an in-memory raft transport
// (address ID:7000), closed at the test's end.
func openMember(t *testing.T, id string, bootstrap bool) (*engine.Engine, *replication.Node, *raft.InmemTransport) {
	t.Helper()
	_, trans := raft.NewInmemTransport(raft.ServerAddress(id + ":7000"))
	dir := t.TempDir()
	node, err := replication.New(replication.Config{ID: id, Dir: filepath.Join(dir, "raft"), Transport: trans, Bootstrap: bootstrap,
		Logger: quiet, HeartbeatTimeout: 50 * time.Millisecond, ElectionTimeout: 50 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond})
	must(t, err)
	e, err := engine.Open(dir, engine.Options{Replicator: node, Logger: quiet})
	must(t, err)
	t.Cleanup(func() { e.Close() })
	return e, node, trans
}

// replicatedMember opens a replicated engine and its admin handler.
func replicatedMember(t *testing.T, id string, bootstrap bool) (*engine.Engine, *replication.Node, *raft.InmemTransport, http.Handler) {
	t.Helper()
	e, node, trans := openMember(t, id, bootstrap)
	srv, err := admin.New(e, admin.NewObserver(), admin.Options{Token: token, Logger: quiet, Cluster: raftcluster.New(node)})
	must(t, err)
	return e, node, trans, srv.Handler()
}

func clusterOf(t *testing.T, h http.Handler) admin.ClusterReply {
	t.Helper()
	rec := call(h, "GET", "/v1/cluster", "Bearer "+token, "")
	if rec.Code != 200 {
		t.Fatalf("GET /v1/cluster: %d %s", rec.Code, rec.Body)
	}
	var rep admin.ClusterReply
	must(t, json.Unmarshal(rec.Body.Bytes(), &rep))
	return rep
}

func TestClusterEndpoints(t *testing.T) {
	e1, _, t1, h1 := replicatedMember(t, "n1", true)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, _, self := e1.Leader(); self {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("n1 did not become leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	rep := clusterOf(t, h1)
	if rep.Mode != "replicated" || rep.ID != "n1" || rep.State != "Leader" || rep.LeaderID != "n1" || len(rep.Servers) != 1 || rep.StateHash == "" {
		t.Fatalf("cluster of one: %+v", rep)
	}
	// Bad requests change nothing.
	for _, c := range []struct{ path, body string }{
		{"/v1/cluster/join", `{"id":"n2"}`},
		{"/v1/cluster/join", `{"id":"bad id!","address":"x:1"}`},
		{"/v1/cluster/join", `{"id":"n2","address":"no-port"}`},
		{"/v1/cluster/join", `{"id":"n2","address":"x:1","extra":1}`},
		{"/v1/cluster/join", `{"id":"n2","address":"x:1"} {"id":"n3","address":"y:1"}`}, // which one?
		{"/v1/cluster/remove", `{"id":"nobody"}`},
		{"/v1/cluster/remove", `{}`},
	} {
		if rec := call(h1, "POST", c.path, "Bearer "+token, c.body); rec.Code != 400 {
			t.Errorf("POST %s %s: %d %s, want 400", c.path, c.body, rec.Code, rec.Body)
		}
	}
	if rec := call(h1, "POST", "/v1/cluster/split", "Bearer "+token, `{"id":"n2"}`); rec.Code != 404 {
		t.Errorf("unknown action: %d", rec.Code)
	}
	if n := len(clusterOf(t, h1).Servers); n != 1 {
		t.Fatalf("refused requests changed the membership: %d servers", n)
	}
	// Join a second member through the API.
	_, _, t2, h2 := replicatedMember(t, "n2", false)
	t1.Connect(t2.LocalAddr(), t2)
	t2.Connect(t1.LocalAddr(), t1)
	if rec := call(h1, "POST", "/v1/cluster/join", "Bearer "+token, `{"id":"n2","address":"n2:7000"}`); rec.Code != 200 {
		t.Fatalf("join: %d %s", rec.Code, rec.Body)
	}
	for {
		r2 := clusterOf(t, h2)
		if r2.State == "Follower" && r2.LeaderID == "n1" && len(r2.Servers) == 2 && r2.StateHash == clusterOf(t, h1).StateHash {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n2 did not catch up: %+v", r2)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A follower refuses changes with 409 and says where the leader is.
	rec := call(h2, "POST", "/v1/cluster/join", "Bearer "+token, `{"id":"n3","address":"n3:7000"}`)
	if rec.Code != http.StatusConflict {
		t.Fatalf("join on a follower: %d %s", rec.Code, rec.Body)
	}
	if rec := call(h2, "GET", "/v1/status", "Bearer "+token, ""); rec.Code != 200 {
		t.Fatalf("status on a replicated follower: %d %s", rec.Code, rec.Body)
	}
	if rec := call(h1, "POST", "/v1/cluster/remove", "Bearer "+token, `{"id":"n2"}`); rec.Code != 200 {
		t.Fatalf("remove: %d %s", rec.Code, rec.Body)
	}
	if n := len(clusterOf(t, h1).Servers); n != 1 {
		t.Fatalf("after remove: %d servers", n)
	}
}

func TestNewRequiresAClusterForAReplicatedEngine(t *testing.T) {
	e, _, _ := openMember(t, "n1", true)
	_, err := admin.New(e, admin.NewObserver(), admin.Options{Token: token, Logger: quiet})
	if !errors.Is(err, admin.ErrInvalidOptions) || !strings.Contains(err.Error(), "replicated") {
		t.Fatalf("a replicated engine without Options.Cluster: %v, want ErrInvalidOptions naming the cause", err)
	}
}

func TestTaggedErrorsMatchAdminSentinelsAndKeepTheirMessage(t *testing.T) {
	e, node, _, h := replicatedMember(t, "n1", true)
	waitLeader(t, e)
	c := raftcluster.New(node)
	err := c.Join(context.Background(), "bad id!", "x:1")
	if !errors.Is(err, admin.ErrInvalidMember) || !errors.Is(err, replication.ErrInvalidConfig) || !strings.HasPrefix(err.Error(), "replication: ") {
		t.Fatalf("join with a bad id: %v, want ErrInvalidMember and ErrInvalidConfig with replication's message", err)
	}
	err = c.Remove(context.Background(), "nobody")
	if !errors.Is(err, admin.ErrInvalidMember) {
		t.Fatalf("remove of no member: %v, want ErrInvalidMember", err)
	}
	rec := call(h, "POST", "/v1/cluster/remove", "Bearer "+token, `{"id":"nobody"}`)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "replication: invalid configuration") {
		t.Fatalf("POST remove nobody: %d %s", rec.Code, rec.Body)
	}
}

func waitLeader(t *testing.T, e *engine.Engine) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, _, self := e.Leader(); self {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no leadership")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
