package auth_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/sagaengine/saga/auth"
)

// A tokens file of two YAML documents used to be read as its first one
// alone: the tokens after the "---" were dropped without a word, and
// their holders refused as unknown. It is refused whole, as sagad's
// configuration is; a trailing "---" (an empty document) is not a second
// one.
func TestParseRefusesASecondDocument(t *testing.T) {
	const a = "tokens:\n  - {name: ci, scope: service, sha256: 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae}\n"
	const b = "tokens:\n  - {name: alice, scope: operator, sha256: fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9}\n"
	_, err := auth.Parse("tokens.yaml", []byte(a+"---\n"+b), t.TempDir())
	if !errors.Is(err, auth.ErrInvalidToken) || !strings.Contains(err.Error(), "tokens.yaml") {
		t.Fatalf("a tokens file of two documents: %v, want ErrInvalidToken naming the file", err)
	}
	ts, err := auth.Parse("tokens.yaml", []byte(a+"---\n"), t.TempDir())
	if err != nil || len(ts.Names()) != 1 {
		t.Fatalf("a tokens file with a trailing ---: %v %v", ts, err)
	}
}
