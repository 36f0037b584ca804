package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sagaengine/saga/engine"
)

// notLeader and lostLeadership stand for a replicator's errors, which say
// what they mean by method (engine.Replicator's contract).
type notLeader struct{}

func (notLeader) Error() string                { return "raft: not the leader" }
func (notLeader) NotLeader() (id, addr string) { return "n2", "n2:7000" }

type lostLeadership struct{}

func (lostLeadership) Error() string        { return "raft: leadership lost" }
func (lostLeadership) OutcomeUnknown() bool { return true }

func TestReplicatorErrorsMapByTheirMethods(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		code int
		hint string
	}{
		{"a replicator's not-leader error", fmt.Errorf("join: %w", notLeader{}), http.StatusConflict, "send changes to the leader"},
		{"the engine's not-leader error", &engine.NotLeaderError{LeaderID: "n2"}, http.StatusConflict, "send changes to the leader"},
		// The engine wraps a replicator's outcome-unknown error in its own:
		// the hint must name leadership, not an I/O error.
		{"a lost leadership", fmt.Errorf("%w: %w", engine.ErrOutcomeUnknown, lostLeadership{}), http.StatusServiceUnavailable, "leadership changed"},
		{"an I/O error", fmt.Errorf("%w: fsync", engine.ErrOutcomeUnknown), http.StatusServiceUnavailable, "I/O error"},
		{"anything else", errors.New("boom"), http.StatusInternalServerError, ""},
	} {
		rec := httptest.NewRecorder()
		engineError(rec, c.err)
		var body apiError
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if rec.Code != c.code || !strings.Contains(body.Hint, c.hint) {
			t.Errorf("%s: %d %q, want %d with a hint containing %q", c.name, rec.Code, body.Hint, c.code, c.hint)
		}
	}
}

// noCluster is a Cluster that is never called.
type noCluster struct{ Cluster }

func TestNewRefusesAClusterForASingleNodeEngine(t *testing.T) {
	e, err := engine.Open(t.TempDir(), engine.Options{Logger: quiet})
	must(t, err)
	defer e.Close()
	_, err = New(e, NewObserver(), Options{Token: token, Logger: quiet, Cluster: noCluster{}})
	if !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), "not replicated") {
		t.Fatalf("a Cluster for a single-node engine: %v, want ErrInvalidOptions", err)
	}
}
