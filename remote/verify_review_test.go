package remote_test

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/remote"
)

// A Verifier whose secret is missing (a server whose secret variable was
// not set) or shorter than the engine would sign with must refuse every
// request: anyone can compute the HMAC of an empty key, so accepting it
// would let any caller forge the engine's calls.
func TestVerifyRefusesAnEmptyOrShortSecret(t *testing.T) {
	body := []byte(`{"saga_id":"order-42","step":"pay","kind":"compensation"}`)
	now := time.Now()
	for name, key := range map[string][]byte{"nil": nil, "empty": {}, "short": []byte("short")} {
		r := httptest.NewRequest("POST", "/saga/pay", bytes.NewReader(body))
		r.Header.Set(remote.SignatureHeader, remote.Sign(key, "POST", "/saga/pay", now, body))
		if _, err := remote.Verify(r, key, time.Minute); !errors.Is(err, remote.ErrBadSignature) {
			t.Errorf("%s secret: Verify of a request forged with it: %v, want ErrBadSignature", name, err)
		}
		r = httptest.NewRequest("POST", "/saga/pay", bytes.NewReader(body))
		r.Header.Set(remote.SignatureHeader, remote.Sign(key, "POST", "/saga/pay", now, body))
		v := remote.Verifier{Secrets: [][]byte{key}}
		if _, err := v.Verify(r); !errors.Is(err, remote.ErrBadSignature) {
			t.Errorf("%s secret in Secrets: %v, want ErrBadSignature", name, err)
		}
	}
	r := httptest.NewRequest("POST", "/saga/pay", bytes.NewReader(body))
	r.Header.Set(remote.SignatureHeader, remote.Sign(nil, "POST", "/saga/pay", now, body))
	if _, err := (&remote.Verifier{}).Verify(r); !errors.Is(err, remote.ErrBadSignature) {
		t.Errorf("no secrets at all: %v, want ErrBadSignature", err)
	}
}

// The engine signs with its hmac_secret_file's content, surrounding white
// space trimmed; a Go server that reads the same file, as ExampleVerify
// does, must accept what the engine signed, whatever newline ends it.
func TestVerifyTakesTheSecretFileAsTheEngineDoes(t *testing.T) {
	file := writeFile(t, t.TempDir(), "saga.secret", append(append([]byte(nil), secret...), '\n'))
	var verr error
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, err := os.ReadFile(file)
		if err != nil {
			verr = err
		} else {
			_, verr = remote.Verify(r, key, time.Minute)
		}
		if verr != nil {
			http.Error(w, verr.Error(), http.StatusUnauthorized)
		}
	}))
	defer closeServer(srv)
	c := newClient(t, map[string]remote.EndpointConfig{"pay": {URL: srv.URL + "/saga/pay", HMACSecretFile: file}}, remote.Options{})
	if _, err := action(t, c, "pay")(testCtx(t), testCall(compensation.KindAction)); err != nil || verr != nil {
		t.Fatalf("the call: %v; the server: %v", err, verr)
	}
}
