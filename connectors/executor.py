"""Endpoint side of response: verify action requests, run them once, report results.

    endpoint = EndpointExecutor(host="WKS-1.corp", keyring=load_keyring(path),
                                executor=DryRunExecutor(), seen=SeenStore("seen.sqlite"))
    result = endpoint.handle(message_value, now=time.time())

Checks, in order; the first that fails gives `rejected` with its reason (logged), and nothing
runs: too large (> max_bytes, checked before parsing), not JSON, nested too deep, not a signed
message / bad signature (kid unknown, wrong algorithm, forged, wrong key) -> malformed or
unknown action type or target -> for another host -> not approved (pending, denied, expired)
-> not allowed by this endpoint's own list of action types -> valid too long (expires_at -
created_at > max_lifetime_s, default 1 h), created more than future_skew_s (default 60 s) in
the future, or expired -> replayed (action id already seen: the seen store is a small SQLite
file, so this survives restarts; ids are kept until their expiry + the skew). Then the
executor runs it: `ok` or `failed` + reason. Requests with `dry_run: true` always go to the
dry-run executor. `handle` never raises: any unexpected error while checking a message is a
rejection with its reason, so one bad message cannot stop the loop.

Executors implement one method per action type behind `Executor`; connectors.executor_windows
has the real Windows ones. `DryRunExecutor` is used everywhere else and in tests.
Results for another host's requests are not published (`Result.publish` is False): every
endpoint sees the whole topic, only the addressed one answers.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

import orjson

from sigstream.stream.commit import commit_outputs
from sigstream.stream.actions import (ACTION_TYPES, DESTRUCTIVE, EXECUTABLE_APPROVALS, FUTURE_SKEW_S,
                                      MAX_ACTION_BYTES, MAX_LIFETIME_S, ActionError, ActionRequest, Keyring,
                                      check_time, decode, verify, verify_approval)

log = logging.getLogger(__name__)
CLOCK_SKEW_S = FUTURE_SKEW_S      # kept for callers of the old name
OK, FAILED, REJECTED = "ok", "failed", "rejected"


@dataclass
class Result:
    action_id: str | None
    alert_id: str | None
    host: str                       # the executing endpoint
    type: str | None
    status: str                     # ok | failed | rejected
    reason: str
    at: float
    executor: str
    dry_run: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    publish: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("publish")
        return d

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict(), default=str)


class Outcome(Exception):
    """Raised by executors for a failed action (the message is the reason)."""


class Executor(Protocol):
    name: str

    def kill_process(self, target: dict) -> str: ...
    def suspend_process(self, target: dict) -> str: ...
    def quarantine_registry_value(self, target: dict) -> str: ...
    def isolate_host(self, target: dict) -> str: ...
    def unisolate_host(self, target: dict) -> str: ...
    def notify(self, target: dict) -> str: ...


class DryRunExecutor:
    """Does nothing; records what it was asked and says what it would have done."""
    name = "dry-run"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def _would(self, what: str, action: str, target: dict) -> str:
        self.calls.append((action, dict(target)))
        return f"dry run: would {what}"

    def kill_process(self, t: dict) -> str:
        return self._would(f"terminate pid {t.get('pid')} ({t.get('image')}, {t.get('guid')})", "kill_process", t)

    def suspend_process(self, t: dict) -> str:
        return self._would(f"suspend pid {t.get('pid')} ({t.get('image')}, {t.get('guid')})", "suspend_process", t)

    def quarantine_registry_value(self, t: dict) -> str:
        return self._would(f"back up and delete {t.get('key')}\\{t.get('value')}", "quarantine_registry_value", t)

    def isolate_host(self, t: dict) -> str:
        return self._would("isolate the host (management path kept open)", "isolate_host", t)

    def unisolate_host(self, t: dict) -> str:
        return self._would("remove the isolation", "unisolate_host", t)

    def notify(self, t: dict) -> str:
        return self._would("notify the user", "notify", t)


class SeenStore:
    """Action ids already accepted, persisted (SQLite), kept until their request's expiry +
    `keep_after_expiry_s` (the allowed clock skew), then pruned: by then a replay is refused as
    expired anyway."""

    def __init__(self, path: str = ":memory:", keep_after_expiry_s: float = FUTURE_SKEW_S):
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (action_id TEXT PRIMARY KEY, expires_at REAL)")
        self._lock = threading.Lock()
        self.keep_after_expiry_s = keep_after_expiry_s

    def claim(self, action_id: str, expires_at: float) -> bool:
        """True the first time an id is claimed, False ever after (until pruned). A refused
        claim with a later expiry extends the record, so that copy cannot be replayed later."""
        with self._lock:
            try:
                self._db.execute("INSERT INTO seen VALUES (?, ?)", (action_id, expires_at))
                return True
            except sqlite3.IntegrityError:
                self._db.execute("UPDATE seen SET expires_at = ? WHERE action_id = ? AND expires_at < ?",
                                 (expires_at, action_id, expires_at))
                return False

    def __contains__(self, action_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM seen WHERE action_id = ?", (action_id,)).fetchone() is not None

    def prune(self, now: float) -> int:
        """Forget ids of expired requests (they are rejected as expired anyway)."""
        with self._lock:
            return self._db.execute("DELETE FROM seen WHERE expires_at < ?",
                                    (now - self.keep_after_expiry_s,)).rowcount

    def close(self) -> None:
        self._db.close()


class EndpointExecutor:
    """`allowed_types`: this endpoint's own policy of the action types it will ever run (default
    all); a validly signed request of another type is rejected. Private Ed25519 keys in
    `keyring` are dropped: an endpoint only verifies.

    `approvers`: the approvers' public keys. When given, every request whose type is in
    `approval_types` (default: the destructive ones), and every request claiming to be
    approved, must carry an approval signed by one of them and bound to the request (action id
    + digest): a compromised responder alone cannot get a destructive action run. Without it,
    the responder's signature on `approval: approved` is trusted (a warning at start)."""

    def __init__(self, host: str, keyring: Keyring, executor: Any, seen: SeenStore,
                 dry_executor: Any | None = None, *, max_bytes: int = MAX_ACTION_BYTES,
                 max_lifetime_s: float = MAX_LIFETIME_S, future_skew_s: float = FUTURE_SKEW_S,
                 allowed_types: Any = None, approvers: Keyring | None = None,
                 approval_types: Any = DESTRUCTIVE):
        self.host = host
        self.keyring = keyring.verify_only()
        if self.keyring.has_hmac:
            log.warning("endpoint %s verifies HMAC-signed action requests: the shared key would let "
                        "anyone holding it (this endpoint too) forge requests; prefer Ed25519", host)
        self.executor = executor
        self.dry = dry_executor or (executor if isinstance(executor, DryRunExecutor) else DryRunExecutor())
        self.seen = seen
        self.max_bytes = max_bytes
        self.max_lifetime_s = max_lifetime_s
        self.future_skew_s = future_skew_s
        self.allowed_types = frozenset(ACTION_TYPES if allowed_types is None else allowed_types)
        unknown = (self.allowed_types | frozenset(approval_types)) - set(ACTION_TYPES)
        if unknown:
            raise ValueError(f"unknown action types: {', '.join(sorted(unknown))}")
        self.approvers = approvers.verify_only() if approvers is not None else None
        if self.approvers is not None and self.approvers.has_hmac:
            raise ValueError("approver keys must be Ed25519 public keys, not HMAC")
        self.approval_types = frozenset(approval_types)
        if self.approvers is None:
            log.info("endpoint %s: no approvers key ring; approvals are trusted as signed by the responder", host)

    def _result(self, req: Any, status: str, reason: str, now: float, executor: str = "",
                publish: bool = True) -> Result:
        def get(name: str) -> Any:
            return req.get(name) if isinstance(req, dict) else getattr(req, name, None)
        r = Result(get("action_id"), get("alert_id"), self.host, get("type"), status, reason, now,
                   executor or self.executor.name, bool(get("dry_run")), publish=publish)
        log_fn = log.warning if status == REJECTED else (log.info if status == OK else log.error)
        log_fn("action %s (%s) %s: %s", r.action_id, r.type, status, reason)
        return r

    def handle(self, value: Any, now: float, key: bytes | None = None) -> Result:
        """Check and run one message; never raises (every failure is a Result). `key`: the
        record's key (the host it was sent to); a message keyed to another host is left to that
        host, unanswered, so that one forged message is not answered by every endpoint."""
        try:
            if key is not None and _key_host(key) != self.host.lower():
                return Result(None, None, self.host, None, REJECTED, "keyed to another host", now,
                              self.executor.name, publish=False)
            return self._handle(value, now)
        except Exception as e:  # noqa: BLE001 - one bad message must not stop the endpoint
            log.exception("unexpected error while handling an action message")
            return self._result(None, REJECTED, f"internal error while checking the message: "
                                                f"{type(e).__name__}", now)

    def _handle(self, value: Any, now: float) -> Result:
        try:
            message = decode(value, self.max_bytes)
            body = verify(message, self.keyring)
        except ActionError as e:
            return self._result(None, REJECTED, str(e), now)
        try:
            req = ActionRequest.from_dict(body)
        except ActionError as e:
            return self._result(_identity(body), REJECTED, str(e), now)
        if req.host.lower() != self.host.lower():
            return self._result(req, REJECTED, f"for another host ({req.host})", now, publish=False)
        if req.approval not in EXECUTABLE_APPROVALS:
            return self._result(req, REJECTED, f"not approved (approval {req.approval})", now)
        if req.type not in self.allowed_types:
            return self._result(req, REJECTED, f"action type {req.type} is not allowed on this endpoint", now)
        if self.approvers is not None and (req.type in self.approval_types or req.approval == "approved"):
            try:
                verify_approval(message, body, self.approvers)
            except ActionError as e:
                return self._result(req, REJECTED, str(e), now)
        try:
            check_time(req, now, max_lifetime_s=self.max_lifetime_s, future_skew_s=self.future_skew_s)
        except ActionError as e:
            return self._result(req, REJECTED, str(e), now)
        if not self.seen.claim(req.action_id, req.expires_at):
            return self._result(req, REJECTED, "replayed: action id already seen", now)
        runner = self.dry if req.dry_run else self.executor
        try:
            message = getattr(runner, req.type)(req.target)
        except Outcome as e:
            return self._result(req, FAILED, str(e), now, runner.name)
        except Exception as e:  # noqa: BLE001 - an executor bug must become a result, not a crash
            return self._result(req, FAILED, f"{type(e).__name__}: {e}", now, runner.name)
        return self._result(req, OK, message, now, runner.name)


