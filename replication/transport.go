package replication

// The Raft transport: hashicorp/raft's NetworkTransport over TCP, optionally
// wrapped in mutual TLS.
//
// Trust model. Every node holds one certificate, signed by a CA that all
// nodes share (TLSConfig.CAFile). The certificate is presented both when the
// node accepts a connection (as a server certificate) and when it dials one
// (as a client certificate), so it needs both the serverAuth and clientAuth
// extended key usages (or none at all). A connection is allowed only if
// both sides' chains verify against the CA. On the dialling side the peer's
// certificate must also name the dialled host: raft addresses peers as
// host:port, and crypto/tls uses the host part as ServerName, matching it
// against the certificate's IP SANs when it is an IP and against its DNS
// SANs otherwise. The accepting side cannot check a name (the dialler's
// source address says nothing useful), so any holder of a certificate from
// the CA is a full cluster member: the CA is the trust boundary.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// ErrAdvertiseAddr is returned, wrapped, by NewTCPTransport when the address
// the node would advertise to its peers cannot be dialled: it is not
// host:port, its port is not in 1-65535, or its host is empty or an
// unspecified IP (0.0.0.0, ::). With an empty advertise argument the
// listener's bound address is checked instead, so binding to 0.0.0.0
// requires an explicit advertise address.
var ErrAdvertiseAddr = errors.New("replication: unusable advertise address")

// Kinds of problem TLSConfig.Load reports, each wrapped in a *TLSFileError
// that names the offending file. Match them with errors.Is. A file that
// cannot be read is reported with the *fs.PathError from the os package
// instead, so errors.Is(err, fs.ErrNotExist) identifies a missing file.
var (
	// ErrTLSPathNotSet: a TLSConfig field is empty.
	ErrTLSPathNotSet = errors.New("path not set")
	// ErrNoCertificate: the certificate file or the CA file holds no
	// PEM "CERTIFICATE" block (it is empty, not PEM, or only holds keys).
	ErrNoCertificate = errors.New("no PEM CERTIFICATE block")
	// ErrNoPrivateKey: the key file holds no unencrypted PEM private key.
	ErrNoPrivateKey = errors.New("no unencrypted PEM PRIVATE KEY block")
	// ErrKeyMismatch: the private key is not the one the certificate
	// certifies.
	ErrKeyMismatch = errors.New("private key does not match the certificate")
	// ErrCertNotTrusted: the node certificate does not verify against the
	// CA file for both server and client use (wrong CA, expired, or missing
	// an extended key usage), so peers sharing that CA would refuse it.
	ErrCertNotTrusted = errors.New("certificate does not verify against the CA file")
)

// TLSFileError reports a problem with one of the PEM files named by a
// TLSConfig. Err is one of the Err* kinds above or an *fs.PathError.
type TLSFileError struct {
	// Field is the TLSConfig field naming the file: "CertFile", "KeyFile"
	// or "CAFile".
	Field string
	// Path is the field's value.
	Path string
	// Err says what is wrong with the file.
	Err error
}

// Error implements error, as
// `replication: TLSConfig.KeyFile "/etc/saga/n1-key.pem": <problem>`.
func (e *TLSFileError) Error() string {
	msg := e.Err.Error()
	if pe, ok := errors.AsType[*fs.PathError](e.Err); ok {
		msg = pe.Op + ": " + pe.Err.Error() // pe's own message repeats the path
	}
	return fmt.Sprintf("replication: TLSConfig.%s %q: %s", e.Field, e.Path, msg)
}

// Unwrap returns Err.
func (e *TLSFileError) Unwrap() error { return e.Err }

// TLSConfig names the PEM files for mutual TLS between Raft peers. All three
// are required.
type TLSConfig struct {
	// CertFile holds this node's certificate, optionally followed by
	// intermediate CA certificates.
	CertFile string
	// KeyFile holds the certificate's private key (PKCS #8, PKCS #1 or
	// SEC 1 EC; not encrypted).
	KeyFile string
	// CAFile holds the CA certificate(s) that peers' certificates must
	// chain to, whether they dial this node or are dialled by it.
	CAFile string
}

