"""Unit tests for stream.alerts (alert documents, ATT&CK, ids) and connectors.sinks."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime

import orjson
import pytest
import yaml

from sigstream.connectors.sinks import CSV_COLUMNS, CsvSink, JsonlSink, ListSink
from sigstream.stream.alerts import alert_id, attack_of, build_alert, event_fingerprint
from sigstream.stream.engine import Engine
from sigstream.stream.rules import load_rule_text

SYSMON = "Microsoft-Windows-Sysmon/Operational"
RULE_ID = "9f6f4a4e-7c1e-4e0b-9a57-3c9d3d2b1a01"


def _engine():
    text = yaml.safe_dump({
        "title": "Encoded PowerShell", "id": RULE_ID, "status": "test",
        "description": "encoded command", "author": "tester", "date": "2024-05-06",
        "references": ["https://example.org/ref"],
        "tags": ["attack.execution", "attack.t1059.001", "attack.defense-evasion", "attack.T1027",
                 "attack.command-and-control", "attack.g0007", "car.2016-03-001"],
        "logsource": {"product": "windows", "category": "process_creation"},
        "detection": {"img": {"Image|endswith": "\\powershell.exe"},
                      "cmd": {"CommandLine|contains": "-enc"}, "condition": "img and cmd"},
        "falsepositives": ["installers"], "level": "high",
    })
    loaded = load_rule_text(text)
    assert not loaded.errors
    return Engine(loaded.rules)


def _event(n=1, **kw):
    ev = {"EventID": 1, "Channel": SYSMON, "Computer": "WKS-1.corp", "EventRecordID": n,
          "TimeCreated": "2024-05-06T07:08:09.123Z", "Image": "C:\\Windows\\powershell.exe",
          "CommandLine": f"powershell -enc AAAA{n}", "User": "CORP\\bob"}
    ev.update(kw)
    return ev


def _alert(ev=None, **kw):
    engine = _engine()
    ev = ev or _event()
    (hit,) = engine.match(ev)
    return build_alert(hit, ev, **kw)


def test_alert_document_fields():
    ev = _event()
    alert = _alert(ev, source={"path": "/x/y.jsonl", "position": 3})
    assert set(alert) == {"alert_id", "rule", "attack", "severity", "process", "host", "event_time",
                          "matched", "event", "source"}
    rule = alert["rule"]
    assert rule["id"] == RULE_ID and rule["title"] == "Encoded PowerShell" and rule["level"] == "high"
    assert rule["status"] == "test" and rule["author"] == "tester" and rule["date"] == "2024-05-06"
    assert rule["references"] == ["https://example.org/ref"]
    assert rule["logsource"] == {"product": "windows", "category": "process_creation"}
    assert rule["falsepositives"] == ["installers"]
    assert "attack.t1059.001" in rule["tags"]
    assert alert["attack"]["techniques"] == ["T1059.001", "T1027"]
    assert alert["attack"]["tactics"] == ["TA0002", "TA0005", "TA0011"]
    assert alert["attack"]["names"]["T1059.001"] == "PowerShell"
    assert alert["attack"]["names"]["TA0002"] == "Execution"
    assert alert["severity"]["name"] == "High"
    assert alert["process"]["image"].lower().endswith("powershell.exe")
    assert alert["host"] == "WKS-1.corp"
    assert alert["event_time"] == "2024-05-06T07:08:09.123Z"
    assert alert["event"] is ev
    assert alert["source"] == {"path": "/x/y.jsonl", "position": 3}
    assert alert["matched"] == [
        {"selection": "img", "field": "Image|endswith", "value": "*\\powershell.exe",
         "event_value": "C:\\Windows\\powershell.exe"},
        {"selection": "cmd", "field": "CommandLine|contains", "value": "*-enc*",
         "event_value": "powershell -enc AAAA1"},
    ]
    assert "detected_at" not in alert


def test_alert_detected_at_and_missing_host():
    ev = _event()
    del ev["Computer"], ev["TimeCreated"]
    alert = _alert(ev, detected_at="2024-01-01T00:00:00Z")
    assert alert["detected_at"] == "2024-01-01T00:00:00Z"
    assert alert["host"] is None and alert["event_time"] is None and alert["source"] is None


@pytest.mark.parametrize("tags, techniques, tactics", [
    (["attack.t1059", "attack.t1059.001", "attack.T1105"], ["T1059", "T1059.001", "T1105"], []),
    (["attack.execution", "attack.command-and-control", "attack.command_and_control"], [],
     ["TA0002", "TA0011", "TA0011"]),
    (["attack.initial-access", "attack.lateral-movement", "attack.impact", "attack.reconnaissance"], [],
     ["TA0001", "TA0008", "TA0040", "TA0043"]),
    (["attack.t1059.01", "attack.t12345", "attack.s0002", "attack.g0016", "cve.2021-1234", "detection.dfir"],
     [], []),
    (["ATTACK.PERSISTENCE", "Attack.T1547.001"], ["T1547.001"], ["TA0003"]),
    ([], [], []),
])
def test_attack_of(tags, techniques, tactics):
    assert attack_of(tags) == {"techniques": techniques, "tactics": tactics}


def test_alert_id_stable_for_same_rule_and_event():
    a1 = _alert(_event(7))
    a2 = _alert(_event(7))
    assert a1["alert_id"] == a2["alert_id"]
    assert len(a1["alert_id"]) == 32
    assert a1["alert_id"] == alert_id(RULE_ID, _event(7))


def test_alert_id_differs_for_another_event_or_rule():
    assert _alert(_event(7))["alert_id"] != _alert(_event(8))["alert_id"]
    assert alert_id(RULE_ID, _event(7)) != alert_id("another-rule", _event(7))


def test_event_fingerprint_uses_record_identity_when_present():
    a = _event(5, CommandLine="one")
    b = _event(5, CommandLine="two")  # a re-read of the same record: same identity
    assert event_fingerprint(a) == event_fingerprint(b)
    assert event_fingerprint(a) != event_fingerprint(_event(6))
    assert event_fingerprint(_event(5, Computer="other")) != event_fingerprint(a)


def test_event_fingerprint_without_record_id_uses_content_in_any_key_order():
    a = {"Image": "x", "CommandLine": "y", "When": datetime(2024, 1, 1)}
    b = {"When": datetime(2024, 1, 1), "CommandLine": "y", "Image": "x"}
    assert event_fingerprint(a) == event_fingerprint(b)
    assert event_fingerprint(a) != event_fingerprint({**a, "CommandLine": "z"})


# ------------------------------------------------------------------ sinks

def test_list_sink():
    sink = ListSink()
    a = _alert()
    sink.add(a)
    sink.flush()
    sink.close()
    assert sink.alerts == [a]


def test_jsonl_sink_round_trip():
    out = io.BytesIO()
    sink = JsonlSink(out)
    alerts = [_alert(_event(i), source={"path": "p", "position": i}) for i in (1, 2)]
    alerts[1]["event"]["Odd"] = datetime(2024, 1, 2, 3, 4, 5)  # not JSON: written as a string
    for a in alerts:
        sink.add(a)
    sink.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    back = [json.loads(line) for line in lines]
    assert back[0] == json.loads(orjson.dumps(alerts[0]))
    assert back[0]["rule"]["id"] == RULE_ID and back[0]["source"] == {"path": "p", "position": 1}
    assert back[1]["event"]["Odd"].startswith("2024-01-02")
    assert back[0]["alert_id"] != back[1]["alert_id"]


def test_csv_sink_round_trip():
    out = io.BytesIO()
    sink = CsvSink(out)
    ev = _event(3, CommandLine='powershell -enc "A,B"\nnext line')
    sink.add(_alert(ev, source={"path": "/logs/a.jsonl", "position": 12}))
    no_source = _event(4)
    sink.add(_alert(no_source))
    sink.close()
    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode("utf-8"), newline="")))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert len(rows) == 2
    r = rows[0]
    assert r["rule_id"] == RULE_ID and r["rule_title"] == "Encoded PowerShell" and r["level"] == "high"
    assert r["host"] == "WKS-1.corp" and r["time"] == "2024-05-06T07:08:09.123000Z"
    assert r["event_id"] == "1" and r["process"] == "C:\\Windows\\powershell.exe" and r["user"] == "CORP\\bob"
    # the event's values, commas, quotes and newline intact (csv quoting), not only the patterns
    assert r["evidence_field"] == "CommandLine" and r["evidence"] == 'powershell -enc "A,B"\nnext line'
    assert r["matched"] == ('Image=C:\\Windows\\powershell.exe; '
                            'CommandLine=powershell -enc "A,B"\nnext line')
    assert r["patterns"] == "img:Image|endswith=*\\powershell.exe; cmd:CommandLine|contains=*-enc*"
    assert r["attack"] == "T1059.001 T1027"
    assert r["tags"].split() == ["attack.execution", "attack.t1059.001", "attack.defense-evasion",
                                 "attack.T1027", "attack.command-and-control", "attack.g0007",
                                 "car.2016-03-001"]
    assert r["source_path"] == "/logs/a.jsonl" and r["source_position"] == "12"
    assert len(r["alert_id"]) == 32
    assert rows[1]["source_path"] == "" and rows[1]["evidence"] == "powershell -enc AAAA4"


def test_csv_sink_header_only_when_empty():
    out = io.BytesIO()
    CsvSink(out).close()
    assert out.getvalue().decode().splitlines() == [",".join(CSV_COLUMNS)]
