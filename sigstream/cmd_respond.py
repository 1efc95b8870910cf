"""`sigstream respond`, `sigstream actions list|approve|deny|execute`: automated response.

respond: consumes the alerts topic, matches the policy, and puts signed action requests on
the actions topic (key = host). Requests that need approval wait in the local approval state
file (connectors.approvals) until `actions approve ID` signs and sends them, `actions deny ID`
refuses them, or they expire. `actions execute` is a stand-alone endpoint executor
(dry-run unless --real on Windows) that answers on the action-results topic, or reads action
messages from a JSON-lines file (--input). `actions keygen` writes an Ed25519 key pair.
Kafka is only reached through connectors.kafka.

Both loops guard every message: one that cannot be decoded or handled is rejected with its
reason (published on action-results by the executor, logged and counted by respond), and the
loop goes on and commits past it. Broker and state-file failures are not swallowed.
"""
from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

import click
import orjson

from sigstream.stream.commit import commit_outputs
from sigstream.stream.errors import TransportProblem
from sigstream.cli import err_console, main
from sigstream.kafka_cli import (hidden_alias, kafka_options, metrics_options, need_bootstrap,
                                 open_metrics, quiet_kafka_client, serve_counters)

log = logging.getLogger("sigstream.respond")
KEYS_ENV = "SIGSTREAM_ACTION_KEYS_FILE"


_bootstrap_opt = kafka_options("an error (this command needs a broker).")


def _keys_opt(f: Callable) -> Callable:
    f = click.option("--allow-hmac", is_flag=True,
                     help="Accept HMAC (shared) action keys, with a warning; default: Ed25519 only "
                          "(or $SIGSTREAM_ACTION_ALLOW_HMAC=1).")(f)
    return click.option("--keys", "keys_path", type=click.Path(exists=True, dir_okay=False), envvar=KEYS_ENV,
                        help=f"Action key file (default ${KEYS_ENV}, else $SIGSTREAM_ACTION_KEYS).")(f)


def _state_opt(f: Callable) -> Callable:
    return click.option("--state", "state_path", type=click.Path(dir_okay=False),
                        help="Approval state file (default $SIGSTREAM_STATE_DIR/approvals.sqlite, "
                             "or ~/.local/state/sigstream/approvals.sqlite).")(f)


def _keyring(path: str | None, allow_hmac: bool = False) -> Any:
    from sigstream.stream.actions import ActionError, load_keyring
    try:
        ring = load_keyring(path, allow_hmac=allow_hmac or None)
    except (ActionError, OSError) as e:
        raise click.UsageError(str(e))
    for w in ring.warnings:
        err_console.print(f"[yellow]warning: {w}[/yellow]")
    return ring


def _need_bootstrap(bootstrap: str | None, what: str) -> str:
    """--bootstrap, else $SIGSTREAM_BOOTSTRAP, else a usage error (kafka-python kept quiet)."""
    bootstrap = need_bootstrap(bootstrap, what)
    quiet_kafka_client(bootstrap)
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


# failures of the broker or of the local state file: not the message's fault, never skipped
_NOT_THE_MESSAGE = (TransportProblem, sqlite3.Error, MemoryError)


def _guarded(on_message: Callable[[Any], bool], m: Any, counts: dict[str, int]) -> bool:
    """on_message(m), except that a message it fails on is rejected (logged, counted)."""
    try:
        return on_message(m)
    except _NOT_THE_MESSAGE:
        raise
    except Exception as e:  # noqa: BLE001 - one bad message must not stop the loop
        counts["rejected"] = counts.get("rejected", 0) + 1
        log.warning("rejected %s[%s]@%s: %s: %s", getattr(m, "topic", "?"), getattr(m, "partition", "?"),
                    getattr(m, "offset", "?"), type(e).__name__, str(e)[:200])
        return False


