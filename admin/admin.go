// Package admin serves the engine's admin API: HTTP+JSON for operators and
// sagactl (status, list, show, watch, retry, abort, resolve, policy) and
// /metrics for Prometheus.
//
// Deny by default: the server refuses to start without a bearer token, it
// binds to 127.0.0.1 (or a unix socket) unless told otherwise, and every
// endpoint but /healthz requires a token, compared in constant time.
// Tokens are named and scoped (package auth): the GETs need scope read,
// the saga actions (retry, abort, resolve) operator, PUT /v1/policy and
// the cluster changes admin; a token without the scope is answered 403
// and changes nothing. The actor recorded with an action is the token's
// name, whatever the request's "actor" says. Options.Token is the
// single-token shorthand: one admin token named "default".
//
// Metrics: an Observer turns the engine's hooks into Prometheus metrics
// (listed on Observer). NewObserver keeps them in a registry of its own;
// NewObserverWith(ObserverOptions{Registerer: reg}) registers them in the
// application's registry instead, and /metrics then serves that
// registry's Gatherer (the application's metrics with the saga ones). A
// registration conflict (two observers on one registry) is
// ErrRegisterMetrics, never a panic. The options live here, not in
// engine.Options: the engine reports through Hooks and links no
// Prometheus.
//
// The cluster endpoints (/v1/cluster) reach a replicated member through
// the Cluster interface, set in Options.Cluster: this package imports no
// consensus library, and admin/raftcluster adapts a *replication.Node.
package admin

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sagaengine/saga/auth"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/policy"
)

// Errors returned by New and Start.
var (
	// ErrNoToken: the API would run open; it refuses to.
	ErrNoToken = errors.New("admin: no token configured: refusing to serve an open admin API (set Options.Tokens or Options.Token)")
	// ErrInvalidOptions: Options failed validation.
	ErrInvalidOptions = errors.New("admin: invalid options")
)

// DefaultAddr is where the API listens by default: loopback only.
const DefaultAddr = "127.0.0.1:7070"

// maxBody bounds request bodies.
const maxBody = 1 << 20

