"""The order of an alert's `matched` list: the deciding conditions first, log-source ones last."""
from __future__ import annotations

from pathlib import Path

import yaml

from sigstream.connectors.readers import read_events
from sigstream.stream.alerts import build_alert
from sigstream.stream.engine import Engine
from sigstream.stream.explain import is_logsource_entry
from sigstream.stream.rules import load_rule_text, load_rules

ROOT = Path(__file__).resolve().parents[2]
SYSMON = "Microsoft-Windows-Sysmon/Operational"


def _matched(detection: dict, event: dict, logsource: dict | None = None) -> list[dict]:
    text = yaml.safe_dump({
        "title": "t", "id": "6a0e9f3e-1c1e-4c43-9b8c-1f6f0c1d2e01", "status": "test", "level": "high",
        "logsource": logsource or {"product": "windows", "category": "process_creation"},
        "detection": detection})
    loaded = load_rule_text(text)
    assert not loaded.errors, loaded.errors
    engine = Engine(loaded.rules)
    (hit,) = engine.match(event)
    via_engine = build_alert(hit, event, matched=engine.explain(hit, event))["matched"]
    assert via_engine == build_alert(hit, event)["matched"]   # the processor's path and hunt's agree
    return via_engine


PROC = {"EventID": 1, "Channel": SYSMON, "Provider_Name": "Microsoft-Windows-Sysmon",
        "Image": "C:\\Windows\\System32\\cmd.exe", "CommandLine": "cmd /c whoami /all"}


def test_process_creation_rule_lists_its_selection_first_and_event_id_last():
    # EventID written in the rule's own selection, before the deciding field; the sysmon
    # pipeline adds EventID=1 / Channel for the process_creation category on top
    got = _matched({"selection": {"EventID": 1, "CommandLine|contains": "whoami"},
                    "condition": "selection"}, PROC)
    assert got[0]["selection"] == "selection" and got[0]["field"] == "CommandLine|contains"
    assert got[0]["value"] == "*whoami*" and got[0]["event_value"] == "cmd /c whoami /all"
    assert [e["field"].split("|")[0] for e in got] == ["CommandLine", "EventID"]
    assert not any(e["field"] == "Channel" or e["selection"] == "logsource" for e in got)


def test_logsource_selection_written_first_in_the_condition_goes_last():
    got = _matched({"ls": {"Provider_Name": "Microsoft-Windows-Sysmon", "EventID": [1, 4688]},
                    "img": {"Image|endswith": "\\cmd.exe"}, "cli": {"CommandLine|contains": "whoami"},
                    "condition": "ls and img and cli"}, PROC)
    assert [(e["selection"], e["field"].split("|")[0]) for e in got[:2]] == [
        ("img", "Image"), ("cli", "CommandLine")]
    assert {(e["selection"], e["field"]) for e in got[2:]} == {("ls", "Provider_Name"), ("ls", "EventID")}
    assert [is_logsource_entry(e) for e in got] == [False, False, True, True]


def test_order_unchanged_without_logsource_fields():
    got = _matched({"img": {"Image|endswith": "\\cmd.exe"}, "cli": {"CommandLine|contains": "whoami"},
                    "condition": "img and cli"}, PROC)
    assert [e["selection"] for e in got] == ["img", "cli"]


def test_bundled_wmi_binding_rule_leads_with_the_consumer():
    loaded = load_rules([str(ROOT / "sigma_rules")])
    engine = Engine(loaded.rules)
    seen = 0
    for event, _src in read_events([str(ROOT / "samples" / "fileless-intrusion.jsonl")]):
        for hit in engine.match(event):
            matched = engine.explain(hit, event)
            flags = [is_logsource_entry(e) for e in matched]
            assert flags == sorted(flags), (hit.rule.title, matched)   # log-source entries last
            if hit.rule.title.startswith("WMI Filter Bound"):
                assert matched[0]["field"].startswith("Consumer") and matched[-1]["field"] == "EventID"
                seen += 1
    assert seen == 1


def test_modifiers_are_named_in_a_selection_of_several_items():
    """Regression: pySigma puts a multi-item selection's expressions under an AND, and the
    label lost its modifiers ('Image' for 'Image|endswith')."""
    got = _matched({"sel": {"Image|endswith": ["\\cmd.exe", "\\pwsh.exe"],
                            "CommandLine|contains|all": ["whoami", "/all"],
                            "CommandLine|startswith": "cmd"},
                    "condition": "sel"}, PROC)
    labels = {(e["field"], e["value"]) for e in got}
    assert ("Image|endswith", "*\\cmd.exe") in labels
    assert ("CommandLine|contains|all", "*whoami*") in labels
    assert ("CommandLine|startswith", "cmd*") in labels


def test_a_field_with_items_of_several_value_types_in_one_selection():
    """Regression: finding the item compared a SigmaString with a number and raised
    (SigmaHQ rules failed to load)."""
    got = _matched({"sel": {"CommandLine|contains": "whoami", "ProcessId": 4242,
                            "Image|endswith": "\\cmd.exe", "Image|re": "(?i)cmd"},
                    "condition": "sel"}, {**PROC, "ProcessId": 4242})
    assert {e["field"] for e in got} >= {"CommandLine|contains", "Image|endswith", "Image|re"}
