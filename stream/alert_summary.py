"""An alert in a few human-sized facts: its time, its key evidence, the event values that matched.

    alert_time(alert) -> epoch seconds | None
    evidence_of(event) -> (field label, text) | None
    matched_values(alert) -> [(field, event value), ...]
    csv_row(alert) -> list, in CSV_COLUMNS order

Shared by the flat renderings (`hunt -f csv`, the detections table) and the ECS/OCSF
timestamps. Long texts (script blocks, encoded command lines) are cut to excerpts
here, centred on what matched; the JSONL alert keeps them whole.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Iterable

from sigstream.stream.alert_context import process_of
from sigstream.stream.event_time import event_time, iso_utc, parse_time

# One row per alert, stable header (`hunt -f csv`); see csv_row for what each holds.
CSV_COLUMNS = (
    "time", "level", "rule_id", "rule_title", "host", "user", "process", "event_id",
    "evidence_field", "evidence", "matched", "patterns", "attack", "tags",
    "alert_id", "source_path", "source_position",
)
CSV_EVIDENCE_CHARS = 1000   # a script block is often tens of KiB: a spreadsheet cell needs less
CSV_MATCHED_CHARS = 200

# The field that best says what happened, per kind of event (first present wins), with a
# companion field shown after it: Sysmon registry 12-14, WMI 19-21, image load 7, network 3,
# file 11, DNS 22, process access 8/10, process creation (Sysmon 1, Security 4688), 4103/4104.
EVIDENCE = (
    ("ScriptBlockText", None, ""), ("CommandLine", None, ""), ("Payload", None, ""),
    ("TargetObject", "Details", " = "), ("ImageLoaded", None, ""), ("Query", None, ""),
    ("Consumer", "Filter", " <- "), ("Destination", None, ""), ("TargetFilename", None, ""),
    ("QueryName", None, ""), ("TargetImage", None, ""), ("DestinationIp", "DestinationPort", ":"),
    ("Image", None, ""),
)
EVIDENCE_FIELDS = tuple(f for f, _, _ in EVIDENCE)
_WILDCARDS = re.compile(r"(?<!\\)[*?]")


def alert_event_time(alert: dict[str, Any]) -> float | None:
    """The event's time (TimeCreated, UtcTime, @timestamp), else the alert's `event_time`
    (a correlation alert has no event); None when neither is readable."""
    ts = event_time(alert.get("event") or {})
    return parse_time(alert.get("event_time")) if ts is None else ts


def alert_time(alert: dict[str, Any]) -> float | None:
    """When it happened: alert_event_time, else `detected_at`."""
    ts = alert_event_time(alert)
    return parse_time(alert.get("detected_at")) if ts is None else ts


def alert_time_text(alert: dict[str, Any], seconds_only: bool = False, local: bool = False) -> str:
    """ISO 8601 UTC with the date: 2026-11-24T09:11:45.412000Z (or ...T09:11:45Z); "" if unknown.
    `local`: this machine's time zone with its offset, 2026-11-24T10:11:45+01:00."""
    ts = alert_time(alert)
    if ts is None:
        return ""
    if local:
        when = datetime.fromtimestamp(ts).astimezone()
        return when.isoformat(timespec="seconds" if seconds_only else "microseconds")
    text = iso_utc(ts)
    return text[:19] + "Z" if seconds_only else text


def _text(v: Any) -> str:
    return v if isinstance(v, str) else str(v)


