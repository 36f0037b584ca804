"""Checks the client against a running sagad: python3 check_client.py.

SAGAD_URL and SAGAD_TOKEN say where it runs. Run by the Go test
python_test.go (make test), which starts sagad; it exits non-zero at the
first check that fails, saying which.
"""

import asyncio
import http.server
import json
import os
import sys
import threading
import uuid

from saga_client import SagaClient, SagaError, SagaJourneyOrchestrator


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


async def main():
    client = SagaClient(os.environ["SAGAD_URL"], os.environ["SAGAD_TOKEN"])
    orch = SagaJourneyOrchestrator(client)
    run = uuid.uuid4().hex[:8]
    user_context = {"user_id": "alice", "tenant_id": "acme"}

    journey = await orch.design_saga_journey(
        journey_type=f"ingest_{run}",
        requirements={"operation": "ingest", "milestones": ["upload", "parse", "embed", "expose"]},
        user_context=user_context,
    )
    check(journey["success"], f"design_saga_journey: {journey}")
    jid = journey["journey_id"]

    # A journey whose milestones all complete.
    ex = await orch.execute_saga_journey(jid, user_id="alice", context={"file": "a.pdf"},
                                         user_context=user_context, idempotency_key=f"{run}-1")
    check(ex["success"], f"execute_saga_journey: {ex}")
    sid = ex["saga_id"]
    again = await orch.execute_saga_journey(jid, user_id="alice", context={"file": "a.pdf"},
                                            user_context=user_context, idempotency_key=f"{run}-1")
    check(again["success"] and again["saga_id"] == sid, "a re-sent start with its key answers the same saga")
    for m in ["upload", "parse", "embed", "expose"]:
        r = await orch.advance_saga_step(sid, jid, "alice", {"status": "complete", "milestone": m})
        check(r["success"] and r["step"] == m, f"advance_saga_step {m}: {r}")
    st = await orch.get_saga_status(sid, user_context)
    check(st["status"] == "SAGA_STATE_COMPLETED", f"get_saga_status: {st['status']}")
    check(st["completed_milestones"] == ["upload", "parse", "embed", "expose"], f"completed milestones {st['completed_milestones']}")

    # A journey that fails at its third milestone.
    ex = await orch.execute_saga_journey(jid, user_id="alice", user_context=user_context)
    sid = ex["saga_id"]
    await orch.advance_saga_step(sid, jid, "alice", {"status": "complete"})
    await orch.advance_saga_step(sid, jid, "alice", {"status": "complete"})
    r = await orch.advance_saga_step(sid, jid, "alice", {"status": "failed", "error": "embedder down"})
    check(r["success"], f"a failed milestone is reported: {r}")
    w = client.wait(sid, 30)
    check(w.get("settled") and w["saga"]["state"] == "SAGA_STATE_FAILED", f"the failed journey settles FAILED: {w['saga']['state']}")

    # Bad input: a typed error, nothing changed.
    try:
        client.advance(sid, "expose", output=b"late")
        check(False, "advancing a failed saga is refused")
    except SagaError as e:
        check(e.code == "failed_precondition", f"advancing a failed saga: {e.code}")
    try:
        client.call("Start", {"definition": "", "bogus": 1})
        check(False, "a malformed start is refused")
    except SagaError as e:
        check(e.code == "invalid_argument", f"a malformed start: {e.code}")
    bad = SagaClient(os.environ["SAGAD_URL"], "not-the-token")
    try:
        bad.status(sid)
        check(False, "a wrong token is refused")
    except SagaError as e:
        check(e.code == "unauthenticated", f"a wrong token: {e.code}")
    check_follows_the_leader(os.environ["SAGAD_URL"], os.environ["SAGAD_TOKEN"], sid)
    print("all checks passed")


def follower(leader_of):
    """A stand-in for a raft follower: every call is refused with
    unavailable and Saga-Leader set to leader_of(its own URL). Returns the
    server and its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"code": "unavailable", "message": "not the leader"}).encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Saga-Leader", leader_of(url))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, url


def check_follows_the_leader(leader, token, sid):
    srv, url = follower(lambda own: leader)
    try:
        c = SagaClient(url, token)
        st = c.status(sid)
        check(st["saga"]["id"] == sid and c.base_url == leader.rstrip("/"),
              "a follower's refusal is re-sent to the leader it names, which the client keeps")
        c = SagaClient(url, token, follow_leader=False)
        try:
            c.status(sid)
            check(False, "with follow_leader=False a follower's refusal raises")
        except SagaError as e:
            check(e.code == "unavailable" and e.leader == leader and c.base_url == url,
                  f"with follow_leader=False the error names the leader: {e.code} {e.leader}")
    finally:
        srv.shutdown()
    tls = SagaClient("https://a.example:7080", token)
    check(tls._leader_to_follow(SagaError("unavailable", "", 503, "http://b.example:7080")) is None,
          "a follower reached over https is not followed to a plain http leader")
    check(tls._leader_to_follow(SagaError("unavailable", "", 503, "https://b.example:7080")) == "https://b.example:7080",
          "a follower reached over https is followed to an https leader")
    check(tls._leader_to_follow(SagaError("invalid_argument", "", 400, "https://b.example:7080")) is None,
          "only unavailable is followed")
    srv, url = follower(lambda own: own)  # names itself: no stable leader
    try:
        try:
            SagaClient(url, token).status(sid)
            check(False, "a follower that names itself is not followed forever")
        except SagaError as e:
            check(e.code == "unavailable", f"a follower that names itself: {e.code}")
    finally:
        srv.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