def _key_host(key: Any) -> str:
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key).decode("utf-8", "replace").lower()
    return str(key).lower()


def _identity(body: dict) -> dict:
    """The identifying fields of a signed but invalid request, as strings only (for the result)."""
    return {k: body.get(k) for k in ("action_id", "alert_id", "type")
            if isinstance(body.get(k), str) and len(body[k]) <= 200}


def run_loop(source: Any, results: Any, endpoint: EndpointExecutor, stop: threading.Event,
             clock: Callable[[], float], on_poll: Callable[[float], None] | None = None,
             poll_timeout_s: float = 1.0) -> int:
    """Consume action requests until `stop`: handle, publish results (key = host), commit.

    `source`: poll(max, timeout)/commit() of Message-like records (connectors.kafka.KafkaSource);
    `results`: send(value, key)/flush() (connectors.kafka.KafkaRecordProducer on the
    action-results topic). `on_poll(now)` runs after every successful poll (e.g. the Windows
    isolation watchdog's heartbeat). Returns the number of messages handled."""
    handled = 0
    key = endpoint.host.encode("utf-8", "surrogatepass")
    while not stop.is_set():
        msgs = source.poll(100, poll_timeout_s)
        now = clock()
        if on_poll is not None:
            on_poll(now)
        if not msgs:
            continue
        for m in msgs:
            try:
                result = endpoint.handle(getattr(m, "value", None), clock(), getattr(m, "key", None))
            except Exception as e:  # noqa: BLE001 - handle() does not raise; belt and braces
                log.exception("action message could not be handled")
                result = Result(None, None, endpoint.host, None, REJECTED, f"internal error: {type(e).__name__}",
                                clock(), endpoint.executor.name)
            handled += 1
            if result.publish:
                results.send(result.encode(), key)
        commit_outputs(source, [results])   # results acked before the requests' offsets move
        endpoint.seen.prune(now)
    return handled
