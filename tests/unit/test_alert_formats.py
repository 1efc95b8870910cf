"""Alert renderings: native vs its JSON Schema, ECS field types, OCSF Detection Finding (2004)."""
from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path

import jsonschema
import orjson
import pytest

from sigstream.connectors.readers import read_events
from sigstream.stream.alert_context import process_of, registry_of
from sigstream.stream.alert_formats import FORMATS, FormattingSink, render, to_ecs, to_ocsf
from sigstream.stream.alerts import build_alert
from sigstream.stream.engine import Engine
from sigstream.stream.rules import load_rules
from sigstream.connectors.sinks import ListSink

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "alert.schema.json").read_text())


@pytest.fixture(scope="module")
def alerts() -> list[dict]:
    loaded = load_rules([str(ROOT / "sigma_rules")])
    engine = Engine(loaded.rules)
    out = []
    for event, src in read_events([str(ROOT / "samples" / "fileless-intrusion.jsonl")]):
        for hit in engine.match(event):
            if loaded.is_suppressed(hit.rule):   # correlation building blocks never alert alone
                continue
            a = build_alert(hit, event, {"path": src.path, "position": src.position},
                            detected_at="2026-11-24T09:12:00.000000Z")
            out.append(orjson.loads(orjson.dumps(a, default=str)))   # as it travels
    assert len(out) >= 10
    return out


def _by_event(alerts, event_id):
    return next(a for a in alerts if a["event"].get("EventID") == event_id)


# ------------------------------------------------------------------ native ---

def test_native_alerts_match_the_schema(alerts):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for a in alerts:
        errors = sorted(validator.iter_errors(render(a, "native")), key=str)
        assert not errors, [e.message for e in errors]


def test_native_is_passthrough(alerts):
    assert render(alerts[0], "native") is alerts[0]


def test_schema_rejects_broken_alerts(alerts):
    validator = jsonschema.Draft202012Validator(SCHEMA)
    a = copy.deepcopy(alerts[0])
    del a["alert_id"]
    assert not validator.is_valid(a)
    a = copy.deepcopy(alerts[0])
    a["attack"]["techniques"] = ["1059"]
    assert not validator.is_valid(a)
    a = copy.deepcopy(alerts[0])
    a["rule"]["level"] = "severe"
    assert not validator.is_valid(a)


def test_schema_accepts_hunt_alert_without_detection_time_and_with_dedup(alerts):
    a = copy.deepcopy(alerts[0])
    del a["detected_at"]
    a["dedup"] = {"count": 3, "first_seen": "2026-11-24T09:12:00.000000Z",
                  "last_seen": "2026-11-24T09:13:00.000000Z", "window_s": 300.0, "key": [], "final": True}
    jsonschema.validate(a, SCHEMA)


def test_unknown_format_is_an_error(alerts):
    with pytest.raises(ValueError):
        render(alerts[0], "cef")
    with pytest.raises(ValueError):
        FormattingSink(ListSink(), "xml")


def test_formatting_sink(alerts):
    inner = ListSink()
    sink = FormattingSink(inner, "ocsf")
    sink.add(alerts[0])
    sink.close()
    assert inner.alerts[0]["class_uid"] == 2004


