package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sagaengine/saga/auth"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// refused runs sagad with args, which must refuse to start, and returns
// its error. A sagad that starts instead is stopped as soon as it
// serves, and the test fails.
func refused(t *testing.T, args ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, args, func(string) string { return "" }, io.Discard, io.Discard, func(string) { cancel() })
	if err == nil {
		t.Fatalf("sagad %q started", args)
	}
	return err
}

// TestSagadConfigProblemsAreNamedAtOnce: a configuration file with
// unknown keys and bad values is refused with every problem named, and
// nothing is written.
func TestSagadConfigProblemsAreNamedAtOnce(t *testing.T) {
	t.Chdir(t.TempDir())
	write(t, "bad.yaml", `
listen: 0.0.0.0:7080
admin: 0.0.0.0:7071
colour: red
tls:
  key: key.pem
  chain: chain.pem
tokens: tokens.yaml
token_file: token
handlers:
  refund: {url: "ftp://127.0.0.1:9/refund", retries: 3}
raft:
  bind: nowhere
  peers:
    - {id: n2, raft: "127.0.0.1:7002", api: "ftp://x"}
    - {id: n2, raft: "127.0.0.1:7003"}
`)
	err := refused(t, "-config", "bad.yaml")
	if !errors.Is(err, errConfig) {
		t.Fatalf("not a configuration error: %v", err)
	}
	for _, want := range []string{
		"field colour not found", "field chain not found", // unknown keys
		"tls: give both cert and key",
		`listen "0.0.0.0:7080" is not a loopback address`,
		`admin "0.0.0.0:7071" is not a loopback address`,
		"tokens and token_file: give one",
		"field retries not found", "handlers:", "ftp",
		"raft: id is required", `raft: bind "nowhere"`, `id "n2" is given twice`, `api "ftp://x" is not an http or https URL`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q:\n%v", want, err)
		}
	}
	write(t, "twodocs.yaml", "listen: 127.0.0.1:7080\n---\ndata: elsewhere\n")
	if err := refused(t, "-config", "twodocs.yaml"); !errors.Is(err, errConfig) || !strings.Contains(err.Error(), "more than one YAML document") {
		t.Errorf("a file of two documents: %v", err)
	}
	write(t, "notyaml.yaml", "listen: [\n")
	refused(t, "-config", "notyaml.yaml")
	refused(t, "-config", "missing.yaml")
	write(t, "badcert.yaml", "tls: {cert: nope.pem, key: nope.key}\n")
	if err := refused(t, "-config", "badcert.yaml"); !strings.Contains(err.Error(), "tls:") {
		t.Errorf("a missing key pair: %v", err)
	}
	write(t, "nosecret.yaml", "handlers:\n  refund: {url: \"http://127.0.0.1:9/refund\", hmac_secret_file: nope.secret}\n")
	if err := refused(t, "-config", "nosecret.yaml"); !strings.Contains(err.Error(), "nope.secret") {
		t.Errorf("a missing secret file: %v", err)
	}
	write(t, "badtokens.yaml", "tokens: tokens.yaml\n")
	write(t, "tokens.yaml", "tokens:\n  - {name: a b, scope: root}\n")
	if err := refused(t, "-config", "badtokens.yaml"); !errors.Is(err, auth.ErrInvalidToken) {
		t.Errorf("a bad tokens file: %v", err)
	}
	entries, _ := os.ReadDir(".")
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("a refused start made the directory %s", e.Name())
		}
	}
}

// TestSagadFlagsOverrideTheConfigFile: the file's relative paths are its
// directory's; a flag given wins over the file.
func TestSagadFlagsOverrideTheConfigFile(t *testing.T) {
	t.Chdir(t.TempDir())
	// The file's listen address is taken by start's -listen 127.0.0.1:0.
	write(t, "etc/sagad.yaml", "---\nlisten: 192.0.2.1:7080\ndata: data\n---\n") // markers of one document
	start(t, map[string]string{TokenEnv: testToken}, "-config", "etc/sagad.yaml")
	if _, err := os.Stat(filepath.Join("etc", "data")); err != nil {
		t.Fatalf("the file's data directory (relative to the file) was not used: %v", err)
	}
	start(t, map[string]string{TokenEnv: testToken}, "-config", "etc/sagad.yaml", "-data", "fromflag")
	if _, err := os.Stat("fromflag"); err != nil {
		t.Fatalf("-data did not override the file: %v", err)
	}
}

