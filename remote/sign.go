package remote

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The signature scheme. With hmac_secret_file set, every request carries
//
//	Saga-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>
//
// where the HMAC, keyed with the secret, is over
//
//	<method> "\n" <request target> "\n" <t> "\n" <body>
//
// the method being POST, the request target the path and query exactly as
// in the request line ("/saga/create?x=1"), t the same decimal string as
// in the header, and body the raw request body. The body holds the
// idempotency key, the saga, the step and the attempt, so all of them are
// signed. Each attempt is signed afresh, with its own t.
//
// A server checks it by recomputing the HMAC (compare in constant time)
// and refusing a t further than its replay window from its own clock, in
// either direction. Within the window a captured request can be replayed;
// a replay is indistinguishable from the engine's own retry of the same
// attempt and carries the same idempotency key, so a handler that honours
// the key (as every handler must: they run at least once) does the work
// once. Verify does all of this for a Go server.

// SignatureHeader is the request header holding the signature.
const SignatureHeader = "Saga-Signature"

// DefaultReplayWindow is Verifier.Window's default: 5 minutes.
const DefaultReplayWindow = 5 * time.Minute

// DefaultMaxRequestBytes is Verifier.MaxBodyBytes's default: 16 MiB,
// enough for a saga input and a step output of 4 MiB each, base64.
const DefaultMaxRequestBytes = 16 << 20

// Errors of Verify. Match them with errors.Is.
var (
	// ErrUnsigned: the request has no Saga-Signature header, or one that
	// does not parse.
	ErrUnsigned = errors.New("remote: request not signed")
	// ErrBadSignature: the signature does not match the request (the
	// body, path or timestamp were changed, or the secret differs).
	ErrBadSignature = errors.New("remote: bad request signature")
	// ErrStale: the signature's timestamp is outside the replay window.
	ErrStale = errors.New("remote: request signature outside the replay window")
	// ErrRequestTooLarge: the body exceeds Verifier.MaxBodyBytes.
	ErrRequestTooLarge = errors.New("remote: request body too large")
)

// Sign returns the Saga-Signature header value of a request: secret signs
// method, target (path and query, as in the request line), the time t (to
// the second) and body.
func Sign(secret []byte, method, target string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, method, target, ts, body))
}

func mac(secret []byte, method, target, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	io.WriteString(m, method)
	io.WriteString(m, "\n")
	io.WriteString(m, target)
	io.WriteString(m, "\n")
	io.WriteString(m, ts)
	io.WriteString(m, "\n")
	m.Write(body)
	return m.Sum(nil)
}

// Verifier checks the signatures of requests from the engine in a Go
// handler server. The zero value except Secrets is ready to use.
type Verifier struct {
	// Secrets are the accepted secrets: one, or during a rotation the new
	// and the old, each taken as the engine takes hmac_secret_file's
	// content, surrounding white space trimmed (so a secret file's
	// content may be given as read). Required: a secret shorter than the
	// 32 bytes the engine signs with is never accepted (anyone can
	// compute the HMAC of an empty key), and without one Verify refuses
	// every request.
	Secrets [][]byte
	// Window is the replay window: a signature's timestamp may be at most
	// this far from Now, either way. Default DefaultReplayWindow (5m).
	Window time.Duration
	// Now is the server's clock. Default time.Now.
	Now func() time.Time
	// MaxBodyBytes bounds the body read. Default DefaultMaxRequestBytes.
	MaxBodyBytes int64
}

// Verify is (&Verifier{Secrets: [][]byte{secret}, Window: window}).Verify(r).
func Verify(r *http.Request, secret []byte, window time.Duration) ([]byte, error) {
	v := Verifier{Secrets: [][]byte{secret}, Window: window}
	return v.Verify(r)
}

// Verify reads r's body and checks its Saga-Signature header (see Sign):
// it returns the body when the signature matches one of the secrets and
// its timestamp is within the window; otherwise ErrUnsigned,
// ErrBadSignature, ErrStale or ErrRequestTooLarge (or the body's read
// error). Either way r.Body is replaced by the bytes read, so the handler
// may read it again.
func (v *Verifier) Verify(r *http.Request) ([]byte, error) {
	limit := v.MaxBodyBytes
	if limit <= 0 {
		limit = DefaultMaxRequestBytes
	}
	var body []byte
	if r.Body != nil {
		b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
		r.Body.Close()
		r.Body = io.NopCloser(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("remote: reading the request body: %w", err)
		}
		if int64(len(b)) > limit {
			return nil, fmt.Errorf("%w: over %d bytes", ErrRequestTooLarge, limit)
		}
		body = b
	}
	if !slices.ContainsFunc(v.Secrets, usableSecret) {
		return nil, fmt.Errorf("%w: the server has no secret of %d bytes or more to check it with", ErrBadSignature, minSecretBytes)
	}
	ts, sigs, ok := parseSignature(r.Header.Get(SignatureHeader))
	if !ok {
		return nil, ErrUnsigned
	}
	target := r.RequestURI
	if target == "" { // a client-side request, in a test
		target = r.URL.RequestURI()
	}
	matched := false
	for _, secret := range v.Secrets {
		if !usableSecret(secret) {
			continue
		}
		want := mac(bytes.TrimSpace(secret), r.Method, target, ts, body)
		for _, sig := range sigs {
			if hmac.Equal(want, sig) {
				matched = true
			}
		}
	}
	if !matched {
		return nil, ErrBadSignature
	}
	// The timestamp is checked after the signature: an unsigned timestamp
	// says nothing.
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return nil, ErrUnsigned
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	window := v.Window
	if window <= 0 {
		window = DefaultReplayWindow
	}
	if d := now().Sub(time.Unix(sec, 0)); d > window || d < -window {
		return nil, fmt.Errorf("%w: signed %v from now, the window is ±%v", ErrStale, d.Round(time.Second), window)
	}
	return body, nil
}

// usableSecret: a secret as long as New requires of hmac_secret_file's
// (trimmed, as New trims it).
func usableSecret(secret []byte) bool { return len(bytes.TrimSpace(secret)) >= minSecretBytes }

// parseSignature splits "t=…,v1=…[,v1=…]" into its timestamp and the
// decoded signatures.
func parseSignature(h string) (ts string, sigs [][]byte, ok bool) {
	for part := range strings.SplitSeq(h, ",") {
		k, val, found := strings.Cut(strings.TrimSpace(part), "=")
		if !found {
			return "", nil, false
		}
		switch k {
		case "t":
			ts = val
		case "v1":
			sig, err := hex.DecodeString(val)
			if err != nil || len(sig) != sha256.Size {
				return "", nil, false
			}
			sigs = append(sigs, sig)
		}
	}
	return ts, sigs, ts != "" && len(sigs) > 0
}
