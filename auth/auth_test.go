package auth_test

import (
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sagaengine/saga/auth"
)

func TestScopesAreOrdered(t *testing.T) {
	for _, tc := range []struct {
		have, need auth.Scope
		ok         bool
	}{
		{auth.Read, auth.Read, true}, {auth.Read, auth.Service, false},
		{auth.Service, auth.Read, true}, {auth.Service, auth.Operator, false},
		{auth.Operator, auth.Service, true}, {auth.Operator, auth.Admin, false},
		{auth.Admin, auth.Operator, true}, {auth.Admin, auth.Admin, true},
		{0, auth.Read, false}, {auth.Admin + 1, auth.Read, false},
	} {
		if got := tc.have.Allows(tc.need); got != tc.ok {
			t.Errorf("%v.Allows(%v) = %v", tc.have, tc.need, got)
		}
	}
	for _, name := range []string{"read", "service", "operator", "admin"} {
		s, err := auth.ParseScope(name)
		if err != nil || s.String() != name {
			t.Errorf("ParseScope(%q) = %v, %v", name, s, err)
		}
	}
	if _, err := auth.ParseScope("root"); !errors.Is(err, auth.ErrInvalidToken) {
		t.Errorf("ParseScope(root): %v", err)
	}
}

func TestAuthenticateNamesTheHolder(t *testing.T) {
	ts, err := auth.New(
		auth.Token{Name: "ci", Scope: auth.Service, SHA256: auth.HashSecret("ci-secret-0123456789")},
		auth.Token{Name: "alice", Scope: auth.Operator, SHA256: auth.HashSecret("alice-secret-0123456789")},
	)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ts.Authenticate("alice-secret-0123456789")
	if err != nil || id != (auth.Identity{Name: "alice", Scope: auth.Operator}) {
		t.Fatalf("alice: %v %v", id, err)
	}
	for _, bad := range []string{"", "alice-secret-012345678", "alice-secret-0123456789x", "ALICE-SECRET-0123456789"} {
		if _, err := ts.Authenticate(bad); !errors.Is(err, auth.ErrUnknownToken) {
			t.Errorf("Authenticate(%q): %v", bad, err)
		}
	}
	err = id.Require(auth.Admin)
	var se *auth.ScopeError
	if !errors.Is(err, auth.ErrInsufficientScope) || !errors.As(err, &se) || se.Need != auth.Admin || !strings.Contains(err.Error(), "needs scope admin") {
		t.Fatalf("operator requiring admin: %v", err)
	}
	if err := id.Require(auth.Service); err != nil {
		t.Fatalf("operator requiring service: %v", err)
	}
	who, canAct, ok := auth.ConsoleFunc(ts, auth.Operator)("ci-secret-0123456789")
	if who != "ci" || canAct || !ok {
		t.Fatalf("console: %q %v %v", who, canAct, ok)
	}
	if _, _, ok := auth.ConsoleFunc(ts, auth.Operator)("nope"); ok {
		t.Fatal("console knows an unknown token")
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	h := auth.HashSecret("x")
	_, err := auth.New(
		auth.Token{Name: "", Scope: auth.Read, SHA256: auth.HashSecret("a")},
		auth.Token{Name: "has space", Scope: auth.Read, SHA256: auth.HashSecret("b")},
		auth.Token{Name: "twice", Scope: auth.Read, SHA256: h},
		auth.Token{Name: "twice", Scope: auth.Read, SHA256: auth.HashSecret("c")},
		auth.Token{Name: "same-secret", Scope: auth.Read, SHA256: h},
		auth.Token{Name: "noscope", SHA256: auth.HashSecret("d")},
		auth.Token{Name: "nohash", Scope: auth.Read},
	)
	if !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("New: %v", err)
	}
	for _, want := range []string{`name ""`, `"has space"`, `"twice" is used twice`, `same secret`, `"noscope": scope`, `"nohash" has no secret`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("New's error lacks %q: %v", want, err)
		}
	}
	if _, err := auth.New(); !errors.Is(err, auth.ErrInvalidToken) {
		t.Errorf("an empty set: %v", err)
	}
	if _, err := auth.Single("default", auth.Admin, ""); !errors.Is(err, auth.ErrInvalidToken) {
		t.Errorf("an empty secret: %v", err)
	}
}

func TestLoadReadsHashesAndSecretFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("secrets/alice.token", "alice-secret-0123456789\n", 0o600)
	ci := auth.HashSecret("ci-secret-0123456789")
	write("tokens.yaml", "tokens:\n"+
		"  - {name: ci, scope: service, sha256: "+hex.EncodeToString(ci[:])+"}\n"+
		"  - {name: alice, scope: operator, secret_file: secrets/alice.token}\n", 0o600)
	ts, err := auth.Load(filepath.Join(dir, "tokens.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if id, err := ts.Authenticate("alice-secret-0123456789"); err != nil || id.Name != "alice" || id.Scope != auth.Operator {
		t.Fatalf("alice: %v %v", id, err)
	}
	if id, err := ts.Authenticate("ci-secret-0123456789"); err != nil || id.Name != "ci" || id.Scope != auth.Service {
		t.Fatalf("ci: %v %v", id, err)
	}

	write("open.token", "open-secret-0123456789", 0o644)
	write("short.token", "short", 0o600)
	write("bad.yaml", "tokens:\n"+
		"  - {name: a, scope: root, sha256: "+hex.EncodeToString(ci[:])+"}\n"+
		"  - {name: b, scope: read, sha256: abc}\n"+
		"  - {name: c, scope: read, secret_file: open.token}\n"+
		"  - {name: d, scope: read, secret_file: short.token}\n"+
		"  - {name: e, scope: read, secret_file: missing.token}\n"+
		"  - {name: f, scope: read}\n"+
		"  - {name: g}\n", 0o600)
	_, err = auth.Load(filepath.Join(dir, "bad.yaml"))
	if !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("bad file: %v", err)
	}
	for _, want := range []string{`"a"): unknown scope "root"`, `"b"): sha256 is not 64 hex`, `"c"): secret_file open.token: mode`,
		`"d"): secret_file short.token: the secret is shorter`, `"e"): secret_file missing.token`, `"f"): give exactly one`, `"g"): scope is required`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error lacks %q: %v", want, err)
		}
	}
	write("unknown.yaml", "tokens:\n  - {name: a, scope: read, secret: plain}\n", 0o600)
	if _, err := auth.Load(filepath.Join(dir, "unknown.yaml")); !errors.Is(err, auth.ErrInvalidToken) || !strings.Contains(err.Error(), "secret") {
		t.Fatalf("an unknown key: %v", err)
	}
	write("empty.yaml", "", 0o600)
	if _, err := auth.Load(filepath.Join(dir, "empty.yaml")); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("an empty file: %v", err)
	}
}

func TestBearerToken(t *testing.T) {
	for h, want := range map[string]string{"Bearer abc": "abc", "bearer abc": "abc", "Basic abc": "", "abc": "", "Bearer ": "", "": ""} {
		r, _ := http.NewRequest("GET", "/", nil)
		if h != "" {
			r.Header.Set("Authorization", h)
		}
		if got := auth.BearerToken(r); got != want {
			t.Errorf("BearerToken(%q) = %q, want %q", h, got, want)
		}
	}
}
