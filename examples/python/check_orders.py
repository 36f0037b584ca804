"""Checks the seed's order-processing pattern against sagad, whose steps
and compensations are the HTTP handlers of order_handlers.py.

python3 check_orders.py run          define, then sagas that complete and one that fails at shipping
python3 check_orders.py hold         start a saga that fails at shipping and whose release_inventory
                                     waits; print its id (the Go test kills sagad meanwhile)
python3 check_orders.py finish ID    wait for saga ID to finish compensating after the restart

SAGAD_URL and SAGAD_TOKEN say where sagad runs; JOURNAL is the handlers'
journal. Run by python_test.go; exits non-zero at the first check that
fails, saying which.
"""

import json
import os
import sys

from saga_client import SagaClient

STEPS = [
    ("create_order", "cancel_order"),
    ("process_payment", "refund_payment"),
    ("reserve_inventory", "release_inventory"),
    ("ship_product", "cancel_shipment"),
]


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def journal():
    with open(os.environ["JOURNAL"], encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def calls(saga):
    return [e for e in journal() if e["saga"] == saga]


def settle(client, saga_id):
    w = client.wait(saga_id, 60)
    check(w.get("settled"), f"saga {saga_id} settles ({w['saga']['state']})")
    return w["saga"]


def run(client):
    d = client.define("order", [{"name": a, "action": a, "compensation": c} for a, c in STEPS])
    check(d["definition"]["name"] == "order", "define the order saga with remote actions and compensations")
    ids = []
    for n in range(3):
        st = client.start("order", json.dumps({"order": n}).encode(), idempotency_key=f"order-{n}", user="alice")
        ids.append(st["saga"]["id"])
    for sid in ids:
        saga = settle(client, sid)
        check(saga["state"] == "SAGA_STATE_COMPLETED", f"order {sid} completes")
        check([e["handler"] for e in calls(sid)] == [a for a, _ in STEPS], f"order {sid} called each action once, in order")
    # A re-sent start with its key starts nothing.
    again = client.start("order", b'{"order": 0}', idempotency_key="order-0", user="alice")
    check(again["saga"]["id"] == ids[0], "a re-sent start with its key answers the first saga")

    st = client.start("order", json.dumps({"fail_at": "ship_product"}).encode(), user="bob")
    sid = st["saga"]["id"]
    saga = settle(client, sid)
    check(saga["state"] == "SAGA_STATE_FAILED", f"an order failing at shipping is FAILED ({saga['state']})")
    handlers = [e["handler"] for e in calls(sid)]
    want = ["create_order", "process_payment", "reserve_inventory", "ship_product",
            "release_inventory", "refund_payment", "cancel_order"]
    check(handlers == want, f"compensated in reverse: {handlers}")
    check(saga.get("compensated") == ["reserve_inventory", "process_payment", "create_order"],
          f"the saga lists its compensated steps: {saga.get('compensated')}")


def hold(client):
    st = client.start("order", json.dumps({"fail_at": "ship_product", "hold": "release_inventory"}).encode(),
                      idempotency_key="held-order", user="carol")
    print(st["saga"]["id"])


def finish(client, sid):
    saga = settle(client, sid)
    check(saga["state"] == "SAGA_STATE_FAILED", f"the held order finishes compensating after the restart ({saga['state']})")
    cs = calls(sid)
    # Recovery resumes the compensation: it runs no action again.
    actions = [e["handler"] for e in cs if e["handler"] not in ("release_inventory", "refund_payment", "cancel_order")]
    check(actions == [a for a, _ in STEPS], f"each action was called once, before the kill: {actions}")
    comps = [e["handler"] for e in cs if e["handler"] in ("release_inventory", "refund_payment", "cancel_order")]
    # release_inventory ran when sagad was killed, and again after it.
    check(comps[0] == "release_inventory" and comps.count("release_inventory") >= 2,
          f"release_inventory was called again after the restart: {comps}")
    order = [h for i, h in enumerate(comps) if h not in comps[:i]]
    check(order == ["release_inventory", "refund_payment", "cancel_order"], f"compensations in reverse order: {order}")
    keys = {}
    for e in cs:
        keys.setdefault(e["handler"], set()).add(e["key"])
    for h, ks in keys.items():
        check(len(ks) == 1, f"every call of {h} carried the same idempotency key: {sorted(ks)}")


def main():
    client = SagaClient(os.environ["SAGAD_URL"], os.environ["SAGAD_TOKEN"])
    phase = sys.argv[1]
    if phase == "run":
        run(client)
    elif phase == "hold":
        hold(client)
    elif phase == "finish":
        finish(client, sys.argv[2])
    print("all checks passed", file=sys.stderr if phase == "hold" else sys.stdout)


if __name__ == "__main__":
    main()
