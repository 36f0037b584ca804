package replication

// What the leader knows of each peer's log, learned from the answers the
// peer gave. hashicorp/raft keeps a match index per follower but does not
// export it, so the Node wraps its transport and records, per peer id, the
// highest index the peer acknowledged holding (a successful AppendEntries
// or InstallSnapshot) and the last error its RPCs met. Join uses it to
// promote a new member only once it has answered over an authenticated
// connection and holds the log up to its own joining.
//
// Only synchronous AppendEntries and snapshots are seen, not the pipeline.
// That is enough: raft replicates synchronously until a follower holds the
// leader's last index and only then switches to the pipeline, so a peer
// that caught up has been seen to catch up.

import (
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// peerProgress is one peer's record.
type peerProgress struct {
	match   uint64    // highest index the peer acknowledged holding
	seen    time.Time // last successful answer
	lastErr error     // last RPC failure (transport or TLS), nil after a success
}

type progress struct {
	mu    sync.Mutex
	peers map[raft.ServerID]peerProgress
}

func (p *progress) ok(id raft.ServerID, match uint64) {
	p.update(id, func(pp *peerProgress) {
		pp.match = max(pp.match, match)
		pp.seen, pp.lastErr = time.Now(), nil
	})
}

func (p *progress) failed(id raft.ServerID, err error) {
	p.update(id, func(pp *peerProgress) { pp.lastErr = err })
}

func (p *progress) update(id raft.ServerID, f func(*peerProgress)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.peers == nil {
		p.peers = make(map[raft.ServerID]peerProgress)
	}
	pp := p.peers[id]
	f(&pp)
	p.peers[id] = pp
}

func (p *progress) get(id raft.ServerID) peerProgress {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peers[id]
}

// forget drops a peer's record, so a member that leaves and joins again
// under the same id starts from nothing.
func (p *progress) forget(id raft.ServerID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.peers, id)
}

// trackingTransport is the transport raft gets: the real one, with every
// answer to an AppendEntries or InstallSnapshot recorded in progress.
type trackingTransport struct {
	raft.Transport
	p *progress
}

// preVoteTracking adds pre-vote when the real transport has it: raft
// checks for the method to decide whether to pre-vote.
type preVoteTracking struct {
	*trackingTransport
	pv raft.WithPreVote
}

func (t preVoteTracking) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return t.pv.RequestPreVote(id, target, args, resp)
}

func track(inner raft.Transport, p *progress) raft.Transport {
	t := &trackingTransport{Transport: inner, p: p}
	if pv, ok := inner.(raft.WithPreVote); ok {
		return preVoteTracking{t, pv}
	}
	return t
}

func (t *trackingTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	err := t.Transport.AppendEntries(id, target, args, resp)
	switch {
	case err != nil:
		t.p.failed(id, err)
	case resp.Success && resp.Term == args.Term:
		// The peer's log matches ours up to the last entry sent. A
		// heartbeat carries no entries and proves only the connection.
		t.p.ok(id, args.PrevLogEntry+uint64(len(args.Entries)))
	}
	return err
}

func (t *trackingTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	err := t.Transport.InstallSnapshot(id, target, args, resp, data)
	switch {
	case err != nil:
		t.p.failed(id, err)
	case resp.Success && resp.Term == args.Term:
		t.p.ok(id, args.LastLogIndex)
	}
	return err
}

// Close closes the real transport if it can be closed: raft closes its
// transport when it shuts down.
func (t *trackingTransport) Close() error {
	if c, ok := t.Transport.(raft.WithClose); ok {
		return c.Close()
	}
	return nil
}
