package remote_test

import (
	"bytes"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

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
