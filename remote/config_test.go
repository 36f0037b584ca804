package remote_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sagaengine/saga/remote"
)

func TestParseConfigDefaultsAndPaths(t *testing.T) {
	c, err := remote.ParseConfig([]byte(`
endpoints:
  create_order:
    url: https://orders.internal:8443/saga/create
    timeout: 5s
    concurrency: 8
    tls: {ca: ca.pem, cert: /etc/sagad/client.pem, key: client-key.pem}
    hmac_secret_file: orders.secret
  cancel_order:
    url: http://127.0.0.1:9000/cancel
`), "/etc/sagad")
	if err != nil {
		t.Fatal(err)
	}
	co := c.Endpoints["create_order"]
	if co.Timeout != 5*time.Second || co.Concurrency != 8 || co.HMACSecretFile != filepath.FromSlash("/etc/sagad/orders.secret") {
		t.Fatalf("create_order %+v", co)
	}
	if co.TLS.CA != filepath.FromSlash("/etc/sagad/ca.pem") || co.TLS.Cert != "/etc/sagad/client.pem" || co.TLS.Key != filepath.FromSlash("/etc/sagad/client-key.pem") {
		t.Fatalf("tls %+v", co.TLS)
	}
	if cc := c.Endpoints["cancel_order"]; cc.URL != "http://127.0.0.1:9000/cancel" || cc.Timeout != 0 {
		t.Fatalf("cancel_order %+v (defaults are applied by New, the config keeps what was written)", cc)
	}
	if c, err := remote.ParseConfig(nil, ""); err != nil || len(c.Endpoints) != 0 {
		t.Fatalf("empty config: %v, %v", c, err)
	}
}

// Every problem is named at once: unknown keys, bad schemes, missing
// fields, bad numbers.
func TestParseConfigNamesEveryProblem(t *testing.T) {
	_, err := remote.ParseConfig([]byte(`
endpoints:
  a:
    url: ftp://files.internal/x
    timout: 5s
  b:
    timeout: -1s
    concurrency: -2
  c:
    url: http://svc.internal/c
    tls: {cert: c.pem}
  "bad name!":
    url: https://x.internal/
  d:
    url: https://user:pw@x.internal/
    max_response_bytes: 99999999
  e:
    url: /relative/only
    timeout: 5
unknown_top: 1
`), "")
	var ce *remote.ConfigError
	if !errors.As(err, &ce) || !errors.Is(err, remote.ErrInvalidConfig) {
		t.Fatalf("err %v, want a *ConfigError", err)
	}
	for _, want := range []string{
		"field timout not found", "field unknown_top not found",
		`"a": url scheme "ftp"`,
		`"b": url is missing`, `"b": timeout -1s is negative`, `"b": concurrency -2 is negative`,
		`"c": tls.cert and tls.key go together`, `"c": tls is set but the url is http`,
		`"bad name!": the name must be`,
		`"d": url must not hold credentials`, `"d": max_response_bytes 99999999 is out of range`,
		`"e": url scheme ""`, "cannot unmarshal !!int `5` into time.Duration",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "pw@") {
		t.Errorf("the error quotes a URL's credentials:\n%v", err)
	}
	if _, err := remote.ParseConfig([]byte("endpoints: [\n"), ""); !errors.Is(err, remote.ErrInvalidConfig) {
		t.Fatalf("malformed YAML: %v", err)
	}
}

// New reads the files and names each one it cannot use, without quoting
// their content.
func TestNewNamesUnreadableFiles(t *testing.T) {
	dir := t.TempDir()
	short := writeFile(t, dir, "short.secret", []byte("tooshort"))
	junk := writeFile(t, dir, "junk.pem", []byte("not a pem"))
	_, err := remote.New(remote.Config{Endpoints: map[string]remote.EndpointConfig{
		"a": {URL: "https://a.internal/", HMACSecretFile: short},
		"b": {URL: "https://b.internal/", HMACSecretFile: filepath.Join(dir, "missing")},
		"c": {URL: "https://c.internal/", TLS: &remote.TLSConfig{CA: junk, Cert: junk, Key: junk}},
		"d": {URL: "gopher://d.internal/"},
	}}, remote.Options{})
	var ce *remote.ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("err %v", err)
	}
	for _, want := range []string{`"a": hmac_secret_file`, "shorter than 32 bytes", `"b": hmac_secret_file`, `"c": tls.ca`, `"c": tls.cert/tls.key`, `"d": url scheme`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "tooshort") {
		t.Errorf("the error quotes a secret:\n%v", err)
	}
}
