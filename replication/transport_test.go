package replication

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/sagaengine/saga/replication/internal/testcerts"
)

// waitLimit bounds every wait on the network; tests never sleep.
const waitLimit = 5 * time.Second

// logBuffer collects a logger's output and wakes waiters on each write.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.changed != nil {
		close(b.changed)
		b.changed = nil
	}
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor blocks until the log contains substr n times, failing after
// waitLimit.
func (b *logBuffer) waitFor(t *testing.T, substr string, n int) {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		b.mu.Lock()
		if strings.Count(b.buf.String(), substr) >= n {
			b.mu.Unlock()
			return
		}
		if b.changed == nil {
			b.changed = make(chan struct{})
		}
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("log never contained %q %d times; log:\n%s", substr, n, b.String())
		}
	}
}

// testLogger returns a logger into a buffer that is printed if t fails.
func testLogger(t *testing.T, name string) (hclog.Logger, *logBuffer) {
	buf := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", name, buf.String())
		}
	})
	return hclog.New(&hclog.LoggerOptions{Name: name, Output: buf, Level: hclog.Debug}), buf
}

// certSet is a CA and node certificates written by testcerts.Generate.
type certSet struct {
	ca    string
	nodes map[string][2]string
}

func genCerts(t *testing.T, names ...string) certSet {
	t.Helper()
	ca, nodes, err := testcerts.Generate(t.TempDir(), names...)
	if err != nil {
		t.Fatal(err)
	}
	return certSet{ca: ca, nodes: nodes}
}

func (c certSet) tlsConfig(name string) TLSConfig {
	return TLSConfig{CertFile: c.nodes[name][0], KeyFile: c.nodes[name][1], CAFile: c.ca}
}

func (c certSet) load(t *testing.T, name string) *tls.Config {
	t.Helper()
	conf, err := c.tlsConfig(name).Load()
	if err != nil {
		t.Fatal(err)
	}
	return conf
}

func (c certSet) pool(t *testing.T) *x509.CertPool {
	t.Helper()
	pool, err := loadCAPool(c.ca)
	if err != nil {
		t.Fatal(err)
	}
	return pool
}

func (c certSet) keyPair(t *testing.T, name string) tls.Certificate {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(c.nodes[name][0], c.nodes[name][1])
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// newTransport starts a transport on 127.0.0.1 and closes it at cleanup.
func newTransport(t *testing.T, name string, conf *tls.Config) (*raft.NetworkTransport, *logBuffer) {
	t.Helper()
	logger, buf := testLogger(t, name)
	trans, err := NewTCPTransport("127.0.0.1:0", "", conf, 2, 2*time.Second, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		trans.CloseStreams()
		_ = trans.Close()
	})
	return trans, buf
}

// dialOnlyStream is a raft.StreamLayer that listens on plain TCP (unused)
// and dials TLS with an arbitrary client config: a misbehaving peer.
type dialOnlyStream struct {
	*streamLayer
	conf *tls.Config
}

func (d dialOnlyStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return (&tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: d.conf}).Dial("tcp", string(address))
}

// newRogueTransport starts a transport that dials with conf.
func newRogueTransport(t *testing.T, name string, conf *tls.Config) *raft.NetworkTransport {
	t.Helper()
	logger, _ := testLogger(t, name)
	s, err := newStreamLayer("127.0.0.1:0", "", nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: dialOnlyStream{s, conf}, MaxPool: 2, Timeout: 2 * time.Second, Logger: logger,
	})
	t.Cleanup(func() { _ = trans.Close() })
	return trans
}

// serve answers every AppendEntries RPC on trans with success and reports
// each request it saw, until cleanup.
func serve(t *testing.T, trans *raft.NetworkTransport) <-chan *raft.AppendEntriesRequest {
	seen := make(chan *raft.AppendEntriesRequest, 16)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case rpc := <-trans.Consumer():
				req, ok := rpc.Command.(*raft.AppendEntriesRequest)
				if !ok {
					rpc.Respond(nil, errors.New("unexpected RPC"))
					continue
				}
				seen <- req
				rpc.Respond(&raft.AppendEntriesResponse{
					Term:    req.Term,
					LastLog: req.PrevLogEntry + uint64(len(req.Entries)),
					Success: true,
				}, nil)
			case <-done:
				return
			}
		}
	}()
	t.Cleanup(func() { close(done); wg.Wait() })
	return seen
}

