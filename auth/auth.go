// Package auth says who is calling and what they may do: named bearer
// tokens, each with a scope, so that "who did what" is authenticated
// rather than whatever a client says.
//
// The scopes are ordered; each allows everything the one before it does:
//
//	read      status, list, count, history, wait/watch, definitions, policy get and explain
//	service   read + define, start, advance
//	operator  service + abort, retry, resolve
//	admin     operator + set the policy, change the cluster
//
// A Tokens set keeps only the SHA-256 of each secret in memory and checks
// a presented token against every one of them in constant time. The
// servers (package service, package admin, a web console) take the small
// Authenticator interface, and find the caller of a request with
// FromContext once their middleware has called NewContext.
package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
)

// Scope is what a token may do. The zero Scope allows nothing.
type Scope int

// The scopes, each allowing what the ones before it allow.
const (
	// Read: status, list, count, history, wait and watch, definitions,
	// metrics, the policy's get and explain, the cluster's status.
	Read Scope = iota + 1
	// Service: Read, and define, start and advance sagas.
	Service
	// Operator: Service, and abort, retry and resolve sagas.
	Operator
	// Admin: Operator, and set the policy and change the cluster.
	Admin
)

var scopeNames = [...]string{Read: "read", Service: "service", Operator: "operator", Admin: "admin"}

// String is the scope's name as token files spell it ("read", …).
func (s Scope) String() string {
	if s >= Read && s <= Admin {
		return scopeNames[s]
	}
	return fmt.Sprintf("Scope(%d)", int(s))
}

// Allows says whether a token of scope s may make a call that needs
// need.
func (s Scope) Allows(need Scope) bool { return s >= Read && s <= Admin && s >= need }

// ParseScope reads a scope's name: read, service, operator or admin.
// Errors: ErrInvalidToken.
func ParseScope(name string) (Scope, error) {
	for s := Read; s <= Admin; s++ {
		if scopeNames[s] == name {
			return s, nil
		}
	}
	return 0, fmt.Errorf("%w: unknown scope %q (want read, service, operator or admin)", ErrInvalidToken, name)
}

// Errors of this package, matched with errors.Is.
var (
	// ErrUnknownToken: no token was presented, or not one of the set's.
	// A server answers it as "unauthenticated" (HTTP 401).
	ErrUnknownToken = errors.New("auth: missing or unknown token")
	// ErrInsufficientScope: the token is known, but its scope does not
	// allow the call; the error is a *ScopeError naming the scope the
	// call needs. A server answers it as "permission denied" (HTTP 403).
	ErrInsufficientScope = errors.New("auth: insufficient scope")
	// ErrInvalidToken: a token definition (New, Load, Parse, ParseScope)
	// is malformed: a bad name or scope, a duplicate name or secret, a
	// secret file that cannot be read or is too short.
	ErrInvalidToken = errors.New("auth: invalid token definition")
)

// Identity is who a token belongs to: its name and scope.
type Identity struct {
	// Name is the token's name: the actor recorded with what it does.
	Name string
	// Scope is what the token may do.
	Scope Scope
}

// Require returns nil if id's scope allows need, else a *ScopeError
// (which matches ErrInsufficientScope).
func (id Identity) Require(need Scope) error {
	if id.Scope.Allows(need) {
		return nil
	}
	return &ScopeError{Name: id.Name, Have: id.Scope, Need: need}
}

// ScopeError says that the token Name, of scope Have, made a call that
// needs scope Need. It matches ErrInsufficientScope.
type ScopeError struct {
	Name       string
	Have, Need Scope
}

func (e *ScopeError) Error() string {
	return fmt.Sprintf("auth: token %q has scope %s; this call needs scope %s", e.Name, e.Have, e.Need)
}

// Is makes errors.Is(err, ErrInsufficientScope) hold.
func (e *ScopeError) Is(target error) bool { return target == ErrInsufficientScope }

// Authenticator tells who holds a bearer token. *Tokens implements it.
type Authenticator interface {
	// Authenticate returns the identity of the token presented (the
	// secret itself, without "Bearer "). Errors: ErrUnknownToken (an
	// empty or unknown token). It must be safe for concurrent use and
	// must not reveal through its timing which secrets it holds.
	Authenticate(token string) (Identity, error)
}

// Func adapts a function to an Authenticator.
type Func func(token string) (Identity, error)

// Authenticate calls f.
func (f Func) Authenticate(token string) (Identity, error) { return f(token) }