// Options configures the admin server.
type Options struct {
	// Addr is host:port, or unix:/path/to.sock. Default DefaultAddr.
	Addr string
	// Tokens authenticate every request but /healthz, and say what each
	// may do (see the package comment). Token or Tokens is required.
	Tokens auth.Authenticator
	// Token is the shorthand for Tokens of one token: this secret (16
	// characters or more), named auth.DefaultName, of scope admin. Not
	// with Tokens.
	Token string
	// CertFile and KeyFile turn on TLS (both or neither).
	CertFile, KeyFile string
	// Policy, if set, is served under /v1/policy.
	Policy *policy.Manager
	// Cluster serves /v1/cluster and its join and remove actions for a
	// replicated engine: required then (raftcluster.New(node) for a
	// *replication.Node), refused for a single-node one. Default nil.
	Cluster Cluster
	// Console, if set, is the web console (console.New in package
	// admin/console), served under /ui/ with a redirect from /. It
	// authenticates with a session cookie of its own, not the bearer
	// token. If it has a Close method, Close calls it (ending its live
	// streams). Default nil: no console.
	Console http.Handler
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Server is the admin API of one engine.
type Server struct {
	e    *engine.Engine
	auth auth.Authenticator // Options.Tokens, or Options.Token's
	o    *Observer
	opts Options
	srv  *http.Server
	ln   net.Listener
	quit chan struct{} // closed by Close: ends watch streams
	once sync.Once
	// closeConsole ends the console's live streams; nil without one.
	closeConsole func() error
}

// New checks the options and builds the server; Start serves it.
func New(e *engine.Engine, o *Observer, opts Options) (*Server, error) {
	if opts.Token == "" && opts.Tokens == nil {
		return nil, ErrNoToken
	}
	var probs []string
	var authn auth.Authenticator = opts.Tokens
	switch {
	case opts.Token != "" && opts.Tokens != nil:
		probs = append(probs, "set Token or Tokens, not both")
	case opts.Token != "" && len(opts.Token) < 16:
		probs = append(probs, "the token is shorter than 16 characters")
	case opts.Token != "":
		ts, err := auth.Single(auth.DefaultName, auth.Admin, opts.Token)
		if err != nil {
			probs = append(probs, err.Error())
		}
		authn = ts
	}
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		probs = append(probs, "TLS needs both CertFile and KeyFile")
	}
	if e == nil || o == nil {
		probs = append(probs, "an engine and an observer are required")
	} else if replicated := e.Replicator() != nil; replicated && opts.Cluster == nil {
		probs = append(probs, "the engine is replicated: set Cluster (raftcluster.New(node)) for the cluster endpoints")
	} else if !replicated && opts.Cluster != nil {
		probs = append(probs, "Cluster is set but the engine is not replicated")
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrInvalidOptions, strings.Join(probs, "; "))
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{e: e, o: o, auth: authn, opts: opts, quit: make(chan struct{})}
	if c, ok := opts.Console.(interface{ Close() error }); ok {
		s.closeConsole = c.Close
	}
	o.WatchStates(e)
	s.srv = &http.Server{
		Handler: s.Handler(),
		// Every request is small and answered at once; only the watch
		// stream lifts the write (and read) deadline for itself.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	return s, nil
}

// Start listens and serves in the background.
func (s *Server) Start() error {
	network, addr := "tcp", s.opts.Addr
	if strings.HasPrefix(addr, "unix:") {
		network, addr = "unix", strings.TrimPrefix(addr, "unix:")
		// Remove a stale socket from a previous run, and nothing else.
		if fi, err := os.Lstat(addr); err == nil {
			if fi.Mode()&os.ModeSocket == 0 {
				return fmt.Errorf("%w: %s exists and is not a socket", ErrInvalidOptions, addr)
			}
			_ = os.Remove(addr)
		}
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("admin: listen on %s: %w", s.opts.Addr, err)
	}
	if network == "unix" {
		// Only its owner may connect. Set on the socket, not through the
		// umask: the umask is the whole process's, and a file or directory
		// the engine made meanwhile would have lost its permissions (a
		// directory 0600, which nobody can enter). Until the chmod the
		// socket has the umask's mode (0755 by default: connecting takes
		// write permission), and every request needs a token anyway.
		if err := os.Chmod(addr, 0o600); err != nil {
			ln.Close()
			return fmt.Errorf("admin: restrict the socket %s to its owner: %w", addr, err)
		}
	}
	if s.opts.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.opts.CertFile, s.opts.KeyFile)
		if err != nil {
			ln.Close()
			return fmt.Errorf("admin: load TLS key pair: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}
	s.ln = ln
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.opts.Logger.Error("admin: serve", "err", err)
		}
	}()
	s.opts.Logger.Info("admin: serving", "addr", ln.Addr().String(), "tls", s.opts.CertFile != "")
	return nil
}

// Addr is the address the server listens on (after Start).
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Close stops the server, ending watch streams.
func (s *Server) Close() error {
	s.once.Do(func() {
		close(s.quit)
		if s.closeConsole != nil {
			_ = s.closeConsole()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	return err
}

// Handler returns the API's routes, authentication included.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	read, operator, admin := need(auth.Read), need(auth.Operator), need(auth.Admin)
	mux.Handle("GET /metrics", read(promhttp.HandlerFor(s.o.gatherer, promhttp.HandlerOpts{EnableOpenMetrics: true}).ServeHTTP))
	// Each endpoint names the query parameters it reads: any other is
	// refused (params), not ignored.
	mux.Handle("GET /v1/status", read(params(s.status)))
	mux.Handle("GET /v1/sagas", read(params(s.list, QueryParams...)))
	mux.Handle("GET /v1/sagas/{id}", read(params(s.show)))
	mux.Handle("GET /v1/count", read(params(s.count, QueryParams...)))
	mux.Handle("GET /v1/definitions", read(params(s.definitions)))
	mux.Handle("POST /v1/sagas/{id}/{action}", operator(params(s.act)))
	mux.Handle("GET /v1/watch", read(params(s.watch)))
	mux.Handle("GET /v1/policy", read(params(s.policyGet)))
	mux.Handle("PUT /v1/policy", admin(params(s.policySet)))
	mux.Handle("DELETE /v1/policy", admin(params(s.policyClear)))
	mux.Handle("GET /v1/policy/explain", read(params(s.policyExplain, "operation", "user", "tenant")))
	mux.Handle("GET /v1/cluster", read(params(s.clusterGet)))
	mux.Handle("POST /v1/cluster/{action}", admin(params(s.clusterChange)))
	if s.opts.Console != nil {
		mux.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusSeeOther))
	}
	return s.authenticate(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.isConsole(r) && r.URL.Path != "/" {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
			s.opts.Console.ServeHTTP(w, r) // its own authentication
			return
		}
		if r.URL.Path == "/healthz" && r.Method == http.MethodGet {
			mux.ServeHTTP(w, r)
			return
		}
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r) // sets the path values that Handler does not
			return
		}
		// No route: the mux answers 404, or 405 (with Allow) for a known
		// path and another method; answer the same, in JSON.
		rec := &statusRecorder{header: http.Header{}}
		h.ServeHTTP(rec, r)
		if allow := rec.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		if rec.code == http.StatusMethodNotAllowed {
			writeError(w, rec.code, fmt.Errorf("%s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, rec.header.Get("Allow")), "")
			return
		}
		writeError(w, http.StatusNotFound, fmt.Errorf("no endpoint %s %s", r.Method, r.URL.Path), "see the admin API in the README")
	}))
}

