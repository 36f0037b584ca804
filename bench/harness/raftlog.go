package main

import (
	"context"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"
)

// raftEvents counts what raft warned about during a point, to say why a
// loopback group lost its leader: the leader's lease ran out ("failed to
// contact quorum", with the longest silence of a follower), or a
// follower's heartbeat timer fired ("heartbeat timeout reached").
type raftEvents struct {
	mu        sync.Mutex
	stepDowns int           // leader: lease expired, stepped down
	elections int           // follower: heartbeat timeout, started an election
	maxGap    time.Duration // longest "failed to contact … time=" a leader saw
}

var events = &raftEvents{}

var contactGap = regexp.MustCompile(`failed to contact: server-id=\S+ time=(\S+)`)

func (r *raftEvents) reset() (stepDowns, elections int, maxGap time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	stepDowns, elections, maxGap = r.stepDowns, r.elections, r.maxGap
	r.stepDowns, r.elections, r.maxGap = 0, 0, 0
	return
}

func (r *raftEvents) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (r *raftEvents) WithAttrs([]slog.Attr) slog.Handler           { return r }
func (r *raftEvents) WithGroup(string) slog.Handler                { return r }

func (r *raftEvents) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch msg := rec.Message; {
	case strings.Contains(msg, "failed to contact quorum"):
		r.stepDowns++
	case strings.Contains(msg, "heartbeat timeout reached, starting election"):
		r.elections++
	default:
		if m := contactGap.FindStringSubmatch(msg); m != nil {
			if d, err := time.ParseDuration(m[1]); err == nil {
				r.maxGap = max(r.maxGap, d)
			}
		}
	}
	return nil
}
