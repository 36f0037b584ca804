package admin

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/sagaengine/saga/auth"
	"github.com/sagaengine/saga/engine"
)

// Errors a Cluster's Join and Remove return (wrapped); the cluster
// endpoints map them to status codes. A Cluster may also return an error
// with a NotLeader() (id, addr string) method (this member does not lead:
// nothing changed), answered 409 like the engine's ErrNotLeader.
var (
	// ErrInvalidMember: the change names a malformed or conflicting member
	// (a bad id or address, an id or address already in use, no such
	// member); nothing changed. Answered 400.
	ErrInvalidMember = errors.New("admin: invalid member change")
	// ErrNotCaughtUp: Join added the member, but it did not answer or did
	// not catch up with the log in time; it was removed again and never
	// voted. Answered 409.
	ErrNotCaughtUp = errors.New("admin: the new member did not catch up")
)

// Cluster is what the cluster endpoints need of a replicated member, in
// plain data. The admin package declares it, rather than using
// package replication, so that a single-node binary embedding the admin
// API links no consensus library: package admin/raftcluster adapts a
// *replication.Node to it.
type Cluster interface {
	// Status describes this member and the group's latest configuration.
	Status() (ClusterStatus, error)
	// Join adds the member id, listening at the raft address addr, once it
	// has caught up with the log. Errors: ErrInvalidMember,
	// ErrNotCaughtUp, a NotLeader() error, or ctx's.
	Join(ctx context.Context, id, addr string) error
	// Remove removes the member id from the group. Errors:
	// ErrInvalidMember (no such member), a NotLeader() error, or ctx's.
	Remove(ctx context.Context, id string) error
}

// ClusterStatus is what a Cluster says of itself.
type ClusterStatus struct {
	ID      string   // this member's id
	State   string   // Leader, Follower, Candidate, Shutdown
	Members []Member // the latest configuration
	// CommitIndex, LastLogIndex and Term are the consensus log's (zero if
	// unknown).
	CommitIndex, LastLogIndex, Term uint64
}

// Member is a member of the group.
type Member struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Voter   bool   `json:"voter"`
	Leader  bool   `json:"leader"`
}

// ClusterReply is the body of GET /v1/cluster.
type ClusterReply struct {
	// Mode is "single" (an embedded engine) or "replicated".
	Mode       string   `json:"mode"`
	ID         string   `json:"id,omitempty"`
	State      string   `json:"state,omitempty"` // Leader, Follower, Candidate
	LeaderID   string   `json:"leader_id,omitempty"`
	LeaderAddr string   `json:"leader_address,omitempty"`
	Servers    []Member `json:"servers,omitempty"`
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

// BuildCluster describes the member the engine belongs to; c is its
// Cluster (nil for a single-node engine).
func BuildCluster(e *engine.Engine, c Cluster) (*ClusterReply, error) {
	h, err := e.StateHash()
	if err != nil {
		return nil, err
	}
	rep := &ClusterReply{Mode: "single", StateHash: hex.EncodeToString(h), AppliedIndex: e.Stats().AppliedIndex,
		CommandIndex: e.CommandIndex()}
	if c == nil {
		return rep, nil
	}
	st, err := c.Status()
	if err != nil {
		return nil, err
	}
	rep.Mode, rep.ID, rep.State, rep.Servers = "replicated", st.ID, st.State, st.Members
	rep.LeaderID, rep.LeaderAddr, _ = e.Leader()
	rep.CommitIndex, rep.LastLogIndex, rep.Term = st.CommitIndex, st.LastLogIndex, st.Term
	return rep, nil
}

func (s *Server) clusterGet(w http.ResponseWriter, r *http.Request) {
	rep, err := BuildCluster(s.e, s.opts.Cluster)
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
	c := s.opts.Cluster
	if c == nil {
		writeError(w, http.StatusConflict, errors.New("this engine is not replicated"), "")
		return
	}
	var req MemberRequest
	if err := decodeBody(r, &req); err != nil {
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
		if st, serr := c.Status(); serr == nil && req.ID == st.ID {
			// Allowed by raft, but the leader then steps down: say so.
			s.opts.Logger.Warn("admin: removing the leader itself from the group", "id", req.ID)
		}
		err = c.Remove(r.Context(), req.ID)
	default:
		writeError(w, http.StatusNotFound, fmt.Errorf("unknown cluster action %q", r.PathValue("action")), "actions: join, remove")
		return
	}
	if errors.Is(err, ErrInvalidMember) {
		writeError(w, http.StatusBadRequest, err, "")
		return
	}
	if errors.Is(err, ErrNotCaughtUp) {
		writeError(w, http.StatusConflict, err, "start the member (without -bootstrap) at that raft address, with a certificate from the group's CA, then join again")
		return
	}
	if err != nil {
		engineError(w, err)
		return
	}
	caller, _ := auth.FromContext(r.Context())
	s.opts.Logger.Info("admin: cluster changed", "action", r.PathValue("action"), "member", req.ID, "actor", caller.Name)
	s.clusterGet(w, r)
}