// Load reads the files and returns a *tls.Config for both sides of a Raft
// connection: it presents the node certificate as server and as client,
// requires and verifies the peer's certificate against CAFile in both
// directions (ClientAuth = tls.RequireAndVerifyClientCert with ClientCAs,
// and RootCAs), and requires TLS 1.3.
//
// ServerName is left empty on purpose: crypto/tls's Dialer then sets it, per
// connection, to the host part of the dialled raft address, so a dialled
// peer is verified both by chain and by name (an IP SAN for an IP address,
// a DNS SAN for a name). Setting ServerName on the returned config would
// instead require every peer's certificate to carry that one name.
//
// Load checks up front what would otherwise fail only on a peer, at
// handshake time: that the key matches the certificate and that the
// certificate verifies against CAFile for server and client use at the
// current time. Every problem is a *TLSFileError naming the file; when
// several files are wrong the errors are joined.
func (c TLSConfig) Load() (*tls.Config, error) {
	var errs []error
	for _, f := range []struct{ field, path string }{
		{"CertFile", c.CertFile}, {"KeyFile", c.KeyFile}, {"CAFile", c.CAFile},
	} {
		if f.path == "" {
			errs = append(errs, &TLSFileError{Field: f.field, Err: ErrTLSPathNotSet})
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	pool, caErr := loadCAPool(c.CAFile)
	cert, certErr := loadKeyPair(c.CertFile, c.KeyFile)
	if err := errors.Join(caErr, certErr); err != nil {
		return nil, err
	}

	opts := x509.VerifyOptions{Roots: pool, Intermediates: x509.NewCertPool()}
	for _, der := range cert.Certificate[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			opts.Intermediates.AddCert(ic)
		}
	}
	for _, use := range []struct {
		name string
		eku  x509.ExtKeyUsage
	}{{"server", x509.ExtKeyUsageServerAuth}, {"client", x509.ExtKeyUsageClientAuth}} {
		opts.KeyUsages = []x509.ExtKeyUsage{use.eku}
		if _, err := cert.Leaf.Verify(opts); err != nil {
			return nil, &TLSFileError{Field: "CertFile", Path: c.CertFile,
				Err: fmt.Errorf("%w %q as a %s certificate: %w", ErrCertNotTrusted, c.CAFile, use.name, err)}
		}
	}

	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// loadCAPool reads every certificate in the CA file.
func loadCAPool(path string) (*x509.CertPool, error) {
	fail := func(err error) error { return &TLSFileError{Field: "CAFile", Path: path, Err: err} }
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fail(err)
	}
	certs, err := parseCertificates(data)
	if err != nil {
		return nil, fail(err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// loadKeyPair reads the certificate chain and its private key and checks
// that they belong together.
func loadKeyPair(certPath, keyPath string) (tls.Certificate, error) {
	certFail := func(err error) error { return &TLSFileError{Field: "CertFile", Path: certPath, Err: err} }
	keyFail := func(err error) error { return &TLSFileError{Field: "KeyFile", Path: keyPath, Err: err} }

	var chain []*x509.Certificate
	certData, err := os.ReadFile(certPath)
	if err == nil {
		chain, err = parseCertificates(certData)
	}
	if err != nil {
		err = certFail(err)
	}
	key, keyErr := readPrivateKey(keyPath)
	if keyErr != nil {
		keyErr = keyFail(keyErr)
	}
	if err := errors.Join(err, keyErr); err != nil {
		return tls.Certificate{}, err
	}

	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(chain[0].PublicKey) {
		return tls.Certificate{}, keyFail(fmt.Errorf("%w in %q", ErrKeyMismatch, certPath))
	}
	out := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out, nil
}

// parseCertificates returns the certificates of every PEM CERTIFICATE block
// in data, in order, skipping other blocks.
func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, ErrNoCertificate
	}
	return certs, nil
}

// readPrivateKey returns the first PEM private key in the file, in any of
// the encodings crypto/tls accepts.
func readPrivateKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, ErrNoPrivateKey
		}
		if (b.Type != "PRIVATE KEY" && !strings.HasSuffix(b.Type, " PRIVATE KEY")) || b.Type == "ENCRYPTED PRIVATE KEY" {
			continue
		}
		if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
			switch k := k.(type) {
			case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
				return k.(crypto.Signer), nil
			default:
				return nil, fmt.Errorf("unsupported private key type %T", k)
			}
		}
		if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
			return k, nil
		}
		if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
			return k, nil
		}
		return nil, fmt.Errorf("cannot parse %s block (tried PKCS #8, PKCS #1, SEC 1)", b.Type)
	}
}

// defaultHandshakeTimeout bounds the TLS handshake of an inbound connection.
const defaultHandshakeTimeout = 10 * time.Second

