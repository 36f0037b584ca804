package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sagaengine/saga/internal/yamldoc"
	"github.com/sagaengine/saga/remote"
)

// Config is sagad's configuration: the YAML file of -config, with the
// flags given on the command line overriding its values. Relative paths
// in the file are relative to the file's directory; those of flags, to
// the working directory.
//
//	listen: 0.0.0.0:7443          # default 127.0.0.1:7080
//	tls:
//	  cert: /etc/sagad/cert.pem   # serve HTTPS (both or neither)
//	  key: /etc/sagad/key.pem
//	data: /var/lib/sagad          # default ./sagad-data
//	policy: policy.yaml           # default: env SAGA_POLICY_FILE; none
//	tokens: tokens.yaml           # named, scoped tokens (see package auth)
//	admin: 127.0.0.1:7071         # /metrics, the admin API and the web console (/ui/); default off
//	handlers:                     # remote step actions and compensations
//	  reserve_inventory:
//	    url: http://127.0.0.1:9000/reserve_inventory
//	    timeout: 5s               # one attempt; default 30s
//	    concurrency: 8            # calls in flight at once; default 16
//	    hmac_secret_file: inventory.secret   # optional: sign requests
//
// Unknown keys are refused.
type Config struct {
	// Listen is the address to serve on. Default 127.0.0.1:7080. An
	// address other than loopback needs TLS, or InsecureListen.
	Listen string `yaml:"listen"`
	// TLS serves HTTPS with this key pair (both files or neither).
	// Default: none, plain HTTP (and h2c for gRPC).
	TLS TLSConfig `yaml:"tls"`
	// InsecureListen allows a non-loopback Listen without TLS: tokens
	// then cross the network in clear. Default false.
	InsecureListen bool `yaml:"insecure_listen"`
	// Data is the engine's data directory. Default ./sagad-data.
	Data string `yaml:"data"`
	// Policy is the policy file (YAML), hot-reloaded. Default: the
	// environment's SAGA_POLICY_FILE, else none.
	Policy string `yaml:"policy"`
	// Tokens is the tokens file: named tokens with scopes (package auth).
	// Default: none, and a single admin token named "default" from
	// TokenFile, SAGAD_TOKEN or DATA/sagad.token (generated).
	Tokens string `yaml:"tokens"`
	// TokenFile holds the single token (not with Tokens), 16 bytes or
	// more, as SAGAD_TOKEN's must be. Default: the environment's
	// SAGAD_TOKEN, else DATA/sagad.token.
	TokenFile string `yaml:"token_file"`
	// Admin, if set, is the address of the admin API: /metrics
	// (Prometheus), the operator endpoints of package admin and the web
	// console under /ui/, with the same tokens and TLS as the service.
	// Default "": not served. Loopback only without TLS, as Listen.
	Admin string `yaml:"admin"`
	// Raft, if set, makes this sagad a member of a replicated group
	// (package replication): the engine's transitions are committed by
	// raft before they are applied, and only the leader changes sagas.
	// Default nil: a single node.
	Raft *RaftConfig `yaml:"raft"`
	// Handlers maps each handler name that definitions may use as an
	// action or a compensation to its HTTP endpoint (package remote: url,
	// timeout, concurrency, max_response_bytes, tls, hmac_secret_file).
	// Only this file says which URLs the engine calls: API callers name
	// handlers, never URLs. Default: none (caller-driven steps only).
	Handlers map[string]remote.EndpointConfig `yaml:"handlers"`
}

// remote is the handlers' configuration as package remote reads it.
func (c *Config) remote() remote.Config { return remote.Config{Endpoints: c.Handlers} }

