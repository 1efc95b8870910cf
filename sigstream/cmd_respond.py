"""`sigstream respond`, `sigstream actions list|approve|deny|execute`: automated response.

respond: consumes the alerts topic, matches the policy, and puts signed action requests on
the actions topic (key = host). Requests that need approval wait in the local approval state
file (connectors.approvals) until `actions approve ID` signs and sends them, `actions deny ID`
refuses them, or they expire. `actions execute` is a stand-alone endpoint executor
(dry-run unless --real on Windows) that answers on the action-results topic.
Kafka is only reached through connectors.kafka.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

import click
import orjson

from sigstream.stream.commit import commit_outputs
from sigstream.cli import err_console, main

log = logging.getLogger("sigstream.respond")
BOOTSTRAP_ENV = "SIGSTREAM_BOOTSTRAP"
KEYS_ENV = "SIGSTREAM_ACTION_KEYS_FILE"


def _bootstrap_opt(f: Callable) -> Callable:
    return click.option("--bootstrap", metavar="HOST:PORT", envvar=BOOTSTRAP_ENV,
                        help=f"Kafka bootstrap server(s) (default ${BOOTSTRAP_ENV}).")(f)


def _keys_opt(f: Callable) -> Callable:
    return click.option("--keys", "keys_path", type=click.Path(exists=True, dir_okay=False), envvar=KEYS_ENV,
                        help=f"Action key file (default ${KEYS_ENV}, else $SIGSTREAM_ACTION_KEY(S)).")(f)


def _state_opt(f: Callable) -> Callable:
    return click.option("--state", "state_path", type=click.Path(dir_okay=False),
                        help="Approval state file (default $SIGSTREAM_STATE_DIR/approvals.sqlite, "
                             "or ~/.local/state/sigstream/approvals.sqlite).")(f)


def _keyring(path: str | None) -> Any:
    from sigstream.stream.actions import ActionError, load_keyring
    try:
        return load_keyring(path)
    except (ActionError, OSError) as e:
        raise click.UsageError(str(e))


def _need_bootstrap(bootstrap: str | None, what: str) -> str:
    if not bootstrap:
        raise click.UsageError(f"{what} needs a broker: --bootstrap HOST:PORT or ${BOOTSTRAP_ENV}")
    return bootstrap


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _webhook(policy: Any) -> Any:
    cfg = policy.notify
    if not cfg:
        return None
    from sigstream.connectors.webhook import WebhookSink
    secret_env = cfg.get("secret_env")
    secret = os.environ.get(secret_env, "").encode() if secret_env else None
    return WebhookSink(cfg["url"], payload=cfg.get("format", "json"), alert_format=cfg.get("alert_format", "native"),
                       secret=secret or None, dead_letter=cfg.get("dead_letter"))


class _Flush:
    """A callable as an output for stream.commit.commit_outputs."""

    def __init__(self, flush: Callable[[], None]):
        self.flush = flush


def _loop(source: Any, on_message: Callable[[Any], bool], max_count: int | None, timeout: float | None,
          after_batch: Callable[[], None]) -> int:
    """Poll until SIGTERM/Ctrl-C, `max_count` handled messages or `timeout` idle seconds."""
    stop = threading.Event()
    prev = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if threading.current_thread() is threading.main_thread() else None
    count, last = 0, time.monotonic()
    try:
        while not stop.is_set():
            msgs = source.poll(200, 0.5)
            if not msgs:
                if timeout is not None and time.monotonic() - last >= timeout:
                    break
                after_batch()
                continue
            last = time.monotonic()
            for m in msgs:
                if on_message(m):
                    count += 1
            # after_batch flushes this command's outputs; only then may the offsets move
            commit_outputs(source, [_Flush(after_batch)])
            if max_count and count >= max_count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        if prev is not None:
            signal.signal(signal.SIGTERM, prev)
    return count


# ------------------------------------------------------------------ respond ---

@main.command()
@click.option("--policy", "policy_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Responder policy YAML (see docs/alerts-and-response.md).")
@_bootstrap_opt
@_keys_opt
@_state_opt
@click.option("--group", default="sigstream-respond", show_default=True, help="Consumer group.")
@click.option("--topic", default=None, help="Alerts topic (default sigstream.alerts).")
@click.option("--from-beginning/--latest", default=False, help="Where a new group starts (default: latest).")
@click.option("--max-alerts", type=click.IntRange(1), help="Exit after handling N alerts.")
@click.option("--timeout", type=float, metavar="SECONDS", help="Exit after no alert for this long.")
def respond(policy_path: str, bootstrap: str | None, keys_path: str | None, state_path: str | None,
            group: str, topic: str | None, from_beginning: bool, max_alerts: int | None,
            timeout: float | None) -> None:
    """Consume alerts, apply the responder policy, produce signed action requests.

    \b
    Destructive actions wait for `sigstream actions approve ID` unless the policy says
    require_approval: false. One line per decision on stdout (JSON).
    Example: sigstream respond --policy policy.yaml --bootstrap 127.0.0.1:9092
    """
    from sigstream.connectors.approvals import ApprovalStore
    from sigstream.connectors.kafka import ACTIONS_TOPIC, ALERTS_TOPIC, KafkaRecordProducer, KafkaSettings, KafkaSource
    from sigstream.stream.policy import Policy, PolicyError
    from sigstream.stream.responder import Responder

    try:
        policy = Policy.load(policy_path)
    except (PolicyError, OSError, ValueError) as e:
        raise click.UsageError(f"{policy_path}: {e}")
    ring = _keyring(keys_path)
    settings = KafkaSettings.from_env(_need_bootstrap(bootstrap, "respond"))
    store = ApprovalStore(state_path)
    producer = KafkaRecordProducer(settings, ACTIONS_TOPIC)
    notifier = _webhook(policy)
    responder = Responder(policy, ring, store, producer.send, notifier)
    source = KafkaSource(settings, [topic or ALERTS_TOPIC], group, from_beginning=from_beginning)

    def on_message(m: Any) -> bool:
        try:
            alert = orjson.loads(m.value)
            if not isinstance(alert, dict) or "rule" not in alert:
                raise ValueError("not an alert")
        except Exception as e:  # noqa: BLE001
            log.warning("skipping %s[%d]@%d: %s", m.topic, m.partition, m.offset, e)
            return False
        for o in responder.handle(alert, time.time()):
            click.echo(orjson.dumps({"alert_id": alert.get("alert_id"), "host": alert.get("host"),
                                     "outcome": o.what, "type": o.type, "detail": o.detail or None,
                                     "action_id": o.request.action_id if o.request else None}).decode())
        return True

    def after_batch() -> None:
        producer.flush()            # actions acknowledged before the alerts' offsets are committed
        if notifier is not None:
            notifier.flush()
        store.expire(time.time())

    try:
        n = _loop(source, on_message, max_alerts, timeout, after_batch)
    finally:
        source.close()
        producer.close()
        store.close()
    err_console.print(f"{n} alert(s) handled")


# ------------------------------------------------------------------ actions ---

@main.group()
def actions() -> None:
    """Action requests waiting for approval; approve, deny; a stand-alone executor."""


@actions.command("list")
@_state_opt
@click.option("--all", "show_all", is_flag=True, help="Also decided and expired requests.")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "jsonl"]), default=None,
              help="Default: table on a terminal, jsonl otherwise.")
def actions_list(state_path: str | None, show_all: bool, fmt: str | None) -> None:
    """List action requests (default: the pending ones)."""
    from sigstream.connectors.approvals import ApprovalStore
    store = ApprovalStore(state_path)
    rows = store.list(time.time(), None if show_all else ("pending",))
    store.close()
    fmt = fmt or ("table" if sys.stdout.isatty() else "jsonl")
    if fmt == "jsonl":
        for r in rows:
            click.echo(orjson.dumps(dict(r.request.to_dict(), state=r.state, decided_by=r.decided_by)).decode())
        return
    if not rows:
        click.echo("no action requests" + ("" if show_all else " pending"))
    for r in rows:
        q = r.request
        target = ", ".join(f"{k}={v}" for k, v in q.target.items())
        click.echo(f"{q.action_id[:12]}  {r.state:<8} {q.type:<26} {q.host}  [{target}]  "
                   f"expires {_when(q.expires_at)}  {q.reason or ''}")


def _decide(action_id: str, approve: bool, by: str | None, state_path: str | None,
            execute_ttl: str, bootstrap: str | None, keys_path: str | None) -> None:
    from sigstream.connectors.approvals import ApprovalError, ApprovalStore
    from sigstream.stream.dedup import parse_duration
    by = by or os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    ring = _keyring(keys_path) if approve else None
    if approve:
        _need_bootstrap(bootstrap, "actions approve")
    store = ApprovalStore(state_path)
    try:
        req = store.decide(action_id, approve, by, time.time(), parse_duration(execute_ttl))
    except ApprovalError as e:
        err_console.print(f"[red]{e}[/red]")
        sys.exit(1)
    finally:
        store.close()
    if approve:
        from sigstream.connectors.kafka import ACTIONS_TOPIC, KafkaRecordProducer, KafkaSettings
        from sigstream.stream.actions import encode, sign
        producer = KafkaRecordProducer(KafkaSettings.from_env(bootstrap), ACTIONS_TOPIC)
        try:
            producer.send(encode(sign(req, ring)), req.host.encode("utf-8", "surrogatepass"))
            producer.flush()
        finally:
            producer.close()
    click.echo(f"{req.action_id} {'approved and sent' if approve else 'denied'} ({req.type} on {req.host}) by {by}")


@actions.command("approve")
@click.argument("action_id")
@click.option("--by", help="Approver name recorded in the request (default $USER).")
@click.option("--execute-ttl", default="10m", show_default=True, help="How long the approved request stays valid.")
@_state_opt
@_bootstrap_opt
@_keys_opt
def actions_approve(action_id: str, by: str | None, execute_ttl: str, state_path: str | None,
                    bootstrap: str | None, keys_path: str | None) -> None:
    """Approve a pending request (id or a unique prefix of >= 6 chars): sign and send it."""
    _decide(action_id, True, by, state_path, execute_ttl, bootstrap, keys_path)


@actions.command("deny")
@click.argument("action_id")
@click.option("--by", help="Who denied it (default $USER).")
@_state_opt
def actions_deny(action_id: str, by: str | None, state_path: str | None) -> None:
    """Deny a pending request: it will never be sent."""
    _decide(action_id, False, by, state_path, "0", None, None)


@actions.command("execute")
@click.option("--host", required=True, help="This endpoint's host name as in the events' Computer field.")
@_bootstrap_opt
@_keys_opt
@click.option("--seen", "seen_path", type=click.Path(dir_okay=False),
              help="Replay-protection file (default $SIGSTREAM_STATE_DIR/seen-actions.sqlite).")
@click.option("--real", is_flag=True, help="Run actions for real (Windows only); default: dry run.")
@click.option("--backup-dir", default="registry-backups", show_default=True,
              help="Where quarantined registry values are saved (--real).")
@click.option("--group", default=None, help="Consumer group (default sigstream-executor-<host>).")
@click.option("--max-actions", type=click.IntRange(1), help="Exit after N messages.")
@click.option("--timeout", type=float, metavar="SECONDS", help="Exit after no message for this long.")
def actions_execute(host: str, bootstrap: str | None, keys_path: str | None, seen_path: str | None,
                    real: bool, backup_dir: str, group: str | None, max_actions: int | None,
                    timeout: float | None) -> None:
    """Endpoint executor: run this host's signed action requests, report on action-results."""
    from sigstream.connectors.approvals import default_path
    from sigstream.connectors.executor import DryRunExecutor, EndpointExecutor, SeenStore
    from sigstream.connectors.kafka import ACTION_RESULTS_TOPIC, ACTIONS_TOPIC, KafkaRecordProducer, KafkaSettings, KafkaSource

    if real and sys.platform != "win32":
        raise click.UsageError("--real needs Windows; without it actions are dry runs")
    ring = _keyring(keys_path)
    settings = KafkaSettings.from_env(_need_bootstrap(bootstrap, "actions execute"))
    if real:
        from sigstream.connectors.executor_windows import WindowsExecutor
        executor: Any = WindowsExecutor(backup_dir)
    else:
        executor = DryRunExecutor()
    seen = SeenStore(str(seen_path or default_path().with_name("seen-actions.sqlite")))
    endpoint = EndpointExecutor(host, ring, executor, seen)
    source = KafkaSource(settings, [ACTIONS_TOPIC], group or f"sigstream-executor-{host.lower()}",
                         from_beginning=True)
    results = KafkaRecordProducer(settings, ACTION_RESULTS_TOPIC)
    key = host.encode("utf-8", "surrogatepass")

    def on_message(m: Any) -> bool:
        r = endpoint.handle(m.value, time.time())
        if r.publish:
            results.send(r.encode(), key)
            click.echo(r.encode().decode())
        return True

    try:
        _loop(source, on_message, max_actions, timeout, lambda: (results.flush(), seen.prune(time.time())))
    finally:
        source.close()
        results.close()
        seen.close()
