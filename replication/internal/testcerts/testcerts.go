// Package testcerts writes a throwaway certificate authority and node
// certificates for tests of mutually authenticated (mTLS) Raft transports.
//
// The keys are ECDSA P-256 and are written unencrypted; nothing here is fit
// for production use.
package testcerts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Generate creates a new CA and, for each name, a node certificate signed by
// it, and writes them as PEM files into dir (which must exist):
//
//	dir/ca.pem                the CA certificate (its key is not kept)
//	dir/<name>.pem            the node certificate
//	dir/<name>-key.pem        the node's PKCS #8 private key
//
// It returns the CA file's path and, per name, {certFile, keyFile}.
//
// Every node certificate has the subject common name <name>, the subject
// alternative names IP 127.0.0.1 and DNS "localhost", and both the server
// and client extended key usages, so one certificate serves a node both when
// it accepts and when it dials. Certificates are valid from one hour ago to
// 24 hours from now.
//
// Names must be distinct, non-empty, must not be "ca", and must not contain
// path separators. Calling Generate twice on different directories yields
// two unrelated CAs, which is how a test builds an untrusted peer.
func Generate(dir string, names ...string) (caFile string, certs map[string][2]string, err error) {
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		switch {
		case n == "" || n == "ca" || strings.ContainsAny(n, `/\`) || n == "." || n == "..":
			return "", nil, fmt.Errorf("testcerts: invalid node name %q", n)
		case seen[n]:
			return "", nil, fmt.Errorf("testcerts: duplicate node name %q", n)
		}
		seen[n] = true
	}

	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", nil, fmt.Errorf("testcerts: CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "saga test CA " + filepath.Base(dir)},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", nil, fmt.Errorf("testcerts: CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return "", nil, fmt.Errorf("testcerts: CA certificate: %w", err)
	}
	caFile = filepath.Join(dir, "ca.pem")
	if err := writePEM(caFile, "CERTIFICATE", caDER); err != nil {
		return "", nil, err
	}

	certs = make(map[string][2]string, len(names))
	for _, n := range names {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", nil, fmt.Errorf("testcerts: key for %q: %w", n, err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(),
			Subject:      pkix.Name{CommonName: n},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
			DNSNames:     []string{"localhost"},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return "", nil, fmt.Errorf("testcerts: certificate for %q: %w", n, err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return "", nil, fmt.Errorf("testcerts: key for %q: %w", n, err)
		}
		certFile := filepath.Join(dir, n+".pem")
		keyFile := filepath.Join(dir, n+"-key.pem")
		if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
			return "", nil, err
		}
		if err := writePEM(keyFile, "PRIVATE KEY", keyDER); err != nil {
			return "", nil, err
		}
		certs[n] = [2]string{certFile, keyFile}
	}
	return caFile, certs, nil
}

// serial returns a random 128-bit certificate serial number.
func serial() *big.Int {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails.
	return new(big.Int).SetBytes(b)
}

func writePEM(path, typ string, der []byte) error {
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("testcerts: %w", err)
	}
	return nil
}