// statusRecorder catches the status and headers of the mux's own 404 and
// 405 answers.
type statusRecorder struct {
	header http.Header
	code   int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(code int)        { r.code = code }

// isConsole says whether r is for the web console (or the redirect of /
// to it), which authenticates by itself.
func (s *Server) isConsole(r *http.Request) bool {
	p := r.URL.Path
	return s.opts.Console != nil && (p == "/" || p == "/ui" || strings.HasPrefix(p, "/ui/"))
}

// authenticate lets through to h only the requests with a known token
// (and /healthz and the console's), with the caller in their context for
// need.
func (s *Server) authenticate(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || s.isConsole(r) {
			h.ServeHTTP(w, r)
			return
		}
		id, err := s.auth.Authenticate(auth.BearerToken(r))
		if err != nil {
			refuseUnauthenticated(w, r)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		h.ServeHTTP(w, r.WithContext(auth.NewContext(r.Context(), id)))
	})
}

// params wraps h so that a request is refused with 400, before h runs,
// when its query does not parse, names a parameter not in allowed, or
// repeats one (but meta, of which the list filters take several): a
// typo'd filter would otherwise widen the answer (stat=STUCK listing every
// saga) and an unknown option (dry_run=1) be taken for one that is obeyed.
func params(h http.HandlerFunc, allowed ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("malformed query: %w", err), "")
			return
		}
		var probs []string
		for k, vs := range q {
			switch {
			case !slices.Contains(allowed, k):
				probs = append(probs, fmt.Sprintf("unknown query parameter %q", k))
			case len(vs) > 1 && k != "meta":
				probs = append(probs, fmt.Sprintf("query parameter %q is given %d times", k, len(vs)))
			}
		}
		if len(probs) > 0 {
			sort.Strings(probs)
			takes := "no query parameter"
			if len(allowed) > 0 {
				takes = "the query parameters " + strings.Join(allowed, " ")
			}
			writeError(w, http.StatusBadRequest, fmt.Errorf("%s %s: %s", r.Method, r.URL.Path, strings.Join(probs, "; ")),
				"nothing was done; this endpoint takes "+takes)
			return
		}
		h(w, r)
	}
}

// need returns a wrapper that refuses, with 403 and before the body is
// read, a request whose caller's scope does not allow scope.
func need(scope auth.Scope) func(http.HandlerFunc) http.Handler {
	return func(h http.HandlerFunc) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, _ := auth.FromContext(r.Context()) // authenticate put it there
			if err := id.Require(scope); err != nil {
				writeError(w, http.StatusForbidden, err, "nothing was changed; use a token of scope "+scope.String()+" or more")
				return
			}
			h(w, r)
		})
	}
}

