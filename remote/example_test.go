package remote_test

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/remote"
)

// The engine's side: the operator's file names the endpoints; each is
// registered under its name as an action and a compensation handler.
func ExampleParseConfig() {
	cfg, err := remote.ParseConfig([]byte(`
endpoints:
  refund_payment:
    url: https://payments.internal/saga/refund
    timeout: 5s
    concurrency: 8
`), "/etc/sagad")
	if err != nil {
		log.Fatal(err) // every problem at once
	}
	client, err := remote.New(*cfg, remote.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	reg := engine.NewRegistry()
	if err := client.Register(reg); err != nil {
		log.Fatal(err)
	}
	fmt.Println(reg.HandlerNames())
	// Output: [refund_payment]
}

// A handler server in Go: check the signature, then do the work once per
// idempotency key.
func ExampleVerify() {
	secret, err := os.ReadFile("/etc/payments/saga.secret")
	if err != nil {
		return
	}
	http.HandleFunc("/saga/refund", func(w http.ResponseWriter, r *http.Request) {
		body, err := remote.Verify(r, secret, 5*time.Minute)
		if err != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized) // 4xx: not retried
			return
		}
		var call remote.Request
		if err := json.Unmarshal(body, &call); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// refund(call.IdempotencyKey, call.Output): a second call with the
		// same key must find the refund done and answer 2xx again; with
		// call.Uncertain, there may be no charge to refund.
		w.WriteHeader(http.StatusNoContent)
	})
}
