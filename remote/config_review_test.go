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
