package remote_test

import (
	"errors"
	"testing"

	"github.com/sagaengine/saga/remote"
)

// An endpoint configuration of two YAML documents used to be read as its
// first one alone: the endpoints after the "---" were dropped without a
// word, and definitions naming them refused as naming unknown handlers.
func TestParseConfigRefusesASecondDocument(t *testing.T) {
	const a = "endpoints:\n  pay: {url: \"http://127.0.0.1:9/pay\"}\n"
	const b = "endpoints:\n  ship: {url: \"http://127.0.0.1:9/ship\"}\n"
	if c, err := remote.ParseConfig([]byte(a+"---\n"+b), ""); !errors.Is(err, remote.ErrInvalidConfig) {
		t.Fatalf("two documents: %v %v, want ErrInvalidConfig", c, err)
	}
	if c, err := remote.ParseConfig([]byte(a+"---\n"), ""); err != nil || len(c.Endpoints) != 1 {
		t.Fatalf("a trailing ---: %v %v", c, err)
	}
}

// A URL whose port is no TCP port parses as a URL, and used to be
// accepted: every call then failed to dial, as a retryable ErrUnavailable,
// until the step's retries ran out. It is a problem of the configuration.
func TestValidateRefusesAPortOutOfRange(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:99999/pay", "https://orders.internal:0/pay", "http://[::1]:65536/pay"} {
		c := remote.Config{Endpoints: map[string]remote.EndpointConfig{"pay": {URL: u}}}
		if err := c.Validate(); !errors.Is(err, remote.ErrInvalidConfig) {
			t.Errorf("url %s: %v, want ErrInvalidConfig", u, err)
		}
	}
	c := remote.Config{Endpoints: map[string]remote.EndpointConfig{"pay": {URL: "http://127.0.0.1:65535/pay"}, "ship": {URL: "https://[::1]/ship"}}}
	if err := c.Validate(); err != nil {
		t.Errorf("ports in range: %v", err)
	}
}
