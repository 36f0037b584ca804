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

from saga_client import (IncompleteError, MilestoneOrderError, SagaClient, SagaError,
                         SagaJourneyOrchestrator)


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
    await check_execute_with_saga(client, orch, run)
    check_follows_the_leader(os.environ["SAGAD_URL"], os.environ["SAGAD_TOKEN"], sid)
    print("all checks passed")


POLICY = """
enable_saga: true
saga_operations: [{op}, {dag}]
users:
  bob: {{enable_saga: false}}
operations:
  {op}:
    milestones: [{{name: ingest}}, {{name: parse}}, {{name: embed}}]
    retry: {{max_attempts: 3}}
  {dag}:
    milestones:
      - {{name: analyze_source}}
      - {{name: analyze_target}}
      - {{name: map, after: [analyze_source, analyze_target]}}
"""


def newest(client, definition):
    return client.list(definition=definition, order="ORDER_NEWEST", limit=1)["sagas"][0]


async def check_execute_with_saga(client, orch, run):
    """The seed plan's _execute_with_saga, decided by the server's policy."""
    op, dag = f"py_ingest_{run}", f"py_mapping_{run}"
    pol = client.set_policy(POLICY.format(op=op, dag=dag))["policy"]
    check(op in pol["sagaOperations"] and pol["enableSagaFrom"] == "api", f"set_policy: {pol}")
    check(client.get_policy()["policy"]["version"] == pol["version"], "get_policy answers the policy set")
    ex = client.explain_policy(op, "alice", "acme")
    check(ex["saga"] and [m["name"] for m in ex["spec"]["milestones"]] == ["ingest", "parse", "embed"],
          f"explain_policy: {ex}")
    check(await orch.saga_enabled(op, {"user_id": "alice"}) and not await orch.saga_enabled(op, {"user_id": "bob"}),
          "saga_enabled follows the policy's user override")
    try:
        client.set_policy("enable_saga: maybe\n")
        check(False, "an invalid policy is refused")
    except SagaError as e:
        check(e.code == "invalid_argument" and client.get_policy()["policy"]["version"] == pol["version"],
              f"an invalid policy is refused whole: {e.code}")

    ran = []

    def work(name, out=None):
        def fn():
            ran.append(name)
            return out if out is not None else {"milestone": name}
        return fn

    async def ok(h):
        await h.step("ingest", work("ingest"))
        await h.step("parse", work("parse", b"parsed"))
        # Before the workflow returns, the saga is not complete: the last
        # milestone's success waits for it.
        await h.step("embed", work("embed"))
        if h.saga_id:
            st = client.status(h.saga_id)["saga"]
            check(st["state"] == "SAGA_STATE_IN_PROGRESS", f"the saga waits for the workflow to return: {st['state']}")
        return "exposed"

    uc = {"user_id": "alice", "tenant_id": "acme"}
    r = await orch.execute_with_saga(op, ok, uc)
    check(r["saga"] and r["result"] == "exposed" and r["state"] == "SAGA_STATE_COMPLETED",
          f"execute_with_saga completes: {r}")
    st = client.status(r["saga_id"])["saga"]
    check(st["completed"] == ["ingest", "parse", "embed"] and st["meta"].get("tenant") == "acme" and st["user"] == "alice",
          f"its saga: {st['completed']} {st['meta']}")
    d = client.get_definition(op)["definition"]
    check([s["name"] for s in d["steps"]] == ["ingest", "parse", "embed"], f"get_definition: {d}")

    async def fails(h):
        await h.step("ingest", work("ingest"))

        def broken():
            raise RuntimeError("parser down")
        await h.step("parse", broken)
        await h.step("embed", work("embed"))  # never reached

    ran.clear()
    try:
        await orch.execute_with_saga(op, fails, uc)
        check(False, "a failed milestone raises")
    except RuntimeError as e:
        check(str(e) == "parser down" and ran == ["ingest"], f"a failed milestone raises its error: {e} {ran}")
    st = newest(client, op)
    check(st["state"] == "SAGA_STATE_FAILED" and st.get("compensated") == ["ingest"],
          f"a failed milestone compensates the done ones: {st['state']} {st.get('compensated')}")

    async def raises_after(h):
        for m in ("ingest", "parse", "embed"):
            await h.step(m, work(m))
        raise ValueError("could not publish")

    try:
        await orch.execute_with_saga(op, raises_after, uc)
        check(False, "a workflow that raises after its last milestone raises")
    except ValueError:
        pass
    st = newest(client, op)
    check(st["state"] == "SAGA_STATE_FAILED" and sorted(st.get("compensated", [])) == ["embed", "ingest", "parse"],
          f"a workflow that raises after its last milestone is compensated whole: {st.get('compensated')}")

    async def stops(h):
        await h.step("ingest", work("ingest"))

    try:
        await orch.execute_with_saga(op, stops, uc)
        check(False, "a workflow that stops early raises IncompleteError")
    except IncompleteError:
        st = newest(client, op)
        check(st["state"] == "SAGA_STATE_FAILED", f"a workflow that stops early fails its saga: {st['state']}")

    class LosesAdvance:
        """The client, except that the success of one milestone is lost on
        its way to the server (the request never arrives)."""

        def __init__(self, inner, milestone):
            self._inner, self._milestone, self.lost = inner, milestone, 0

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def advance(self, saga_id, step, output=None, error=None):
            if step == self._milestone and error is None and not self.lost:
                self.lost += 1
                raise SagaError("unavailable", "connection reset before the request was sent")
            return self._inner.advance(saga_id, step, output=output, error=error)

    lossy = SagaJourneyOrchestrator(LosesAdvance(client, "parse"))

    async def through(h):
        for m in ("ingest", "parse", "embed"):
            await h.step(m, work(m))

    try:
        await lossy.execute_with_saga(op, through, uc)
        check(False, "a milestone whose success was not recorded raises")
    except SagaError as e:
        check(e.code == "unavailable", f"a milestone whose success was not recorded raises that error: {e}")
    st = newest(client, op)
    check(st["state"] == "SAGA_STATE_FAILED" and "ingest" in st.get("compensated", []),
          f"a milestone whose success was not recorded is compensated with the done ones: {st['state']} {st.get('compensated')}")

    class LosesFailure:
        """The client, except that the first report of a failed milestone
        is lost with the connection."""

        def __init__(self, inner, lose=1):
            self._inner, self.lost, self.lose = inner, 0, lose

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def advance(self, saga_id, step, output=None, error=None):
            if error is not None and self.lost < self.lose:
                self.lost += 1
                raise ConnectionResetError("connection reset by peer")
            return self._inner.advance(saga_id, step, output=output, error=error)

    ran.clear()
    try:
        await SagaJourneyOrchestrator(LosesFailure(client)).execute_with_saga(op, fails, uc)
        check(False, "a failed milestone whose report was lost raises")
    except Exception as e:
        check(isinstance(e, RuntimeError) and str(e) == "parser down",
              f"a failed milestone whose report was lost raises the milestone's error: {e!r}")
    st = newest(client, op)
    check(st["state"] == "SAGA_STATE_FAILED" and st.get("compensated") == ["ingest"],
          f"and its failure is reported again: {st['state']} {st.get('compensated')}")
    try:
        await SagaJourneyOrchestrator(LosesFailure(client, lose=2)).execute_with_saga(op, fails, uc)
        check(False, "a failed milestone whose reports were both lost raises")
    except Exception as e:
        st = newest(client, op)
        notes = " ".join(getattr(e, "__notes__", []))
        check(isinstance(e, RuntimeError) and str(e) == "parser down" and
              (not hasattr(e, "add_note") or st["id"] in notes),
              f"both reports lost: the milestone's error, noting the saga to look at: {e!r} {notes}")

    class HoldsAdvance:
        """The client, except that the success of one milestone reaches
        the server only once released."""

        def __init__(self, inner, milestone):
            self._inner, self._milestone = inner, milestone
            self.sending, self.release = threading.Event(), threading.Event()

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def advance(self, saga_id, step, output=None, error=None):
            if step == self._milestone:
                self.sending.set()
                if not self.release.wait(30):
                    raise SagaError("deadline_exceeded", "never released")
            return self._inner.advance(saga_id, step, output=output, error=error)

    slow = HoldsAdvance(client, "ingest")

    async def overlaps(h):
        first = asyncio.ensure_future(h.step("ingest", work("ingest")))
        check(await asyncio.to_thread(slow.sending.wait, 30), "the success of ingest is on its way")
        try:
            await h.step("parse", work("parse"))
            check(False, "a milestone whose predecessor's success is not yet recorded is refused")
        except MilestoneOrderError:
            pass
        finally:
            slow.release.set()
        await first
        for m in ("parse", "embed"):
            await h.step(m, work(m))
        return "in order"

    ran.clear()
    r = await SagaJourneyOrchestrator(slow).execute_with_saga(op, overlaps, uc)
    check(r["state"] == "SAGA_STATE_COMPLETED" and ran == ["ingest", "parse", "embed"],
          f"a milestone runs only once the server recorded the one before it: {r['state']} {ran}")

    async def out_of_order(h):
        try:
            await h.step("parse", work("parse"))
            check(False, "a milestone out of order is refused")
        except MilestoneOrderError:
            pass
        for m in ("ingest", "parse", "embed"):
            await h.step(m, work(m))
        return "in order"

    ran.clear()
    r = await orch.execute_with_saga(op, out_of_order, uc)
    check(r["state"] == "SAGA_STATE_COMPLETED" and ran == ["ingest", "parse", "embed"],
          f"a milestone out of order is refused without running, and changes nothing: {r['state']} {ran}")

    ran.clear()
    r = await orch.execute_with_saga(op, ok, {"user_id": "bob"})
    check(not r["saga"] and r["result"] == "exposed" and ran == ["ingest", "parse", "embed"],
          f"a user the policy switches off runs without a saga: {r}")

    key = {"user_id": "alice", "idempotency_key": f"{run}-exec"}
    before = client.count(definition=op)
    first = await orch.execute_with_saga(op, ok, key)
    ran.clear()
    again = await orch.execute_with_saga(op, ok, key)
    check(again["duplicate"] and again["saga_id"] == first["saga_id"] and ran == [] and
          again["state"] == "SAGA_STATE_COMPLETED" and client.count(definition=op) == before + 1,
          f"a call with a used key runs nothing and answers the first saga: {again}")

    async def fan_out(h):
        await asyncio.gather(h.step("analyze_source", work("analyze_source")),
                             h.step("analyze_target", work("analyze_target")))
        await h.step("map", work("map"))
        return "mapped"

    r = await orch.execute_with_saga(dag, fan_out, uc)
    check(r["state"] == "SAGA_STATE_COMPLETED", f"a DAG operation's parallel milestones: {r}")

    async def map_first(h):
        await h.step("map", work("map"))

    try:
        await orch.execute_with_saga(dag, map_first, uc)
        check(False, "a DAG milestone before its dependencies is refused")
    except MilestoneOrderError:
        check(newest(client, dag)["state"] == "SAGA_STATE_FAILED", "and its saga fails with nothing to undo")

    ran.clear()
    gone = SagaJourneyOrchestrator(SagaClient("http://127.0.0.1:9", client.token, timeout=5))
    r = await gone.execute_with_saga(op, ok, uc)
    check(r["fallback"] and not r["saga"] and r["result"] == "exposed" and ran == ["ingest", "parse", "embed"],
          f"a server out of reach: the operation runs without a saga (the seed plan's fallback): {r}")
    try:
        await gone.execute_with_saga(op, ok, uc, on_unreachable="fail")
        check(False, "on_unreachable='fail' raises when the server is out of reach")
    except OSError:
        pass

    client.clear_policy()
    check(not client.explain_policy(op, "alice").get("saga"), "clear_policy removes the API layer")
    ran.clear()
    r = await orch.execute_with_saga(op, ok, uc)
    check(not r["saga"] and ran == ["ingest", "parse", "embed"], "without the layer the operation runs without a saga")


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
