package replication

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/wal"
)

// Errors of a Node. Match them with errors.Is.
var (
	// ErrInvalidConfig: Config.Validate found problems (all are named).
	ErrInvalidConfig = errors.New("replication: invalid configuration")
	// ErrNotLeader: the member does not lead the group; nothing was
	// applied. The error is a *NotLeaderError naming the leader.
	ErrNotLeader = errors.New("replication: not the leader")
	// ErrOutcomeUnknown: leadership was lost (or the node shut down) after
	// a command was sent; it may or may not commit. Look at the saga on
	// the new leader.
	ErrOutcomeUnknown = errors.New("replication: outcome unknown (leadership lost after the command was sent)")
	// ErrClosed: the node is closed.
	ErrClosed = errors.New("replication: node closed")
	// ErrStateAhead: the saga state has applied commands the raft log and
	// snapshots do not hold (the raft directory was replaced or lost).
	ErrStateAhead = errors.New("replication: the saga state is ahead of the raft log")
	// ErrCommandTooLarge: a proposal does not fit in one raft log entry;
	// nothing was applied.
	ErrCommandTooLarge = errors.New("replication: command too large")
	// ErrNotCaughtUp: Join added a member as a non-voter, but it did not
	// answer over the transport, or did not catch up with the log, in
	// time. It was removed again and never voted; the error names the
	// last transport failure (a refused TLS handshake, say).
	ErrNotCaughtUp = errors.New("replication: the new member did not catch up")
)

// logEntryOverhead bounds what the log store adds to a command (raft's
// header: index, term, type, time, lengths).
const logEntryOverhead = 256

// NotLeaderError names the leader (empty if none is known). It implements
// NotLeader() for the engine, which turns it into an engine.NotLeaderError.
type NotLeaderError struct{ LeaderID, LeaderAddr string }

func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return "replication: not the leader, and no leader is known yet"
	}
	return fmt.Sprintf("replication: not the leader; the leader is %s at %s", e.LeaderID, e.LeaderAddr)
}

// Unwrap makes errors.Is(err, ErrNotLeader) true.
func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }

// NotLeader returns the leader's id and address.
func (e *NotLeaderError) NotLeader() (id, addr string) { return e.LeaderID, e.LeaderAddr }

type outcomeUnknownError struct{ cause error }

func (e *outcomeUnknownError) Error() string {
	return ErrOutcomeUnknown.Error() + ": " + e.cause.Error()
}
func (e *outcomeUnknownError) Unwrap() []error      { return []error{ErrOutcomeUnknown, e.cause} }
func (e *outcomeUnknownError) OutcomeUnknown() bool { return true }

// Server is a member of the group.
type Server struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Voter   bool   `json:"voter"`
	Leader  bool   `json:"leader"`
}