// NewTCPTransport returns a raft.NetworkTransport listening on bind (for
// example "0.0.0.0:7000" or "127.0.0.1:0") and telling peers to dial it at
// advertise.
//
// advertise is host:port, where host is an IP or a DNS name; a name is kept
// as given (peers resolve it when they dial, and with TLS verify it against
// this node's certificate). An empty advertise means the listener's bound
// address, which suits tests on port 0 but is refused when bound to an
// unspecified IP. Unusable addresses yield an error wrapping
// ErrAdvertiseAddr.
//
// With tlsConf nil the transport is plain TCP. Otherwise every connection
// is mutual TLS under tlsConf (usually from TLSConfig.Load), which must hold
// a certificate and set ClientAuth to tls.RequireAndVerifyClientCert;
// tlsConf is cloned, so later changes to it have no effect.
//
// An inbound connection is handed to raft only after its TLS handshake has
// succeeded. Handshakes run concurrently, each bounded by 10 seconds, so a
// peer that connects and stalls does not delay other peers. A failed
// handshake (no certificate, one from another CA, a timeout, not TLS at
// all) is logged as a warning with the remote address, the connection is
// closed, and accepting continues: the error is not returned from Accept,
// because raft's accept loop treats any Accept error as a failing listener,
// logs it as such and backs off for up to a second before accepting again,
// which would let any stray client slow down legitimate peers. Errors of
// the listening socket itself (for example running out of file
// descriptors) still reach raft, whose back-off suits them.
//
// maxPool and timeout are raft's: the number of idle outbound connections
// kept per peer, and the I/O deadline of an RPC (also the dial and
// handshake timeout). logger receives both raft's transport logs and the
// refused-connection warnings; nil means raft's default, an hclog logger
// named "raft-net" writing to stderr at Info.
func NewTCPTransport(bind, advertise string, tlsConf *tls.Config, maxPool int, timeout time.Duration, logger hclog.Logger) (*raft.NetworkTransport, error) {
	if logger == nil {
		logger = hclog.New(&hclog.LoggerOptions{Name: "raft-net", Output: hclog.DefaultOutput, Level: hclog.DefaultLevel})
	}
	s, err := newStreamLayer(bind, advertise, tlsConf, logger)
	if err != nil {
		return nil, err
	}
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  s,
		MaxPool: maxPool,
		Timeout: timeout,
		Logger:  logger,
	}), nil
}

// streamLayer is a raft.StreamLayer over TCP, with mutual TLS when tlsConf
// is set. With TLS, a goroutine accepts raw connections and starts one
// handshake goroutine per connection; Accept returns only connections whose
// handshake succeeded (see NewTCPTransport).
type streamLayer struct {
	ln               net.Listener // a tls.NewListener when tlsConf != nil
	advertise        net.Addr
	tlsConf          *tls.Config
	logger           hclog.Logger
	handshakeTimeout time.Duration

	// TLS only.
	accepted chan acceptResult // handshaken conns and listener errors
	ctx      context.Context   // cancelled by Close
	cancel   context.CancelFunc
	wg       sync.WaitGroup // acceptLoop and handshake goroutines

	closeOnce sync.Once
	closeErr  error
}

type acceptResult struct {
	conn net.Conn
	err  error
}

var _ raft.StreamLayer = (*streamLayer)(nil)

// newStreamLayer listens on bind and advertises advertise (see
// NewTCPTransport for both, and for tlsConf). logger may be nil.
func newStreamLayer(bind, advertise string, tlsConf *tls.Config, logger hclog.Logger) (*streamLayer, error) {
	return newStreamLayerTimeout(bind, advertise, tlsConf, logger, defaultHandshakeTimeout)
}

// newStreamLayerTimeout is newStreamLayer with the bound on inbound TLS
// handshakes.
func newStreamLayerTimeout(bind, advertise string, tlsConf *tls.Config, logger hclog.Logger, handshakeTimeout time.Duration) (*streamLayer, error) {
	if tlsConf != nil {
		if len(tlsConf.Certificates) == 0 && tlsConf.GetCertificate == nil && tlsConf.GetConfigForClient == nil {
			return nil, errors.New("replication: TLS config has no certificate to present to peers")
		}
		if tlsConf.ClientAuth != tls.RequireAndVerifyClientCert && tlsConf.GetConfigForClient == nil {
			return nil, fmt.Errorf("replication: TLS config has ClientAuth %v; mutual TLS needs RequireAndVerifyClientCert", tlsConf.ClientAuth)
		}
		tlsConf = tlsConf.Clone()
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("replication: raft transport: %w", err)
	}
	adv, err := advertiseAddr(advertise, ln.Addr())
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	s := &streamLayer{
		ln:               ln,
		advertise:        adv,
		tlsConf:          tlsConf,
		logger:           logger,
		handshakeTimeout: handshakeTimeout,
	}
	if tlsConf != nil {
		s.ln = tls.NewListener(ln, tlsConf)
		s.accepted = make(chan acceptResult)
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.wg.Add(1)
		go s.acceptLoop()
	}
	return s, nil
}