def _loop(source: Any, on_message: Callable[[Any], bool], max_count: int | None, timeout: float | None,
          after_batch: Callable[[], None], counts: dict[str, int] | None = None) -> int:
    """Poll until SIGTERM/Ctrl-C, `max_count` handled messages or `timeout` idle seconds.
    A message `on_message` raises on is rejected (counted in counts["rejected"]) and committed past."""
    counts = {} if counts is None else counts
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
                if _guarded(on_message, m, counts):
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
@click.option("--from-beginning/--from-latest", default=False,
              help="Where a new group starts (default: latest).")
@hidden_alias("--latest", "from_beginning", value=False)
@click.option("--max-alerts", type=click.IntRange(1), help="Exit after handling N alerts.")
@click.option("--timeout", type=click.FloatRange(0), metavar="SECONDS",
              help="Exit after no alert for this long.")
@click.option("--max-alert-bytes", type=click.IntRange(1), default=None,
              help="Alerts larger than this are rejected unparsed (default 8 MiB).")
@metrics_options
def respond(policy_path: str, bootstrap: str | None, keys_path: str | None, allow_hmac: bool,
            state_path: str | None, group: str, topic: str | None, from_beginning: bool,
            max_alerts: int | None, timeout: float | None, max_alert_bytes: int | None,
            metrics_port: int | None, metrics_addr: str) -> None:
    """Consume alerts, apply the responder policy, produce signed action requests.

    \b
    Destructive actions wait for `sigstream actions approve ID` unless the policy says
    require_approval: false. One line per decision on stdout (JSON).
    Example: sigstream respond --policy policy.yaml --bootstrap 127.0.0.1:9092
    """
    from sigstream.connectors.approvals import ApprovalStore
    from sigstream.connectors.kafka import ACTIONS_TOPIC, ALERTS_TOPIC, KafkaRecordProducer, KafkaSettings, KafkaSource
    from sigstream.stream.policy import MAX_ALERT_BYTES, AlertError, Policy, PolicyError, decode_alert
    from sigstream.stream.responder import Responder

    try:
        policy = Policy.load(policy_path)
    except (PolicyError, OSError, ValueError) as e:
        raise click.UsageError(f"{policy_path}: {e}")
    ring = _keyring(keys_path, allow_hmac)
    if ring.signing_kid is None:
        raise click.UsageError("respond needs a signing key (an ed25519-private key line), "
                               "not only public keys")
    settings = KafkaSettings.from_env(_need_bootstrap(bootstrap, "respond"))
    endpoint = open_metrics(metrics_port, metrics_addr)     # a port in use stops us here
    store = ApprovalStore(state_path)
    producer = KafkaRecordProducer(settings, ACTIONS_TOPIC)
    notifier = _webhook(policy)
    responder = Responder(policy, ring, store, producer.send, notifier)
    source = KafkaSource(settings, [topic or ALERTS_TOPIC], group, from_beginning=from_beginning)

    counts: dict[str, int] = {}

    def on_message(m: Any) -> bool:
        try:
            alert = decode_alert(m.value, max_alert_bytes or MAX_ALERT_BYTES)
        except AlertError as e:
            counts["rejected"] = counts.get("rejected", 0) + 1
            log.warning("rejected %s[%s]@%s: %s", m.topic, m.partition, m.offset, e)
            return False
        for o in responder.handle(alert, time.time()):
            counts[o.what] = counts.get(o.what, 0) + 1
            click.echo(orjson.dumps({"alert_id": alert.get("alert_id"), "host": alert.get("host"),
                                     "outcome": o.what, "type": o.type, "detail": o.detail or None,
                                     "action_id": o.request.action_id if o.request else None}).decode())
        counts["handled"] = counts.get("handled", 0) + 1     # as _loop counts them
        return True

    def after_batch() -> None:
        producer.flush()            # actions acknowledged before the alerts' offsets are committed
        if notifier is not None:
            notifier.flush()
        store.expire(time.time())

    exporter = serve_counters(endpoint, _respond_counters(), lambda: counts)
    try:
        n = _loop(source, on_message, max_alerts, timeout, after_batch, counts)
    finally:
        if exporter is not None:
            exporter.stop()
        source.close()
        producer.close()
        store.close()
    rejected = counts.get("rejected", 0)
    err_console.print(f"{n} alert(s) handled" + (f", {rejected} message(s) rejected" if rejected else ""))