// Config configures a Node. Zero durations take the defaults shown.
type Config struct {
	// ID is this member's id, unique in the group: 1-64 of letters,
	// digits, '.', '_', '-'.
	ID string
	// Dir holds the raft log (wal/), the stable store (stable) and the
	// snapshots (snapshots/). Not the engine's directory: use, say,
	// <engine dir>/raft.
	Dir string
	// Bind is the TCP address to listen on (host:port). Advertise is the
	// address peers dial (default: the bound address; required when
	// binding 0.0.0.0).
	Bind, Advertise string
	// TLS, if set, secures the transport with mutual TLS: a peer without
	// a certificate from TLS.CAFile is refused.
	TLS *TLSConfig
	// Transport replaces the TCP transport (Bind, Advertise and TLS are
	// then ignored): raft.NewInmemTransport in tests.
	Transport raft.Transport
	// Bootstrap makes a brand-new member start the group with Peers (or
	// with itself alone if Peers is empty). Ignored when Dir already
	// holds raft state. Bootstrap exactly one member (or every initial
	// member with the same Peers); the others Join.
	Bootstrap bool
	Peers     []Server

	// HeartbeatTimeout (1s), ElectionTimeout (1s), LeaderLeaseTimeout
	// (500ms), CommitTimeout (5ms): raft's timers. A leader cut off from a
	// quorum steps down after LeaderLeaseTimeout.
	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout, CommitTimeout time.Duration
	// SnapshotInterval (2m) and SnapshotThreshold (16384 commands) decide
	// when the state is snapshotted and the raft log compacted; the last
	// TrailingLogs (10240) entries are kept for lagging followers.
	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64
	// MaxAppendEntries bounds the entries raft sends, and writes with one
	// fsync, at once (default 256).
	MaxAppendEntries int
	// ApplyTimeout bounds the wait for a command to be enqueued (default
	// 10s).
	ApplyTimeout time.Duration
	// WAL configures the raft log (segment and record sizes).
	WAL wal.Options
	// Logger receives the node's logs; raft's own are forwarded at Warn
	// and above (RaftLogLevel to change). Default slog.Default().
	Logger       *slog.Logger
	RaftLogLevel string
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func (c *Config) ensureDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.HeartbeatTimeout, time.Second)
	def(&c.ElectionTimeout, time.Second)
	def(&c.LeaderLeaseTimeout, 500*time.Millisecond)
	def(&c.CommitTimeout, 5*time.Millisecond)
	def(&c.SnapshotInterval, 2*time.Minute)
	def(&c.ApplyTimeout, 10*time.Second)
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 16384
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 10240
	}
	if c.MaxAppendEntries == 0 {
		c.MaxAppendEntries = 256
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.RaftLogLevel == "" {
		c.RaftLogLevel = "warn"
	}
	if c.WAL.Logger == nil {
		c.WAL.Logger = c.Logger
	}
	if c.WAL.SegmentSize == 0 {
		c.WAL.SegmentSize = 8 << 20
	}
	c.WAL.EnsureDefaults()
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	// The caller's values, before defaults replace what is unset.
	if err := c.WAL.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("field WAL: %w", err))
	}
	c.ensureDefaults()
	if !idPattern.MatchString(c.ID) {
		errs = append(errs, fmt.Errorf("ID %q: want 1-64 of letters, digits, '.', '_', '-'", c.ID))
	}
	if c.Dir == "" {
		errs = append(errs, errors.New("field Dir is empty"))
	}
	if c.Transport == nil {
		if _, _, err := net.SplitHostPort(c.Bind); err != nil {
			errs = append(errs, fmt.Errorf("field Bind %q: %v", c.Bind, err))
		}
		if c.Advertise != "" {
			if _, _, err := net.SplitHostPort(c.Advertise); err != nil {
				errs = append(errs, fmt.Errorf("field Advertise %q: %v", c.Advertise, err))
			}
		}
	}
	seen := map[string]bool{}
	for i, p := range c.Peers {
		if !idPattern.MatchString(p.ID) {
			errs = append(errs, fmt.Errorf("Peers[%d].ID %q: want 1-64 of letters, digits, '.', '_', '-'", i, p.ID))
		}
		if seen[p.ID] {
			errs = append(errs, fmt.Errorf("Peers[%d].ID %q appears twice", i, p.ID))
		}
		seen[p.ID] = true
		if _, _, err := net.SplitHostPort(p.Address); err != nil {
			errs = append(errs, fmt.Errorf("Peers[%d].Address %q: %v", i, p.Address, err))
		}
	}
	if len(c.Peers) > 0 && !seen[c.ID] {
		errs = append(errs, fmt.Errorf("field Peers does not include this member (%q)", c.ID))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"HeartbeatTimeout", c.HeartbeatTimeout}, {"ElectionTimeout", c.ElectionTimeout},
		{"LeaderLeaseTimeout", c.LeaderLeaseTimeout}, {"CommitTimeout", c.CommitTimeout},
		{"SnapshotInterval", c.SnapshotInterval}, {"ApplyTimeout", c.ApplyTimeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v is negative", d.name, d.v))
		}
	}
	if c.HeartbeatTimeout > 0 && c.HeartbeatTimeout < 5*time.Millisecond {
		errs = append(errs, fmt.Errorf("HeartbeatTimeout %v is below raft's minimum of 5ms", c.HeartbeatTimeout))
	}
	if c.ElectionTimeout > 0 && c.ElectionTimeout < c.HeartbeatTimeout {
		errs = append(errs, fmt.Errorf("ElectionTimeout %v is below HeartbeatTimeout %v", c.ElectionTimeout, c.HeartbeatTimeout))
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		errs = append(errs, fmt.Errorf("LeaderLeaseTimeout %v is above HeartbeatTimeout %v", c.LeaderLeaseTimeout, c.HeartbeatTimeout))
	}
	if c.MaxAppendEntries < 0 || c.MaxAppendEntries > 1024 {
		errs = append(errs, fmt.Errorf("MaxAppendEntries %d: want 1-1024", c.MaxAppendEntries))
	}
	if hclog.LevelFromString(c.RaftLogLevel) == hclog.NoLevel {
		errs = append(errs, fmt.Errorf("RaftLogLevel %q: want trace, debug, info, warn or error", c.RaftLogLevel))
	}
	if c.TLS != nil && c.Transport != nil {
		errs = append(errs, errors.New("TLS applies to the TCP transport; a custom Transport must secure itself"))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
}

