package remote

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/internal/yamldoc"
)

// Defaults of an endpoint's settings (EndpointConfig).
const (
	// DefaultTimeout bounds one HTTP attempt when an endpoint sets none.
	DefaultTimeout = 30 * time.Second
	// DefaultConcurrency bounds the calls of an endpoint in flight at once
	// when it sets none.
	DefaultConcurrency = 16
	// DefaultMaxResponseBytes bounds a response body (the step's output)
	// when an endpoint sets none: 1 MiB.
	DefaultMaxResponseBytes = 1 << 20
	// MaxResponseBytesLimit is the largest max_response_bytes accepted:
	// 4 MiB, the engine's default bound on a step's output (half of the
	// WAL's 8 MiB record size).
	MaxResponseBytesLimit = 4 << 20
)

// Config is the operator's mapping of handler names to HTTP endpoints. API
// callers name handlers; only this configuration says where they are, so a
// caller can never make the engine call a URL of its choosing.
//
// In YAML:
//
//	endpoints:
//	  create_order:
//	    url: https://orders.internal:8443/saga/create
//	    timeout: 5s            # one attempt; default 30s
//	    concurrency: 8         # calls in flight at once; default 16
//	    max_response_bytes: 65536   # default 1 MiB, at most 4 MiB
//	    tls:                   # optional: a CA to trust, a client certificate (mTLS)
//	      ca: /etc/sagad/ca.pem
//	      cert: /etc/sagad/client.pem
//	      key: /etc/sagad/client-key.pem
//	    hmac_secret_file: /etc/sagad/orders.secret   # optional: sign requests
//
// Relative file paths are relative to the directory of the configuration
// file (LoadConfig) or to the base directory given to ParseConfig.
type Config struct {
	// Endpoints maps a handler name (as definitions name actions and
	// compensations) to its endpoint.
	Endpoints map[string]EndpointConfig `yaml:"endpoints"`
}

// EndpointConfig is one endpoint of Config.
type EndpointConfig struct {
	// URL is where calls are POSTed: http or https, with a host. Required.
	// It never appears in errors (it may carry a token in its query).
	URL string `yaml:"url"`
	// Timeout bounds one attempt: connecting, sending, and reading the
	// whole response, not the wait for a concurrency slot (a step's own
	// Timeout, if its definition sets one, bounds both). Default
	// DefaultTimeout (30s).
	Timeout time.Duration `yaml:"timeout"`
	// Concurrency bounds the calls in flight at once, across every saga;
	// a call waits for a slot (or for its context to end) before it
	// connects. Default DefaultConcurrency (16).
	Concurrency int `yaml:"concurrency"`
	// MaxResponseBytes bounds the response body. A 2xx answer with a
	// longer body fails permanently. Default DefaultMaxResponseBytes
	// (1 MiB); at most MaxResponseBytesLimit (4 MiB).
	MaxResponseBytes int64 `yaml:"max_response_bytes"`
	// TLS, if set, configures https: a CA bundle to trust instead of the
	// system's, and a client certificate and key for mutual TLS.
	TLS *TLSConfig `yaml:"tls"`
	// HMACSecretFile, if set, names a file whose content (surrounding
	// white space trimmed, at least 32 bytes) signs every request; see
	// Sign. Default: requests are not signed.
	HMACSecretFile string `yaml:"hmac_secret_file"`
}

// TLSConfig holds PEM file paths for an https endpoint. Cert and Key go
// together; CA alone only changes which servers are trusted.
type TLSConfig struct {
	// CA is a PEM bundle of the certificate authorities that sign the
	// endpoint's certificate. Default: the system's roots.
	CA string `yaml:"ca"`
	// Cert is the client certificate chain (PEM) presented to the server.
	Cert string `yaml:"cert"`
	// Key is the client certificate's private key (PEM).
	Key string `yaml:"key"`
	// ServerName overrides the name the server's certificate is checked
	// against. Default: the URL's host.
	ServerName string `yaml:"server_name"`
}

// ErrInvalidConfig is returned (in a *ConfigError) by ParseConfig,
// LoadConfig, Config.Validate and New for a configuration they refuse.
var ErrInvalidConfig = errors.New("remote: invalid endpoint configuration")

// ConfigError lists every problem of a configuration at once.
type ConfigError struct {
	// Problems, one sentence each, naming the endpoint and the field.
	Problems []string
}

func (e *ConfigError) Error() string {
	return "remote: invalid endpoint configuration:\n  " + strings.Join(e.Problems, "\n  ")
}

// Unwrap makes errors.Is(err, ErrInvalidConfig) true.
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

// LoadConfig reads and parses a YAML configuration file (see Config); its
// relative paths are resolved against the file's directory.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("remote: reading endpoint configuration: %w", err)
	}
	return ParseConfig(data, filepath.Dir(path))
}

