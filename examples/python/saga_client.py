"""A client of the saga service (sagad), using only the standard library.

The service speaks Connect: every call is an HTTP POST of a JSON body to
/saga.v1.SagaService/<Method>, so no generated code is needed.

Two layers:

- SagaClient: one method per call of saga.v1.SagaService, raising
  SagaError (with the Connect error code) when the server refuses.
- SagaJourneyOrchestrator: the four calls of the platform plan, under
  their names (design_saga_journey, execute_saga_journey,
  advance_saga_step, get_saga_status), async like the plan's code, and
  answering dicts with "success" as it expects.

Guarantees across the network (see README "The saga service"):

- A call that raised SagaError with a code other than "unknown" changed
  nothing. "unknown", a timeout or a lost connection means the outcome is
  unknown: look at the saga (get_saga_status) before acting again.
- Start with an idempotency key is safe to re-send: the second start
  answers the first saga's id. Advance is safe to re-send with the same
  result: the server answers the saga as it is.
- A follower of a raft group refuses a change with "unavailable" and the
  leader's URL in the Saga-Leader header, having changed nothing. The
  client then sends the same call to the leader and keeps using it
  (follow_leader=True, the default), but never from https to plain http;
  with follow_leader=False it raises, and SagaError.leader names the
  leader.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional

SERVICE = "saga.v1.SagaService"


class SagaError(Exception):
    """A call the server refused. code is the Connect code, e.g.
    "invalid_argument", "not_found", "failed_precondition",
    "already_exists", "unauthenticated", "permission_denied", or
    "unknown" (the outcome is unknown)."""

    def __init__(self, code: str, message: str, status: int = 0, leader: str = ""):
        super().__init__(f"{code}: {message}" + (f" (the leader is {leader})" if leader else ""))
        self.code = code
        self.message = message
        self.status = status
        # leader: a follower's Saga-Leader header, the URL to send to.
        self.leader = leader


def _b64(data: Optional[bytes]) -> Optional[str]:
    return None if data is None else base64.b64encode(data).decode("ascii")


class SagaClient:
    """One method per call of saga.v1.SagaService.

    base_url is the server's address, e.g. "http://127.0.0.1:7080".
    token is a bearer token (its scope decides which calls it may make).
    """

    # A follower names the leader; a leader that changed since names the
    # next. More hops than this is a group without a stable leader.
    MAX_LEADER_HOPS = 3

    def __init__(self, base_url: str, token: str, timeout: float = 30.0, follow_leader: bool = True):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.follow_leader = follow_leader

    def call(self, method: str, body: Dict[str, Any], timeout: Optional[float] = None) -> Dict[str, Any]:
        """POSTs body to the method and returns the decoded answer. A
        follower's refusal (unavailable, with Saga-Leader) is re-sent to the
        leader it names, which the client then keeps using."""
        data = json.dumps(body).encode("utf-8")
        hops = 0
        while True:
            try:
                return self._post(self.base_url, method, data, timeout)
            except SagaError as e:
                leader = self._leader_to_follow(e)
                if leader is None or hops >= self.MAX_LEADER_HOPS:
                    raise
                # The follower changed nothing: the same call is safe to
                # send to the leader.
                hops += 1
                self.base_url = leader

    def _leader_to_follow(self, e: SagaError) -> Optional[str]:
        """The leader to re-send a refused call to, or None: only a
        follower's "unavailable" is followed, to another http(s) URL, and
        never from https down to http (the bearer token would go in clear
        text to an address the server named)."""
        leader = e.leader.rstrip("/")
        if not self.follow_leader or e.code != "unavailable" or not leader or leader == self.base_url:
            return None
        if not leader.startswith(("http://", "https://")):
            return None
        if self.base_url.startswith("https://") and not leader.startswith("https://"):
            return None
        return leader

    def _post(self, base_url: str, method: str, data: bytes, timeout: Optional[float]) -> Dict[str, Any]:
        req = urllib.request.Request(
            f"{base_url}/{SERVICE}/{method}",
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            raw = err.read()
            leader = err.headers.get("Saga-Leader", "") if err.headers else ""
            try:
                e = json.loads(raw)
            except ValueError:
                e = None
            if not isinstance(e, dict):
                raise SagaError("unknown", raw.decode("utf-8", "replace"), err.code, leader) from None
            raise SagaError(e.get("code", "unknown"), e.get("message", ""), err.code, leader) from None

    # Definitions.

    def define(self, name: str, steps: List[Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
        """Defines (or redefines, as a new version) a saga. Each step is a
        dict with "name" and optionally "compensation", "action", "after",
        "retry", "timeout"."""
        return self.call("Define", {"definition": {"name": name, "steps": steps, **extra}})

    # Sagas.

    def start(self, definition: str, input: Optional[bytes] = None, *, id: str = "",
              idempotency_key: str = "", user: str = "", meta: Optional[Dict[str, str]] = None,
              version: int = 0) -> Dict[str, Any]:
        body: Dict[str, Any] = {"definition": definition}
        for k, v in (("id", id), ("idempotencyKey", idempotency_key), ("user", user),
                     ("input", _b64(input)), ("meta", meta), ("version", version)):
            if v:
                body[k] = v
        return self.call("Start", body)

    def advance(self, saga_id: str, step: str, output: Optional[bytes] = None,
                error: Optional[str] = None) -> Dict[str, Any]:
        """Reports a running step: done with its output, or failed (error
        set), which makes the saga compensate."""
        body: Dict[str, Any] = {"sagaId": saga_id, "step": step}
        if output is not None:
            body["output"] = _b64(output)
        if error is not None:
            body["error"] = {"message": error}
        return self.call("Advance", body)

    def status(self, saga_id: str) -> Dict[str, Any]:
        return self.call("Status", {"sagaId": saga_id})

    def history(self, saga_id: str) -> Dict[str, Any]:
        return self.call("History", {"sagaId": saga_id})

    def wait(self, saga_id: str, timeout_s: float = 10.0) -> Dict[str, Any]:
        """Long-polls until the saga settles or the timeout passes; the
        answer says which ("settled")."""
        return self.call("Wait", {"sagaId": saga_id, "timeout": f"{timeout_s}s"}, timeout=timeout_s + 30)

    def list(self, **filter: Any) -> Dict[str, Any]:
        """Lists sagas; keyword arguments are SagaFilter fields (state,
        definition, user, tenant, meta, ...), plus order, limit, cursor."""
        body: Dict[str, Any] = {}
        for k in ("order", "limit", "cursor"):
            if k in filter:
                body[k] = filter.pop(k)
        body["filter"] = filter
        return self.call("List", body)

    def abort(self, saga_id: str, reason: str, actor: str = "") -> Dict[str, Any]:
        body = {"sagaId": saga_id, "reason": reason}
        if actor:
            body["actor"] = actor
        return self.call("Abort", body)

    def retry(self, saga_id: str, reason: str, actor: str = "") -> Dict[str, Any]:
        body = {"sagaId": saga_id, "reason": reason}
        if actor:
            body["actor"] = actor
        return self.call("Retry", body)

    def resolve(self, saga_id: str, reason: str, actor: str = "") -> Dict[str, Any]:
        body = {"sagaId": saga_id, "reason": reason}
        if actor:
            body["actor"] = actor
        return self.call("Resolve", body)


class SagaJourneyOrchestrator:
    """The platform plan's four calls, under its names.

    A journey is a saga definition; its journey_id is "<name>@<version>".
    Milestones are the steps, performed by the caller and reported with
    advance_saga_step; compensation_handlers maps a milestone to the name
    of the compensation the server runs for it (a handler the server's
    operator mapped to an endpoint).
    """

    def __init__(self, client: SagaClient):
        self.client = client

    async def _run(self, fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def design_saga_journey(self, journey_type: str, requirements: Dict[str, Any],
                                  compensation_handlers: Optional[Dict[str, str]] = None,
                                  user_context: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        handlers = compensation_handlers or {}
        milestones = requirements.get("milestones") or list(handlers)
        steps = []
        for m in milestones:
            step = {"name": m}
            if handlers.get(m):
                step["compensation"] = handlers[m]
            steps.append(step)
        try:
            d = (await self._run(self.client.define, journey_type, steps))["definition"]
        except SagaError as e:
            return {"success": False, "error": str(e), "code": e.code}
        return {"success": True, "journey_id": f"{d['name']}@{d['version']}", "milestones": milestones}

    async def execute_saga_journey(self, journey_id: str, user_id: str = "anonymous",
                                   context: Optional[Dict[str, Any]] = None,
                                   user_context: Optional[Dict[str, Any]] = None,
                                   idempotency_key: str = "") -> Dict[str, Any]:
        name, _, version = journey_id.partition("@")
        meta = {k: str(v) for k, v in (context or {}).items()}
        tenant = (user_context or {}).get("tenant_id")
        if tenant:
            meta["tenant"] = str(tenant)
        try:
            st = await self._run(self.client.start, name, json.dumps(context or {}).encode(),
                                 idempotency_key=idempotency_key, user=user_id, meta=meta,
                                 version=int(version or 0))
        except SagaError as e:
            return {"success": False, "error": str(e), "code": e.code}
        return {"success": True, "saga_id": st["saga"]["id"], "status": st["saga"].get("state")}

    async def advance_saga_step(self, saga_id: str, journey_id: str = "", user_id: str = "",
                                step_result: Optional[Dict[str, Any]] = None,
                                user_context: Optional[Dict[str, Any]] = None,
                                step: str = "") -> Dict[str, Any]:
        """Reports the saga's running milestone (or step, if given):
        step_result {"status": "complete", ...} records the rest as its
        output; {"status": "failed", "error": "..."} fails it, and the
        saga compensates the milestones already done, in reverse."""
        result = dict(step_result or {})
        try:
            if not step:
                saga = (await self._run(self.client.status, saga_id))["saga"]
                running = saga.get("running") or [saga.get("currentStep", "")]
                step = running[0]
            if result.get("status") == "failed":
                st = await self._run(self.client.advance, saga_id, step,
                                     error=str(result.get("error") or "failed"))
            else:
                result.pop("status", None)
                st = await self._run(self.client.advance, saga_id, step, output=json.dumps(result).encode())
        except SagaError as e:
            return {"success": False, "error": str(e), "code": e.code}
        return {"success": True, "saga_id": saga_id, "step": step, "status": st["saga"].get("state")}

    async def get_saga_status(self, saga_id: str,
                              user_context: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        try:
            saga = (await self._run(self.client.status, saga_id))["saga"]
        except SagaError as e:
            return {"success": False, "error": str(e), "code": e.code}
        return {
            "success": True,
            "saga_id": saga_id,
            "status": saga.get("state"),
            "completed_milestones": saga.get("completed", []),
            "compensated_milestones": saga.get("compensated", []),
            "pending_compensations": saga.get("pending", []),
            "running": saga.get("running", []),
        }