# --------------------------------------------------------------------- ECS ---
# ECS field -> type (https://www.elastic.co/guide/en/ecs/current/ecs-field-reference.html)
ECS_TYPES = {
    "@timestamp": "date", "ecs.version": "keyword", "message": "match_only_text", "tags": "keyword",
    "event.kind": "keyword", "event.id": "keyword", "event.created": "date", "event.severity": "long",
    "event.risk_score": "float", "event.category": "keyword", "event.type": "keyword",
    "event.code": "keyword", "event.provider": "keyword", "event.module": "keyword",
    "event.dataset": "keyword", "event.reason": "keyword",
    "rule.id": "keyword", "rule.uuid": "keyword", "rule.name": "keyword", "rule.description": "keyword",
    "rule.reference": "keyword", "rule.author": "keyword", "rule.ruleset": "keyword", "rule.category": "keyword",
    "threat.framework": "keyword", "threat.tactic.id": "keyword", "threat.tactic.name": "keyword",
    "threat.tactic.reference": "keyword", "threat.technique.id": "keyword",
    "threat.technique.name": "keyword", "threat.technique.reference": "keyword",
    "threat.technique.subtechnique.id": "keyword", "threat.technique.subtechnique.name": "keyword",
    "threat.technique.subtechnique.reference": "keyword",
    "host.name": "keyword", "host.hostname": "keyword",
    "process.executable": "keyword", "process.name": "keyword", "process.pid": "long",
    "process.entity_id": "keyword", "process.command_line": "wildcard", "process.working_directory": "keyword",
    "process.parent.executable": "keyword", "process.parent.name": "keyword", "process.parent.pid": "long",
    "process.parent.entity_id": "keyword", "process.parent.command_line": "wildcard",
    "user.name": "keyword", "user.domain": "keyword",
    "registry.path": "keyword", "registry.hive": "keyword", "registry.key": "keyword",
    "registry.value": "keyword", "registry.data.strings": "wildcard",
    "winlog.channel": "keyword", "winlog.provider_name": "keyword", "winlog.computer_name": "keyword",
    "winlog.event_id": "keyword", "winlog.record_id": "keyword",
    "event.start": "date", "event.end": "date", "related.hosts": "keyword",   # correlation alerts
}


def _flatten(doc, prefix=""):
    for k, v in doc.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and name not in ("winlog.event_data", "sigstream"):
            yield from _flatten(v, name + ".")
        else:
            yield name, v


def _type_ok(ecs_type, value):
    values = value if isinstance(value, list) else [value]
    for v in values:
        if ecs_type in ("keyword", "wildcard", "match_only_text"):
            ok = isinstance(v, str)
        elif ecs_type == "long":
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif ecs_type == "float":
            ok = isinstance(v, float)
        elif ecs_type == "date":
            ok = isinstance(v, str) and datetime.fromisoformat(v.replace("Z", "+00:00")) is not None
        else:
            ok = False
        if not ok:
            return False
    return True


def test_ecs_field_types(alerts):
    seen = set()
    for a in alerts:
        doc = to_ecs(a)
        for name, value in _flatten(doc):
            if name.startswith(("sigstream", "winlog.event_data")):
                continue
            assert name in ECS_TYPES, f"unexpected field {name}"
            assert _type_ok(ECS_TYPES[name], value), (name, value)
            seen.add(name)
        assert doc["event"]["kind"] == "alert"
        assert all(isinstance(v, str) for v in doc["winlog"]["event_data"].values())
        assert all(v is not None for _, v in _flatten({k: v for k, v in doc.items() if k != "sigstream"}))
    # the sample intrusion exercises process, parent, registry and sub-techniques
    for must in ("process.pid", "process.entity_id", "process.parent.executable", "registry.path",
                 "registry.value", "threat.technique.subtechnique.id", "user.name", "event.severity"):
        assert must in seen, must


def test_ecs_registry_and_threat(alerts):
    a = next(x for x in alerts if x["event"].get("EventID") == 13)
    doc = to_ecs(a)
    reg = doc["registry"]
    assert reg["hive"] in ("HKLM", "HKU", "HKCU", "HKCR")
    assert reg["path"].endswith("\\" + reg["value"])
    assert reg["path"].startswith(reg["hive"] + "\\" + reg["key"])
    t = to_ecs(_by_event(alerts, 1))["threat"]
    assert "T1059" in t["technique"]["id"]
    assert "T1059.001" in t["technique"]["subtechnique"]["id"]
    assert t["technique"]["name"][t["technique"]["id"].index("T1059")] == "Command and Scripting Interpreter"
    assert "Execution" in t["tactic"]["name"]


# -------------------------------------------------------------------- OCSF ---

def _has(doc, path):
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return False
        doc = doc[part]
    return doc not in (None, "", [])


