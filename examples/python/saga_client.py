"""A client of the saga service (sagad), using only the standard library.

The service speaks Connect: every call is an HTTP POST of a JSON body to
/saga.v1.SagaService/<Method>, so no generated code is needed.

Two layers:

- SagaClient: one method per call of saga.v1.SagaService, raising
  SagaError (with the Connect error code) when the server refuses.
- SagaJourneyOrchestrator: the four calls of the platform plan, under
  their names (design_saga_journey, execute_saga_journey,
  advance_saga_step, get_saga_status), async like the plan's code, and
  answering dicts with "success" as it expects; and the plan's
  _execute_with_saga as execute_with_saga, decided by the server's
  policy (ExplainPolicy), with the guarantees of the Go executor
  (policy.Executor.ExecuteWithSaga).

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
import inspect
import json
import secrets
import urllib.error
import urllib.request
from typing import Any, Awaitable, Callable, Dict, List, Optional

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

    def get_definition(self, name: str, version: int = 0) -> Dict[str, Any]:
        """A definition; version 0: the latest."""
        body: Dict[str, Any] = {"name": name}
        if version:
            body["version"] = version
        return self.call("GetDefinition", body)

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

    def count(self, **filter: Any) -> int:
        """Counts the sagas a filter selects (the keyword arguments of
        list, without order, limit and cursor)."""
        return int(self.call("Count", {"filter": filter}).get("count", 0))

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

    # The policy ("optional by policy"): which operations run as sagas.

    def get_policy(self) -> Dict[str, Any]:
        """The policy in force, every layer merged ("policy")."""
        return self.call("GetPolicy", {})

    def set_policy(self, yaml: str) -> Dict[str, Any]:
        """Replaces the policy's API layer (admin scope) with a policy in
        the policy file's YAML format. An invalid policy is refused whole
        (invalid_argument) and the policy in force stays."""
        return self.call("SetPolicy", {"yaml": yaml})

    def clear_policy(self) -> Dict[str, Any]:
        """Removes the policy's API layer (admin scope): the policy file
        and the environment alone are in force again."""
        return self.call("SetPolicy", {"clear": True})

    def explain_policy(self, operation: str, user: str = "", tenant: str = "") -> Dict[str, Any]:
        """Whether a call of operation, by user of tenant, runs as a saga
        ("saga"), with the operation's milestones ("spec"), what to do when
        the engine is unavailable ("fallback") and why ("reasons")."""
        body = {"operation": operation}
        if user:
            body["user"] = user
        if tenant:
            body["tenant"] = tenant
        return self.call("ExplainPolicy", body)


class MilestoneOrderError(Exception):
    """A milestone that is unknown, already started, not yet ready (a
    milestone it comes after is not done), or asked for after another
    failed. Raised before the milestone's function runs; nothing changed."""


class IncompleteError(Exception):
    """The workflow returned without error but did not complete every
    milestone of its operation: its saga is compensated and fails."""


def _encode_output(out: Any) -> Optional[bytes]:
    if out is None or isinstance(out, bytes):
        return out
    if isinstance(out, str):
        return out.encode()
    return json.dumps(out).encode()


async def _call(fn: Callable[[], Any]) -> Any:
    out = fn()
    if inspect.isawaitable(out):
        out = await out
    return out


class NoSaga:
    """The handle of a call that runs without a saga: step just runs the
    milestone's function."""

    saga_id = ""

    async def step(self, milestone: str, fn: Callable[[], Any]) -> Any:
        return await _call(fn)


