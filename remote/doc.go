// Package remote turns operator-configured HTTP endpoints into step
// actions and compensation handlers the engine calls. Definitions name
// handlers; only the operator's configuration (Config, usually a YAML
// file) says which URL serves each name, so an API caller can never make
// the engine call a URL of its choosing (no SSRF by design).
//
// # The wire format
//
// Each attempt is one POST of a JSON Request to the endpoint's URL:
//
//	POST /saga/create HTTP/1.1
//	Content-Type: application/json
//	Idempotency-Key: order-42/create_order/action
//	traceparent: 00-…-…-01              (when the handler's context has a span)
//	Saga-Signature: t=1764763200,v1=…   (when hmac_secret_file is set)
//
//	{"saga_id":"order-42","definition":"order","version":1,"step":"create_order",
//	 "step_index":0,"kind":"action","input":"eyJza3UiOjd9","attempt":1,
//	 "uncertain":false,"idempotency_key":"order-42/create_order/action"}
//
// input and output are base64. The answer:
//
//   - 2xx: success. For an action, the body (at most max_response_bytes,
//     default 1 MiB; more fails the step permanently) is the step's output,
//     recorded and handed to its compensation later as "output".
//   - 4xx except 408 and 429: permanent (ErrRejected, wrapped by
//     compensation.Permanent): an action's step fails at once and the saga
//     is compensated; a compensation is not retried (the saga is STUCK for
//     an operator).
//   - 5xx, 408, 429, no answer (ErrUnavailable) and the endpoint's timeout
//     (ErrTimeout): retryable, by the step's retry policy.
//   - 3xx: redirects are never followed; permanent.
//
// # Guarantees
//
// Handlers run at least once: a timeout, a lost answer or a crash of the
// engine between the call and its durable record all lead to another
// attempt, with the same Idempotency-Key (saga id/step/kind, identical
// across retries, restarts and failover; also in the body). A timeout
// means "unknown", not "not done": the endpoint may have done the work.
// A handler must therefore do its effect once per key, answer the same
// again for a key it has seen, and (compensations) succeed when there is
// nothing to undo, notably when "uncertain" is true.
//
// Each endpoint's concurrency bound holds across every saga of the
// process: after a restart with many sagas to resume, calls wait for a
// slot (their context still ends them) rather than flood the service.
//
// Requests may be signed with HMAC-SHA256 (see Sign for the scheme) and
// checked by a Go server with Verify; mutual TLS is configured per
// endpoint (TLSConfig).
package remote
