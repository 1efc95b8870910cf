"""Endpoint side of response: verify action requests, run them once, report results.

    endpoint = EndpointExecutor(host="WKS-1.corp", keyring=load_keyring(path),
                                executor=DryRunExecutor(), seen=SeenStore("seen.sqlite"))
    result = endpoint.handle(message_value, now=time.time())

Checks, in order; the first that fails gives `rejected` with its reason (logged), and nothing
runs: not a signed message / bad signature (kid unknown, wrong algorithm, forged, wrong key)
-> malformed or unknown action type -> for another host -> not approved (pending, denied,
expired) -> expired (expires_at <= now) or created in the future -> replayed (action id already
seen: the seen store is a small SQLite file, so this survives restarts). Then the executor runs
it: `ok` or `failed` + reason. Requests with `dry_run: true` always go to the dry-run executor.

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
from sigstream.stream.actions import EXECUTABLE_APPROVALS, ActionError, ActionRequest, Keyring, decode, verify

log = logging.getLogger(__name__)
CLOCK_SKEW_S = 300.0
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
    """Action ids already accepted, persisted (SQLite), pruned once their request has expired."""

    def __init__(self, path: str = ":memory:"):
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (action_id TEXT PRIMARY KEY, expires_at REAL)")
        self._lock = threading.Lock()

    def claim(self, action_id: str, expires_at: float) -> bool:
        """True the first time an id is claimed, False ever after (until pruned)."""
        with self._lock:
            try:
                self._db.execute("INSERT INTO seen VALUES (?, ?)", (action_id, expires_at))
                return True
            except sqlite3.IntegrityError:
                return False

    def __contains__(self, action_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM seen WHERE action_id = ?", (action_id,)).fetchone() is not None

    def prune(self, now: float) -> int:
        """Forget ids of expired requests (they are rejected as expired anyway)."""
        with self._lock:
            return self._db.execute("DELETE FROM seen WHERE expires_at < ?", (now - CLOCK_SKEW_S,)).rowcount

    def close(self) -> None:
        self._db.close()


class EndpointExecutor:
    def __init__(self, host: str, keyring: Keyring, executor: Any, seen: SeenStore,
                 dry_executor: Any | None = None):
        self.host = host
        self.keyring = keyring
        self.executor = executor
        self.dry = dry_executor or (executor if isinstance(executor, DryRunExecutor) else DryRunExecutor())
        self.seen = seen

    def _result(self, req: Any, status: str, reason: str, now: float, executor: str = "",
                publish: bool = True) -> Result:
        def get(name: str) -> Any:
            return req.get(name) if isinstance(req, dict) else getattr(req, name, None)
        r = Result(get("action_id"), get("alert_id"), self.host, get("type"), status, reason, now,
                   executor or self.executor.name, bool(get("dry_run")), publish=publish)
        log_fn = log.warning if status == REJECTED else (log.info if status == OK else log.error)
        log_fn("action %s (%s) %s: %s", r.action_id, r.type, status, reason)
        return r

    def handle(self, value: bytes | None, now: float) -> Result:
        try:
            body = verify(decode(value), self.keyring)
        except ActionError as e:
            return self._result(None, REJECTED, str(e), now)
        try:
            req = ActionRequest.from_dict(body)
        except ActionError as e:
            return self._result(body, REJECTED, str(e), now)
        if req.host.lower() != self.host.lower():
            return self._result(req, REJECTED, f"for another host ({req.host})", now, publish=False)
        if req.approval not in EXECUTABLE_APPROVALS:
            return self._result(req, REJECTED, f"not approved (approval {req.approval})", now)
        if req.expires_at <= now:
            return self._result(req, REJECTED, f"expired {now - req.expires_at:.0f}s ago", now)
        if req.created_at > now + CLOCK_SKEW_S:
            return self._result(req, REJECTED, "created in the future (clock skew or forged time)", now)
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
            result = endpoint.handle(m.value, clock())
            handled += 1
            if result.publish:
                results.send(result.encode(), key)
        commit_outputs(source, [results])   # results acked before the requests' offsets move
        endpoint.seen.prune(now)
    return handled
