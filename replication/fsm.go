package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/sagaengine/saga/fsm"
)

// A command is one raft log entry of type LogCommand: the records of one
// engine proposal, applied together.
//
//	version byte (1) | uvarint n | { uvarint len | record (fsm encoding) }*n
const commandVersion = 1

// ErrBadCommand: a committed raft entry is not a command this build can
// decode. Every member refuses it the same way, so the state stays the
// same everywhere; its proposer gets this error.
var ErrBadCommand = errors.New("replication: malformed command")

func encodeCommand(recs [][]byte) []byte {
	n := 1 + binary.MaxVarintLen64
	for _, r := range recs {
		n += binary.MaxVarintLen64 + len(r)
	}
	b := make([]byte, 0, n)
	b = append(b, commandVersion)
	b = binary.AppendUvarint(b, uint64(len(recs)))
	for _, r := range recs {
		b = binary.AppendUvarint(b, uint64(len(r)))
		b = append(b, r...)
	}
	return b
}

// decodeCommand returns the records of a command; each is a sub-slice of data.
func decodeCommand(data []byte) ([]*fsm.Record, [][]byte, error) {
	if len(data) == 0 || data[0] != commandVersion {
		return nil, nil, fmt.Errorf("%w: unknown version", ErrBadCommand)
	}
	p := data[1:]
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)) {
		return nil, nil, fmt.Errorf("%w: bad record count", ErrBadCommand)
	}
	p = p[k:]
	recs := make([]*fsm.Record, 0, n)
	raws := make([][]byte, 0, n)
	for i := uint64(0); i < n; i++ {
		l, k := binary.Uvarint(p)
		if k <= 0 || l > uint64(len(p)-k) {
			return nil, nil, fmt.Errorf("%w: record %d: bad length", ErrBadCommand, i)
		}
		raw := p[k : k+int(l)]
		p = p[k+int(l):]
		r, err := fsm.Decode(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: record %d: %v", ErrBadCommand, i, err)
		}
		recs = append(recs, r)
		raws = append(raws, raw)
	}
	if len(p) != 0 {
		return nil, nil, fmt.Errorf("%w: %d bytes after the records", ErrBadCommand, len(p))
	}
	return recs, raws, nil
}

// stateMachine is the raft FSM: it decodes committed commands and applies
// them to the member's replica (the engine, over its store), which records
// the raft index of each command with its effects. After a restart raft hands again every
// command after its last snapshot (NoSnapshotRestoreOnStart: the state in
// Pebble is newer than any snapshot, see Node); those at or below the
// store's SourceIndex are already in the state and are skipped.
type stateMachine struct {
	store fsm.Replica
	// stop is called (once) after an apply error: the member must leave
	// the group's leadership rather than lead while it cannot apply.
	stop func()

	mu  sync.Mutex
	err error // set by the first apply error: nothing is applied after it

	// skipped counts commands raft re-delivered that the state already
	// held (Node.Stats "commands_skipped").
	skipped atomic.Uint64
}

var _ raft.BatchingFSM = (*stateMachine)(nil)

// errFailStopped answers commands after an apply error.
var errFailStopped = errors.New("replication: this member stopped applying after an I/O error; restart it")

func (m *stateMachine) Apply(l *raft.Log) any {
	return m.ApplyBatch([]*raft.Log{l})[0]
}

func (m *stateMachine) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	m.mu.Lock()
	defer m.mu.Unlock()
	// Every command of the batch goes into one Pebble batch.
	var cmds []fsm.Command
	var at []int // position in logs of each command
	next := m.store.AppliedIndex() + 1
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		if m.err != nil {
			out[i] = m.err
			continue
		}
		if l.Index <= m.store.SourceIndex() {
			m.skipped.Add(1)
			continue // applied before a restart
		}
		recs, raws, derr := decodeCommand(l.Data)
		var entries []fsm.Entry
		if derr != nil {
			out[i] = derr // applied as an empty command, the same on every member
		} else {
			entries = make([]fsm.Entry, len(recs))
			for j := range recs {
				entries[j] = fsm.Entry{Index: next, Rec: recs[j], Raw: raws[j]}
				next++
			}
		}
		cmds = append(cmds, fsm.Command{Source: l.Index, Entries: entries})
		at = append(at, i)
	}
	if len(cmds) == 0 {
		return out
	}
	results, err := m.store.ApplyCommands(cmds)
	if err != nil {
		m.err = fmt.Errorf("%w: commands %d-%d: %v", errFailStopped, cmds[0].Source, cmds[len(cmds)-1].Source, err)
		for _, i := range at {
			out[i] = m.err
		}
		if m.stop != nil {
			m.stop()
		}
		return out
	}
	for k, i := range at {
		if out[i] == nil {
			out[i] = results[k]
		}
	}
	return out
}

// Snapshot flushes the state and takes a point-in-time view of it; raft
// persists it while applying goes on.
func (m *stateMachine) Snapshot() (raft.FSMSnapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return nil, m.err
	}
	ss, err := m.store.Snapshot()
	if err != nil {
		return nil, err
	}
	return &snapshot{ss: ss}, nil
}

// Restore replaces the state with a snapshot sent by the leader.
func (m *stateMachine) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.store.Restore(rc); err != nil {
		if !errors.Is(err, fsm.ErrBadSnapshot) {
			m.err = fmt.Errorf("%w: restore: %v", errFailStopped, err)
			if m.stop != nil {
				m.stop()
			}
		}
		return err
	}
	return nil
}

type snapshot struct{ ss *fsm.StoreSnapshot }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.ss.WriteTo(sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *snapshot) Release() { s.ss.Release() }
