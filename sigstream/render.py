"""Human output: the hunt summary table and detections list (rich)."""
from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sigstream.stream.alert_summary import (
    EVIDENCE_FIELDS, alert_time_text, correlation_text, evidence_excerpt, evidence_of, excerpt,
    matched_values)
from sigstream.stream.explain import LOGSOURCE_FIELDS


class MessageConsole(Console):
    """A Console for messages on stderr that never hard-wraps when stderr is not a terminal:
    a log file or a pipe gets each message on one line (whatever `width` rich guesses), so
    grep and log shippers see whole lines. On a terminal, rich wraps to the window as usual.
    (Checked at each print: tests and callers swap sys.stderr after import.)"""

    @property
    def soft_wrap(self) -> bool:  # type: ignore[override]
        return self._soft_wrap or not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:
        self._soft_wrap = bool(value)


err_console = MessageConsole(stderr=True, highlight=False)   # every command's messages to the user

LEVEL_STYLE = {
    "critical": "bold white on red", "high": "bold red", "medium": "yellow",
    "low": "green", "informational": "dim",
}
LEVEL_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3, "informational": 4}
# The field that best says what happened, per event kind (stream.alert_summary.EVIDENCE).
KEY_FIELDS = EVIDENCE_FIELDS


def what_alert(alert: dict[str, Any], width: int = 110) -> str:
    """What an alert is about: the key field of its event, cut around what the rule matched
    in it, or for a correlation alert its count or aggregate, the condition it met, the group
    and the time span."""
    if alert.get("correlation"):
        text = correlation_text(alert["correlation"])
        return text[:width] + ("…" if len(text) > width else "")
    label, text = evidence_excerpt(alert, width, flat=True)
    return f"{label}: {text}" if label else ""


def what(event: dict[str, Any], width: int = 110) -> str:
    """The key field of an event, one line."""
    ev = evidence_of(event)
    return f"{ev[0]}: {excerpt(ev[1], width, flat=True)}" if ev else ""


def matched_lines(alert: dict[str, Any], width: int = 80) -> list[str]:
    """`Field=event value` for the matched fields the key evidence does not already show
    (nor log-source fields such as EventID: the table is for what happened)."""
    if alert.get("correlation"):
        return []
    shown = set(evidence_excerpt(alert, 1)[0].split(", ")) | LOGSOURCE_FIELDS
    return [f"{f}={v}" for f, v in matched_values(alert, width, flat=True) if f not in shown]


class TableSink:
    """Collects alerts; prints a per-rule summary then the detections on close."""

    def __init__(self, console: Console, max_rows: int = 500):
        self.console = console
        self.max_rows = max_rows
        self.alerts: list[dict[str, Any]] = []

    def add(self, alert: dict[str, Any]) -> None:
        self.alerts.append(alert)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.alerts:
            self.console.print("[green]No detections.[/green]")
            return
        self.console.print(summary_table(self.alerts))
        self.console.print(detections_table(self.alerts[: self.max_rows]))
        if len(self.alerts) > self.max_rows:
            self.console.print(f"[dim]… {len(self.alerts) - self.max_rows} more detections; "
                               "use --format jsonl for all of them[/dim]")


def summary_table(alerts: list[dict[str, Any]]) -> Table:
    by_rule: dict[str, list[dict]] = defaultdict(list)
    for a in alerts:
        by_rule[a["rule"]["id"] or a["rule"]["title"]].append(a)
    table = Table(title="Detections by rule", title_justify="left")
    for col, kw in (("level", {}), ("rule", {"overflow": "fold"}), ("count", {"justify": "right"}),
                    ("hosts", {"overflow": "fold"}), ("ATT&CK", {})):
        table.add_column(col, **kw)
    rows = sorted(by_rule.values(), key=lambda g: (LEVEL_RANK.get(g[0]["rule"]["level"], 9), -len(g)))
    for group in rows:
        rule = group[0]["rule"]
        hosts = sorted({str(a.get("host")) for a in group})
        level = rule["level"] or "?"
        table.add_row(f"[{LEVEL_STYLE.get(level, '')}]{level}[/]", escape(rule["title"]), str(len(group)),
                      ", ".join(hosts[:3]) + (f" +{len(hosts) - 3}" if len(hosts) > 3 else ""),
                      " ".join(group[0]["attack"]["techniques"]))
    return table


def detections_table(alerts: list[dict[str, Any]]) -> Table:
    table = Table(title="Detections", title_justify="left")
    table.add_column("time", no_wrap=True)   # ISO 8601 UTC to the second; jsonl has the rest
    table.add_column("host", overflow="fold", max_width=30)
    table.add_column("level", no_wrap=True)
    table.add_column("rule", overflow="fold", max_width=40)
    table.add_column("what matched", overflow="fold", ratio=1)
    for a in alerts:
        level = a["rule"]["level"] or "?"
        also = "".join(f"\n[dim]+ {escape(line)}[/dim]" for line in matched_lines(a))
        table.add_row(alert_time_text(a, seconds_only=True), escape(str(a.get("host") or "")),
                      f"[{LEVEL_STYLE.get(level, '')}]{level}[/]", escape(a["rule"]["title"]),
                      escape(what_alert(a)) + also)
    return table


def alert_line(a: dict[str, Any], local_time: bool = False) -> str:
    """One rich-markup line per alert: time, level (coloured), host, rule, what matched."""
    rule = a.get("rule") or {}
    level = rule.get("level") or "?"
    style = LEVEL_STYLE.get(level, "")
    matched = a.get("matched") or []
    hit = ""
    if matched:
        m = matched[0]
        hit = f"{m.get('field')}={str(m.get('value'))[:60]}"
    t = alert_time_text(a, seconds_only=True, local=local_time)
    return (f"[dim]{t}[/dim] [{style}]{level:<8}[/] [cyan]{escape(str(a.get('host') or '?'))}[/cyan] "
            f"[bold]{escape(rule.get('title') or '')}[/bold]"
            f"{' [dim](' + escape(hit) + ')[/dim]' if hit else ''}\n         {escape(what_alert(a, 140))}")


class LiveSink:
    """Prints alerts as they become durable (on flush): rich lines or JSONL; summary on close."""

    def __init__(self, fmt: str, console: Console | None = None, summary: bool = True,
                 dedupe: bool = False, local_time: bool = False):
        self.fmt = fmt
        self.local_time = local_time   # times in this machine's zone instead of UTC
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.summary = summary
        self.dedupe = dedupe
        self.seen: set[str] = set()
        self.shown: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []

    def add(self, alert: dict[str, Any]) -> None:
        self._pending.append(alert)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for a in pending:
            if self.dedupe:
                if a["alert_id"] in self.seen:
                    continue
                self.seen.add(a["alert_id"])
            self.shown.append(a)
            if self.fmt == "jsonl":
                sys.stdout.buffer.write(orjson.dumps(a, default=str) + b"\n")
            else:
                self.console.print(alert_line(a, self.local_time))
        if self.fmt == "jsonl":
            sys.stdout.buffer.flush()

    def close(self) -> None:
        self.flush()
        if self.fmt != "jsonl" and self.summary:
            if self.shown:
                self.console.print(summary_table(self.shown))
            else:
                self.console.print("[green]No detections.[/green]")