// ConsoleFunc adapts a to the older shape of a web console's login
// (console.Options.Authenticate): who holds the token, whether its scope
// allows act, and whether the token is known at all; one bit for the saga
// actions and the policy editor alike. console.TokenLogin gives each its
// own scope, as the admin API does.
func ConsoleFunc(a Authenticator, act Scope) func(token string) (who string, canAct bool, ok bool) {
	return func(token string) (string, bool, bool) {
		id, err := a.Authenticate(token)
		if err != nil {
			return "", false, false
		}
		return id.Name, id.Scope.Allows(act), true
	}
}

// BearerToken returns the token of an "Authorization: Bearer <token>"
// header, or "" when the request carries none (or another scheme).
func BearerToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return ""
	}
	return h[len(prefix):]
}

type ctxKey struct{}

// NewContext returns ctx carrying id, the authenticated caller.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the caller NewContext put in ctx, and whether
// there is one.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}

// Token is one named token of a Tokens set: its name, its scope and the
// SHA-256 of its secret (the secret itself is not kept).
type Token struct {
	Name   string
	Scope  Scope
	SHA256 [sha256.Size]byte
}

// HashSecret returns the SHA-256 of a secret, as Token.SHA256 holds it.
func HashSecret(secret string) [sha256.Size]byte { return sha256.Sum256([]byte(secret)) }

// namePattern is what a token's name may be: it is recorded as the actor
// of transitions, and printed in logs and histories.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// ValidName reports whether name may name a token: 1 to 64 letters,
// digits, '.', '_', '@' or '-', starting with a letter or digit.
func ValidName(name string) bool { return namePattern.MatchString(name) }

// DefaultName names the token of the servers' single-token mode: one
// secret, of scope Admin, as before tokens had names.
const DefaultName = "default"

// Tokens is a fixed set of named tokens; it is safe for concurrent use.
type Tokens struct {
	tokens []Token
}

var _ Authenticator = (*Tokens)(nil)

// New returns the set of tokens ts. It reports every problem at once, in
// an error wrapping ErrInvalidToken: a malformed name, a scope out of
// range, a name or a secret used twice, an empty set.
func New(ts ...Token) (*Tokens, error) {
	var probs []string
	names := map[string]bool{}
	hashes := map[[sha256.Size]byte]string{}
	var zero [sha256.Size]byte
	for _, t := range ts {
		if !ValidName(t.Name) {
			probs = append(probs, fmt.Sprintf("token name %q: want 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit", t.Name))
		} else if names[t.Name] {
			probs = append(probs, fmt.Sprintf("token name %q is used twice", t.Name))
		}
		names[t.Name] = true
		if t.Scope < Read || t.Scope > Admin {
			probs = append(probs, fmt.Sprintf("token %q: scope %v is none of read, service, operator, admin", t.Name, t.Scope))
		}
		switch other, dup := hashes[t.SHA256]; {
		case t.SHA256 == zero:
			probs = append(probs, fmt.Sprintf("token %q has no secret hash", t.Name))
		case dup:
			probs = append(probs, fmt.Sprintf("tokens %q and %q have the same secret: a caller would be ambiguous", other, t.Name))
		default:
			hashes[t.SHA256] = t.Name
		}
	}
	if len(ts) == 0 {
		probs = append(probs, "no tokens: a server would refuse every call")
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrInvalidToken, strings.Join(probs, "; "))
	}
	return &Tokens{tokens: append([]Token(nil), ts...)}, nil
}

// Single returns a set of one token: name, of scope, with secret. It is
// the single-token mode of the servers (a token named DefaultName, of
// scope Admin). Errors: those of New, and an empty secret.
func Single(name string, scope Scope, secret string) (*Tokens, error) {
	if secret == "" {
		return nil, fmt.Errorf("%w: token %q has an empty secret", ErrInvalidToken, name)
	}
	return New(Token{Name: name, Scope: scope, SHA256: HashSecret(secret)})
}

// Authenticate implements Authenticator. It hashes the token and
// compares the hash with every token's, all of them, in constant time,
// so that its timing says nothing about which secrets the set holds.
func (ts *Tokens) Authenticate(token string) (Identity, error) {
	if token == "" {
		return Identity{}, ErrUnknownToken
	}
	h := HashSecret(token)
	found := -1
	for i := range ts.tokens {
		if subtle.ConstantTimeCompare(h[:], ts.tokens[i].SHA256[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Identity{}, ErrUnknownToken
	}
	t := ts.tokens[found]
	return Identity{Name: t.Name, Scope: t.Scope}, nil
}

// Names returns the tokens' names and scopes, in the set's order (for a
// start-up message; the secrets' hashes are not returned).
func (ts *Tokens) Names() []Identity {
	out := make([]Identity, len(ts.tokens))
	for i, t := range ts.tokens {
		out[i] = Identity{Name: t.Name, Scope: t.Scope}
	}
	return out
}