// TestSagadNamedTokens: with a tokens file, each call needs its scope,
// and the actor recorded is the token's name.
func TestSagadNamedTokens(t *testing.T) {
	t.Chdir(t.TempDir())
	dash := auth.HashSecret("dashboard-secret-0123456789")
	write(t, "alice.token", "alice-secret-0123456789\n")
	write(t, "tokens.yaml", "tokens:\n"+
		"  - {name: dashboard, scope: read, sha256: "+hex.EncodeToString(dash[:])+"}\n"+
		"  - {name: alice, scope: operator, secret_file: alice.token}\n")
	write(t, "sagad.yaml", "tokens: tokens.yaml\n")
	// SAGAD_TOKEN is not a token when a tokens file is served.
	addr, out := start(t, map[string]string{TokenEnv: "env-token-0123456789"}, "-config", "sagad.yaml")
	if !strings.Contains(out.String(), "token alice, scope operator") {
		t.Errorf("the tokens are not listed:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join("sagad-data", tokenFileName)); !os.IsNotExist(err) {
		t.Errorf("a token was generated beside a tokens file: %v", err)
	}
	define := `{"definition":{"name":"order","steps":[{"name":"pay"}]}}`
	if code, body := post(t, addr, "env-token-0123456789", "Define", define); code != http.StatusUnauthorized {
		t.Fatalf("the env token: %d %s", code, body)
	}
	if code, body := post(t, addr, "dashboard-secret-0123456789", "Define", define); code != http.StatusForbidden ||
		!strings.Contains(body, "permission_denied") || !strings.Contains(body, "needs scope service") {
		t.Fatalf("define with a read token: %d %s", code, body)
	}
	if code, body := post(t, addr, "dashboard-secret-0123456789", "GetDefinition", `{"name":"order"}`); code != http.StatusNotFound {
		t.Fatalf("the refused define was applied, or a read token cannot read: %d %s", code, body)
	}
	alice := "alice-secret-0123456789"
	post(t, addr, alice, "Define", define)
	if code, body := post(t, addr, alice, "Start", `{"definition":"order","id":"o-1"}`); code != 200 {
		t.Fatalf("start: %d %s", code, body)
	}
	if code, body := post(t, addr, alice, "Abort", `{"sagaId":"o-1","actor":"mallory","reason":"cancelled"}`); code != 200 {
		t.Fatalf("abort: %d %s", code, body)
	}
	if code, body := post(t, addr, "dashboard-secret-0123456789", "History", `{"sagaId":"o-1"}`); code != 200 ||
		!strings.Contains(body, `"actor":"alice"`) || strings.Contains(body, "mallory") {
		t.Fatalf("the abort's actor is not the token's name: %d %s", code, body)
	}
}

// TestSagadServesTLS: with a key pair sagad serves HTTPS (HTTP/2 too),
// plain HTTP is not served, and a non-loopback address is allowed.
func TestSagadServesTLS(t *testing.T) {
	t.Chdir(t.TempDir())
	certFile, keyFile, pool := selfSigned(t, ".")
	write(t, "sagad.yaml", "tls:\n  cert: "+certFile+"\n  key: "+keyFile+"\n")
	addr, out := start(t, map[string]string{TokenEnv: testToken}, "-config", "sagad.yaml")
	if !strings.Contains(out.String(), "https://"+addr) {
		t.Errorf("the https address is not printed:\n%s", out)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	hc := &http.Client{Transport: tr}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "https://"+addr+"/saga.v1.SagaService/Status", strings.NewReader(`{"sagaId":"x"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(b), "not_found") || resp.ProtoMajor != 2 {
		t.Fatalf("over HTTPS: %s %d %s", resp.Proto, resp.StatusCode, b)
	}
	preq, _ := http.NewRequestWithContext(ctx, "POST", "http://"+addr+"/saga.v1.SagaService/Status", strings.NewReader(`{"sagaId":"x"}`))
	preq.Header.Set("Authorization", "Bearer "+testToken)
	if resp, err := http.DefaultClient.Do(preq); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest { // Go's answer to HTTP on a TLS port
			t.Fatalf("plain HTTP on the TLS port: %d", resp.StatusCode)
		}
	}

	// TLS allows an address others can reach; -insecure-listen allows
	// one without TLS; neither, refused.
	c := Config{Listen: "0.0.0.0:7080", Data: "d", TLS: TLSConfig{Cert: certFile, Key: keyFile}}
	if _, err := c.Validate(); err != nil {
		t.Errorf("a non-loopback address with TLS: %v", err)
	}
	c = Config{Listen: "0.0.0.0:7080", Data: "d", InsecureListen: true}
	if _, err := c.Validate(); err != nil {
		t.Errorf("a non-loopback address with insecure_listen: %v", err)
	}
	c = Config{Listen: "0.0.0.0:7080", Data: "d"}
	if _, err := c.Validate(); err == nil {
		t.Error("a non-loopback address without TLS was allowed")
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key
// into dir, and returns their paths and a pool that trusts it.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sagad test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	write(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	write(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})))
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