// ParseConfig parses YAML (see Config), refusing unknown keys and a
// second document, validates it and resolves its relative file paths
// against baseDir. Every problem —
// unknown keys and invalid values alike — is reported at once in a
// *ConfigError. Files are not read until New.
func ParseConfig(data []byte, baseDir string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var problems []string
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) { // io.EOF: an empty document
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, &ConfigError{Problems: []string{err.Error()}}
		}
		// Unknown keys and values of the wrong type: yaml.v3 goes on
		// decoding the rest and reports them all.
		problems = append(problems, te.Errors...)
	}
	// A second document (after "---") would be ignored, its endpoints
	// dropped without a word: refuse it.
	if yamldoc.More(dec) {
		problems = append(problems, `more than one YAML document (a line "---" and more after it): put every endpoint in one`)
	}
	if err := c.Validate(); err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			problems = append(problems, ce.Problems...)
		}
	}
	if len(problems) > 0 {
		return nil, &ConfigError{Problems: problems}
	}
	c.ResolvePaths(baseDir)
	return &c, nil
}

// Validate reports every problem of c at once in a *ConfigError: a name
// the handler registry would refuse, a missing or malformed URL (only
// http and https, with a host, a port in 1-65535 if any, no fragment),
// negative or out-of-range numbers, a client certificate without its
// key, or tls on an http URL.
// It reads no file.
func (c *Config) Validate() error {
	var problems []string
	add := func(name, format string, args ...any) {
		problems = append(problems, fmt.Sprintf("endpoint %q: ", name)+fmt.Sprintf(format, args...))
	}
	for _, name := range slices.Sorted(maps.Keys(c.Endpoints)) {
		ep := c.Endpoints[name]
		if !compensation.ValidName(name) {
			add(name, "the name must be 1-128 of letters, digits and . _ : @ - (it is the handler's name in definitions)")
		}
		var u *url.URL
		if ep.URL == "" {
			add(name, "url is missing")
		} else if pu, err := url.Parse(ep.URL); err != nil {
			add(name, "url does not parse")
		} else {
			u = pu
			switch {
			case u.Scheme != "http" && u.Scheme != "https":
				add(name, "url scheme %q: only http and https are allowed", u.Scheme)
			case u.Host == "" || u.Hostname() == "":
				add(name, "url has no host")
			case u.User != nil:
				add(name, "url must not hold credentials (use tls or hmac_secret_file)")
			case u.Fragment != "":
				add(name, "url must not have a fragment")
			case u.Port() != "" && !validPort(u.Port()):
				add(name, "url port %q is not a TCP port (1-65535)", u.Port())
			}
		}
		if ep.Timeout < 0 {
			add(name, "timeout %v is negative", ep.Timeout)
		}
		if ep.Concurrency < 0 {
			add(name, "concurrency %d is negative (leave it out for the default %d)", ep.Concurrency, DefaultConcurrency)
		}
		if ep.MaxResponseBytes < 0 || ep.MaxResponseBytes > MaxResponseBytesLimit {
			add(name, "max_response_bytes %d is out of range (1 to %d)", ep.MaxResponseBytes, MaxResponseBytesLimit)
		}
		if t := ep.TLS; t != nil {
			if (t.Cert == "") != (t.Key == "") {
				add(name, "tls.cert and tls.key go together")
			}
			if t.Cert == "" && t.CA == "" && t.ServerName == "" {
				add(name, "tls is empty (give ca, cert and key, or leave tls out)")
			}
			if u != nil && u.Scheme == "http" {
				add(name, "tls is set but the url is http")
			}
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return &ConfigError{Problems: problems}
}

// validPort: p (digits, as url.Parse checks) is a TCP port one can dial.
func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535
}

// ResolvePaths makes c's relative file paths (tls, hmac_secret_file)
// relative to dir, as ParseConfig does; "" leaves them as they are. A
// program that decodes Config as part of its own YAML file calls it with
// that file's directory, then Validate.
func (c *Config) ResolvePaths(dir string) {
	if dir == "" {
		return
	}
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	for name, ep := range c.Endpoints {
		if ep.TLS != nil {
			t := *ep.TLS
			t.CA, t.Cert, t.Key = abs(t.CA), abs(t.Cert), abs(t.Key)
			ep.TLS = &t
		}
		ep.HMACSecretFile = abs(ep.HMACSecretFile)
		c.Endpoints[name] = ep
	}
}

// withDefaults returns ep with its zero fields set to their defaults.
func (ep EndpointConfig) withDefaults() EndpointConfig {
	if ep.Timeout == 0 {
		ep.Timeout = DefaultTimeout
	}
	if ep.Concurrency == 0 {
		ep.Concurrency = DefaultConcurrency
	}
	if ep.MaxResponseBytes == 0 {
		ep.MaxResponseBytes = DefaultMaxResponseBytes
	}
	return ep
}
