// Command sagad serves the saga engine to every language: the
// saga.v1.SagaService (proto/saga/v1/saga.proto) over gRPC, gRPC-Web and
// plain JSON over HTTP, on an embedded engine.
//
//	go run ./cmd/sagad
//
// starts it on the embedded default: the data directory ./sagad-data, the
// address 127.0.0.1:7080, and a single bearer token (named "default", of
// scope admin) read from -token-file or SAGAD_TOKEN (16 bytes or more),
// or else generated on first start into ./sagad-data/sagad.token (mode
// 0600; its path is printed). -tokens FILE serves named tokens with scopes instead (read,
// service, operator, admin: see package auth); the actor recorded by
// Abort, Retry and Resolve is the token's name.
//
// -config FILE reads a YAML configuration (see Config); the flags given
// override its values. A configuration is checked whole, every problem
// named at once, before anything is written.
//
// Steps are caller-driven (Start, then Advance for each step) or run by
// the engine through remote HTTP handlers: the configuration's handlers:
// maps each handler name to an endpoint (package remote), and a
// definition's actions and compensations may name those handlers only.
// -policy FILE (or SAGA_POLICY_FILE) serves a policy file, hot-reloaded,
// through GetPolicy, SetPolicy and ExplainPolicy; SetPolicy's layer is
// kept in DATA/policy-api.yaml across restarts.
//
// With -tls-cert and -tls-key (or tls: in the file) sagad serves HTTPS;
// without TLS it refuses an address other than loopback, unless
// -insecure-listen says to accept tokens crossing the network in clear.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/admin/console"
	"github.com/sagaengine/saga/admin/raftcluster"
	"github.com/sagaengine/saga/auth"
	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/policy"
	"github.com/sagaengine/saga/remote"
	"github.com/sagaengine/saga/replication"
	"github.com/sagaengine/saga/service"
)

// TokenEnv names the environment variable that may hold the token.
const TokenEnv = "SAGAD_TOKEN"

// tokenFileName is the generated token's file in the data directory.
const tokenFileName = "sagad.token"

// policyAPIFile, in the data directory, keeps the policy set through
// SetPolicy (the API layer) across restarts.
const policyAPIFile = "policy-api.yaml"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr, nil); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "sagad:", err)
		}
		os.Exit(2)
	}
}