// Node is one member of a replicated saga group: a raft instance whose
// log is a LogStore on package wal and whose state machine is the saga
// state (package fsm). It implements engine.Replicator: pass it as
// engine.Options.Replicator, and the engine owns it from then on.
type Node struct {
	cfg    Config
	logs   *LogStore
	stable *StableStore
	snaps  *raft.FileSnapshotStore
	trans  raft.Transport // the real transport, New's or Config's
	prog   progress       // what peers answered, seen through track(trans)
	rtrans raft.Transport // track(trans): the transport raft uses
	hlog   hclog.Logger

	mu      sync.Mutex
	raft    *raft.Raft
	sm      *stateMachine // set by Start
	closed  bool
	closing chan struct{} // closed by Close
}

// New validates cfg and opens the member's stores and transport. Raft
// itself starts with Start (the engine calls it).
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.ensureDefaults()
	n := &Node{cfg: cfg, closing: make(chan struct{})}
	n.hlog = hclog.New(&hclog.LoggerOptions{
		Name: "raft", Level: hclog.LevelFromString(cfg.RaftLogLevel),
		Output: slogWriter{cfg.Logger}, DisableTime: true,
	})
	ok := false
	defer func() {
		if !ok {
			_ = n.closeStores()
		}
	}()
	var err error
	// The transport first: an address in use (or a TLS file that will not
	// load) refuses the member before it writes its directory.
	if cfg.Transport != nil {
		n.trans = cfg.Transport
	} else {
		var tlsConf *tls.Config
		if cfg.TLS != nil {
			if tlsConf, err = cfg.TLS.Load(); err != nil {
				return nil, err
			}
		}
		// Through a variable of its own: a nil *NetworkTransport in
		// n.trans would be a non-nil interface that closeStores closes.
		tr, err := NewTCPTransport(cfg.Bind, cfg.Advertise, tlsConf, 3, 10*time.Second, n.hlog)
		if err != nil {
			return nil, err
		}
		n.trans = tr
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("replication: create %s: %w", cfg.Dir, err)
	}
	if n.logs, err = OpenLogStore(filepath.Join(cfg.Dir, "wal"), cfg.WAL); err != nil {
		return nil, err
	}
	if n.stable, err = OpenStableStore(filepath.Join(cfg.Dir, "stable")); err != nil {
		return nil, err
	}
	if n.snaps, err = raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, n.hlog); err != nil {
		return nil, fmt.Errorf("replication: snapshot store: %w", err)
	}
	n.rtrans = track(n.trans, &n.prog)
	ok = true
	return n, nil
}

// closeStores closes what New opened: the TCP transport (not one passed
// in Config.Transport) and the log store.
func (n *Node) closeStores() error {
	var errs []error
	if c, ok := n.trans.(io.Closer); ok && n.cfg.Transport == nil {
		errs = append(errs, c.Close())
	}
	if n.logs != nil {
		errs = append(errs, n.logs.Close())
	}
	return errors.Join(errs...)
}

// Addr is the address peers reach this member at.
func (n *Node) Addr() string { return string(n.trans.LocalAddr()) }

// ID is this member's id.
func (n *Node) ID() string { return n.cfg.ID }

