// Package deploy holds no code: it is the module of the Prometheus alert
// rules (prometheus/) and the Grafana dashboard (grafana/) shipped for the
// saga engine's metrics, and of the test that validates them against the
// metrics admin.Observer registers.
//
// It is a module of its own so that the Prometheus rules parser it tests
// with (github.com/prometheus/prometheus: about 190 more modules) stays out of
// the engine's go.mod: the main module's builds and go.sum do not change.
// Run its test with `make test` or `cd deploy && go test ./...`.
package deploy