// advertiseAddr validates advertise, or bound when advertise is empty.
func advertiseAddr(advertise string, bound net.Addr) (net.Addr, error) {
	if advertise == "" {
		ta, ok := bound.(*net.TCPAddr)
		if !ok || ta.IP == nil || ta.IP.IsUnspecified() {
			return nil, fmt.Errorf("%w: none given and the listener's address %s is not dialable; pass the address peers reach this node at", ErrAdvertiseAddr, bound)
		}
		return ta, nil
	}
	host, port, err := net.SplitHostPort(advertise)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAdvertiseAddr, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return nil, fmt.Errorf("%w %q: port must be 1-65535", ErrAdvertiseAddr, advertise)
	}
	if host == "" {
		return nil, fmt.Errorf("%w %q: host is empty", ErrAdvertiseAddr, advertise)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.IsUnspecified() {
			return nil, fmt.Errorf("%w %q: %s is not dialable; advertise the address peers reach this node at", ErrAdvertiseAddr, advertise, host)
		}
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(p))), nil
	}
	return hostPortAddr(net.JoinHostPort(host, port)), nil
}

// hostPortAddr is an advertised TCP address whose host is a DNS name.
type hostPortAddr string

func (a hostPortAddr) Network() string { return "tcp" }
func (a hostPortAddr) String() string  { return string(a) }

// acceptLoop accepts raw connections and handshakes each in its own
// goroutine, until the listener is closed.
func (s *streamLayer) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.ctx.Err() != nil {
				return
			}
			// A failing socket (e.g. EMFILE): let raft log it and back off.
			select {
			case s.accepted <- acceptResult{err: err}:
			case <-s.ctx.Done():
				return
			}
			continue
		}
		s.wg.Add(1)
		go s.handshake(c.(*tls.Conn))
	}
}

// handshake completes c's TLS handshake and hands c to Accept, or closes it.
func (s *streamLayer) handshake(c *tls.Conn) {
	defer s.wg.Done()
	ctx, cancel := context.WithTimeout(s.ctx, s.handshakeTimeout)
	err := c.HandshakeContext(ctx)
	cancel()
	if err != nil {
		_ = c.Close()
		if s.ctx.Err() == nil {
			s.logger.Warn("refused inbound raft connection: TLS handshake failed",
				"remote-address", c.RemoteAddr().String(), "error", err)
		}
		return
	}
	select {
	case s.accepted <- acceptResult{conn: c}:
	case <-s.ctx.Done():
		_ = c.Close()
	}
}

// Accept implements net.Listener. With TLS it returns only connections whose
// handshake has completed; it returns an error wrapping net.ErrClosed once
// the layer is closed.
func (s *streamLayer) Accept() (net.Conn, error) {
	if s.tlsConf == nil {
		return s.ln.Accept()
	}
	select {
	case r := <-s.accepted:
		return r.conn, r.err
	case <-s.ctx.Done():
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: s.ln.Addr(), Err: net.ErrClosed}
	}
}

// Close implements net.Listener: it stops listening, aborts handshakes in
// progress and waits for the layer's goroutines. Established connections
// are the transport's to close.
func (s *streamLayer) Close() error {
	s.closeOnce.Do(func() {
		if s.cancel != nil {
			s.cancel()
		}
		s.closeErr = s.ln.Close()
		s.wg.Wait()
	})
	return s.closeErr
}

// Addr implements net.Listener. It returns the advertised address, which is
// what raft tells peers to dial.
func (s *streamLayer) Addr() net.Addr { return s.advertise }

// Dial implements raft.StreamLayer. With TLS the timeout covers both the
// TCP connect and the handshake, and the peer is verified against the host
// part of address (see TLSConfig.Load).
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	nd := &net.Dialer{Timeout: timeout}
	if s.tlsConf == nil {
		return nd.Dial("tcp", string(address))
	}
	d := &tls.Dialer{NetDialer: nd, Config: s.tlsConf}
	return d.Dial("tcp", string(address))
}