// Start brings the state up to date with the raft directory and starts
// raft. Part of engine.Replicator.
//
// Raft runs with NoSnapshotRestoreOnStart: the state in Pebble survives a
// restart and is at least as new as the latest snapshot (a snapshot
// flushes the state first), so restoring the snapshot would throw work
// away; raft then hands again the commands after the snapshot, and the
// state machine skips those the state already holds (fsm.Store.SourceIndex).
// Start restores the latest snapshot itself when the state is older than
// it (a restore cut short, or a state directory lost), and refuses a state
// newer than everything the raft directory holds.
func (n *Node) Start(store fsm.Replica) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	if n.raft != nil {
		return errors.New("replication: node already started")
	}
	if err := n.catchUp(store); err != nil {
		return err
	}
	sm := &stateMachine{store: store}
	n.sm = sm
	sm.stop = func() {
		// Shutdown waits for the FSM goroutine, which calls stop: async.
		n.cfg.Logger.Error("replication: this member can no longer apply commands; shutting raft down (restart the process)")
		go n.raft.Shutdown()
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.ID)
	rc.HeartbeatTimeout = n.cfg.HeartbeatTimeout
	rc.ElectionTimeout = n.cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = n.cfg.LeaderLeaseTimeout
	rc.CommitTimeout = n.cfg.CommitTimeout
	rc.SnapshotInterval = n.cfg.SnapshotInterval
	rc.SnapshotThreshold = n.cfg.SnapshotThreshold
	rc.TrailingLogs = n.cfg.TrailingLogs
	rc.MaxAppendEntries = n.cfg.MaxAppendEntries
	rc.BatchApplyCh = true
	rc.NoSnapshotRestoreOnStart = true
	rc.Logger = n.hlog
	if err := raft.ValidateConfig(rc); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if n.cfg.Bootstrap {
		has, err := raft.HasExistingState(n.logs, n.stable, n.snaps)
		if err != nil {
			return fmt.Errorf("replication: read raft state: %w", err)
		}
		if !has {
			conf := raft.Configuration{}
			peers := n.cfg.Peers
			if len(peers) == 0 {
				peers = []Server{{ID: n.cfg.ID, Address: n.Addr()}}
			}
			for _, p := range peers {
				conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Address)})
			}
			if err := raft.BootstrapCluster(rc, n.logs, n.stable, n.snaps, n.rtrans, conf); err != nil {
				return fmt.Errorf("replication: bootstrap: %w", err)
			}
		}
	}
	r, err := raft.NewRaft(rc, sm, n.logs, n.stable, n.snaps, n.rtrans)
	if err != nil {
		return fmt.Errorf("replication: start raft: %w", err)
	}
	n.raft = r
	return nil
}

// catchUp restores the latest snapshot if the state is older than it.
func (n *Node) catchUp(store fsm.Replica) error {
	metas, err := n.snaps.List()
	if err != nil {
		return fmt.Errorf("replication: list snapshots: %w", err)
	}
	last, err := n.logs.LastIndex()
	if err != nil {
		return err
	}
	var snapIndex, snapSource uint64
	if len(metas) > 0 {
		snapIndex = metas[0].Index
		_, rc, err := n.snaps.Open(metas[0].ID)
		if err != nil {
			return fmt.Errorf("replication: open snapshot %s: %w", metas[0].ID, err)
		}
		_, snapSource, err = fsm.ReadSnapshotHeader(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("replication: snapshot %s: %w", metas[0].ID, err)
		}
	}
	// A snapshot's raft index may be below the command index it holds
	// (taken while raft re-delivered commands the state already had).
	if src := store.SourceIndex(); src > max(last, snapIndex, snapSource) {
		return fmt.Errorf("%w: the state has applied command %d, the raft log ends at %d and the latest snapshot at %d; "+
			"remove this member's state and raft directories and join it again as a new member", ErrStateAhead, src, last, snapIndex)
	}
	if len(metas) == 0 {
		if store.RestoreIncomplete() {
			return fmt.Errorf("replication: %w, and there is no snapshot to restore from; remove this member's state and raft directories and join it again", fsm.ErrRestoreIncomplete)
		}
		return nil
	}
	if !store.RestoreIncomplete() && store.SourceIndex() >= snapSource {
		return nil
	}
	_, rc, err := n.snaps.Open(metas[0].ID)
	if err != nil {
		return fmt.Errorf("replication: open snapshot %s: %w", metas[0].ID, err)
	}
	defer rc.Close()
	n.cfg.Logger.Info("replication: the state is older than the latest snapshot; restoring it",
		"snapshot", metas[0].ID, "state_command_index", store.SourceIndex(), "snapshot_command_index", snapSource)
	if err := store.Restore(rc); err != nil {
		return fmt.Errorf("replication: restore snapshot %s: %w", metas[0].ID, err)
	}
	return nil
}

func (n *Node) getRaft() (*raft.Raft, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, ErrClosed
	}
	if n.raft == nil {
		return nil, errors.New("replication: node not started")
	}
	return n.raft, nil
}