def excerpt(text: str, width: int, needles: Iterable[str] = (), flat: bool = False) -> str:
    """`text` cut to about `width` characters around the first needle found (else its start).
    `flat`: whitespace runs (newlines too) become one space, for one-line displays.
    A cut text ends with the length of the whole value."""
    total = len(text)
    if flat:
        text = " ".join(text.split())
    if len(text) <= width:
        return text
    low = text.lower()
    at = -1
    for n in needles:
        n = " ".join(n.split()) if flat else n
        if n and (at := low.find(n.lower())) >= 0:
            break
    start = 0 if at < 0 else max(0, min(at - width // 4, len(text) - width))
    end = start + width
    return (f"{'…' if start else ''}{text[start:end]}{'…' if end < len(text) else ''}"
            f" ({total} chars)")


def needle_of(entry: dict[str, Any]) -> str:
    """The longest literal of a matched value, to find it in the event value ('' if none:
    regular expressions, base64/wide encodings and numbers are not searched)."""
    mods = str(entry.get("field") or "").lower().split("|")[1:]
    value = entry.get("value")
    if not isinstance(value, str) or any(m in ("re", "base64", "base64offset", "wide", "utf16le",
                                                "utf16be", "utf16", "cidr") for m in mods):
        return ""
    return max(_WILDCARDS.split(value), key=len).replace("\\*", "*").replace("\\?", "?")


def _needles(matched: list[dict], field: str) -> list[str]:
    return [n for m in matched if str(m.get("field", "")).split("|")[0] == field
            if (n := needle_of(m))]


def evidence_of(event: dict[str, Any]) -> tuple[str, str] | None:
    """(label, full text) of the event's key field: CommandLine, ScriptBlockText,
    TargetObject = Details, ImageLoaded, Query, Consumer <- Filter, ...; None if none."""
    for field, companion, joiner in EVIDENCE:
        v = event.get(field)
        if v in (None, "", "-"):
            continue
        text = _text(v)
        c = event.get(companion) if companion else None
        if c not in (None, "", "-"):
            return f"{field}, {companion}", f"{text}{joiner}{_text(c)}"
        return field, text
    return None


def evidence_excerpt(alert: dict[str, Any], width: int, flat: bool = False) -> tuple[str, str]:
    """(label, excerpt) of the key evidence, centred on what the rule matched in it."""
    corr = alert.get("correlation")
    if corr:
        return "correlation", correlation_text(corr)
    ev = evidence_of(alert.get("event") or {})
    if ev is None:
        return "", ""
    label, text = ev
    matched = alert.get("matched") or []
    needles = [n for f in label.split(", ") for n in _needles(matched, f)]
    return label, excerpt(text, width, needles, flat)


def matched_values(alert: dict[str, Any], width: int = CSV_MATCHED_CHARS,
                   flat: bool = False) -> list[tuple[str, str]]:
    """(event field, event value) per field the rule matched on, in `matched` order, each
    value cut around what matched; keywords and correlation verdicts give the rule's value."""
    matched = alert.get("matched") or []
    ev = alert.get("event") or {}
    out: dict[str, str] = {}
    for m in matched:
        field = str(m.get("field") or "").split("|")[0]
        if field in out:
            continue
        if "event_value" in m:
            full = ev.get(field, m["event_value"])   # explain cuts long values: use the event's
            value = _text(m["event_value"] if full is None else full)
        else:
            value = _text(m.get("value"))
        out[field] = excerpt(value, width, _needles(matched, field), flat)
    return list(out.items())


def correlation_text(c: dict[str, Any]) -> str:
    """A correlation verdict in one line: type, value, condition, matches, group, time span."""
    cond = " ".join(f"{op} {v}" for op, v in (c.get("condition") or {}).items() if op != "field")
    group = ", ".join(f"{k}={v}" for k, v in (c.get("group") or {}).items())
    return (f"{c.get('type')}: {c.get('value')} ({cond}) from {c.get('events_total')} match(es)"
            f"{' for ' + group if group else ''}, {str(c.get('first_time'))[:19]} .. "
            f"{str(c.get('last_time'))[11:19]}")


def user_of(event: dict[str, Any]) -> str:
    proc = process_of(event) or {}
    for v in (proc.get("user"), event.get("User"), event.get("SubjectUserName"), event.get("UserID")):
        if v not in (None, "", "-"):
            return _text(v)
    return ""


def process_text(event: dict[str, Any]) -> str:
    """The acting process: its image, else 'pid N' (PowerShell 4103/4104 name only the pid)."""
    proc = process_of(event) or {}
    if proc.get("image"):
        return _text(proc["image"])
    return f"pid {proc['pid']}" if proc.get("pid") is not None else ""


def csv_row(alert: dict[str, Any]) -> list[Any]:
    """The CSV_COLUMNS of one alert:

    time: event time, ISO 8601 UTC (detection time if the event has none); level, rule_id,
    rule_title, host; user and process (image) of the event; event_id; evidence_field and
    evidence: the key field of the event (an excerpt of at most CSV_EVIDENCE_CHARS around what
    matched); matched: `Field=event value` per field that matched, `; `-separated; patterns:
    `selection:Field|modifiers=rule value` per matched condition; attack: ATT&CK technique
    ids; tags: the rule's tags; alert_id; source_path, source_position: where the event was read.
    """
    rule, ev, src = alert.get("rule") or {}, alert.get("event") or {}, alert.get("source") or {}
    field, evidence = evidence_excerpt(alert, CSV_EVIDENCE_CHARS)
    matched = alert.get("matched") or []
    return [
        alert_time_text(alert), rule.get("level"), rule.get("id"), rule.get("title"),
        alert.get("host"), user_of(ev), process_text(ev), ev.get("EventID"),
        field, evidence,
        "; ".join(f"{f}={v}" for f, v in matched_values(alert)),
        "; ".join(f"{m.get('selection')}:{m.get('field')}={m.get('value')}" for m in matched),
        " ".join((alert.get("attack") or {}).get("techniques") or ()),
        " ".join(rule.get("tags") or ()),
        alert.get("alert_id"), src.get("path"), src.get("position"),
    ]
