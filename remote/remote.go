package remote

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"

	"github.com/sagaengine/saga/compensation"
)

// IdempotencyKeyHeader is the request header holding the engine's
// idempotency key of the call (compensation.Call.IdempotencyKey).
const IdempotencyKeyHeader = "Idempotency-Key"

// minSecretBytes is the shortest HMAC secret accepted.
const minSecretBytes = 32

// Request is the JSON body POSTed to an endpoint. []byte fields travel as
// base64 strings (standard encoding, padded), as in the saga service's
// JSON API.
type Request struct {
	// SagaID is the saga's id.
	SagaID string `json:"saga_id"`
	// Definition and Version name the definition the saga started with.
	Definition string `json:"definition"`
	Version    int    `json:"version"`
	// Step is the step's name; StepIndex its place in the definition.
	Step      string `json:"step"`
	StepIndex int    `json:"step_index"`
	// Kind is "action" or "compensation".
	Kind string `json:"kind"`
	// Input is the saga's input, as given at its start.
	Input []byte `json:"input"`
	// Output is the step's recorded output (compensations only; absent
	// when an uncertain step's action never reported).
	Output []byte `json:"output,omitempty"`
	// Attempt counts from 1; it grows across retries and restarts.
	Attempt int `json:"attempt"`
	// Uncertain: the step's action may or may not have run (compensations
	// only); the handler must tolerate finding nothing to undo.
	Uncertain bool `json:"uncertain"`
	// IdempotencyKey is the same as the Idempotency-Key header: identical
	// for every attempt of the call, across retries, crashes and failover.
	IdempotencyKey string `json:"idempotency_key"`
	// User is the user context recorded at the saga's start.
	User string `json:"user,omitempty"`
}

// Options are a Client's settings besides the endpoints.
type Options struct {
	// Propagator injects the trace context of a handler's context (its
	// span, when the engine traces, and baggage) into the request's
	// headers. Default: the otel global propagator if one is set,
	// otherwise W3C traceparent, tracestate and baggage.
	Propagator propagation.TextMapPropagator
	// Now dates the signatures. Default time.Now.
	Now func() time.Time
}

// Client calls the configured endpoints as step actions and compensation
// handlers. It is safe for concurrent use.
type Client struct {
	endpoints map[string]*endpoint
}

// endpoint is one configured endpoint; immutable after New but for sem
// and waiting.
type endpoint struct {
	name    string
	url     string
	target  string // path and query, as signed
	timeout time.Duration
	maxBody int64
	secret  []byte        // nil: unsigned
	sem     chan struct{} // a slot per call in flight
	waiting atomic.Int64  // calls waiting for a slot
	// outcomes counts the attempts that ended, by outcome; busy sums their
	// time, the wait for a slot included.
	outcomes [numOutcomes]atomic.Uint64
	busy     atomic.Int64
	client   *http.Client
	prop     propagation.TextMapPropagator // nil: see Options.Propagator
	now      func() time.Time
}