// run is sagad until ctx ends; ready, if not nil, is told the address
// it listens on once it serves.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, ready func(addr string)) error {
	def := defaultConfig()
	fs := flag.NewFlagSet("sagad", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "", "configuration file (YAML); the flags given override its values")
	listen := fs.String("listen", def.Listen, "address to serve on (not loopback: needs TLS or -insecure-listen)")
	certFile := fs.String("tls-cert", "", "serve HTTPS with this certificate (PEM; with -tls-key)")
	keyFile := fs.String("tls-key", "", "the private key of -tls-cert (PEM)")
	insecure := fs.Bool("insecure-listen", false, "allow a non-loopback -listen without TLS (tokens cross the network in clear)")
	dataDir := fs.String("data", def.Data, "the engine's data directory (created if missing)")
	policyFile := fs.String("policy", "", "policy file (YAML), hot-reloaded (default: env SAGA_POLICY_FILE; none)")
	adminAddr := fs.String("admin", "", "serve /metrics, the admin API and the web console (/ui/) on this address (default: not served)")
	tokensFile := fs.String("tokens", "", "tokens file: named tokens with scopes read, service, operator, admin (see package auth)")
	tokenFile := fs.String("token-file", "", "file holding a single admin token named \"default\", 16 bytes or more (default: env "+TokenEnv+", else DATA/"+tokenFileName+", generated on first start)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errConfig, fs.Args())
	}
	cfg := def
	var fileErr error // unknown keys: named beside Validate's problems
	if *configFile != "" {
		var err error
		if fileErr, err = loadConfig(*configFile, &cfg); err != nil {
			return err
		}
	}
	fs.Visit(func(f *flag.Flag) { // the flags given override the file
		switch f.Name {
		case "listen":
			cfg.Listen = *listen
		case "admin":
			cfg.Admin = *adminAddr
		case "tls-cert":
			cfg.TLS.Cert = *certFile
		case "tls-key":
			cfg.TLS.Key = *keyFile
		case "insecure-listen":
			cfg.InsecureListen = *insecure
		case "data":
			cfg.Data = *dataDir
		case "policy":
			cfg.Policy = *policyFile
		case "tokens":
			cfg.Tokens = *tokensFile
		case "token-file":
			cfg.TokenFile = *tokenFile
		}
	})
	cert, err := cfg.Validate()
	if fileErr != nil || err != nil {
		return fmt.Errorf("%w: %w", errConfig, errors.Join(fileErr, err))
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	// Everything that can refuse the start comes before anything that
	// writes: the configuration and its key pair, the policy file, the
	// tokens, the address, then the engine (which makes the data
	// directory and takes its lock), and only once the directory is ours
	// a generated token.
	lookup := func(k string) (string, bool) { v := getenv(k); return v, v != "" }
	// The API layer (SetPolicy) is kept in the data directory.
	apiPolicy := filepath.Join(cfg.Data, policyAPIFile)
	pm, err := policy.New(policy.Options{File: cfg.Policy, APIFile: apiPolicy, LookupEnv: lookup, Logger: log})
	if err != nil {
		if strings.Contains(err.Error(), apiPolicy) {
			// A file the operator never wrote by hand: say what it is.
			return fmt.Errorf("%w\n%s holds the policy saved through the admin API or the console: fix it, or remove it to start with the policy file and environment alone", err, apiPolicy)
		}
		return err // "policy: …"
	}
	defer pm.Close()
	var tokens *auth.Tokens
	var token, from string
	if cfg.Tokens != "" {
		if tokens, err = auth.Load(cfg.Tokens); err != nil {
			return err
		}
		from = "named tokens from " + cfg.Tokens
	} else if token, from, err = loadToken(cfg.TokenFile, getenv(TokenEnv), cfg.Data); err != nil {
		return err
	}
	// The handlers' endpoints, with their certificates and secrets read:
	// a file that is missing refuses the start here, before any write.
	reg := compensation.NewRegistry()
	var rc *remote.Client
	if len(cfg.Handlers) > 0 {
		if rc, err = remote.New(cfg.remote(), remote.Options{}); err != nil {
			return fmt.Errorf("%w: handlers: %w", errConfig, err)
		}
		defer rc.Close()
		if err := rc.Register(reg); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	defer ln.Close()
	var adminLn net.Listener
	var obs *admin.Observer
	var hooks engine.Hooks
	if cfg.Admin != "" {
		if adminLn, err = net.Listen("tcp", cfg.Admin); err != nil {
			return fmt.Errorf("admin: %w", err)
		}
		defer adminLn.Close()
		metrics := prometheus.NewRegistry()
		if obs, err = admin.NewObserverWith(admin.ObserverOptions{Registerer: metrics}); err != nil {
			return err
		}
		if rc != nil {
			metrics.MustRegister(newRemoteCollector(rc)) // a fresh registry: nothing to conflict with
		}
		hooks = obs.Hooks()
	}
	var node *replication.Node
	eopts := engine.Options{Logger: log, Registry: reg, Hooks: hooks}
	if cfg.Raft != nil {
		// The raft node opens DATA/raft once engine.Open holds the data
		// directory's lock: a directory that another sagad holds is
		// refused before its live raft log is opened (or its torn tail
		// repaired) by a start that is refused.
		eopts.OpenReplicator = func() (engine.Replicator, error) {
			n, err := openRaft(cfg, log)
			if err != nil {
				return nil, err
			}
			node = n
			return n, nil
		}
	}
	eng, err := engine.Open(cfg.Data, eopts)
	if err != nil {
		if node != nil {
			_ = node.Close() // if Open has not closed it already
		}
		return fmt.Errorf("open the engine in %s: %w", cfg.Data, err)
	}
	defer eng.Close()
	if tokens == nil && token == "" {
		if token, from, err = generateToken(cfg.Data); err != nil {
			return err
		}
	}
	if tokens == nil {
		if tokens, err = auth.Single(auth.DefaultName, auth.Admin, token); err != nil {
			return err
		}
		from = "bearer token " + from + " (named " + auth.DefaultName + ", scope admin)"
	}
	sopts := service.Options{Policy: pm, Tokens: tokens, Logger: log}
	if cfg.Raft != nil {
		sopts.LeaderAddress = cfg.Raft.apiOf
	}
	svc, err := service.New(eng, sopts)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(svc.Handler())
	// Every other path asks for a token too, so that it says nothing to
	// a caller without one.
	mux.Handle("/", service.Require(tokens, http.NotFoundHandler()))

	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	scheme := "http"
	if cert != nil {
		protocols.SetHTTP2(true)
		scheme = "https"
	} else {
		protocols.SetUnencryptedHTTP2(true) // gRPC without TLS (h2c)
	}
	srv := &http.Server{
		Handler:           mux,
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if cert != nil {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}
	}
	addr := ln.Addr().String()
	abs, _ := filepath.Abs(cfg.Data)
	fmt.Fprintf(stdout, "sagad: serving saga.v1.SagaService on %s://%s (gRPC, gRPC-Web, JSON)\n", scheme, addr)
	fmt.Fprintf(stdout, "sagad: data in %s\n", abs)
	fmt.Fprintf(stdout, "sagad: %s\n", from)
	for _, id := range tokens.Names() {
		fmt.Fprintf(stdout, "sagad: token %s, scope %s\n", id.Name, id.Scope)
	}

	stopAdmin := func() {}
	if adminLn != nil {
		var cl admin.Cluster
		if node != nil {
			cl = raftcluster.New(node)
		}
		stop, err := serveAdmin(adminLn, eng, obs, pm, tokens, cl, cert, log)
		if err != nil {
			return err
		}
		stopAdmin = stop
		defer stop()
		fmt.Fprintf(stdout, "sagad: admin API and /metrics on %s://%s, the web console on %s://%s/ui/\n", scheme, adminLn.Addr(), scheme, adminLn.Addr())
	}

	served := make(chan error, 1)
	go func() {
		if cert != nil {
			served <- srv.ServeTLS(ln, "", "")
			return
		}
		served <- srv.Serve(ln)
	}()
	if ready != nil {
		ready(addr)
	}
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	stopAdmin() // before the engine closes under it
	return eng.Close()
}

// serveAdmin serves the admin API, /metrics and the web console on ln
// with the service's tokens (the console's actions and policy edits
// need the admin scope, as the admin API's policy changes do) and TLS;
// stop ends it.
func serveAdmin(ln net.Listener, eng *engine.Engine, obs *admin.Observer, pm *policy.Manager, tokens auth.Authenticator,
	cl admin.Cluster, cert *tls.Certificate, log *slog.Logger) (stop func(), err error) {
	ui, err := console.New(eng, obs, console.Options{Login: console.TokenLogin(tokens), Policy: pm, Cluster: cl, Logger: log})
	if err != nil {
		return nil, err
	}
	adm, err := admin.New(eng, obs, admin.Options{Addr: ln.Addr().String(), Tokens: tokens, Policy: pm, Console: ui, Cluster: cl, Logger: log})
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: adm.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	if cert != nil {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12})
	}
	go func() { _ = srv.Serve(ln) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			_ = adm.Close() // ends the watch and console streams
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if srv.Shutdown(ctx) != nil {
				_ = srv.Close()
			}
		})
	}, nil
}