// appendEntries sends one AppendEntries RPC with the given term.
func appendEntries(from, to *raft.NetworkTransport, term uint64) (*raft.AppendEntriesResponse, error) {
	args := raft.AppendEntriesRequest{
		RPCHeader:         raft.RPCHeader{ID: []byte("leader"), Addr: []byte(from.LocalAddr())},
		Term:              term,
		PrevLogEntry:      100,
		PrevLogTerm:       4,
		Entries:           []*raft.Log{{Index: 101, Term: term, Type: raft.LogCommand, Data: []byte("saga")}},
		LeaderCommitIndex: 90,
	}
	var resp raft.AppendEntriesResponse
	err := from.AppendEntries("follower", to.LocalAddr(), &args, &resp)
	return &resp, err
}

// expectRPC asserts that the RPC with term arrives next and alone.
func expectRPC(t *testing.T, seen <-chan *raft.AppendEntriesRequest, term uint64) {
	t.Helper()
	select {
	case req := <-seen:
		if req.Term != term || len(req.Entries) != 1 || string(req.Entries[0].Data) != "saga" {
			t.Fatalf("server saw %+v, want the RPC of term %d", req, term)
		}
	case <-time.After(waitLimit):
		t.Fatalf("server never saw the RPC of term %d", term)
	}
	expectNoRPC(t, seen)
}

func expectNoRPC(t *testing.T, seen <-chan *raft.AppendEntriesRequest) {
	t.Helper()
	select {
	case req := <-seen:
		t.Fatalf("server saw an unexpected RPC of term %d", req.Term)
	default:
	}
}

func TestTransportMutualTLSAppendEntries(t *testing.T) {
	certs := genCerts(t, "n1", "n2")
	server, _ := newTransport(t, "n1", certs.load(t, "n1"))
	client, _ := newTransport(t, "n2", certs.load(t, "n2"))
	seen := serve(t, server)

	for term := uint64(1); term <= 3; term++ { // later RPCs reuse the pooled conn
		resp, err := appendEntries(client, server, term)
		if err != nil {
			t.Fatalf("term %d: %v", term, err)
		}
		if !resp.Success || resp.Term != term || resp.LastLog != 101 {
			t.Fatalf("term %d: response %+v", term, resp)
		}
		expectRPC(t, seen, term)
	}
}

func TestTransportRefusesUntrustedPeers(t *testing.T) {
	certs := genCerts(t, "n1", "n2")
	foreign := genCerts(t, "intruder")
	server, serverLog := newTransport(t, "n1", certs.load(t, "n1"))
	good, _ := newTransport(t, "n2", certs.load(t, "n2"))
	seen := serve(t, server)

	foreignCert := foreign.keyPair(t, "intruder")
	rogues := []struct {
		name string
		conf *tls.Config
	}{
		// Trusts the server, presents nothing.
		{"no certificate", &tls.Config{RootCAs: certs.pool(t), MinVersion: tls.VersionTLS13}},
		// Trusts the server, presents a certificate from another CA even
		// though the server's certificate request names only its own CA.
		{"certificate from another CA", &tls.Config{
			RootCAs:    certs.pool(t),
			MinVersion: tls.VersionTLS13,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &foreignCert, nil
			},
		}},
	}
	for i, r := range rogues {
		t.Run(r.name, func(t *testing.T) {
			rogue := newRogueTransport(t, "rogue", r.conf)
			term := uint64(100 + i)
			if resp, err := appendEntries(rogue, server, term); err == nil {
				t.Fatalf("RPC from a peer with %s succeeded: %+v", r.name, resp)
			} else {
				t.Logf("refused as expected: %v", err)
			}
			serverLog.waitFor(t, "refused inbound raft connection", i+1)
			expectNoRPC(t, seen)

			// The server still serves trusted peers, on fresh connections.
			good.CloseStreams()
			if _, err := appendEntries(good, server, term+1000); err != nil {
				t.Fatalf("trusted peer after the refusal: %v", err)
			}
			expectRPC(t, seen, term+1000)
		})
	}
}

func TestTransportPlainTCP(t *testing.T) {
	server, _ := newTransport(t, "n1", nil)
	client, _ := newTransport(t, "n2", nil)
	seen := serve(t, server)

	resp, err := appendEntries(client, server, 7)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Success || resp.Term != 7 {
		t.Fatalf("response %+v", resp)
	}
	expectRPC(t, seen, 7)
}