// New validates c, reads its files (certificates, keys, secrets) and
// returns a Client. Every problem, of the configuration and of its
// files, is reported at once in a *ConfigError; it never quotes a file's
// content.
func New(c Config, o Options) (*Client, error) {
	var problems []string
	if err := c.Validate(); err != nil {
		var ce *ConfigError
		if !errors.As(err, &ce) {
			return nil, err
		}
		problems = ce.Problems
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	cl := &Client{endpoints: make(map[string]*endpoint, len(c.Endpoints))}
	for _, name := range slices.Sorted(maps.Keys(c.Endpoints)) {
		ep, errs := newEndpoint(name, c.Endpoints[name].withDefaults(), o)
		for _, err := range errs {
			problems = append(problems, fmt.Sprintf("endpoint %q: %v", name, err))
		}
		cl.endpoints[name] = ep
	}
	if len(problems) > 0 {
		cl.Close()
		return nil, &ConfigError{Problems: problems}
	}
	return cl, nil
}

func newEndpoint(name string, cfg EndpointConfig, o Options) (*endpoint, []error) {
	var errs []error
	conc := max(cfg.Concurrency, 1)
	ep := &endpoint{
		name: name, url: cfg.URL, timeout: cfg.Timeout, maxBody: cfg.MaxResponseBytes,
		sem: make(chan struct{}, conc), prop: o.Propagator, now: o.Now,
	}
	if u, err := url.Parse(cfg.URL); err == nil {
		ep.target = u.RequestURI()
	}
	if cfg.HMACSecretFile != "" {
		b, err := os.ReadFile(cfg.HMACSecretFile)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("hmac_secret_file: %w", err))
		case len(bytes.TrimSpace(b)) < minSecretBytes:
			errs = append(errs, fmt.Errorf("hmac_secret_file %s: the secret is shorter than %d bytes", cfg.HMACSecretFile, minSecretBytes))
		default:
			ep.secret = bytes.TrimSpace(b)
		}
	}
	var tc *tls.Config
	if t := cfg.TLS; t != nil {
		tc = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
		if t.CA != "" {
			pem, err := os.ReadFile(t.CA)
			if err != nil {
				errs = append(errs, fmt.Errorf("tls.ca: %w", err))
			} else {
				tc.RootCAs = x509.NewCertPool()
				if !tc.RootCAs.AppendCertsFromPEM(pem) {
					errs = append(errs, fmt.Errorf("tls.ca %s: no PEM certificate in it", t.CA))
				}
			}
		}
		if t.Cert != "" && t.Key != "" {
			cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
			if err != nil {
				errs = append(errs, fmt.Errorf("tls.cert/tls.key: %w", err))
			} else {
				tc.Certificates = []tls.Certificate{cert}
			}
		}
	}
	ep.client = &http.Client{
		Transport: &http.Transport{
			// No proxy from the environment: the configured URL is where
			// the call goes.
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:     tc,
			TLSHandshakeTimeout: cfg.Timeout,
			ForceAttemptHTTP2:   true,
			MaxIdleConns:        conc,
			MaxIdleConnsPerHost: conc,
			IdleConnTimeout:     90 * time.Second,
		},
		// Never follow a redirect: only the operator's URL is called.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return ep, errs
}

// Close closes the idle connections of every endpoint. Calls after Close
// still work (they open new connections).
func (c *Client) Close() {
	for _, ep := range c.endpoints {
		ep.client.CloseIdleConnections()
	}
}

// Stats is the load of one endpoint at one instant, and the attempts
// made since New.
type Stats struct {
	// InFlight counts the calls holding a slot of the concurrency bound:
	// at most the endpoint's concurrency.
	InFlight int
	// Waiting counts the calls waiting for a slot.
	Waiting int
	// Attempts counts the attempts that ended, by outcome: "ok",
	// "rejected" (4xx, a redirect, a body too large: permanent), "server"
	// (5xx, 408, 429), "timeout", "unavailable" (no answer), "abandoned"
	// (the caller's context ended). Every outcome is present.
	Attempts map[string]uint64
	// Time sums the ended attempts' time, the wait for a slot included.
	Time time.Duration
}

// The outcomes of an attempt, as Stats.Attempts names them.
const (
	outcomeOK = iota
	outcomeRejected
	outcomeServer
	outcomeTimeout
	outcomeUnavailable
	outcomeAbandoned
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"ok", "rejected", "server", "timeout", "unavailable", "abandoned"}

// outcome classifies an attempt's error.
func outcome(err error) int {
	switch {
	case err == nil:
		return outcomeOK
	case errors.Is(err, ErrServer):
		return outcomeServer
	case errors.Is(err, ErrTimeout):
		return outcomeTimeout
	case errors.Is(err, ErrUnavailable):
		return outcomeUnavailable
	case compensation.IsPermanent(err):
		return outcomeRejected
	default:
		return outcomeAbandoned
	}
}