def _respond_counters() -> dict[str, tuple[str, str]]:
    """--metrics-port of respond: alerts handled, rejected, and one counter per decision."""
    specs = {"handled": ("sigstream_respond_alerts", "Alerts handled."),
             "rejected": ("sigstream_respond_rejected", "Messages rejected (not a usable alert).")}
    for what in ("sent", "pending", "duplicate", "notified", "skipped"):   # stream.responder.Outcome
        specs[what] = (f"sigstream_respond_{what}", f"Decisions: {what}.")
    return specs


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
            execute_ttl: str, bootstrap: str | None, keys_path: str | None, allow_hmac: bool = False,
            approver_key: str | None = None) -> None:
    from sigstream.connectors.approvals import ApprovalError, ApprovalStore
    from sigstream.stream.actions import MAX_LIFETIME_S
    from sigstream.stream.dedup import parse_duration
    by = by or os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    ring = _keyring(keys_path, allow_hmac) if approve else None
    approvers = None
    if approve:
        bootstrap = _need_bootstrap(bootstrap, "actions approve")
        try:
            ttl = parse_duration(execute_ttl)
        except ValueError as e:
            raise click.UsageError(f"--execute-ttl: {e}")
        if not 0 < ttl <= MAX_LIFETIME_S:
            raise click.UsageError(f"--execute-ttl must be more than 0 and at most {MAX_LIFETIME_S:.0f}s "
                                   "(endpoints refuse requests valid for longer)")
        if approver_key:
            approvers = _keyring(approver_key)
            if approvers.signing_kid is None:
                raise click.UsageError("--approver-key: the file has no private (ed25519-private) key")
    else:
        ttl = 0.0
    producer = None
    if approve:
        # connected before the decision is recorded: an unreachable broker changes nothing
        from sigstream.connectors.kafka import ACTIONS_TOPIC, KafkaRecordProducer, KafkaSettings
        producer = KafkaRecordProducer(KafkaSettings.from_env(bootstrap), ACTIONS_TOPIC)
    store = ApprovalStore(state_path)
    try:
        req = store.decide(action_id, approve, by, time.time(), ttl)
    except ApprovalError as e:
        if producer is not None:
            producer.close()
        err_console.print(f"[red]{e}[/red]")
        sys.exit(1)
    finally:
        store.close()
    if producer is not None:
        from sigstream.stream.actions import encode, sign, sign_approval
        message = sign(req, ring)
        if approvers is not None:
            message["approval"] = sign_approval(req, approvers, time.time())
        try:
            producer.send(encode(message), req.host.encode("utf-8", "surrogatepass"))
            producer.flush()
        finally:
            producer.close()
    click.echo(f"{req.action_id} {'approved and sent' if approve else 'denied'} ({req.type} on {req.host}) by {by}")


@actions.command("approve")
@click.argument("action_id")
@click.option("--by", help="Approver name recorded in the request (default $USER).")
@click.option("--execute-ttl", default="10m", show_default=True,
              help="How long the approved request stays valid (at most 1h).")
@click.option("--approver-key", type=click.Path(exists=True, dir_okay=False), envvar="SIGSTREAM_APPROVER_KEY_FILE",
              help="The approver's own Ed25519 key file: the approval is signed with it, bound to the "
                   "request id and digest (endpoints with an approvers key ring require this).")