// refuseUnauthenticated answers 401 at once, without reading the request's
// body, and closes the connection: a client without the token cannot hold
// it open by trickling a body. net/http reads up to 256 KiB of an unread
// body before it writes a response, so an HTTP/1 connection with a body is
// taken over (hijacked) and answered by hand; HTTP/2 resets the stream.
func refuseUnauthenticated(w http.ResponseWriter, r *http.Request) {
	body, _ := json.Marshal(apiError{Error: "missing or wrong bearer token", Hint: "pass the token with --token-file or SAGACTL_TOKEN"})
	body = append(body, '\n')
	if r.ContentLength != 0 && r.ProtoMajor == 1 {
		if conn, buf, err := http.NewResponseController(w).Hijack(); err == nil {
			defer conn.Close()
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(buf, "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"saga admin\"\r\n"+
				"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
			_ = buf.Flush()
			return
		}
	}
	w.Header().Set("Connection", "close")
	w.Header().Set("WWW-Authenticate", `Bearer realm="saga admin"`)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = w.Write(body)
}

// apiError is the body of every error response.
type apiError struct {
	Error string `json:"error"`
	Hint  string `json:"hint,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error, hint string) {
	writeJSON(w, code, apiError{Error: err.Error(), Hint: hint})
}

// engineError answers an engine error (EngineErrorStatus).
func engineError(w http.ResponseWriter, err error) {
	code, hint := EngineErrorStatus(err)
	writeError(w, code, err, hint)
}

// EngineErrorStatus maps an engine error to the HTTP status the JSON API
// answers it with, and a hint for the operator. The web console answers
// with the same codes.
func EngineErrorStatus(err error) (code int, hint string) {
	// A replicator's (or a Cluster's) errors say what they mean by method,
	// as engine.Replicator documents, so that admin need not import it.
	var notLeader interface{ NotLeader() (id, addr string) }
	var unknown interface{ OutcomeUnknown() bool }
	switch {
	case errors.Is(err, fsm.ErrUnknownSaga):
		return http.StatusNotFound, "list sagas with: sagactl list"
	case errors.Is(err, fsm.ErrIllegalTransition):
		return http.StatusConflict, "look at the saga's state with: sagactl show ID"
	case errors.Is(err, engine.ErrInvalidArgument), errors.Is(err, fsm.ErrInvalidRecord), errors.Is(err, fsm.ErrInvalidQuery):
		return http.StatusBadRequest, ""
	case errors.Is(err, engine.ErrReadOnly):
		return http.StatusConflict, ""
	case errors.Is(err, engine.ErrNotLeader), errors.As(err, &notLeader):
		return http.StatusConflict, "this member follows: send changes to the leader's admin API (see sagactl cluster status)"
	case errors.As(err, &unknown) && unknown.OutcomeUnknown():
		return http.StatusServiceUnavailable, "leadership changed while the change was in flight: look at the saga on the new leader"
	case errors.Is(err, engine.ErrPoisoned), errors.Is(err, engine.ErrClosed), errors.Is(err, engine.ErrOutcomeUnknown):
		return http.StatusServiceUnavailable, "the engine stopped after an I/O error: restart the process"
	default:
		return http.StatusInternalServerError, ""
	}
}

// StatusReply is the body of GET /v1/status.
type StatusReply struct {
	Counts       map[string]int `json:"counts"`
	LogDir       string         `json:"log_dir"`
	FirstIndex   uint64         `json:"first_index"`
	LastIndex    uint64         `json:"last_index"`
	AppliedIndex uint64         `json:"applied_index"`
	Segments     int            `json:"segments"`
	LogBytes     int64          `json:"log_bytes"`
	Recovery     string         `json:"recovery_duration"`
}

// BuildStatus collects the status of an engine (used offline by sagactl too).
func BuildStatus(e *engine.Engine) (*StatusReply, error) {
	counts, err := e.StateCounts()
	if err != nil {
		return nil, err
	}
	var li engine.LogInfo
	if e.Replicator() == nil {
		if li, err = e.LogInfo(); err != nil {
			return nil, err
		}
	} else {
		li.AppliedIndex = e.Stats().AppliedIndex
	}
	rep := &StatusReply{Counts: map[string]int{}, LogDir: li.Dir, FirstIndex: li.FirstIndex, LastIndex: li.LastIndex,
		AppliedIndex: li.AppliedIndex, Segments: li.Segments, LogBytes: li.Bytes,
		Recovery: e.Stats().Recovery.Duration.String()}
	for _, st := range fsm.States() {
		rep.Counts[st.String()] = counts[st]
	}
	return rep, nil
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	rep, err := BuildStatus(s.e)
	if err != nil {
		engineError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// ListReply is the body of GET /v1/sagas.
type ListReply struct {
	Sagas []SagaJSON `json:"sagas"`
	Next  string     `json:"next,omitempty"`
}

// QueryParams are the query parameters of GET /v1/sagas and /v1/count,
// which ParseQuery reads:
//
//	state          IN_PROGRESS, COMPENSATING, COMPLETED, FAILED or STUCK (any case)
//	definition     definition name; version: one of its versions (needs definition)
//	user, tenant   the saga's user; its tenant (Meta["tenant"], as the policy layer records it)
//	meta           key=value: a meta pair the saga must hold (repeat it for several)
//	since, until   created in [since, until): RFC 3339 or a duration ago such as 1h
//	updated_since, updated_until  last changed in that range (same forms)
//	order          newest or oldest (default oldest)
//	limit          page size, 1-10000 (default 100)
//	cursor         the "next" of the previous page (after: the same, its older name)
var QueryParams = []string{"state", "definition", "version", "user", "tenant", "meta", "since", "until",
	"updated_since", "updated_until", "order", "limit", "cursor", "after"}

// ParseQuery reads the list filters of QueryParams through get (one meta
// pair at most; ParseQueryValues reads several). It reports every bad
// parameter at once, in an error wrapping fsm.ErrInvalidQuery, and checks
// the query as the store would (fsm.Query.Validate).
func ParseQuery(get func(string) string) (fsm.Query, error) {
	var metas []string
	if v := get("meta"); v != "" {
		metas = []string{v}
	}
	return parseQuery(get, metas)
}

// ParseQueryValues is ParseQuery of a URL's query, where meta may be
// repeated: the saga must hold every pair.
func ParseQueryValues(v url.Values) (fsm.Query, error) {
	return parseQuery(v.Get, v["meta"])
}

func parseQuery(get func(string) string, metas []string) (fsm.Query, error) {
	var q fsm.Query
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if v := get("state"); v != "" {
		st, err := fsm.ParseState(strings.ToUpper(v))
		if err != nil {
			bad("state %q: unknown saga state (want IN_PROGRESS, COMPENSATING, COMPLETED, FAILED or STUCK)", v)
		}
		q.State = st
	}
	q.Definition, q.User, q.Tenant = get("definition"), get("user"), get("tenant")
	if v := get("version"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			bad("version %q: want a positive number", v)
		}
		q.Version = n
	}
	for _, v := range metas {
		k, val, ok := strings.Cut(v, "=")
		prev, seen := q.Meta[k]
		switch {
		case !ok || k == "":
			bad("meta %q: want key=value", v)
		case seen && prev != val:
			bad("meta %q: key %q is given twice, with different values (no saga could hold both)", v, k)
		default:
			if q.Meta == nil {
				q.Meta = map[string]string{}
			}
			q.Meta[k] = val
		}
	}
	q.After = get("cursor")
	if v := get("after"); v != "" {
		if q.After != "" && q.After != v {
			bad("cursor and after disagree (after is cursor's older name)")
		}
		q.After = v
	}
	if v := get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n > 10000 {
			bad("limit %q: want a number from 1 to 10000", v)
		}
		q.Limit = n
	}
	if v := get("order"); v != "" {
		o, err := fsm.ParseOrder(v)
		if err != nil {
			bad("order %q: want newest or oldest", v)
		}
		q.Order = o
	}
	now := time.Now()
	for _, p := range []struct {
		name string
		dst  *int64
	}{{"since", &q.CreatedSince}, {"until", &q.CreatedUntil},
		{"updated_since", &q.UpdatedSince}, {"updated_until", &q.UpdatedUntil}} {
		v := get(p.name)
		if v == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			d, derr := time.ParseDuration(v)
			if derr != nil || d < 0 {
				bad("%s %q: want an RFC 3339 time or a duration ago such as 1h", p.name, v)
				continue
			}
			t = now.Add(-d)
		}
		*p.dst = t.UnixNano()
	}
	if len(errs) == 0 {
		if err := q.Validate(); err != nil {
			return q, err
		}
		return q, nil
	}
	return q, fmt.Errorf("%w: %s", fsm.ErrInvalidQuery, strings.Join(errs, "; "))
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	q, err := ParseQueryValues(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, err, queryHint)
		return
	}
	q.MaxBytes = maxListBytes
	sagas, next, err := s.e.List(r.Context(), q)
	if err != nil {
		engineError(w, err)
		return
	}
	rep := ListReply{Sagas: []SagaJSON{}, Next: next}
	for _, st := range sagas {
		rep.Sagas = append(rep.Sagas, NewSagaJSON(st))
	}
	writeJSON(w, http.StatusOK, rep)
}

// maxListBytes bounds the data of the sagas of a list page
// (fsm.Query.MaxBytes): a page of up to 10000 sagas with large inputs and
// outputs was read whole into memory. A page holds one saga at least,
// and fewer than limit when they are large.
const maxListBytes = 4 << 20

const queryHint = "parameters: state definition version user tenant meta=k=v since until updated_since updated_until order=newest|oldest limit cursor"

// CountReply is the body of GET /v1/count.
type CountReply struct {
	Count int `json:"count"`
}

// count answers GET /v1/count: the number of sagas matching the list
// filters (cursor and limit aside).
func (s *Server) count(w http.ResponseWriter, r *http.Request) {
	q, err := ParseQueryValues(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, err, queryHint)
		return
	}
	n, err := s.e.CountQuery(r.Context(), q)
	if err != nil {
		engineError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, CountReply{Count: n})
}

// DefinitionJSON is one definition and its versions in GET /v1/definitions.
type DefinitionJSON struct {
	Name     string `json:"name"`
	Versions []int  `json:"versions"`
}

func (s *Server) definitions(w http.ResponseWriter, r *http.Request) {
	ds, err := s.e.DefinitionVersions(r.Context())
	if err != nil {
		engineError(w, err)
		return
	}
	out := []DefinitionJSON{}
	for _, d := range ds {
		out = append(out, DefinitionJSON{Name: d.Name, Versions: d.Versions})
	}
	writeJSON(w, http.StatusOK, out)
}

// ShowReply is the body of GET /v1/sagas/{id}.
type ShowReply struct {
	Saga    SagaJSON      `json:"saga"`
	History []HistoryJSON `json:"history"`
}

// BuildShow collects a saga and its history.
func BuildShow(ctx context.Context, e *engine.Engine, id string) (*ShowReply, error) {
	st, err := e.Status(ctx, id)
	if err != nil {
		return nil, err
	}
	h, err := e.History(ctx, id)
	if err != nil {
		return nil, err
	}
	rep := &ShowReply{Saga: NewSagaJSON(st)}
	for _, he := range h {
		rep.History = append(rep.History, NewHistoryJSON(he, st.Saga))
	}
	return rep, nil
}

func (s *Server) show(w http.ResponseWriter, r *http.Request) {
	rep, err := BuildShow(r.Context(), s.e, r.PathValue("id"))
	if err != nil {
		engineError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// ActionRequest is the body of POST /v1/sagas/{id}/{retry|abort|resolve}.
type ActionRequest struct {
	// Actor is ignored: the actor recorded is the name of the request's
	// token. Kept so that older clients' bodies are still accepted.
	Actor  string `json:"actor,omitempty"`
	Reason string `json:"reason"`
}

// Errors of Act.
var (
	// ErrUnknownAction: the action is none of Actions.
	ErrUnknownAction = errors.New("admin: unknown action (actions: retry, abort, resolve)")
	// ErrInvalidAction: the action lacks an actor or a reason it needs,
	// or they are too long. Nothing was changed.
	ErrInvalidAction = errors.New("admin: invalid action")
)

// Actions are the operator actions on a saga, as Act and
// POST /v1/sagas/{id}/{action} name them.
var Actions = []string{"retry", "resolve", "abort"}

// Act runs the operator action (one of Actions) on the saga id, recorded
// with who acted and why, and returns the saga's status once the action
// is durable and applied. The JSON API and the web console both act
// through it. Errors: ErrUnknownAction, ErrInvalidAction (no actor; no
// reason for abort or resolve; actor over 256 or reason over 4096
// bytes), or the engine's (fsm.ErrUnknownSaga, fsm.ErrIllegalTransition,
// ...).
func Act(ctx context.Context, e *engine.Engine, action, id, actor, reason string) (*engine.Status, error) {
	do := map[string]func(context.Context, string, string, string) (*engine.Status, error){
		"retry": e.Retry, "abort": e.Abort, "resolve": e.Resolve}[action]
	switch {
	case do == nil:
		return nil, fmt.Errorf("%w: %q", ErrUnknownAction, action)
	case actor == "":
		return nil, fmt.Errorf("%w: actor is required: who is acting", ErrInvalidAction)
	case len(actor) > 256 || len(reason) > 4096:
		return nil, fmt.Errorf("%w: actor (256 bytes) or reason (4096 bytes) too long", ErrInvalidAction)
	case reason == "" && action == "abort":
		return nil, fmt.Errorf("%w: abort needs a reason", ErrInvalidAction)
	case reason == "" && action == "resolve":
		return nil, fmt.Errorf("%w: resolve needs a reason (what was done by hand)", ErrInvalidAction)
	}
	return do(ctx, id, actor, reason)
}

// decodeBody decodes r's body, which must be one JSON object with no
// field v lacks and nothing after it (two objects: which one was meant?).
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.Decode(&struct{}{}) != io.EOF {
		return errors.New("more than one JSON value")
	}
	return nil
}

func (s *Server) act(w http.ResponseWriter, r *http.Request) {
	var req ActionRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("malformed request body: %w", err), `send {"reason": "…"} (the actor recorded is the token's name)`)
		return
	}
	caller, _ := auth.FromContext(r.Context())
	// Who acts is who holds the token, not what the body says.
	st, err := Act(r.Context(), s.e, r.PathValue("action"), r.PathValue("id"), caller.Name, req.Reason)
	switch {
	case errors.Is(err, ErrUnknownAction):
		writeError(w, http.StatusNotFound, err, "actions: retry, abort, resolve")
	case errors.Is(err, ErrInvalidAction):
		writeError(w, http.StatusBadRequest, err, "")
	case err != nil:
		engineError(w, err)
	default:
		writeJSON(w, http.StatusOK, NewSagaJSON(st))
	}
}

func (s *Server) watch(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, errors.New("streaming unsupported"), "")
		return
	}
	// The stream outlives the server's read and write timeouts.
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	_ = rc.SetReadDeadline(time.Time{})
	ch, cancel := s.o.Subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.quit:
			return
		case ev := <-ch:
			if err := enc.Encode(ev); err != nil {
				return
			}
			fl.Flush()
		}
	}
}