// Stats returns the load of every endpoint, by name: how many calls are
// in flight and how many wait behind the concurrency bound (after a
// restart with many sagas to resume, the queue is here, not at the
// service).
func (c *Client) Stats() map[string]Stats {
	m := make(map[string]Stats, len(c.endpoints))
	for name, ep := range c.endpoints {
		st := Stats{InFlight: len(ep.sem), Waiting: int(ep.waiting.Load()), Attempts: make(map[string]uint64, numOutcomes),
			Time: time.Duration(ep.busy.Load())}
		for i, n := range outcomeNames {
			st.Attempts[n] = ep.outcomes[i].Load()
		}
		m[name] = st
	}
	return m
}

// Names returns the endpoints' names, sorted.
func (c *Client) Names() []string { return slices.Sorted(maps.Keys(c.endpoints)) }

// Action returns the step action that calls the named endpoint: its
// output is the body of a 2xx answer. ErrUnknownEndpoint if there is none.
func (c *Client) Action(name string) (compensation.Action, error) {
	ep, ok := c.endpoints[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownEndpoint, name)
	}
	return func(ctx context.Context, call compensation.Call) ([]byte, error) {
		return ep.call(ctx, call, true)
	}, nil
}

// Handler returns the compensation handler that calls the named endpoint
// (the body of its 2xx answer is ignored, whatever its size).
// ErrUnknownEndpoint if there is none.
func (c *Client) Handler(name string) (compensation.Handler, error) {
	ep, ok := c.endpoints[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownEndpoint, name)
	}
	return func(ctx context.Context, call compensation.Call) error {
		_, err := ep.call(ctx, call, false)
		return err
	}, nil
}