@_state_opt
@_bootstrap_opt
@_keys_opt
def actions_approve(action_id: str, by: str | None, execute_ttl: str, approver_key: str | None,
                    state_path: str | None, bootstrap: str | None, keys_path: str | None,
                    allow_hmac: bool) -> None:
    """Approve a pending request (id or a unique prefix of >= 6 chars): sign and send it."""
    _decide(action_id, True, by, state_path, execute_ttl, bootstrap, keys_path, allow_hmac, approver_key)


@actions.command("deny")
@click.argument("action_id")
@click.option("--by", help="Who denied it (default $USER).")
@_state_opt
def actions_deny(action_id: str, by: str | None, state_path: str | None) -> None:
    """Deny a pending request: it will never be sent."""
    _decide(action_id, False, by, state_path, "0", None, None)


@actions.command("keygen")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the key files (created; existing files are never overwritten).")
@click.option("--kid", default="k1", show_default=True, help="Key id (rotate with a new one).")
@click.option("--role", type=click.Choice(["responder", "approver"]), default="responder", show_default=True,
              help="responder: responder.keys + endpoint.keys; approver: approver-KID.keys + approvers.keys.")
def actions_keygen(out_dir: str, kid: str, role: str) -> None:
    """Write an Ed25519 key pair: the private key (mode 0600) for the responder (or an approver),
    the public key for endpoints, and the key files that name them."""
    from sigstream.stream.actions import ActionError, generate_keypair
    try:
        files = generate_keypair(out_dir, kid, role=role)
    except (ActionError, OSError) as e:
        raise click.UsageError(str(e))
    for what, path in files.items():
        click.echo(f"{what}: {path}")
    private_list = files["private_keys"]
    public_list = files["public_keys"]
    who = "the responder (sigstream respond / actions approve --keys)" if role == "responder" else \
        "the approver (sigstream actions approve --approver-key)"
    err_console.print(f"keep {private_list.name} and {files['private'].name} on {who} only; copy "
                      f"{public_list.name} and {files['public'].name} to the endpoints"
                      + (" (their approvers key ring)" if role == "approver" else ""))


def _iter_lines(f: Any, max_bytes: int):
    """JSON lines from a binary file, each at most max_bytes (+ newline): longer lines are
    skipped without being held in memory and yield (None, size)."""
    while True:
        line = f.readline(max_bytes + 2)
        if not line:
            return
        if len(line) > max_bytes + 1 or (len(line) == max_bytes + 2 and not line.endswith(b"\n")):
            size = len(line)
            while not line.endswith(b"\n"):
                line = f.readline(1 << 16)
                if not line:
                    break
                size += len(line)
            yield None, size
            continue
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield line, len(line)


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
@click.option("--timeout", type=click.FloatRange(0), metavar="SECONDS",
              help="Exit after no message for this long.")
@click.option("--max-action-bytes", type=click.IntRange(64), default=64 * 1024, show_default=True,
              help="Messages larger than this are rejected before parsing.")
@click.option("--max-lifetime", default="1h", show_default=True,
              help="Requests valid for longer than this (expires_at - created_at) are refused.")
@click.option("--future-skew", default="60s", show_default=True,
              help="Requests created further than this in the future are refused.")
@click.option("--allow-type", "allow_types", multiple=True,
              help="This endpoint's own list of action types it will ever run (repeatable; default all).")
@click.option("--approvers", "approvers_path", type=click.Path(exists=True, dir_okay=False),
              help="Approvers' public keys: actions that need approval (and every 'approved' request) "
                   "must carry an approval signed by one of them.")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, allow_dash=True),
              help="Read action messages from this JSON-lines file ('-' = stdin) instead of Kafka; "
                   "prints one JSON result per message.")