class SagaHandle:
    """The handle of a call that runs as a saga (execute_with_saga). Each
    milestone of the operation is a step the workflow performs with step;
    the server records that it runs before fn is called, and compensates
    it if the call fails later."""

    def __init__(self, orch: "SagaJourneyOrchestrator", saga_id: str, milestones: List[Dict[str, Any]]):
        self._orch = orch
        self.saga_id = saga_id
        self._names = [m["name"] for m in milestones]
        dag = any(m.get("after") for m in milestones)
        # What each milestone waits for: its after, or in a sequence the
        # milestone before it.
        self._after = {m["name"]: list(m.get("after") or []) if dag else self._names[i - 1:i]
                       for i, m in enumerate(milestones)}
        self._started: Dict[str, bool] = {}  # name -> its success is known
        self._done: set = set()
        self.failing = ""  # the milestone that failed
        self.fail_error = ""
        self.fail_recorded = False
        self.held: Optional[tuple] = None  # (name, output) of the last success, not yet reported
        self.lost = False  # a milestone ran and the server does not have its success
        self._left = len(self._names)  # milestones whose success is still to come
        self.closed = False

    async def step(self, milestone: str, fn: Callable[[], Any]) -> Any:
        """Runs one milestone: fn (sync or async) does the work; its result
        (bytes, str, or JSON-able) is recorded as the step's output and
        handed to its compensation. When fn raises, the saga compensates
        every completed milestone, in reverse, and the error propagates.
        The success of the last milestone is recorded only when the
        workflow returns."""
        if self.closed or self.failing:
            raise MilestoneOrderError(f"milestone {milestone}: the call already failed or returned")
        if milestone not in self._after:
            raise MilestoneOrderError(f"milestone {milestone} is not one of {self._names}")
        if milestone in self._started:
            raise MilestoneOrderError(f"milestone {milestone} was started already")
        waiting = [d for d in self._after[milestone] if d not in self._done]
        if waiting:
            raise MilestoneOrderError(f"milestone {milestone} comes after {waiting}, not done yet")
        self._started[milestone] = False
        try:
            out = await _call(fn)
        except BaseException as e:
            self._started[milestone] = True
            if self.closed or self.failing:
                raise
            self.failing, self.fail_error = milestone, str(e) or type(e).__name__
            try:
                await self._orch._run(self._orch.client.advance, self.saga_id, milestone, error=self.fail_error)
                self.fail_recorded = True
            except (SagaError, OSError):
                pass  # execute_with_saga tries once more; the milestone's error is the one to raise
            raise
        self._started[milestone] = True
        if self.closed or self.failing:
            # Another milestone failed meanwhile, or the workflow returned:
            # the saga compensates this one as uncertain.
            return out
        self._left -= 1
        if self._left == 0:
            # Its success would complete the saga: held until the
            # workflow returns without error.
            self._done.add(milestone)
            self.held = (milestone, _encode_output(out))
            return out
        try:
            await self._orch._run(self._orch.client.advance, self.saga_id, milestone, output=_encode_output(out))
        except BaseException:
            # Not done for the server (it may still hold it running): no
            # milestone after it may start, and the saga is aborted.
            self.lost = True
            raise
        # Done only once recorded: a milestone after it is running for
        # the server only from then on.
        self._done.add(milestone)
        return out

    def running(self) -> bool:
        return not all(self._started.values())

    def next_not_started(self) -> str:
        for n in self._names:
            if n not in self._started and all(d in self._done for d in self._after[n]):
                return n
        return ""


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
        self._defined: Dict[tuple, int] = {}  # (operation, policy version) -> definition version

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

    # The seed plan's _execute_with_saga, with the server's policy.

    async def saga_enabled(self, operation: str, user_context: Optional[Dict[str, Any]] = None) -> bool:
        """Whether the server's policy runs operation as a saga for this
        user and tenant (the seed plan's _saga_enabled, decided by the
        server's policy rather than this process's environment)."""
        uc = user_context or {}
        d = await self._run(self.client.explain_policy, operation, uc.get("user_id", ""), uc.get("tenant_id", ""))
        return bool(d.get("saga"))

    async def execute_with_saga(self, operation: str, workflow: Callable[[Any], Awaitable[Any]],
                                user_context: Optional[Dict[str, Any]] = None,
                                input: Optional[bytes] = None,
                                on_unreachable: str = "run_without_saga") -> Dict[str, Any]:
        """Runs workflow(handle) for one operation, as a saga when the
        server's policy says so for this user and tenant (ExplainPolicy).

        The workflow marks each milestone of the operation with
        ``await handle.step(name, fn)``. Without a saga the handle just
        runs fn. With one, the server records that a milestone runs before
        fn is called; if fn or the workflow raises, every completed
        milestone is compensated by its handler, in reverse (dependency)
        order, and this raises the workflow's error once the saga settled.
        The last milestone's success is recorded only when the workflow
        returns: a saga never completes before its workflow does. A
        workflow that raises after its last milestone, or leaves a
        milestone running, has its saga aborted: those milestones are
        compensated as uncertain (without their output).

        user_context may hold user_id, tenant_id and idempotency_key (a
        second call with the key runs nothing and answers the first
        call's saga, "duplicate"). When the server answers the policy but
        cannot start the saga, the operation's on_engine_unavailable
        decides: run_without_saga (the result says "fallback") or fail
        (the error is raised). When the policy itself cannot be read, the
        server being out of reach, on_unreachable decides the same way
        (default run_without_saga, as the seed plan does).

        Returns {"saga", "saga_id", "state", "fallback", "duplicate",
        "result"}, result being what the workflow returned.
        """
        uc = user_context or {}
        user, tenant, key = uc.get("user_id", ""), uc.get("tenant_id", ""), uc.get("idempotency_key", "")
        out = {"saga": False, "saga_id": "", "state": "", "fallback": False, "duplicate": False, "result": None}
        try:
            d = await self._run(self.client.explain_policy, operation, user, tenant)
        except (SagaError, OSError) as e:
            if (isinstance(e, SagaError) and not _unavailable(e)) or on_unreachable == "fail":
                raise
            out["fallback"] = True
            out["result"] = await workflow(NoSaga())
            return out
        if not d.get("saga"):
            out["result"] = await workflow(NoSaga())
            return out
        spec = d.get("spec") or {}
        fallback = spec.get("onEngineUnavailable") or d.get("fallback") or "run_without_saga"
        milestones = spec.get("milestones") or []
        try:
            version = await self._run(self._define, operation, d.get("version", "0"), spec)
            want = "pol-" + secrets.token_hex(10) if key else ""
            meta = {"policy_version": str(d.get("version", "0"))}
            if tenant:
                meta["tenant"] = str(tenant)
            body: Dict[str, Any] = {"definition": operation, "version": version, "user": user, "meta": meta,
                                    "timeout": spec.get("timeout") or "3600s"}
            if input is not None:
                body["input"] = _b64(input)
            if key:
                body.update(id=want, idempotencyKey=key)
            if spec.get("durability"):
                body["durability"] = "DURABILITY_" + spec["durability"].upper()
            saga = (await self._run(self.client.call, "Start", body))["saga"]
        except (SagaError, OSError) as e:
            if (isinstance(e, SagaError) and not _unavailable(e)) or fallback == "fail":
                raise
            out["fallback"] = True
            out["result"] = await workflow(NoSaga())
            return out
        out.update(saga=True, saga_id=saga["id"])
        if want and saga["id"] != want:
            # An earlier call holds the key: its saga is the answer.
            w = await self._settle(saga["id"])
            out.update(duplicate=True, state=w.get("state", ""))
            return out
        h = SagaHandle(self, saga["id"], milestones)
        try:
            out["result"] = await workflow(h)
        except BaseException as e:
            h.closed = True
            try:
                await self._record_failure(h, str(e) or type(e).__name__)
                w = await self._settle(h.saga_id)
                out["state"] = w.get("state", "")
            except (SagaError, OSError) as rerr:
                # The workflow's error is the answer, as the Go executor
                # wraps both: the note says the saga may not compensate
                # until its timeout, and where to look.
                if hasattr(e, "add_note"):
                    e.add_note(f"saga {h.saga_id}: recording the failure failed ({rerr!r}); it may still be "
                               f"in progress: look at it (status) before acting again")
            raise
        h.closed = True
        if h.held and not h.running() and not h.failing and not h.lost:
            name, output = h.held
            st = await self._run(self.client.advance, h.saga_id, name, output)
            out["state"] = st["saga"].get("state", "")
            return out
        why = (f"milestone {h.failing} failed but the workflow returned no error" if h.failing else
               f"the workflow returned before completing every milestone of {operation}")
        await self._record_failure(h, why)
        w = await self._settle(h.saga_id)
        out["state"] = w.get("state", "")
        raise IncompleteError(f"{why}: saga {h.saga_id} is {out['state']}")

    async def _record_failure(self, h: SagaHandle, why: str) -> None:
        """Tells the server how the call failed, so that it compensates."""
        if h.failing and h.fail_recorded:
            return
        if h.failing:
            await self._run(self.client.advance, h.saga_id, h.failing, error=h.fail_error)
        elif h.held or h.running() or h.lost or not h.next_not_started():
            # Milestones whose success is not recorded: abort compensates
            # them as uncertain, with every completed one.
            await self._run(self.client.abort, h.saga_id, why[:4096], "policy")
        else:
            # The next milestone never ran: reported failed, so only the
            # completed ones are compensated.
            await self._run(self.client.advance, h.saga_id, h.next_not_started(),
                            error=f"not started: the workflow returned first: {why}"[:4096])

    async def _settle(self, saga_id: str) -> Dict[str, Any]:
        while True:
            w = await self._run(self.client.wait, saga_id, 30.0)
            if w.get("settled"):
                return w["saga"]

    def _define(self, operation: str, policy_version: str, spec: Dict[str, Any]) -> int:
        """Defines the operation's saga from its policy spec, once per
        policy version, and returns the definition's version."""
        cached = self._defined.get((operation, policy_version))
        if cached:
            return cached
        steps = []
        retry = _compensation_retry(spec.get("retry"))
        for m in spec.get("milestones") or []:
            step: Dict[str, Any] = {"name": m["name"]}
            if m.get("compensation"):
                step["compensation"] = m["compensation"]
                step["compensationRetry"] = retry
            if m.get("after"):
                step["after"] = m["after"]
            steps.append(step)
        version = int(self.client.define(operation, steps)["definition"]["version"])
        self._defined[(operation, policy_version)] = version
        return version


def _unavailable(e: SagaError) -> bool:
    """The server could not be reached or could not act: what the policy's
    on_engine_unavailable is for (not a refusal of the call itself)."""
    return e.code in ("unavailable", "deadline_exceeded", "resource_exhausted", "aborted")


def _compensation_retry(r: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The operation's retry settings over the engine's compensation
    defaults (compensation.DefaultCompensationPolicy), as the Go
    executor does: a partial setting never means "no backoff"."""
    p: Dict[str, Any] = {"initialBackoff": "0.1s", "maxBackoff": "30s", "multiplier": 2, "jitter": 0.2,
                         "maxElapsed": "600s"}
    r = r or {}
    for k in ("initialBackoff", "maxBackoff"):
        if r.get(k):
            p[k] = r[k]
    if r.get("maxAttempts"):
        p["maxAttempts"] = r["maxAttempts"]
        if not r.get("maxElapsed"):
            p.pop("maxElapsed")  # bounded by the count alone
    if r.get("maxElapsed"):
        p["maxElapsed"] = r["maxElapsed"]
    return p