OCSF_REQUIRED = ("activity_id", "category_uid", "class_uid", "finding_info", "finding_info.uid",
                 "metadata", "metadata.product", "metadata.version", "severity_id", "time", "type_uid")


def test_ocsf_detection_finding_required_attributes(alerts):
    for a in alerts:
        doc = to_ocsf(a)
        missing = [p for p in OCSF_REQUIRED if not _has(doc, p)]
        assert not missing, missing
        assert doc["class_uid"] == 2004 and doc["category_uid"] == 2
        assert doc["activity_id"] == 1
        assert doc["type_uid"] == 2004 * 100 + doc["activity_id"]
        assert isinstance(doc["time"], int) and doc["time"] > 1_600_000_000_000
        assert doc["severity_id"] in (0, 1, 2, 3, 4, 5, 6, 99)
        assert doc["finding_info"]["uid"] == a["alert_id"]
        assert doc["finding_info"]["title"] == a["rule"]["title"]
        assert doc["finding_info"]["analytic"]["type_id"] == 1
        assert doc["metadata"]["product"]["name"] == "sigstream"
        assert doc["device"]["hostname"] == a["host"]
        for attack in doc["finding_info"]["attacks"]:
            assert attack["technique"]["uid"].startswith("T")


def test_ocsf_evidence_and_severity(alerts):
    doc = to_ocsf(_by_event(alerts, 1))
    proc = doc["evidences"][0]["process"]
    assert isinstance(proc["pid"], int) and proc["uid"].startswith("{")
    assert proc["file"]["path"].lower().endswith("powershell.exe")
    assert doc["severity"] == "High" and doc["severity_id"] == 4
    reg = to_ocsf(_by_event(alerts, 13))["evidences"][0]["reg_value"]
    assert reg["path"] and reg["name"]


def test_ocsf_dedup_update(alerts):
    a = dict(alerts[0], dedup={"count": 4, "first_seen": "2026-11-24T09:12:00Z",
                               "last_seen": "2026-11-24T09:14:00Z", "window_s": 300, "key": [], "final": True})
    doc = to_ocsf(a)
    assert doc["activity_id"] == 2 and doc["type_uid"] == 200402
    assert doc["count"] == 4 and doc["finding_info"]["related_events_count"] == 4
    assert doc["end_time"] - doc["start_time"] == 120_000


def test_every_format_is_json_serialisable(alerts):
    for fmt in FORMATS:
        for a in alerts:
            json.dumps(render(a, fmt))


# ------------------------------------------------------------ alert context ---

def test_process_and_registry_context():
    ev = {"EventID": 4688, "NewProcessName": "C:\\x\\a.exe", "NewProcessId": "0x1008",
          "CommandLine": "a -b", "SubjectUserName": "bob", "ParentProcessName": "C:\\p.exe", "ProcessId": "0x10"}
    p = process_of(ev)
    assert p["pid"] == 4104 and p["name"] == "a.exe" and p["parent"]["pid"] == 16
    assert process_of({"EventID": 4104, "Execution_ProcessID": 77}) == {"pid": 77}
    assert process_of({"EventID": 19}) is None
    r = registry_of({"EventID": 13, "EventType": "SetValue",
                     "TargetObject": "HKU\\S-1-5-21\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\upd",
                     "Details": "powershell -w hidden"})
    assert r == {"path": "HKU\\S-1-5-21\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\upd",
                 "hive": "HKU", "key": "S-1-5-21\\Software\\Microsoft\\Windows\\CurrentVersion\\Run",
                 "value": "upd", "event_type": "SetValue", "data": "powershell -w hidden"}
    k = registry_of({"EventID": 12, "EventType": "CreateKey", "TargetObject": "HKLM\\SOFTWARE\\X"})
    assert "value" not in k and k["key"] == "SOFTWARE\\X"


# ------------------------------------------------------------ correlation alerts ---

