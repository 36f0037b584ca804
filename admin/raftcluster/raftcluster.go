// Package raftcluster serves a replicated member's cluster endpoints: it
// adapts a *replication.Node (hashicorp/raft) to admin.Cluster.
//
//	node, _ := replication.New(cfg)
//	eng, _ := engine.Open(dir, engine.Options{Replicator: node, Hooks: obs.Hooks()})
//	srv, _ := admin.New(eng, obs, admin.Options{Token: tok, Cluster: raftcluster.New(node)})
//
// It lives apart from package admin so that a single-node binary that
// embeds the admin API links no raft.
package raftcluster

import (
	"context"
	"errors"
	"strconv"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/replication"
)

// Cluster is a *replication.Node seen as an admin.Cluster.
type Cluster struct{ n *replication.Node }

var _ admin.Cluster = (*Cluster)(nil)

// New adapts n.
func New(n *replication.Node) *Cluster { return &Cluster{n: n} }

// Status reports the node's id, raft state, configuration and log indexes.
func (c *Cluster) Status() (admin.ClusterStatus, error) {
	servers, err := c.n.Servers()
	if err != nil {
		return admin.ClusterStatus{}, err
	}
	st := admin.ClusterStatus{ID: c.n.ID(), State: c.n.State(), Members: make([]admin.Member, 0, len(servers))}
	for _, s := range servers {
		st.Members = append(st.Members, admin.Member{ID: s.ID, Address: s.Address, Voter: s.Voter, Leader: s.Leader})
	}
	stats := c.n.Stats()
	num := func(k string) uint64 { n, _ := strconv.ParseUint(stats[k], 10, 64); return n }
	st.CommitIndex, st.LastLogIndex, st.Term = num("commit_index"), num("last_log_index"), num("term")
	return st, nil
}

// Join adds a member (replication.Node.Join); replication.ErrInvalidConfig
// is also admin.ErrInvalidMember, replication.ErrNotCaughtUp also
// admin.ErrNotCaughtUp.
func (c *Cluster) Join(ctx context.Context, id, addr string) error {
	return tag(c.n.Join(ctx, id, addr))
}

// Remove removes a member (replication.Node.RemoveServer), its errors
// tagged like Join's.
func (c *Cluster) Remove(ctx context.Context, id string) error {
	return tag(c.n.RemoveServer(ctx, id))
}

// tag makes a replication error match admin's sentinel too, keeping its
// message and every error it wraps.
func tag(err error) error {
	switch {
	case errors.Is(err, replication.ErrInvalidConfig):
		return &tagged{err: err, as: admin.ErrInvalidMember}
	case errors.Is(err, replication.ErrNotCaughtUp):
		return &tagged{err: err, as: admin.ErrNotCaughtUp}
	}
	return err
}

type tagged struct{ err, as error }

func (t *tagged) Error() string   { return t.err.Error() }
func (t *tagged) Unwrap() []error { return []error{t.as, t.err} }