// Propose replicates one command and returns its results once it is
// committed and applied here. Part of engine.Replicator.
func (n *Node) Propose(ctx context.Context, recs [][]byte) ([]fsm.Result, error) {
	r, err := n.getRaft()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cmd := encodeCommand(recs)
	if len(cmd) > n.cfg.WAL.MaxRecordSize-logEntryOverhead {
		return nil, fmt.Errorf("%w: the command encodes to %d bytes; a raft log entry holds at most %d (Config.WAL.MaxRecordSize less %d bytes of framing)",
			ErrCommandTooLarge, len(cmd), n.cfg.WAL.MaxRecordSize-logEntryOverhead, logEntryOverhead)
	}
	f := r.Apply(cmd, n.cfg.ApplyTimeout)
	// Once enqueued, the command is waited for even if ctx ends:
	// abandoning it would turn a known outcome into an unknown one. But
	// raft never answers futures still queued when it shuts down
	// (hashicorp/raft#498): Close ends the wait.
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return nil, n.mapErr(r, err)
		}
	case <-n.closing:
		return nil, &outcomeUnknownError{cause: raft.ErrRaftShutdown}
	}
	switch resp := f.Response().(type) {
	case []fsm.Result:
		return resp, nil
	case error:
		if errors.Is(resp, errFailStopped) {
			// Committed, but this member could not apply it.
			return nil, &outcomeUnknownError{cause: resp}
		}
		return nil, resp
	default:
		return nil, fmt.Errorf("replication: unexpected apply response %T", resp)
	}
}

func (n *Node) mapErr(r *raft.Raft, err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		addr, id := r.LeaderWithID()
		return &NotLeaderError{LeaderID: string(id), LeaderAddr: string(addr)}
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return err // never entered the log
	}
	// Leadership lost, shutdown, aborted by a restore, or an I/O error of
	// the log store: the entry may be in the log and may yet commit.
	return &outcomeUnknownError{cause: err}
}

// Leadership delivers true when this member becomes leader and false when
// it stops. Part of engine.Replicator; one reader only.
func (n *Node) Leadership() <-chan bool {
	r, err := n.getRaft()
	if err != nil {
		return nil
	}
	return r.LeaderCh()
}

// Barrier waits until every command committed before it is applied here.
func (n *Node) Barrier(ctx context.Context) error {
	r, err := n.getRaft()
	if err != nil {
		return err
	}
	f := r.Barrier(0)
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return n.mapErr(r, err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Leader returns the leader's id and address, or empty strings.
func (n *Node) Leader() (id, addr string) {
	r, err := n.getRaft()
	if err != nil {
		return "", ""
	}
	a, i := r.LeaderWithID()
	return string(i), string(a)
}

// IsLeader reports whether this member leads.
func (n *Node) IsLeader() bool {
	r, err := n.getRaft()
	return err == nil && r.State() == raft.Leader
}

// State is raft's state of this member: Follower, Candidate, Leader or Shutdown.
func (n *Node) State() string {
	r, err := n.getRaft()
	if err != nil {
		return "Shutdown"
	}
	return r.State().String()
}

// joinTimeout bounds Join's wait for the new member to catch up when ctx
// has no deadline.
const joinTimeout = time.Minute

// Join adds a member; only the leader can. The member is added as a
// non-voter first, so it counts for no quorum while it is unknown. It
// becomes a voter only once it has answered the leader over the transport
// (over mutual TLS, an authenticated connection) and holds the log up to
// the entry that added it. If that does not happen before ctx ends (or
// within a minute, without a deadline), the member is removed again and
// the error is ErrNotCaughtUp with the last transport failure, so an
// unreachable or untrusted member never becomes a voter.
//
// Joining a member that is already a voter at the same address does
// nothing and succeeds; a non-voter is promoted once it has caught up. An
// id already in the group at another address, or an address another
// member has, is refused with ErrInvalidConfig and changes nothing.
func (n *Node) Join(ctx context.Context, id, addr string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("%w: member id %q", ErrInvalidConfig, id)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%w: member address %q: %v", ErrInvalidConfig, addr, err)
	}
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	known := false
	for _, s := range servers {
		switch {
		case s.ID == id && s.Address == addr && s.Voter:
			return nil
		case s.ID == id && s.Address == addr:
			known = true
		case s.ID == id:
			// Moving a member by joining it again would leave the
			// group without it if the new address fails: refuse.
			return fmt.Errorf("%w: %s is already a member at %s; remove it before joining it at %s", ErrInvalidConfig, id, s.Address, addr)
		case s.Address == addr:
			return fmt.Errorf("%w: %s is already the address of member %s", ErrInvalidConfig, addr, s.ID)
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, joinTimeout)
		defer cancel()
	}
	if !known {
		n.prog.forget(raft.ServerID(id))
	}
	var joined uint64
	if err := n.membership(ctx, func(r *raft.Raft, timeout time.Duration) raft.IndexFuture {
		f := r.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout)
		if f.Error() == nil {
			joined = f.Index()
		}
		return f
	}); err != nil {
		return err
	}
	if err := n.awaitCatchUp(ctx, raft.ServerID(id), joined); err != nil {
		// Best effort, on a fresh context: ctx may be what ended.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), n.cfg.ApplyTimeout)
		defer cancel()
		if rerr := n.RemoveServer(rctx, id); rerr != nil {
			return fmt.Errorf("%w; removing the non-voter %s failed too: %v", err, id, rerr)
		}
		return fmt.Errorf("%w; %s was removed from the group and never voted", err, id)
	}
	return n.membership(ctx, func(r *raft.Raft, timeout time.Duration) raft.IndexFuture {
		return r.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout)
	})
}

