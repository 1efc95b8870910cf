"""`sigstream alerts tail`: the alerts topic shown like `tail -f` (last N, then follow)."""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, Callable

import click
import orjson
from rich.console import Console
from rich.markup import escape

from sigstream.cli import err_console, main
from sigstream.kafka_cli import hidden_alias, kafka_options, need_bootstrap, quiet_kafka_client
from sigstream.render import LEVEL_RANK, LiveSink
from sigstream.stream.rules import LEVELS


# ------------------------------------------------------------- alerts tail ---

@main.group()
def alerts() -> None:
    """Read the alerts topic."""


def _level_ok(alert: dict, level: str | None) -> bool:
    if not level:
        return True
    have = (alert.get("rule") or {}).get("level") or "informational"
    return LEVEL_RANK.get(have, 9) <= LEVEL_RANK[level]


def alert_filter(level: str | None, host: str | None, rule: str | None, tag: str | None) -> Callable[[dict], bool]:
    host_l, rule_l, tag_l = (x.lower() if x else None for x in (host, rule, tag))

    def ok(a: dict) -> bool:
        r = a.get("rule") or {}
        if not _level_ok(a, level):
            return False
        if host_l and host_l not in str(a.get("host") or "").lower():
            return False
        if rule_l and rule_l != str(r.get("id") or "").lower() and rule_l not in str(r.get("title") or "").lower():
            return False
        if tag_l and tag_l not in [t.lower() for t in r.get("tags") or ()]:
            return False
        return True
    return ok


def _show_action_result(value: bytes | None, shown_ids: set[str], fmt: str) -> None:
    """A responder action's result, printed after the alerts shown so far (if it is for one)."""
    try:
        r = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return
    if not isinstance(r, dict) or str(r.get("alert_id")) not in shown_ids:
        return
    if fmt == "jsonl":
        sys.stdout.buffer.write(orjson.dumps({"action_result": r}) + b"\n")
        sys.stdout.buffer.flush()
    else:
        colour = {"ok": "green", "failed": "red", "rejected": "yellow"}.get(str(r.get("status")), "white")
        Console(highlight=False, soft_wrap=True).print(
            f"   [{colour}]↳ {r.get('type')} {r.get('status')}[/{colour}]: {escape(str(r.get('reason')))} "
            f"({r.get('host')}{', dry run' if r.get('dry_run') else ''})")


@alerts.command("tail")
@kafka_options("an error (this command needs a broker).")
@click.option("--topic-prefix", default="sigstream", show_default=True)
@click.option("--topic", help="Alerts topic [default: <prefix>.alerts].")
@click.option("-n", "--lines", type=click.IntRange(0), default=10, show_default=True, metavar="N",
              help="First show the last N alerts of the topic (those of them that pass the "
                   "filters), in time order.")
@click.option("--from-beginning/--from-latest", default=None,
              help="Show every alert already on the topic / none of them (-n 0); "
                   "default: the last --lines.")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Keep showing new alerts; --no-follow: stop at the end of the topic as it was "
                   "at start.")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "jsonl"]),
              help="Default: table on a terminal, jsonl otherwise.")
@click.option("--level", type=click.Choice(LEVELS), help="Only alerts of this level or higher.")
@hidden_alias("--min-level", "level", type=click.Choice(LEVELS))
@click.option("--host", help="Only hosts containing this text (case-insensitive).")
@click.option("--rule", help="Only this rule id, or rules whose title contains this text.")
@click.option("--tag", help="Only rules with this tag, e.g. attack.t1059.001.")
@click.option("--max", "max_alerts", type=click.IntRange(1), help="Exit after showing N alerts.")
@click.option("--timeout", type=click.FloatRange(0), metavar="SECONDS",
              help="Exit after no new alert for this long.")
@click.option("--alert-format", type=click.Choice(["native", "ecs", "ocsf"]), default="native",
              show_default=True, help="Shape of jsonl output.")
@click.option("--with-actions", is_flag=True,
              help="Also follow <prefix>.action-results and show each responder action's result "
                   "under its alert.")
@click.option("--local-time", is_flag=True,
              help="Table times in this machine's time zone (with its offset) instead of UTC.")