CORRELATIONS = """\
title: many logons
id: 0e95725d-7320-415d-80f7-004da920fc11
name: many_logons
status: test
level: high
tags: [attack.credential-access, attack.t1110.001]
references: [https://example.org/brute]
correlation:
  type: event_count
  rules: [logon]
  group-by: [Computer]
  timespan: 5m
  condition: {gte: 2}
---
title: logon then process
id: 0e95725d-7320-415d-80f7-004da920fc12
status: test
level: critical
correlation:
  type: temporal_ordered
  rules: [logon, proc]
  group-by: [User]
  timespan: 10m
  generate: true
---
title: logon
id: 0e95725d-7320-415d-80f7-004da920fc13
name: logon
status: test
logsource: {product: windows, service: security}
detection: {sel: {EventID: 4624}, condition: sel}
---
title: proc
id: 0e95725d-7320-415d-80f7-004da920fc14
name: proc
status: test
logsource: {product: windows, category: process_creation}
detection: {sel: {Image|endswith: evil.exe}, condition: sel}
"""


@pytest.fixture(scope="module")
def correlation_alerts(tmp_path_factory) -> list[dict]:
    from sigstream.stream.correlation import Correlator, Match
    from sigstream.stream.correlation_alert import correlation_alert

    f = tmp_path_factory.mktemp("corr") / "c.yml"
    f.write_text(CORRELATIONS)
    loaded = load_rules([f], use_cache=False)
    assert loaded.errors == []
    ids = {r.name: r.id for r in loaded.rules}
    c = Correlator(loaded.correlations)
    t0 = datetime.fromisoformat("2026-11-24T09:00:00+00:00").timestamp()
    out = []
    for i, (rule, host, user) in enumerate([("logon", "WKS-1", "alice"), ("logon", "WKS-1", "bob"),
                                            ("proc", "WKS-2", "alice")]):
        m = Match(ids[rule], rule, t0 + 60 * i, {"Computer": host, "User": user}, f"{i:032x}", host, 100 + i)
        out += c.feed(m)
    out += c.flush()
    docs = [orjson.loads(orjson.dumps(correlation_alert(r, detected_at="2026-11-24T09:05:00.000000Z")))
            for r in out]
    assert [d["rule"]["title"] for d in docs] == ["many logons", "logon then process"]
    return docs


def test_correlation_alerts_match_the_schema(correlation_alerts):
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for a in correlation_alerts:
        errors = sorted(validator.iter_errors(render(a, "native")), key=str)
        assert not errors, [e.message for e in errors]
    broken = copy.deepcopy(correlation_alerts[0])
    broken["correlation"]["window"] = "tumbling"
    del broken["correlation"]["events_total"]
    assert len(list(validator.iter_errors(broken))) == 2


def test_ecs_correlation_alert(correlation_alerts):
    many, chain = (to_ecs(a) for a in correlation_alerts)
    for doc in (many, chain):
        for name, value in _flatten(doc):
            if name.startswith("sigstream"):
                continue
            assert name in ECS_TYPES, f"unexpected field {name}"
            assert _type_ok(ECS_TYPES[name], value), (name, value)
        assert doc["event"]["kind"] == "alert" and "winlog" not in doc and "process" not in doc
        assert doc["event"]["category"] == ["intrusion_detection"] and doc["rule"]["category"] == "correlation"
    assert many["host"]["name"] == "WKS-1" and many["message"] == "many logons"
    assert many["event"]["start"] == "2026-11-24T09:00:00.000000Z"
    assert many["event"]["end"] == many["@timestamp"] == "2026-11-24T09:01:00.000000Z"
    assert many["threat"]["technique"]["subtechnique"]["id"] == ["T1110.001"]
    assert many["sigstream"]["correlation"]["group"] == {"Computer": "WKS-1"}
    assert "host" not in chain and chain["related"]["hosts"] == ["WKS-1", "WKS-2"]