// openRaft starts this member's raft node, its state in DATA/raft.
func openRaft(cfg Config, log *slog.Logger) (*replication.Node, error) {
	rc := cfg.raftConfig(log)
	node, err := replication.New(rc)
	if err != nil {
		return nil, fmt.Errorf("raft: %w", err)
	}
	return node, nil
}

// raftConfig is the member's replication.Config; Validate checks it, and
// openRaft opens it.
func (cfg Config) raftConfig(log *slog.Logger) replication.Config {
	r := cfg.Raft
	rc := replication.Config{
		ID: r.ID, Dir: filepath.Join(cfg.Data, "raft"), Bind: r.Bind, Advertise: r.Advertise, Bootstrap: r.Bootstrap,
		HeartbeatTimeout: r.Heartbeat, ElectionTimeout: r.Election, LeaderLeaseTimeout: r.Heartbeat / 2, Logger: log,
	}
	if r.TLS.Cert != "" {
		rc.TLS = &replication.TLSConfig{CertFile: r.TLS.Cert, KeyFile: r.TLS.Key, CAFile: r.TLS.CA}
	}
	if r.Bootstrap {
		for _, p := range r.Peers {
			rc.Peers = append(rc.Peers, replication.Server{ID: p.ID, Address: p.Raft})
		}
	}
	return rc
}