def alerts_tail(bootstrap: str | None, topic_prefix: str, topic: str | None, lines: int,
                from_beginning: bool | None, follow: bool, fmt: str | None,
                level: str | None, host: str | None, rule: str | None, tag: str | None,
                max_alerts: int | None, timeout: float | None, alert_format: str,
                with_actions: bool, local_time: bool) -> None:
    """Show the last alerts of the alerts topic, then follow it, like `tail -f`.

    Reads the partitions directly (no consumer group: nothing is committed, no other
    reader is affected). Times are ISO 8601 UTC (--local-time: this machine's zone).

    \b
    Examples:
      sigstream alerts tail --bootstrap 127.0.0.1:9092            # last 10, then follow
      sigstream alerts tail -n 50 --no-follow                      # the last 50, then exit
      sigstream alerts tail --from-beginning --level high --host WKS-FIN --timeout 10
      sigstream alerts tail --from-beginning --no-follow -f jsonl --rule "AMSI" > amsi.jsonl
    """
    bootstrap = need_bootstrap(bootstrap, "alerts tail",
                               " (the embedded `run`/`demo` print alerts on stdout)")
    topic = topic or f"{topic_prefix}.alerts"
    from sigstream.connectors.kafka import KafkaSettings
    from sigstream.connectors.kafka.tail import TopicTail

    quiet_kafka_client(bootstrap)
    fmt = fmt or ("table" if sys.stdout.isatty() else "jsonl")
    if alert_format != "native" and fmt != "jsonl":
        raise click.UsageError(f"--alert-format {alert_format} needs -f jsonl")
    keep = alert_filter(level, host, rule, tag)
    out: Any = LiveSink(fmt, summary=False, local_time=local_time)
    if alert_format != "native":
        from sigstream.stream.alert_formats import FormattingSink
        out = FormattingSink(out, alert_format)
    settings = KafkaSettings.from_env(bootstrap=bootstrap)
    results_topic = f"{topic_prefix}.action-results"
    back = None if from_beginning else 0 if from_beginning is False else lines
    source = TopicTail(settings, [topic, results_topic] if with_actions else [topic], back,
                       optional=(results_topic,))
    shown_ids: set[str] = set()
    stop = threading.Event()
    prev = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    shown = bad = 0

    def show(msgs: list[Any]) -> None:
        nonlocal shown, bad
        for m in msgs:
            if stop.is_set():
                break
            if m.topic == results_topic and with_actions:
                out.flush()
                _show_action_result(m.value, shown_ids, fmt)
                continue
            a = _as_alert(m.value)
            if a is None:
                bad += 1
            elif keep(a):
                out.add(a)
                shown_ids.add(str(a.get("alert_id")))
                shown += 1
                if max_alerts and shown >= max_alerts:
                    stop.set()
        out.flush()

    try:
        show(_last_alerts(source.history(), topic, back, keep))
        last = time.monotonic()
        while follow and not stop.is_set():
            msgs = source.poll(500, 0.5)
            if not msgs:
                if timeout is not None and time.monotonic() - last >= timeout:
                    break
                continue
            last = time.monotonic()
            show(msgs)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, prev)
        out.flush()
        source.close()
    if bad:
        err_console.print(f"[yellow]{bad} message(s) on {topic} were not alerts[/yellow]")


def _as_alert(value: bytes | None) -> dict | None:
    try:
        a = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    return a if isinstance(a, dict) and "rule" in a else None


def _last_alerts(history: list[Any], topic: str, lines: int | None,
                 keep: Callable[[dict], bool]) -> list[Any]:
    """The history to show: the alerts passing ``keep``, in time order (record timestamp,
    then partition and offset), the last ``lines`` of them (None: all, non-alerts included:
    they are counted); then the other records of the history (action results)."""
    alerts = [m for m in history if m.topic == topic]
    others = [m for m in history if m.topic != topic]
    alerts.sort(key=lambda m: (m.timestamp_ms or 0, m.partition, m.offset))
    if lines is not None:
        passing = [m for m in alerts if (a := _as_alert(m.value)) is not None and keep(a)]
        alerts = passing[-lines:] if lines else []
    return alerts + others
