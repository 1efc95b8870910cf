"""The alert document of a correlation result (stream.correlation), in the native alert shape.

    correlation_alert(result, detected_at=None) -> dict

Same top-level fields as a single-event alert (stream.alerts.build_alert), so every
consumer and rendering keeps working: `rule` is the correlation's metadata, `event` is
{} and `source` None (there is no single event; the contributing matches are listed
under `correlation.events` by alert id, host and record id), `matched` explains the
verdict in the same {selection, field, value, event_value} form, and `correlation`
holds the details. `alert_id` is stable: the same matches give the same id.
"""
from __future__ import annotations

from typing import Any

from sigstream.stream.alert_context import severity
from sigstream.stream.alerts import attack_with_names
from sigstream.stream.correlation import CorrelationResult
from sigstream.stream.event_time import iso_utc


def _explain(result: CorrelationResult) -> list[dict[str, Any]]:
    c = result.correlation
    out: list[dict[str, Any]] = []
    if c.expression_text is not None:
        out.append({"selection": "correlation", "field": c.type, "value": c.expression_text,
                    "event_value": result.value})
    else:
        measured = c.type if c.value_field is None else f"{c.type}({_field_text(c.value_field)})"
        if c.type == "value_percentile":
            measured = f"value_percentile({_field_text(c.value_field)}, {c.condition.get('percentile')})"
        for op, th in c.ops.items():
            out.append({"selection": "correlation", "field": measured, "value": {op: th},
                        "event_value": result.value})
    for name, value in result.group.items():
        out.append({"selection": "group-by", "field": name, "value": value})
    return out


def _field_text(f: Any) -> str:
    return f if isinstance(f, str) else ",".join(f)


def correlation_alert(result: CorrelationResult, detected_at: str | None = None) -> dict[str, Any]:
    """The native alert document of one correlation result."""
    c = result.correlation
    attack = attack_with_names(tuple(c.tags))
    sev_id, sev_name, score = severity(c.level)
    details: dict[str, Any] = {
        "type": c.type,
        "group": dict(result.group),
        "timespan": {"seconds": c.timespan_s, "text": c.timespan},
        "window": result.window,
        "first_time": iso_utc(result.first_time),
        "last_time": iso_utc(result.last_time),
        "value": result.value,
        "condition": dict(c.ops) if c.expression_text is None else {"expression": c.expression_text},
        "rules": list(c.rules),
        "events": [r.to_dict() for r in result.events],
        "events_total": result.events_total,
    }
    if c.value_field is not None:
        details["field"] = c.value_field if isinstance(c.value_field, str) else list(c.value_field)
    if c.type == "value_percentile":
        details["percentile"] = c.condition.get("percentile")
    alert: dict[str, Any] = {
        "alert_id": result.alert_id,
        "rule": c.meta(),
        "attack": {"techniques": list(attack["techniques"]), "tactics": list(attack["tactics"]),
                   "names": dict(attack["names"])},
        "severity": {"id": sev_id, "name": sev_name, "score": score},
        "host": result.host,
        "event_time": iso_utc(result.last_time),
        "matched": _explain(result),
        "event": {},
        "source": None,
        "correlation": details,
    }
    if detected_at is not None:
        alert["detected_at"] = detected_at
    return alert