// Dialling verifies the peer's certificate against the dialled host: a DNS
// name via the DNS SAN, an IP via the IP SAN, and an IP the certificate
// does not name is refused.
func TestStreamLayerDialVerifiesPeerAddress(t *testing.T) {
	certs := genCerts(t, "n1", "n2")
	dialer, err := newStreamLayer("127.0.0.1:0", "", certs.load(t, "n2"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dialer.Close()

	listen := func(t *testing.T, bind string) *streamLayer {
		s, err := newStreamLayer(bind, "", certs.load(t, "n1"), nil)
		if err != nil {
			t.Skipf("cannot listen on %s: %v", bind, err)
		}
		t.Cleanup(func() { _ = s.Close() })
		go func() { // complete the server side of each handshake
			for {
				c, err := s.Accept()
				if err != nil {
					return
				}
				_ = c.Close()
			}
		}()
		return s
	}

	s := listen(t, "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(s.Addr().String())
	for _, addr := range []string{"127.0.0.1:" + port, "localhost:" + port} {
		c, err := dialer.Dial(raft.ServerAddress(addr), waitLimit)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		_ = c.Close()
	}

	t.Run("unnamed IP", func(t *testing.T) {
		other := listen(t, "127.0.0.2:0") // loopback, but not in the certificate
		_, err := dialer.Dial(raft.ServerAddress(other.Addr().String()), waitLimit)
		if _, ok := errors.AsType[x509.HostnameError](err); !ok {
			t.Fatalf("dial %s: got %v, want an x509.HostnameError", other.Addr(), err)
		}
	})
}

// Handshakes run beside Accept: a connection that never speaks does not
// hold up a trusted peer, garbage is refused, and a stalled handshake is
// cut off after the handshake timeout.
func TestStreamLayerAcceptOnlyHandshakenConns(t *testing.T) {
	certs := genCerts(t, "n1", "n2")
	logger, log := testLogger(t, "n1")
	// A timeout long enough that the stalled conn must not matter.
	s, err := newStreamLayerTimeout("127.0.0.1:0", "", certs.load(t, "n1"), logger, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	stalled, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	garbage, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer garbage.Close()
	if _, err := io.WriteString(garbage, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	log.waitFor(t, "refused inbound raft connection", 1)

	client, err := newStreamLayer("127.0.0.1:0", "", certs.load(t, "n2"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	// The server handshakes without waiting for Accept to be called.
	cc, err := client.Dial(raft.ServerAddress(s.Addr().String()), waitLimit)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := s.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	select {
	case c := <-accepted:
		if c == nil {
			t.FailNow()
		}
		defer c.Close()
		state := c.(*tls.Conn).ConnectionState()
		if !state.HandshakeComplete || len(state.PeerCertificates) == 0 || state.PeerCertificates[0].Subject.CommonName != "n2" {
			t.Fatalf("Accept returned a conn with state %+v, want n2's completed handshake", state)
		}
	case <-time.After(waitLimit):
		t.Fatal("a stalled connection held up Accept")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}

	// Under a short timeout the server closes a stalled connection.
	short, err := newStreamLayerTimeout("127.0.0.1:0", "", certs.load(t, "n1"), logger, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	late, err := net.Dial("tcp", short.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	_ = late.SetReadDeadline(time.Now().Add(waitLimit))
	if n, err := late.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("stalled conn read %d bytes, %v; want EOF after the handshake timeout", n, err)
	}
	log.waitFor(t, "context deadline exceeded", 1)
}

func TestNewTCPTransportAdvertise(t *testing.T) {
	t.Run("empty means the bound address", func(t *testing.T) {
		trans, _ := newTransport(t, "n1", nil)
		addr, err := netip.ParseAddrPort(string(trans.LocalAddr()))
		if err != nil || addr.Addr() != netip.MustParseAddr("127.0.0.1") || addr.Port() == 0 {
			t.Fatalf("LocalAddr %q (%v), want 127.0.0.1 and the bound port", trans.LocalAddr(), err)
		}
	})
	for _, adv := range []string{"10.1.2.3:7000", "node1.example:7000", "[fd00::1]:7000"} {
		t.Run("kept "+adv, func(t *testing.T) {
			trans, err := NewTCPTransport("127.0.0.1:0", adv, nil, 1, time.Second, hclog.NewNullLogger())
			if err != nil {
				t.Fatal(err)
			}
			defer trans.Close()
			if got := string(trans.LocalAddr()); got != adv {
				t.Fatalf("LocalAddr %q, want %q", got, adv)
			}
		})
	}
	for _, tc := range []struct{ bind, adv string }{
		{"0.0.0.0:0", ""},
		{"127.0.0.1:0", "0.0.0.0:7000"},
		{"127.0.0.1:0", "[::]:7000"},
		{"127.0.0.1:0", ":7000"},
		{"127.0.0.1:0", "node1"},
		{"127.0.0.1:0", "node1:0"},
		{"127.0.0.1:0", "node1:70000"},
	} {
		t.Run("refused "+tc.bind+" "+tc.adv, func(t *testing.T) {
			trans, err := NewTCPTransport(tc.bind, tc.adv, nil, 1, time.Second, hclog.NewNullLogger())
			if err == nil {
				trans.Close()
				t.Fatalf("advertise %q accepted as %q", tc.adv, trans.LocalAddr())
			}
			if !errors.Is(err, ErrAdvertiseAddr) {
				t.Fatalf("got %v, want ErrAdvertiseAddr", err)
			}
			t.Log(err)
		})
	}
}

func TestNewTCPTransportRejectsWeakTLSConfig(t *testing.T) {
	certs := genCerts(t, "n1")
	noClientAuth := certs.load(t, "n1")
	noClientAuth.ClientAuth = tls.VerifyClientCertIfGiven
	noCert := certs.load(t, "n1")
	noCert.Certificates = nil
	for name, conf := range map[string]*tls.Config{"no client auth": noClientAuth, "no certificate": noCert} {
		if trans, err := NewTCPTransport("127.0.0.1:0", "", conf, 1, time.Second, hclog.NewNullLogger()); err == nil {
			trans.Close()
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func TestTLSConfigLoad(t *testing.T) {
	certs := genCerts(t, "n1")
	conf := certs.load(t, "n1")
	if conf.MinVersion != tls.VersionTLS13 || conf.ClientAuth != tls.RequireAndVerifyClientCert ||
		conf.ClientCAs == nil || conf.RootCAs == nil || len(conf.Certificates) != 1 || conf.ServerName != "" {
		t.Fatalf("config %+v", conf)
	}
}

func TestTLSConfigLoadErrors(t *testing.T) {
	certs := genCerts(t, "n1", "n2")
	foreign := genCerts(t, "intruder")
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	garbage := write("garbage.pem", "this is not PEM\n")
	badDER := write("bad-der.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
	missing := filepath.Join(dir, "missing.pem")
	good := certs.tlsConfig("n1")
	with := func(f func(*TLSConfig)) TLSConfig { c := good; f(&c); return c }

	for _, tc := range []struct {
		name  string
		conf  TLSConfig
		field string
		path  string
		want  error
	}{
		{"missing CA file", with(func(c *TLSConfig) { c.CAFile = missing }), "CAFile", missing, fs.ErrNotExist},
		{"missing cert file", with(func(c *TLSConfig) { c.CertFile = missing }), "CertFile", missing, fs.ErrNotExist},
		{"missing key file", with(func(c *TLSConfig) { c.KeyFile = missing }), "KeyFile", missing, fs.ErrNotExist},
		{"CA file not PEM", with(func(c *TLSConfig) { c.CAFile = garbage }), "CAFile", garbage, ErrNoCertificate},
		{"CA file holds a key", with(func(c *TLSConfig) { c.CAFile = good.KeyFile }), "CAFile", good.KeyFile, ErrNoCertificate},
		{"cert file not PEM", with(func(c *TLSConfig) { c.CertFile = garbage }), "CertFile", garbage, ErrNoCertificate},
		{"cert file bad DER", with(func(c *TLSConfig) { c.CertFile = badDER }), "CertFile", badDER, nil},
		{"key file not PEM", with(func(c *TLSConfig) { c.KeyFile = garbage }), "KeyFile", garbage, ErrNoPrivateKey},
		{"key file holds a cert", with(func(c *TLSConfig) { c.KeyFile = good.CertFile }), "KeyFile", good.CertFile, ErrNoPrivateKey},
		{"key of another node", with(func(c *TLSConfig) { c.KeyFile = certs.nodes["n2"][1] }), "KeyFile", certs.nodes["n2"][1], ErrKeyMismatch},
		{"cert from another CA", TLSConfig{CertFile: foreign.nodes["intruder"][0], KeyFile: foreign.nodes["intruder"][1], CAFile: certs.ca},
			"CertFile", foreign.nodes["intruder"][0], ErrCertNotTrusted},
		{"cert not from this CA", with(func(c *TLSConfig) { c.CAFile = foreign.ca }), "CertFile", good.CertFile, ErrCertNotTrusted},
		{"no paths", TLSConfig{}, "CertFile", "", ErrTLSPathNotSet},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.conf.Load()
			if err == nil {
				t.Fatal("Load succeeded")
			}
			t.Log(err)
			fe, ok := errors.AsType[*TLSFileError](err)
			if !ok {
				t.Fatalf("got %T %v, want a *TLSFileError", err, err)
			}
			if fe.Field != tc.field || fe.Path != tc.path {
				t.Errorf("error names %s %q, want %s %q", fe.Field, fe.Path, tc.field, tc.path)
			}
			if !strings.Contains(err.Error(), "TLSConfig."+tc.field) || !strings.Contains(err.Error(), tc.path) {
				t.Errorf("message %q does not name the field and file", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("got %v, want errors.Is %v", err, tc.want)
			}
		})
	}

	t.Run("every empty path reported", func(t *testing.T) {
		_, err := TLSConfig{}.Load()
		for _, f := range []string{"CertFile", "KeyFile", "CAFile"} {
			if !strings.Contains(err.Error(), "TLSConfig."+f) {
				t.Errorf("%q does not mention %s", err, f)
			}
		}
	})
}