def actions_execute(host: str, bootstrap: str | None, keys_path: str | None, allow_hmac: bool,
                    seen_path: str | None, real: bool, backup_dir: str, group: str | None,
                    max_actions: int | None, timeout: float | None, max_action_bytes: int,
                    max_lifetime: str, future_skew: str, allow_types: tuple[str, ...],
                    approvers_path: str | None, input_path: str | None) -> None:
    """Endpoint executor: run this host's signed action requests, report on action-results
    (or, with --input, on stdout)."""
    from sigstream.connectors.approvals import default_path
    from sigstream.connectors.executor import DryRunExecutor, EndpointExecutor, SeenStore
    from sigstream.stream.actions import ACTION_TYPES
    from sigstream.stream.dedup import parse_duration

    if real and sys.platform != "win32":
        raise click.UsageError("--real needs Windows; without it actions are dry runs")
    try:
        lifetime_s, skew_s = parse_duration(max_lifetime), parse_duration(future_skew)
    except ValueError as e:
        raise click.UsageError(f"--max-lifetime/--future-skew: {e}")
    unknown = set(allow_types) - set(ACTION_TYPES)
    if unknown:
        raise click.UsageError(f"--allow-type: unknown {', '.join(sorted(unknown))} (one of {', '.join(ACTION_TYPES)})")
    ring = _keyring(keys_path, allow_hmac)
    approvers = _keyring(approvers_path) if approvers_path else None
    settings = None if input_path else _settings(_need_bootstrap(bootstrap, "actions execute"))
    if real:
        from sigstream.connectors.executor_windows import WindowsExecutor
        executor: Any = WindowsExecutor(backup_dir)
    else:
        executor = DryRunExecutor()
    seen = SeenStore(str(seen_path or default_path().with_name("seen-actions.sqlite")), keep_after_expiry_s=skew_s)
    endpoint = EndpointExecutor(host, ring, executor, seen, max_bytes=max_action_bytes, max_lifetime_s=lifetime_s,
                                future_skew_s=skew_s, allowed_types=allow_types or None, approvers=approvers)
    if input_path:
        try:
            _execute_file(endpoint, input_path, max_action_bytes, max_actions)
        finally:
            seen.close()
        return

    from sigstream.connectors.kafka import ACTION_RESULTS_TOPIC, ACTIONS_TOPIC, KafkaRecordProducer, KafkaSource
    source = KafkaSource(settings, [ACTIONS_TOPIC], group or f"sigstream-executor-{host.lower()}",
                         from_beginning=True)
    results = KafkaRecordProducer(settings, ACTION_RESULTS_TOPIC)
    key = host.encode("utf-8", "surrogatepass")

    def on_message(m: Any) -> bool:
        r = endpoint.handle(m.value, time.time(), m.key)   # never raises: a bad message is a rejection
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


def _settings(bootstrap: str) -> Any:
    from sigstream.connectors.kafka import KafkaSettings
    return KafkaSettings.from_env(bootstrap)


def _execute_file(endpoint: Any, input_path: str, max_bytes: int, max_actions: int | None) -> None:
    """--input: one JSON result line per message: action_id, status executed|failed|rejected,
    reason (+ host, type, dry_run, executor)."""
    from sigstream.connectors.executor import REJECTED, Result
    status_of = {"ok": "executed", "failed": "failed", "rejected": "rejected"}
    f = sys.stdin.buffer if input_path == "-" else open(input_path, "rb")
    n = 0
    try:
        for line, size in _iter_lines(f, max_bytes):
            now = time.time()
            if line is None:
                r = Result(None, None, endpoint.host, None, REJECTED,
                           f"message of {size} bytes exceeds the limit of {max_bytes} bytes", now,
                           endpoint.executor.name)
            else:
                r = endpoint.handle(line, now)
            click.echo(orjson.dumps({"action_id": r.action_id, "status": status_of[r.status], "reason": r.reason,
                                     "host": r.host, "type": r.type, "dry_run": r.dry_run,
                                     "executor": r.executor}).decode())
            n += 1
            if max_actions and n >= max_actions:
                break
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    endpoint.seen.prune(time.time())