def test_ocsf_correlation_alert(correlation_alerts):
    for a in correlation_alerts:
        doc = to_ocsf(a)
        missing = [p for p in OCSF_REQUIRED if not _has(doc, p)]
        assert not missing, missing
        info = doc["finding_info"]
        assert info["types"] == ["Sigma", "Correlation"]
        assert [e["uid"] for e in info["related_events"]] == [e["alert_id"] for e in a["correlation"]["events"]]
        assert info["related_events_count"] == doc["count"] == a["correlation"]["events_total"]
        assert doc["start_time"] == info["first_seen_time"] and doc["end_time"] == info["last_seen_time"]
        assert doc["unmapped"]["sigma"]["correlation"]["type"] == a["correlation"]["type"]
        assert doc["evidences"][0]["data"]["correlation"]["value"] == a["correlation"]["value"]
    many = to_ocsf(correlation_alerts[0])
    assert many["end_time"] - many["start_time"] == 60_000 and many["device"]["hostname"] == "WKS-1"
    assert many["severity_id"] == 4 and to_ocsf(correlation_alerts[1])["severity_id"] == 5


def test_correlation_alerts_render_in_every_format(correlation_alerts):
    for fmt in FORMATS:
        sink = ListSink()
        fs = FormattingSink(sink, fmt)
        for a in correlation_alerts:
            fs.add(a)
        assert len(sink.alerts) == 2
        json.dumps(sink.alerts)


# ------------------------------------------------------------ alert time ---
# ECS @timestamp and OCSF time: the event's time, else detected_at (issue 14).

DETECTED = "2026-11-24T09:12:00.000000Z"


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


DETECTED_MS = _ms(DETECTED)


def _timeless(alert: dict) -> dict:
    """The alert of an event that carries no parseable time."""
    a = copy.deepcopy(alert)
    for f in ("TimeCreated", "UtcTime", "@timestamp"):
        a["event"].pop(f, None)
    a["event_time"] = None
    return a


def test_time_is_the_event_time(alerts):
    a = _by_event(alerts, 1)
    t = a["event"]["TimeCreated"]
    assert a["detected_at"] == DETECTED and t != DETECTED
    assert to_ecs(a)["@timestamp"] == t
    assert to_ocsf(a)["time"] == _ms(t) and to_ocsf(a)["finding_info"]["created_time"] == DETECTED_MS


def test_time_from_utctime_when_timecreated_does_not_parse(alerts):
    a = copy.deepcopy(_by_event(alerts, 1))
    a["event"]["TimeCreated"] = a["event_time"] = "yesterday"
    a["event"]["UtcTime"] = "2026-11-24 08:00:00.250"
    assert to_ecs(a)["@timestamp"] == "2026-11-24T08:00:00.250000Z"
    assert to_ocsf(a)["time"] == _ms("2026-11-24T08:00:00.250Z")


def test_time_falls_back_to_detected_at(alerts):
    for event_id in (1, 13, 4104):
        a = _timeless(_by_event(alerts, event_id))
        assert to_ecs(a)["@timestamp"] == DETECTED
        doc = to_ocsf(a)
        assert doc["time"] == DETECTED_MS
        assert "first_seen_time" not in doc["finding_info"]   # no event time: not invented


def test_time_without_any_time_is_still_present(alerts):
    a = _timeless(alerts[0])
    del a["detected_at"]
    before = datetime.now().timestamp() * 1000
    assert _ms(to_ecs(a)["@timestamp"]) >= before - 1000
    assert to_ocsf(a)["time"] >= before - 1000


def test_correlation_alert_time(correlation_alerts):
    many = correlation_alerts[0]            # event {}: its time is the last contributing match
    assert many["event"] == {} and many["event_time"] == "2026-11-24T09:01:00.000000Z"
    assert to_ecs(many)["@timestamp"] == "2026-11-24T09:01:00.000000Z"
    assert to_ocsf(many)["time"] == _ms("2026-11-24T09:01:00Z")
    a = copy.deepcopy(many)
    a["event_time"] = None                  # no time of its own: the detection time
    assert to_ecs(a)["@timestamp"] == "2026-11-24T09:05:00.000000Z"
    assert to_ocsf(a)["time"] == _ms("2026-11-24T09:05:00Z")
    validator = jsonschema.Draft202012Validator(SCHEMA)
    assert not list(validator.iter_errors(many))