// RaftConfig is this member's part in a replicated group.
//
//	raft:
//	  id: n1
//	  bind: 10.0.0.1:7001        # raft's TCP address
//	  bootstrap: true            # a new group of peers (every initial member may say so)
//	  peers:                     # every member: its raft address and its API's URL
//	    - {id: n1, raft: 10.0.0.1:7001, api: https://10.0.0.1:7443}
//	    - {id: n2, raft: 10.0.0.2:7001, api: https://10.0.0.2:7443}
//	    - {id: n3, raft: 10.0.0.3:7001, api: https://10.0.0.3:7443}
//	  tls: {cert: member.pem, key: member-key.pem, ca: ca.pem}   # mutual TLS between members
//
// A follower refuses the calls that change sagas with CodeUnavailable and
// the leader's API URL (from peers) in the Saga-Leader header; it does
// not forward them. Reads are served from its own, replicated, state.
type RaftConfig struct {
	// ID is this member's id in the group.
	ID string `yaml:"id"`
	// Bind is raft's TCP address (host:port).
	Bind string `yaml:"bind"`
	// Advertise is the address the peers dial; default Bind.
	Advertise string `yaml:"advertise"`
	// Bootstrap starts a new group with Peers when this member has no
	// raft state yet; ignored afterwards.
	Bootstrap bool `yaml:"bootstrap"`
	// Peers are the group's members, this one included.
	Peers []RaftPeer `yaml:"peers"`
	// TLS secures raft with mutual TLS (all three files, or none).
	TLS RaftTLS `yaml:"tls"`
	// Heartbeat and Election are raft's timeouts; default 1s each.
	Heartbeat time.Duration `yaml:"heartbeat"`
	Election  time.Duration `yaml:"election"`
}

// RaftPeer is one member of the group.
type RaftPeer struct {
	ID   string `yaml:"id"`
	Raft string `yaml:"raft"`
	// API is the member's saga service URL, which a follower names as the
	// leader's.
	API string `yaml:"api"`
}

// RaftTLS are the PEM files of raft's mutual TLS.
type RaftTLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	CA   string `yaml:"ca"`
}

// validate names every problem of r.
func (r *RaftConfig) validate(bad func(format string, args ...any)) {
	if r.ID == "" {
		bad("raft: id is required")
	}
	if _, _, err := net.SplitHostPort(r.Bind); err != nil {
		bad("raft: bind %q: %v", r.Bind, err)
	}
	ids := map[string]bool{}
	self := false
	for i, p := range r.Peers {
		switch {
		case p.ID == "":
			bad("raft: peers[%d]: id is required", i)
		case ids[p.ID]:
			bad("raft: peers: id %q is given twice", p.ID)
		}
		ids[p.ID] = true
		self = self || p.ID == r.ID
		if _, _, err := net.SplitHostPort(p.Raft); err != nil {
			bad("raft: peers[%d] (%s): raft %q: %v", i, p.ID, p.Raft, err)
		}
		if u, err := url.Parse(p.API); p.API != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
			bad("raft: peers[%d] (%s): api %q is not an http or https URL", i, p.ID, p.API)
		}
	}
	if len(r.Peers) > 0 && !self {
		bad("raft: peers does not list this member (%q)", r.ID)
	}
	if n := btoi(r.TLS.Cert != "") + btoi(r.TLS.Key != "") + btoi(r.TLS.CA != ""); n != 0 && n != 3 {
		bad("raft: tls: give cert, key and ca, or none")
	}
	if r.Heartbeat < 0 || r.Election < 0 {
		bad("raft: heartbeat and election must not be negative")
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TLSConfig is the key pair sagad serves HTTPS with.
type TLSConfig struct {
	// Cert is the certificate chain's PEM file.
	Cert string `yaml:"cert"`
	// Key is the private key's PEM file.
	Key string `yaml:"key"`
}

// defaultConfig is what sagad runs with when neither the file nor a flag
// says otherwise.
func defaultConfig() Config {
	return Config{Listen: "127.0.0.1:7080", Data: "sagad-data"}
}

// errConfig wraps every refusal of a configuration.
var errConfig = errors.New("sagad: bad configuration")

// loadConfig reads the YAML file at path into c (keeping the values the
// file does not set), with its relative paths made relative to the
// file's directory. Every unknown key and ill-typed value is named; the
// keys that could be read are still read, so that Validate can name
// their problems beside these.
func loadConfig(path string, c *Config) (problems, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: -config: %w", errConfig, err)
	}
	var f Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var typeErr *yaml.TypeError
	if err := dec.Decode(&f); errors.As(err, &typeErr) {
		problems = fmt.Errorf("%s: %s", path, strings.Join(typeErr.Errors, "; "))
	} else if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %s: %w", errConfig, path, err) // not YAML: nothing to go on
	}
	// A second document (after "---") would be ignored: refuse it, so that
	// no setting in the file goes unread.
	if yamldoc.More(dec) {
		return nil, fmt.Errorf("%w: %s holds more than one YAML document (a line \"---\" and more after it): put every setting in one", errConfig, path)
	}
	dir := filepath.Dir(path)
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	if f.Listen != "" {
		c.Listen = f.Listen
	}
	if f.Admin != "" {
		c.Admin = f.Admin
	}
	if f.TLS.Cert != "" || f.TLS.Key != "" {
		c.TLS = TLSConfig{Cert: rel(f.TLS.Cert), Key: rel(f.TLS.Key)}
	}
	c.InsecureListen = c.InsecureListen || f.InsecureListen
	for _, v := range []struct {
		dst *string
		val string
	}{
		{&c.Data, f.Data}, {&c.Policy, f.Policy}, {&c.Tokens, f.Tokens}, {&c.TokenFile, f.TokenFile},
	} {
		if v.val != "" {
			*v.dst = rel(v.val)
		}
	}
	if f.Raft != nil {
		r := *f.Raft
		r.TLS = RaftTLS{Cert: rel(r.TLS.Cert), Key: rel(r.TLS.Key), CA: rel(r.TLS.CA)}
		c.Raft = &r
	}
	if f.Handlers != nil {
		rc := f.remote()
		rc.ResolvePaths(dir)
		c.Handlers = rc.Endpoints
	}
	return problems, nil
}

