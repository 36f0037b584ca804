package admin

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/replication"
)

// Cluster is what the API needs of a replicated member;
// *replication.Node implements it.
type Cluster interface {
	ID() string
	State() string
	Servers() ([]replication.Server, error)
	Join(ctx context.Context, id, addr string) error
	RemoveServer(ctx context.Context, id string) error
	Stats() map[string]string
}

// ClusterReply is the body of GET /v1/cluster.
type ClusterReply struct {
	// Mode is "single" (an embedded engine) or "replicated".
	Mode       string               `json:"mode"`
	ID         string               `json:"id,omitempty"`
	State      string               `json:"state,omitempty"` // Leader, Follower, Candidate
	LeaderID   string               `json:"leader_id,omitempty"`
	LeaderAddr string               `json:"leader_address,omitempty"`
	Servers    []replication.Server `json:"servers,omitempty"`
	// CommandIndex is the raft index of the last command applied here;
	// with LastLogIndex and CommitIndex it says how stale this member's
	// reads are.
	CommandIndex uint64 `json:"command_index"`
	AppliedIndex uint64 `json:"applied_index"`
	CommitIndex  uint64 `json:"commit_index,omitempty"`
	LastLogIndex uint64 `json:"last_log_index,omitempty"`
	Term         uint64 `json:"term,omitempty"`
	// StateHash is a SHA-256 of the whole applied state: equal on members
	// that applied the same commands.
	StateHash string `json:"state_hash"`
}

// BuildCluster describes the member the engine belongs to.
func BuildCluster(e *engine.Engine) (*ClusterReply, error) {
	h, err := e.StateHash()
	if err != nil {
		return nil, err
	}
	rep := &ClusterReply{Mode: "single", StateHash: hex.EncodeToString(h), AppliedIndex: e.Stats().AppliedIndex,
		CommandIndex: e.CommandIndex()}
	c, ok := e.Replicator().(Cluster)
	if !ok {
		return rep, nil
	}
	rep.Mode, rep.ID, rep.State = "replicated", c.ID(), c.State()
	rep.LeaderID, rep.LeaderAddr, _ = e.Leader()
	if rep.Servers, err = c.Servers(); err != nil {
		return nil, err
	}
	st := c.Stats()
	num := func(k string) uint64 { n, _ := strconv.ParseUint(st[k], 10, 64); return n }
	rep.CommitIndex, rep.LastLogIndex, rep.Term = num("commit_index"), num("last_log_index"), num("term")
	return rep, nil
}

func (s *Server) clusterGet(w http.ResponseWriter, r *http.Request) {
	rep, err := BuildCluster(s.e)
	if err != nil {
		engineError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// joinWait bounds how long POST /v1/cluster/join waits for the new member
// to catch up before it is removed again (inside the server's 30 s write
// timeout).
const joinWait = 20 * time.Second

// MemberRequest is the body of POST /v1/cluster/join ({id, address}) and
// POST /v1/cluster/remove ({id}).
type MemberRequest struct {
	ID      string `json:"id"`
	Address string `json:"address,omitempty"`
}

func (s *Server) clusterChange(w http.ResponseWriter, r *http.Request) {
	c, ok := s.e.Replicator().(Cluster)
	if !ok {
		writeError(w, http.StatusConflict, errors.New("this engine is not replicated"), "")
		return
	}
	var req MemberRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("malformed request body: %w", err), `send {"id": "n4", "address": "host:port"}`)
		return
	}
	if req.ID == "" {
		writeError(w, http.StatusBadRequest, errors.New("id is required"), "")
		return
	}
	var err error
	switch r.PathValue("action") {
	case "join":
		if req.Address == "" {
			writeError(w, http.StatusBadRequest, errors.New("address is required: the raft address the new member listens on"), "")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), joinWait)
		err = c.Join(ctx, req.ID, req.Address)
		cancel()
	case "remove":
		if req.ID == c.ID() {
			// Allowed by raft, but the leader then steps down: say so.
			s.opts.Logger.Warn("admin: removing the leader itself from the group", "id", req.ID)
		}
		err = c.RemoveServer(r.Context(), req.ID)
	default:
		writeError(w, http.StatusNotFound, fmt.Errorf("unknown cluster action %q", r.PathValue("action")), "actions: join, remove")
		return
	}
	if errors.Is(err, replication.ErrInvalidConfig) {
		writeError(w, http.StatusBadRequest, err, "")
		return
	}
	if errors.Is(err, replication.ErrNotCaughtUp) {
		writeError(w, http.StatusConflict, err, "start the member (without -bootstrap) at that raft address, with a certificate from the group's CA, then join again")
		return
	}
	if err != nil {
		engineError(w, err)
		return
	}
	s.clusterGet(w, r)
}
