// Package authtest holds the scoped tokens the admin API's and the saga
// service's scope tests share: one token per scope, so that both test the
// same matrix of scopes against their endpoints.
package authtest

import (
	"testing"

	"github.com/sagaengine/saga/auth"
)

// Token is one test token: its name, its secret and its scope.
type Token struct {
	Name, Secret string
	Scope        auth.Scope
}

// Scoped is one token per scope, named after its scope's holder.
var Scoped = []Token{
	{"dashboard", "read-secret-0123456789", auth.Read},
	{"checkout-svc", "service-secret-0123456789", auth.Service},
	{"alice", "operator-secret-0123456789", auth.Operator},
	{"root", "admin-secret-0123456789", auth.Admin},
}

// Authenticator knows the tokens of Scoped.
func Authenticator(t testing.TB) *auth.Tokens {
	t.Helper()
	var ts []auth.Token
	for _, tok := range Scoped {
		ts = append(ts, auth.Token{Name: tok.Name, Scope: tok.Scope, SHA256: auth.HashSecret(tok.Secret)})
	}
	a, err := auth.New(ts...)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
