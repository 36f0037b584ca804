package remote

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Errors of a call, each wrapped in an *Error naming the endpoint. Match
// them with errors.Is. A permanent one is also wrapped by
// compensation.Permanent (engine.Permanent), so the engine does not retry
// it.
var (
	// ErrRejected: the endpoint answered 4xx (except 408 and 429), or a
	// status that is neither 2xx, 4xx nor 5xx (a redirect: redirects are
	// never followed, the configured URL is the only one called).
	// Permanent.
	ErrRejected = errors.New("remote: endpoint rejected the call")
	// ErrServer: the endpoint answered 5xx, 408 or 429. Retryable.
	ErrServer = errors.New("remote: endpoint failed")
	// ErrTimeout: the attempt exceeded the endpoint's timeout. Retryable:
	// the call may or may not have taken effect.
	ErrTimeout = errors.New("remote: endpoint timed out")
	// ErrUnavailable: no answer (connection refused or reset, DNS, TLS
	// handshake). Retryable.
	ErrUnavailable = errors.New("remote: endpoint unavailable")
	// ErrResponseTooLarge: a 2xx answer's body exceeded the endpoint's
	// max_response_bytes. Permanent.
	ErrResponseTooLarge = errors.New("remote: response body too large")
	// ErrUnknownEndpoint: Client.Action or Client.Handler was given a
	// name the configuration does not have.
	ErrUnknownEndpoint = errors.New("remote: no endpoint has that name")
)

// Error is the error of one call to an endpoint. Its message names the
// endpoint and the HTTP status, never the URL, a header or a secret; it
// quotes at most the first 200 bytes of an error response's body.
type Error struct {
	// Endpoint is the endpoint's (the handler's) name.
	Endpoint string
	// Status is the HTTP status code, 0 when there was no answer.
	Status int
	// Body is the start of an error response's body, made printable.
	Body string
	// Err is one of the sentinel errors above, possibly joined with a
	// cause (the transport's error, the context's).
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "remote endpoint %q", e.Endpoint)
	if e.Status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.Status)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	if e.Body != "" {
		fmt.Fprintf(&b, ": %q", e.Body)
	}
	return b.String()
}

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

// Retryable reports whether retrying the call may succeed (ErrServer,
// ErrTimeout, ErrUnavailable). A call abandoned because its caller's
// context ended (an abort, the engine closing) is not retryable here: the
// engine never retries it in that context, and whoever runs the step next
// (a restart, the next raft leader) treats it as uncertain.
func (e *Error) Retryable() bool {
	return errors.Is(e.Err, ErrServer) || errors.Is(e.Err, ErrTimeout) || errors.Is(e.Err, ErrUnavailable)
}

// maxQuoted bounds the part of an error response quoted in an Error.
const maxQuoted = 200

// printable returns the start of b, at most maxQuoted bytes of valid
// UTF-8 with control characters replaced, so that an error message stays
// one readable line.
func printable(b []byte) string {
	if len(b) > maxQuoted {
		b = b[:maxQuoted]
		for len(b) > 0 && !utf8.Valid(b) {
			b = b[:len(b)-1]
		}
	}
	return strings.TrimSpace(strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) {
			return ' '
		}
		return r
	}, string(b)))
}
