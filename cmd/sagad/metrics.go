package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagaengine/saga/remote"
)

// remoteCollector serves the remote handlers' load and attempts
// (remote.Client.Stats) on the admin server's /metrics, read at scrape
// time. Its labels are the configured endpoints' names and the fixed
// outcomes: bounded.
type remoteCollector struct {
	c                                 *remote.Client
	inFlight, waiting, attempts, busy *prometheus.Desc
}

func newRemoteCollector(c *remote.Client) *remoteCollector {
	return &remoteCollector{c: c,
		inFlight: prometheus.NewDesc("saga_remote_calls_in_flight", "Calls to a remote handler holding a slot of its concurrency bound.", []string{"endpoint"}, nil),
		waiting:  prometheus.NewDesc("saga_remote_calls_waiting", "Calls to a remote handler waiting for a slot of its concurrency bound.", []string{"endpoint"}, nil),
		attempts: prometheus.NewDesc("saga_remote_attempts_total", "Attempts of remote handler calls that ended, by outcome (ok, rejected, server, timeout, unavailable, abandoned).",
			[]string{"endpoint", "outcome"}, nil),
		busy: prometheus.NewDesc("saga_remote_attempt_seconds_total", "Time the ended attempts of remote handler calls took, the wait for a slot included.", []string{"endpoint"}, nil),
	}
}

func (r *remoteCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- r.inFlight
	ch <- r.waiting
	ch <- r.attempts
	ch <- r.busy
}

func (r *remoteCollector) Collect(ch chan<- prometheus.Metric) {
	for name, s := range r.c.Stats() {
		ch <- prometheus.MustNewConstMetric(r.inFlight, prometheus.GaugeValue, float64(s.InFlight), name)
		ch <- prometheus.MustNewConstMetric(r.waiting, prometheus.GaugeValue, float64(s.Waiting), name)
		for outcome, n := range s.Attempts {
			ch <- prometheus.MustNewConstMetric(r.attempts, prometheus.CounterValue, float64(n), name, outcome)
		}
		ch <- prometheus.MustNewConstMetric(r.busy, prometheus.CounterValue, s.Time.Seconds(), name)
	}
}