// awaitCatchUp waits until peer id has acknowledged holding index.
func (n *Node) awaitCatchUp(ctx context.Context, id raft.ServerID, index uint64) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		p := n.prog.get(id)
		if p.match >= index {
			return nil
		}
		if !n.IsLeader() {
			return fmt.Errorf("%w: %s: leadership was lost while it caught up", ErrNotCaughtUp, id)
		}
		select {
		case <-ctx.Done():
			switch {
			case p.lastErr != nil:
				return fmt.Errorf("%w: %s answered nothing usable (last error: %v)", ErrNotCaughtUp, id, p.lastErr)
			case p.seen.IsZero():
				return fmt.Errorf("%w: %s never answered the leader", ErrNotCaughtUp, id)
			default:
				return fmt.Errorf("%w: %s holds the log up to %d of %d", ErrNotCaughtUp, id, p.match, index)
			}
		case <-tick.C:
		case <-n.closing:
			return ErrClosed
		}
	}
}

// RemoveServer removes a member; only the leader can.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	found := false
	for _, s := range servers {
		found = found || s.ID == id
	}
	if !found {
		return fmt.Errorf("%w: no member %q in the configuration", ErrInvalidConfig, id)
	}
	return n.membership(ctx, func(r *raft.Raft, timeout time.Duration) raft.IndexFuture {
		return r.RemoveServer(raft.ServerID(id), 0, timeout)
	})
}

func (n *Node) membership(ctx context.Context, f func(*raft.Raft, time.Duration) raft.IndexFuture) error {
	r, err := n.getRaft()
	if err != nil {
		return err
	}
	timeout := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		if timeout = time.Until(dl); timeout <= 0 {
			return ctx.Err()
		}
	}
	if err := f(r, timeout).Error(); err != nil {
		return n.mapErr(r, err)
	}
	return nil
}

// Servers lists the members of the latest configuration.
func (n *Node) Servers() ([]Server, error) {
	r, err := n.getRaft()
	if err != nil {
		return nil, err
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	_, leader := r.LeaderWithID()
	var out []Server
	for _, s := range f.Configuration().Servers {
		out = append(out, Server{ID: string(s.ID), Address: string(s.Address), Voter: s.Suffrage == raft.Voter, Leader: s.ID == leader})
	}
	return out, nil
}

// Stats returns raft's counters (state, term, indexes, …).
func (n *Node) Stats() map[string]string {
	r, err := n.getRaft()
	if err != nil {
		return map[string]string{"state": "Shutdown"}
	}
	st := r.Stats()
	n.mu.Lock()
	if n.sm != nil {
		// Commands raft re-delivered after a restart that the state
		// already held, skipped by their index.
		st["commands_skipped"] = strconv.FormatUint(n.sm.skipped.Load(), 10)
	}
	n.mu.Unlock()
	if first, err := n.logs.FirstIndex(); err == nil {
		st["first_log_index"] = strconv.FormatUint(first, 10) // after compaction
	}
	return st
}

// Snapshot asks raft for a snapshot now (and a log compaction after it).
func (n *Node) Snapshot() error {
	r, err := n.getRaft()
	if err != nil {
		return err
	}
	return r.Snapshot().Error()
}

// Close shuts raft down and closes the stores. Part of engine.Replicator.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return ErrClosed
	}
	n.closed = true
	close(n.closing)
	r := n.raft
	n.mu.Unlock()
	var err error
	if r != nil {
		err = r.Shutdown().Error()
	}
	return errors.Join(err, n.closeStores())
}

// slogWriter forwards raft's hclog lines to a slog.Logger.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	switch {
	case strings.Contains(line, "[ERROR]"):
		w.l.Error(line)
	case strings.Contains(line, "[WARN]"):
		w.l.Warn(line)
	default:
		w.l.Debug(line)
	}
	return len(p), nil
}