// apiOf returns the API URL of the member at raft address addr, or addr
// itself for a member that peers does not list.
func (r *RaftConfig) apiOf(addr string) string {
	for _, p := range r.Peers {
		if p.Raft == addr && p.API != "" {
			return p.API
		}
	}
	return addr
}

// loadToken returns the token and says where it came from: the file
// named (which must hold one), the environment, or DATA/sagad.token; it
// writes nothing, and returns "" when DATA/sagad.token is still to be
// generated. A token shorter than auth.MinSecretBytes is refused: it is
// the admin scope's, and a short one can be guessed.
func loadToken(file, env, dataDir string) (token, from string, err error) {
	token, from, err = findToken(file, env, dataDir)
	if err == nil && token != "" && len(token) < auth.MinSecretBytes {
		return "", "", fmt.Errorf("%w: the token %s is shorter than %d bytes: a token of the admin scope must not be guessable",
			errConfig, from, auth.MinSecretBytes)
	}
	return token, from, err
}

func findToken(file, env, dataDir string) (token, from string, err error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", "", fmt.Errorf("%w: -token-file: %w", errConfig, err)
		}
		if token = strings.TrimSpace(string(b)); token == "" {
			return "", "", fmt.Errorf("%w: -token-file %s is empty", errConfig, file)
		}
		return token, "read from " + file, nil
	}
	if token = strings.TrimSpace(env); token != "" {
		return token, "from " + TokenEnv, nil
	}
	path, err := filepath.Abs(filepath.Join(dataDir, tokenFileName))
	if err != nil {
		return "", "", err
	}
	if b, err := os.ReadFile(path); err == nil {
		if token = strings.TrimSpace(string(b)); token == "" {
			return "", "", fmt.Errorf("%s is empty: remove it to have a new token generated", path)
		}
		return token, "in " + path, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", "", err
	}
	return "", "", nil // none yet: generateToken, once the data directory is ours
}

// generateToken writes a new token into DATA/sagad.token (mode 0600);
// the caller holds the data directory, so no other sagad races it.
func generateToken(dataDir string) (token, from string, err error) {
	path, err := filepath.Abs(filepath.Join(dataDir, tokenFileName))
	if err != nil {
		return "", "", err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", "", err
	}
	token = hex.EncodeToString(raw)
	if err := writeFileSync(path, []byte(token+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("write the token: %w", err)
	}
	return token, "generated into " + path + " (mode 0600)", nil
}

// writeFileSync creates path (it must not exist), writes b and syncs the
// file and its directory, so that the token survives a crash.
func writeFileSync(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
