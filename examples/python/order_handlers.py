"""The seed plan's order-processing handlers, served over HTTP for sagad.

python3 order_handlers.py [--port 0] [--journal FILE]

sagad's operator config maps each handler name to this server
(http://127.0.0.1:PORT/<name>); sagad POSTs one JSON request per attempt
(see package remote: saga_id, step, kind, input, output, attempt,
uncertain, idempotency_key) with an Idempotency-Key header, and reads the
answer: 2xx is success (the body is an action's output), 4xx a permanent
refusal, 5xx or no answer a retry.

Steps and their compensations:

    create_order      / cancel_order
    process_payment   / refund_payment
    reserve_inventory / release_inventory
    ship_product      / cancel_shipment

Every handler does its effect once per idempotency key: a retry with a
key it has seen answers what it answered before. A compensation succeeds
when there is nothing to undo (an uncertain step that never ran).

The saga's input (JSON) steers the demo: {"fail_at": "ship_product"}
makes that step refuse (HTTP 422), and {"hold": "release_inventory"}
makes that compensation wait, on its first call for a key, until the file
named by --release exists (a test kills sagad meanwhile).

With --hmac-secret-file (the same secret as the endpoint's
hmac_secret_file in sagad's config), every request must carry a valid
Saga-Signature (HMAC-SHA256 over method, target, timestamp and body,
within 5 minutes): an unsigned or forged call is refused with 401.

Each call is appended to the journal (JSON lines: handler, saga, key,
attempt, uncertain), so a test can check the order of the calls and the
keys they carried.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACTIONS = {
    "create_order": "cancel_order",
    "process_payment": "refund_payment",
    "reserve_inventory": "release_inventory",
    "ship_product": "cancel_shipment",
}
COMPENSATIONS = {v: k for k, v in ACTIONS.items()}


class Store:
    """The handlers' effects, by idempotency key: what a real service
    keeps in its database."""

    def __init__(self, journal_path, release_path):
        self.lock = threading.Lock()
        self.done = {}  # idempotency key -> (status, body)
        self.effects = {}  # (saga, action) -> resource id, while not undone
        self.held = set()  # keys whose first call waited for the release file
        self.key_locks = {}  # idempotency key -> lock held while a call with it runs
        self.journal_path = journal_path
        self.release_path = release_path

    def key_lock(self, key):
        with self.lock:
            return self.key_locks.setdefault(key, threading.Lock())

    def journal(self, entry):
        if not self.journal_path:
            return
        with self.lock, open(self.journal_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


def saga_input(req):
    raw = base64.b64decode(req.get("input") or "") or b"{}"
    try:
        return json.loads(raw)
    except ValueError:
        return {}


def handle(store, name, req):
    """Returns (status, body) for one call of handler name."""
    saga, key = req.get("saga_id", ""), req.get("idempotency_key", "")
    store.journal({"handler": name, "saga": saga, "key": key, "attempt": req.get("attempt"),
                   "uncertain": req.get("uncertain", False)})
    # Calls with one key run one at a time: sagad retries an attempt that
    # timed out while the first may still be running here, and the retry
    # must find the first one's answer, not do the effect again.
    with store.key_lock(key):
        return _handle_once(store, name, saga, key, req)


def _handle_once(store, name, saga, key, req):
    with store.lock:
        if key in store.done:
            return store.done[key]  # the same answer for a key seen before
    inp = saga_input(req)
    if name in ACTIONS:
        if inp.get("fail_at") == name:
            answer = (422, json.dumps({"error": f"{name} refused for saga {saga}"}).encode())
        else:
            resource = f"{name}:{saga}"
            with store.lock:
                store.effects[(saga, name)] = resource
            answer = (200, json.dumps({"resource": resource}).encode())
    else:
        with store.lock:
            first = key not in store.held
            store.held.add(key)
        if inp.get("hold") == name and store.release_path and first:
            # Wait for the test's signal (it kills sagad meanwhile).
            deadline = time.time() + 60
            while not os.path.exists(store.release_path) and time.time() < deadline:
                time.sleep(0.05)
        with store.lock:
            store.effects.pop((saga, COMPENSATIONS[name]), None)  # nothing to undo is fine
        answer = (200, b"")
    with store.lock:
        store.done[key] = answer
    return answer


REPLAY_WINDOW_S = 300
# The most a request body may hold, as remote.DefaultMaxRequestBytes: a
# saga input and a step output of 4 MiB each, base64.
MAX_REQUEST_BYTES = 16 << 20


def signed(secret, method, target, header, body):
    """Checks a Saga-Signature header: t=<unix>,v1=<hex HMAC-SHA256 of
    method \n target \n t \n body>, t within the replay window."""
    parts = dict(p.strip().split("=", 1) for p in (header or "").split(",") if "=" in p)
    t, sig = parts.get("t", ""), parts.get("v1", "")
    # isascii: str.isdigit accepts "²", which int() refuses.
    if not (t.isascii() and t.isdigit()) or abs(time.time() - int(t)) > REPLAY_WINDOW_S:
        return False
    want = hmac.new(secret, f"{method}\n{target}\n{t}\n".encode() + body, hashlib.sha256).hexdigest()
    # Bytes: compare_digest raises TypeError on a non-ASCII str.
    return hmac.compare_digest(want.encode(), sig.encode("latin-1", "replace"))


def server(store, port, secret=None):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            name = self.path.strip("/")
            if name not in ACTIONS and name not in COMPENSATIONS:
                self.send_error(404, f"no handler {name}")
                return
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                n = -1
            if n < 0 or n > MAX_REQUEST_BYTES:
                self.send_error(413 if n > 0 else 400, f"the body must have a Content-Length of at most {MAX_REQUEST_BYTES}")
                return
            raw = self.rfile.read(n)
            if secret is not None and not signed(secret, "POST", self.path, self.headers.get("Saga-Signature"), raw):
                self.send_error(401, "unsigned or badly signed request")
                return
            try:
                req = json.loads(raw or b"{}")
            except ValueError:
                self.send_error(400, "malformed JSON")
                return
            if req.get("idempotency_key") != self.headers.get("Idempotency-Key"):
                self.send_error(400, "the Idempotency-Key header and the body disagree")
                return
            status, body = handle(store, name, req)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the caller is gone (sagad killed): it will call again

        def log_message(self, fmt, *args):
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--journal", default="")
    ap.add_argument("--release", default="")
    ap.add_argument("--hmac-secret-file", default="")
    args = ap.parse_args()
    secret = None
    if args.hmac_secret_file:
        with open(args.hmac_secret_file, "rb") as f:
            secret = f.read().strip()
    srv = server(Store(args.journal, args.release), args.port, secret)
    print(f"handlers on http://127.0.0.1:{srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
