"""stream.alert_summary: key evidence per log source, excerpts around what matched, the CSV row."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson
import pytest
import yaml

from sigstream.connectors.readers import read_events
from sigstream.connectors.sinks import CsvSink
from sigstream.stream.alert_summary import (
    CSV_COLUMNS, CSV_EVIDENCE_CHARS, alert_time_text, csv_row, evidence_of, excerpt, matched_values,
    needle_of)
from sigstream.stream.alerts import build_alert
from sigstream.stream.engine import Engine
from sigstream.stream.rules import load_rule_text, load_rules

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("event, label, text", [
    ({"EventID": 1, "Image": "C:\\a.exe", "CommandLine": "a.exe -x"}, "CommandLine", "a.exe -x"),
    ({"EventID": 4688, "NewProcessName": "C:\\a.exe", "CommandLine": "a -y"}, "CommandLine", "a -y"),
    ({"EventID": 4104, "ScriptBlockText": "iex $x", "Path": ""}, "ScriptBlockText", "iex $x"),
    ({"EventID": 4103, "Payload": "CommandInvocation(Set-ItemProperty)", "ContextInfo": "..."},
     "Payload", "CommandInvocation(Set-ItemProperty)"),
    ({"EventID": 13, "Image": "C:\\p.exe", "TargetObject": "HKU\\S\\Run\\x", "Details": "calc.exe"},
     "TargetObject, Details", "HKU\\S\\Run\\x = calc.exe"),
    ({"EventID": 12, "Image": "C:\\p.exe", "TargetObject": "HKLM\\SOFTWARE\\X"},
     "TargetObject", "HKLM\\SOFTWARE\\X"),
    ({"EventID": 7, "Image": "C:\\p.exe", "ImageLoaded": "C:\\x\\amsi.dll"},
     "ImageLoaded", "C:\\x\\amsi.dll"),
    ({"EventID": 19, "Name": "f", "Query": "SELECT * FROM x"}, "Query", "SELECT * FROM x"),
    ({"EventID": 20, "Name": "c", "Destination": "powershell -enc A"}, "Destination", "powershell -enc A"),
    ({"EventID": 21, "Consumer": "C.Name=\"c\"", "Filter": "F.Name=\"f\""}, "Consumer, Filter",
     "C.Name=\"c\" <- F.Name=\"f\""),
    ({"EventID": 3, "Image": "C:\\p.exe", "DestinationIp": "198.51.100.7", "DestinationPort": 443},
     "DestinationIp, DestinationPort", "198.51.100.7:443"),
    ({"EventID": 11, "Image": "C:\\p.exe", "TargetFilename": "C:\\t\\x.ps1"},
     "TargetFilename", "C:\\t\\x.ps1"),
])
def test_evidence_per_log_source(event, label, text):
    assert evidence_of(event) == (label, text)


def test_evidence_absent():
    assert evidence_of({"EventID": 4624, "TargetUserName": "bob"}) is None


def test_excerpt_centres_on_the_needle():
    text = "A" * 5000 + "Invoke-Mimikatz -DumpCreds" + "B" * 5000
    got = excerpt(text, 200, ["invoke-mimikatz"])
    assert "Invoke-Mimikatz -DumpCreds" in got and got.startswith("…") and got.endswith("(10026 chars)")
    assert len(got) < 230
    assert excerpt(text, 200, ["not there"]).startswith("AAAA")      # no needle: the start
    assert excerpt("short", 200, ["x"]) == "short"
    assert excerpt("a\n  b\tc", 200, flat=True) == "a b c"


def test_needle_of():
    assert needle_of({"field": "CommandLine|contains", "value": "*Invoke-Mimikatz*"}) == "Invoke-Mimikatz"
    assert needle_of({"field": "Image|endswith", "value": "*\\powershell.exe"}) == "\\powershell.exe"
    assert needle_of({"field": "ScriptBlockText|re", "value": "a{3,}"}) == ""
    assert needle_of({"field": "CommandLine|base64offset|contains", "value": "*SQBFAFgA*"}) == ""
    assert needle_of({"field": "EventID", "value": 1}) == ""


RULE = yaml.safe_dump({
    "title": "Mimikatz in script block", "id": "2b7f7a43-4f2d-4d7e-8a3c-7b1d0c9e3f11", "status": "test",
    "level": "critical", "tags": ["attack.credential-access", "attack.t1003.001"],
    "logsource": {"product": "windows", "service": "powershell"},
    "detection": {"sel": {"ScriptBlockText|contains": "Invoke-Mimikatz"}, "condition": "sel"}})


def _script_alert(script: str) -> dict:
    (rule,) = load_rule_text(RULE).rules
    engine = Engine([rule])
    ev = {"EventID": 4104, "Channel": "Microsoft-Windows-PowerShell/Operational", "Computer": "WKS-9",
          "EventRecordID": 7, "TimeCreated": "2026-11-24T09:11:45.412000Z", "ScriptBlockText": script}
    (hit,) = engine.match(ev)
    return orjson.loads(orjson.dumps(build_alert(hit, ev, source={"path": "x.evtx", "position": 7},
                                                 detected_at="2026-11-24T09:12:00.000000Z")))


def test_long_script_block_csv_excerpt_shows_what_matched():
    script = "# padding, \"quoted\"\n" * 2000 + "Invoke-Mimikatz -DumpCreds\n" + "Write-Host done\n" * 100
    alert = _script_alert(script)
    assert alert["event"]["ScriptBlockText"] == script          # JSONL keeps it whole
    out = io.BytesIO()
    sink = CsvSink(out)
    sink.add(alert)
    sink.close()
    (row,) = list(csv.DictReader(io.StringIO(out.getvalue().decode("utf-8"), newline="")))
    assert row["evidence_field"] == "ScriptBlockText"
    assert "Invoke-Mimikatz -DumpCreds" in row["evidence"]      # 40 KB in: the excerpt finds it
    assert len(row["evidence"]) <= CSV_EVIDENCE_CHARS + 30 and f"({len(script)} chars)" in row["evidence"]
    assert '"quoted"' in row["evidence"] and "\n" in row["evidence"]   # csv quoting, not mangling
    assert row["matched"].startswith("ScriptBlockText=…") and "Invoke-Mimikatz" in row["matched"]
    assert row["patterns"] == "sel:ScriptBlockText|contains=*Invoke-Mimikatz*"
    assert row["time"] == "2026-11-24T09:11:45.412000Z" and row["attack"] == "T1003.001"
    assert row["level"] == "critical" and row["host"] == "WKS-9" and row["event_id"] == "4104"


def test_matched_values_use_the_whole_event_value_not_the_explanation_cut():
    script = "x" * 1000 + " Invoke-Mimikatz"
    alert = _script_alert(script)
    assert "Invoke-Mimikatz" not in alert["matched"][0]["event_value"]   # explain keeps 300 chars
    ((field, value),) = matched_values(alert)
    assert field == "ScriptBlockText" and value.endswith("Invoke-Mimikatz (1016 chars)")


def test_time_text_has_the_date_and_falls_back_to_detected_at():
    alert = _script_alert("Invoke-Mimikatz")
    assert alert_time_text(alert, seconds_only=True) == "2026-11-24T09:11:45Z"
    del alert["event"]["TimeCreated"]
    alert["event_time"] = None
    assert alert_time_text(alert) == "2026-11-24T09:12:00.000000Z"


def test_local_time_text_carries_the_zone_offset(monkeypatch):
    """alerts tail --local-time: the same instant in this machine's zone, with its offset."""
    import time
    monkeypatch.setenv("TZ", "Asia/Kolkata")   # +05:30, no daylight saving
    time.tzset()
    try:
        alert = _script_alert("Invoke-Mimikatz")
        assert alert_time_text(alert, seconds_only=True, local=True) == "2026-11-24T14:41:45+05:30"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_every_sample_alert_has_a_full_row():
    loaded = load_rules([str(ROOT / "sigma_rules")])
    engine = Engine(loaded.rules)
    n = 0
    for event, src in read_events([str(ROOT / "samples" / "fileless-intrusion.jsonl")]):
        for hit in engine.match(event):
            row = dict(zip(CSV_COLUMNS, csv_row(build_alert(hit, event, {"path": src.path}))))
            assert len(row) == len(CSV_COLUMNS)
            for col in ("time", "level", "rule_id", "rule_title", "host", "evidence_field", "evidence",
                        "matched", "patterns", "alert_id", "source_path"):
                assert row[col] not in (None, ""), (hit.rule.title, col)
            assert row["time"][:10] == "2026-11-24"
            n += 1
    assert n >= 20