func (s *Server) needPolicy(w http.ResponseWriter) bool {
	if s.opts.Policy == nil {
		writeError(w, http.StatusNotFound, errors.New("no policy manager is configured on this engine"), "")
		return false
	}
	return true
}

func (s *Server) policyGet(w http.ResponseWriter, r *http.Request) {
	if s.needPolicy(w) {
		writeJSON(w, http.StatusOK, s.opts.Policy.Snapshot().Describe())
	}
}

func (s *Server) policySet(w http.ResponseWriter, r *http.Request) {
	if !s.needPolicy(w) {
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, err, "a policy is at most 1 MiB")
		return
	}
	s.policyChange(w, r, "policy set", s.opts.Policy.SetText("request body", body),
		"the new policy is in force but may not survive a crash: set it again")
}

// policyClear removes the policy's API layer (policy.Manager.ClearAPI).
func (s *Server) policyClear(w http.ResponseWriter, r *http.Request) {
	if !s.needPolicy(w) {
		return
	}
	s.policyChange(w, r, "policy API layer removed", s.opts.Policy.ClearAPI(),
		"the API layer is removed but its removal may not survive a crash: clear it again")
}

// policyChange answers a change of the policy's API layer: the policy in
// force afterwards, or err's status (400 for an invalid policy: nothing
// changed; 500 when it could not be kept, or, with notDurable as the
// hint, when it is in force but not known durable).
func (s *Server) policyChange(w http.ResponseWriter, r *http.Request, what string, err error, notDurable string) {
	if err != nil {
		code, hint := http.StatusBadRequest, "nothing was changed; the policy in force stays"
		switch {
		case errors.Is(err, policy.ErrNotDurable):
			code, hint = http.StatusInternalServerError, notDurable
		case !policy.IsInvalid(err):
			code = http.StatusInternalServerError // it could not be kept
		}
		writeError(w, code, err, hint)
		return
	}
	d := s.opts.Policy.Snapshot().Describe()
	caller, _ := auth.FromContext(r.Context())
	s.opts.Logger.Info("admin: "+what, "actor", caller.Name, "version", d.Version)
	writeJSON(w, http.StatusOK, d)
}

func (s *Server) policyExplain(w http.ResponseWriter, r *http.Request) {
	if !s.needPolicy(w) {
		return
	}
	q := r.URL.Query()
	op := q.Get("operation")
	if op == "" {
		writeError(w, http.StatusBadRequest, errors.New("operation is required"), "")
		return
	}
	d := s.opts.Policy.Explain(op, policy.UserContext{UserID: q.Get("user"), TenantID: q.Get("tenant")})
	writeJSON(w, http.StatusOK, d)
}