// Validate reports every problem at once (joined); it reads the TLS key
// pair (returned, nil without TLS) but writes nothing.
func (c *Config) Validate() (*tls.Certificate, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	var cert *tls.Certificate
	switch {
	case (c.TLS.Cert == "") != (c.TLS.Key == ""):
		bad("tls: give both cert and key, or neither")
	case c.TLS.Cert != "":
		kp, err := tls.LoadX509KeyPair(c.TLS.Cert, c.TLS.Key)
		if err != nil {
			bad("tls: %w", err)
		} else {
			cert = &kp
		}
	}
	c.checkListen(bad, "listen", c.Listen)
	if c.Admin != "" {
		c.checkListen(bad, "admin", c.Admin)
	}
	if c.Data == "" {
		bad("data: a data directory is required")
	}
	if c.Tokens != "" && c.TokenFile != "" {
		bad("tokens and token_file: give one (a tokens file of named tokens, or a single token)")
	}
	if c.Raft != nil {
		n := len(errs)
		c.Raft.validate(bad)
		// What replication.New would refuse (an id it does not take,
		// a heartbeat below 5ms, an election below the heartbeat, a bad
		// advertise address) is refused here with the rest, not once
		// the listeners are open.
		if len(errs) == n {
			if err := c.raftConfig(nil).Validate(); err != nil {
				bad("raft: %w", err)
			}
		}
	}
	if len(c.Handlers) > 0 {
		rc := c.remote()
		if err := rc.Validate(); err != nil {
			bad("handlers: %w", err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return cert, nil
}

// checkListen refuses an address (of the key named) that does not parse,
// or that is not a loopback one while the tokens would cross the network
// in clear.
func (c *Config) checkListen(bad func(string, ...any), key, addr string) {
	if host, _, err := net.SplitHostPort(addr); err != nil {
		bad("%s %q: %w", key, addr, err)
	} else if !loopback(host) && c.TLS.Cert == "" && !c.InsecureListen {
		bad("%s %q is not a loopback address: without TLS the tokens would cross the network in clear (set tls, or insecure_listen / -insecure-listen to accept that)", key, addr)
	}
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
