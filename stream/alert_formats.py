"""Alert renderings: the native document as it is, ECS (Elastic) and OCSF Detection Finding.

    render(alert, "native" | "ecs" | "ocsf") -> dict

`native` is the document of stream.alerts.build_alert unchanged (schemas/alert.schema.json).
`ecs` follows the Elastic Common Schema 8.x field set (event.kind "alert", rule.*, threat.*,
host.*, process.*, registry.*, user.*), with the Windows event under `winlog` and
sigstream-only facts under `sigstream`. `ocsf` is an OCSF 1.3 Detection Finding (class_uid
2004, category_uid 2); an alert carrying a de-duplication count (stream.dedup) is an Update
(activity_id 2) of the same finding uid.

A correlation alert (stream.correlation_alert: `correlation` set, `event` {}) renders the
same way without event facts: ECS gets event.start/end = first/last contributing match,
event.category "intrusion_detection" and `sigstream.correlation`; OCSF gets the
contributing alerts as finding_info.related_events, their count and time range, and the
details under unmapped.sigma.correlation.

Both always carry a time: ECS `@timestamp` and OCSF `time` are the event's time
(stream.alert_summary.alert_time), else the detection time `detected_at`.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sigstream.stream.alert_context import basename, process_of, registry_of, severity
from sigstream.stream.alert_summary import alert_event_time, alert_time
from sigstream.stream.attack_names import tactic_name, tactic_url, technique_name, technique_url
from sigstream.stream.event_time import iso_utc

FORMATS = ("native", "ecs", "ocsf")
ECS_VERSION = "8.11.0"
OCSF_VERSION = "1.3.0"
PRODUCT = {"name": "sigstream", "vendor_name": "sigstream"}


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("sigstream")
    except Exception:  # noqa: BLE001 - not installed: still render
        return "0"


def _epoch_ms(iso: str | None) -> int | None:
    if not isinstance(iso, str) or not iso:
        return None
    try:
        dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def _time(alert: dict) -> float:
    """The document's time: the event's (stream.alert_summary.alert_time: the event's own
    fields, the alert's event_time, then detected_at); the rendering time as a last resort,
    since a SIEM drops or misfiles a document without one."""
    ts = alert_time(alert)
    return datetime.now(timezone.utc).timestamp() if ts is None else ts


def _event_ms(alert: dict) -> int | None:
    """The event's time (own fields, then event_time), without falling back to detected_at."""
    ts = alert_event_time(alert)
    return None if ts is None else int(ts * 1000)


def _prune(doc: Any) -> Any:
    """Drop None values and empty containers (SIEMs prefer absent fields to nulls)."""
    if isinstance(doc, dict):
        out = {k: _prune(v) for k, v in doc.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}
    if isinstance(doc, list):
        return [_prune(v) for v in doc if v is not None]
    return doc


def _strings(event: dict) -> dict[str, str]:
    """winlog.event_data is a keyword map: every value as text (lists/objects as JSON)."""
    import orjson
    return {k: v if isinstance(v, str) else orjson.dumps(v, default=str).decode()
            for k, v in event.items() if v is not None}


def _user(user: str | None) -> dict[str, str] | None:
    if not isinstance(user, str) or not user:
        return None
    domain, sep, name = user.rpartition("\\")
    return {"name": name, "domain": domain} if sep else {"name": user}


def _techniques(alert: dict) -> list[str]:
    return list((alert.get("attack") or {}).get("techniques") or [])


def _tactics(alert: dict) -> list[str]:
    return list((alert.get("attack") or {}).get("tactics") or [])


# ---------------------------------------------------------------- native ---

def to_native(alert: dict[str, Any]) -> dict[str, Any]:
    return alert


# ------------------------------------------------------------------- ECS ---

def _ecs_process(p: dict | None) -> dict | None:
    if not p:
        return None
    out = {"executable": p.get("image"), "name": p.get("name"), "pid": p.get("pid"),
           "entity_id": p.get("guid"), "command_line": p.get("command_line"),
           "working_directory": p.get("current_directory")}
    if p.get("parent"):
        out["parent"] = _ecs_process(p["parent"])
    return out


def _ecs_registry(r: dict | None) -> dict | None:
    if not r:
        return None
    data = r.get("data")
    return {"path": r.get("path"), "hive": r.get("hive"), "key": r.get("key"), "value": r.get("value"),
            "data": {"strings": [str(data)]} if data is not None else None}


def _ecs_threat(alert: dict) -> dict:
    techs = _techniques(alert)
    main = [t for t in techs if "." not in t] + sorted({t.split(".")[0] for t in techs if "." in t})
    main = list(dict.fromkeys(main))
    subs = [t for t in techs if "." in t]
    tactics = _tactics(alert)
    return {
        "framework": "MITRE ATT&CK",
        "tactic": {"id": tactics, "name": [tactic_name(t) or t for t in tactics],
                   "reference": [tactic_url(t) for t in tactics]},
        "technique": {
            "id": main, "name": [technique_name(t) or t for t in main],
            "reference": [technique_url(t) for t in main],
            "subtechnique": {"id": subs, "name": [technique_name(t) or t for t in subs],
                             "reference": [technique_url(t) for t in subs]},
        },
    }


def to_ecs(alert: dict[str, Any]) -> dict[str, Any]:
    rule = alert.get("rule") or {}
    ev = alert.get("event") or {}
    sev_id, sev_name, risk = severity(rule.get("level"))
    proc = process_of(ev)
    reg = registry_of(ev)
    host = alert.get("host")
    refs = rule.get("references") or []
    doc = {
        "@timestamp": iso_utc(_time(alert)),
        "ecs": {"version": ECS_VERSION},
        "message": rule.get("title"),
        "tags": list(rule.get("tags") or []),
        "event": {
            "kind": "alert", "module": "sigstream", "dataset": "sigstream.alerts",
            "id": alert.get("alert_id"), "created": alert.get("detected_at"),
            "severity": sev_id, "risk_score": risk,
            "category": (["registry"] if reg else []) + (["process"] if proc and proc.get("image") else []),
            "type": ["info"], "code": str(ev["EventID"]) if ev.get("EventID") is not None else None,
            "provider": ev.get("Provider_Name"),
            "reason": rule.get("description"),
        },
        "rule": {
            "id": rule.get("id"), "uuid": rule.get("id"), "name": rule.get("title"),
            "description": rule.get("description"), "reference": refs[0] if refs else None,
            "author": [rule["author"]] if rule.get("author") else None,
            "ruleset": "sigma", "category": (rule.get("logsource") or {}).get("category"),
        },
        "threat": _ecs_threat(alert),
        "host": {"name": host, "hostname": host.split(".")[0] if isinstance(host, str) else None},
        "process": _ecs_process(proc),
        "user": _user((proc or {}).get("user") or ev.get("User")),
        "registry": _ecs_registry(reg),
        "winlog": {"channel": ev.get("Channel"), "provider_name": ev.get("Provider_Name"),
                   "computer_name": ev.get("Computer"),
                   "event_id": str(ev["EventID"]) if ev.get("EventID") is not None else None,
                   "record_id": str(ev["EventRecordID"]) if ev.get("EventRecordID") is not None else None,
                   "event_data": _strings(ev)},
        "sigstream": {"alert_id": alert.get("alert_id"), "level": rule.get("level"),
                      "status": rule.get("status"), "matched": alert.get("matched"),
                      "source": alert.get("source"), "dedup": alert.get("dedup")},
    }
    corr = alert.get("correlation")
    if corr:
        event = doc["event"]
        event["start"], event["end"] = corr.get("first_time"), corr.get("last_time")
        event["category"] = ["intrusion_detection"]
        doc["rule"]["category"] = "correlation"
        doc["sigstream"]["correlation"] = corr
        hosts = sorted({e["host"] for e in corr.get("events") or () if e.get("host")})
        if hosts:
            doc["related"] = {"hosts": hosts}
    return _prune(doc)


# ------------------------------------------------------------------ OCSF ---

def _ocsf_process(p: dict | None) -> dict | None:
    if not p:
        return None
    out = {"pid": p.get("pid"), "uid": p.get("guid"), "name": p.get("name"),
           "cmd_line": p.get("command_line"), "user": _user(p.get("user")),
           "file": {"path": p["image"], "name": basename(p["image"]), "type_id": 1} if p.get("image") else None}
    if p.get("parent"):
        out["parent_process"] = _ocsf_process(p["parent"])
    return out


def _ocsf_attacks(alert: dict) -> list[dict]:
    attacks: list[dict] = []
    tactics = [{"uid": t, "name": tactic_name(t)} for t in _tactics(alert)]
    for t in _techniques(alert):
        entry: dict[str, Any] = {"version": "v16"}
        if "." in t:
            parent = t.split(".")[0]
            entry["technique"] = {"uid": parent, "name": technique_name(parent)}
            entry["sub_technique"] = {"uid": t, "name": technique_name(t)}
        else:
            entry["technique"] = {"uid": t, "name": technique_name(t)}
        if tactics:
            entry["tactics"] = tactics
            entry["tactic"] = tactics[0]
        attacks.append(entry)
    if not attacks and tactics:
        attacks = [{"tactics": tactics, "tactic": tactics[0]}]
    return attacks


def to_ocsf(alert: dict[str, Any]) -> dict[str, Any]:
    rule = alert.get("rule") or {}
    ev = alert.get("event") or {}
    sev_id, sev_name, risk = severity(rule.get("level"))
    dedup = alert.get("dedup") or {}
    activity_id = 2 if dedup.get("count", 1) > 1 else 1
    event_ms = _event_ms(alert)
    detected_ms = _epoch_ms(alert.get("detected_at"))
    proc = process_of(ev)
    reg = registry_of(ev)
    host = alert.get("host")
    evidence: dict[str, Any] = {"data": {"matched": alert.get("matched")}}
    if proc:
        evidence["process"] = _ocsf_process(proc)
    if reg:
        evidence["reg_value" if reg.get("value") is not None else "reg_key"] = {
            "path": reg.get("path"), "name": reg.get("value"), "data": reg.get("data")}
    doc = {
        "class_uid": 2004, "class_name": "Detection Finding",
        "category_uid": 2, "category_name": "Findings",
        "activity_id": activity_id, "activity_name": "Update" if activity_id == 2 else "Create",
        "type_uid": 2004 * 100 + activity_id,
        "type_name": f"Detection Finding: {'Update' if activity_id == 2 else 'Create'}",
        "time": int(_time(alert) * 1000),
        "severity_id": sev_id, "severity": sev_name,
        "status_id": 1, "status": "New", "is_alert": True,
        "risk_score": int(risk),
        "message": rule.get("title"),
        "metadata": {"version": OCSF_VERSION, "uid": alert.get("alert_id"),
                     "product": dict(PRODUCT, version=_version()),
                     "original_time": alert.get("event_time"),
                     "labels": ["sigma"]},
        "finding_info": {
            "uid": alert.get("alert_id"), "title": rule.get("title"), "desc": rule.get("description"),
            "types": ["Sigma"], "src_url": (rule.get("references") or [None])[0],
            "analytic": {"uid": rule.get("id"), "name": rule.get("title"), "type_id": 1, "type": "Rule",
                         "category": (rule.get("logsource") or {}).get("category")},
            "attacks": _ocsf_attacks(alert),
            "first_seen_time": _epoch_ms(dedup.get("first_seen")) or event_ms,
            "last_seen_time": _epoch_ms(dedup.get("last_seen")) or event_ms,
            "created_time": detected_ms,
            "related_events_count": dedup.get("count"),
        },
        "device": {"hostname": host, "name": host, "type_id": 0, "type": "Unknown"} if host else None,
        "evidences": [evidence],
        "resources": [{"type": "host", "name": host, "uid": host}] if host else None,
        "start_time": _epoch_ms(dedup.get("first_seen")) or event_ms,
        "end_time": _epoch_ms(dedup.get("last_seen")) or event_ms,
        "count": dedup.get("count"),
        "unmapped": {"sigma": {"level": rule.get("level"), "status": rule.get("status"),
                               "tags": rule.get("tags")},
                     "event": ev, "source": alert.get("source")},
    }
    corr = alert.get("correlation")
    if corr:
        first_ms, last_ms = _epoch_ms(corr.get("first_time")), _epoch_ms(corr.get("last_time"))
        info = doc["finding_info"]
        info["types"] = ["Sigma", "Correlation"]
        info["related_events"] = [{"uid": e.get("alert_id"), "type": "sigstream alert",
                                   "product_uid": e.get("rule_id") or e.get("rule_name")}
                                  for e in corr.get("events") or ()]
        info["related_events_count"] = corr.get("events_total")
        info["first_seen_time"] = first_ms
        info["last_seen_time"] = last_ms
        doc["start_time"], doc["end_time"] = first_ms, last_ms
        doc["count"] = dedup.get("count") or corr.get("events_total")
        doc["evidences"][0]["data"]["correlation"] = {
            "type": corr.get("type"), "group": corr.get("group"), "value": corr.get("value"),
            "condition": corr.get("condition")}
        doc["unmapped"]["sigma"]["correlation"] = corr
    return _prune(doc)


RENDERERS = {"native": to_native, "ecs": to_ecs, "ocsf": to_ocsf}


def render(alert: dict[str, Any], fmt: str = "native") -> dict[str, Any]:
    try:
        return RENDERERS[fmt](alert)
    except KeyError:
        raise ValueError(f"unknown alert format {fmt!r} (one of {', '.join(FORMATS)})") from None


class FormattingSink:
    """Wraps an AlertSink (connectors.sinks) so that it receives the chosen rendering."""

    def __init__(self, inner: Any, fmt: str = "native"):
        if fmt not in RENDERERS:
            raise ValueError(f"unknown alert format {fmt!r}")
        self.inner, self.fmt = inner, fmt

    def add(self, alert: dict[str, Any]) -> None:
        self.inner.add(render(alert, self.fmt))

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()