// Register registers every endpoint in reg under its name, both as a step
// action and as a compensation handler (the request's kind says which is
// called), so that definitions may name it as either. A name reg already
// holds is an error (compensation.ErrDuplicateName); the endpoints
// registered before it stay registered.
func (c *Client) Register(reg *compensation.Registry) error {
	var errs []error
	for _, name := range c.Names() {
		a, _ := c.Action(name)
		h, _ := c.Handler(name)
		if err := reg.RegisterAction(name, a); err != nil {
			errs = append(errs, err)
		}
		if err := reg.Register(name, h); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// errAttemptTimeout is the cause of an attempt's context ended by the
// endpoint's timeout.
var errAttemptTimeout = errors.New("attempt timeout")

// call makes one attempt: it waits for a slot of the endpoint's
// concurrency bound (or ctx's end), then POSTs the call within the
// endpoint's timeout. It returns the body of a 2xx answer when output is
// set (an action's), and discards it otherwise.
func (ep *endpoint) call(ctx context.Context, c compensation.Call, output bool) ([]byte, error) {
	t0 := time.Now()
	out, err := ep.attempt(ctx, c, output)
	ep.outcomes[outcome(err)].Add(1)
	ep.busy.Add(int64(time.Since(t0)))
	return out, err
}

func (ep *endpoint) attempt(ctx context.Context, c compensation.Call, output bool) ([]byte, error) {
	body, err := json.Marshal(Request{
		SagaID: c.SagaID, Definition: c.Definition, Version: c.Version, Step: c.Step, StepIndex: c.StepIndex,
		Kind: string(c.Kind), Input: c.Input, Output: c.Output, Attempt: c.Attempt, Uncertain: c.Uncertain,
		IdempotencyKey: c.IdempotencyKey, User: c.User,
	})
	if err != nil {
		return nil, compensation.Permanent(&Error{Endpoint: ep.name, Err: fmt.Errorf("encoding the request: %w", err)})
	}
	ep.waiting.Add(1)
	select {
	case ep.sem <- struct{}{}:
		ep.waiting.Add(-1)
	case <-ctx.Done():
		ep.waiting.Add(-1)
		return nil, &Error{Endpoint: ep.name, Err: fmt.Errorf("abandoned while waiting for a concurrency slot: %w", context.Cause(ctx))}
	}
	defer func() { <-ep.sem }()

	actx, cancel := context.WithTimeoutCause(ctx, ep.timeout, errAttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, ep.url, bytes.NewReader(body))
	if err != nil {
		return nil, compensation.Permanent(&Error{Endpoint: ep.name, Err: fmt.Errorf("building the request: %w", unwrapURL(err))})
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "sagaengine-remote/1")
	req.Header.Set(IdempotencyKeyHeader, c.IdempotencyKey)
	ep.propagator().Inject(ctx, propagation.HeaderCarrier(req.Header))
	if ep.secret != nil {
		req.Header.Set(SignatureHeader, Sign(ep.secret, http.MethodPost, ep.target, ep.now(), body))
	}
	resp, err := ep.client.Do(req)
	if err != nil {
		return nil, ep.transportError(ctx, actx, 0, err)
	}
	defer resp.Body.Close()
	switch code := resp.StatusCode; {
	case code >= 600:
		// Not an HTTP status (Go's client accepts any three digits): a
		// misbehaving endpoint, for an operator to look at.
		return nil, compensation.Permanent(&Error{Endpoint: ep.name, Status: code, Body: errorBody(resp.Body),
			Err: fmt.Errorf("%w: status %d is not an HTTP status", ErrRejected, code)})
	case code >= 200 && code < 300 && !output:
		// Drained (up to a bound) so that the connection is reused.
		if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, ep.maxBody)); err != nil {
			return nil, ep.transportError(ctx, actx, code, err)
		}
		return nil, nil
	case code >= 200 && code < 300:
		out, err := io.ReadAll(io.LimitReader(resp.Body, ep.maxBody+1))
		if err != nil {
			return nil, ep.transportError(ctx, actx, code, err)
		}
		if int64(len(out)) > ep.maxBody {
			return nil, compensation.Permanent(&Error{Endpoint: ep.name, Status: code,
				Err: fmt.Errorf("%w: over max_response_bytes (%d)", ErrResponseTooLarge, ep.maxBody)})
		}
		if len(out) == 0 {
			out = nil
		}
		return out, nil
	case code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooManyRequests:
		return nil, &Error{Endpoint: ep.name, Status: code, Body: errorBody(resp.Body), Err: ErrServer}
	case code >= 300 && code < 400:
		return nil, compensation.Permanent(&Error{Endpoint: ep.name, Status: code,
			Err: fmt.Errorf("%w: a redirect (never followed: fix the endpoint's url)", ErrRejected)})
	default:
		return nil, compensation.Permanent(&Error{Endpoint: ep.name, Status: code, Body: errorBody(resp.Body), Err: ErrRejected})
	}
}

// transportError classifies a failed exchange: the endpoint's timeout,
// the caller's context ending (an abort, the engine closing), or no answer.
func (ep *endpoint) transportError(ctx, actx context.Context, status int, err error) error {
	err = unwrapURL(err)
	switch {
	case ctx.Err() != nil:
		return &Error{Endpoint: ep.name, Status: status, Err: fmt.Errorf("abandoned: %w", context.Cause(ctx))}
	case errors.Is(context.Cause(actx), errAttemptTimeout):
		return &Error{Endpoint: ep.name, Status: status, Err: fmt.Errorf("%w after %v", ErrTimeout, ep.timeout)}
	default:
		return &Error{Endpoint: ep.name, Status: status, Err: fmt.Errorf("%w: %w", ErrUnavailable, err)}
	}
}

func (ep *endpoint) propagator() propagation.TextMapPropagator {
	if ep.prop != nil {
		return ep.prop
	}
	if p := otel.GetTextMapPropagator(); len(p.Fields()) > 0 {
		return p
	}
	return w3c
}

var w3c = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// unwrapURL drops the *url.Error around a transport error: its message
// holds the URL, which may hold a secret in its query.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// errorBody reads the start of an error response's body, for the error.
func errorBody(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, maxQuoted+utfMax))
	return printable(b)
}

const utfMax = 4
