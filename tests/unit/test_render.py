"""sigstream.render: the hunt detections table and the live alert line."""
from __future__ import annotations

import copy
import io
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from sigstream.connectors.readers import read_events
from sigstream.render import TableSink, alert_line, detections_table, matched_lines, what_alert
from sigstream.stream.alerts import build_alert
from sigstream.stream.engine import Engine
from sigstream.stream.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def alerts() -> list[dict]:
    loaded = load_rules([str(ROOT / "sigma_rules")])
    engine = Engine(loaded.rules)
    out = []
    for event, src in read_events([str(ROOT / "samples" / "fileless-intrusion.jsonl")]):
        for hit in engine.match(event):
            a = build_alert(hit, event, {"path": src.path, "position": src.position},
                            detected_at="2026-11-24T14:00:00.000000Z", matched=engine.explain(hit, event))
            out.append(orjson.loads(orjson.dumps(a, default=str)))
    return out


def _console(width: int) -> Console:
    return Console(file=io.StringIO(), width=width, color_system=None)


def _text(renderable, width=220) -> str:
    console = _console(width)
    console.print(renderable)
    return console.file.getvalue()


def _titled(alerts, title, event_id=None):
    return next(a for a in alerts if a["rule"]["title"].startswith(title)
                and (event_id is None or a["event"].get("EventID") == event_id))


def test_table_time_column_has_the_date(alerts):
    text = _text(detections_table(alerts))
    assert "2026-11-24T09:11:45Z" in text and "2026-11-24T13:41:15Z" in text
    assert ".412000Z" not in text            # seconds in the table; jsonl has the fraction


def test_table_shows_the_matched_part_of_a_long_script_block(alerts):
    a = _titled(alerts, "PowerShell Stores Downloaded Or Base64")
    script = a["event"]["ScriptBlockText"]
    assert script.find("Set-ItemProperty") > 200        # beyond what a head-only cut shows
    line = what_alert(a)
    assert line.startswith("ScriptBlockText: …") and "Set-ItemProperty" in line
    assert f"({len(script)} chars)" in line


def test_table_lists_event_values_of_other_matched_fields(alerts):
    a = _titled(alerts, "Long Base64 Blob Written To Registry", 13)
    assert what_alert(a).startswith("TargetObject, Details: ")
    assert matched_lines(a) == ["Image=C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"]
    wmi = _titled(alerts, "WMI Filter Bound")
    assert matched_lines(wmi) == []          # Consumer is the evidence; EventID=21 is not news
    text = _text(detections_table([a]))
    assert "+ Image=C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe" in text


def test_table_keeps_brackets_of_scripts_and_titles(alerts):
    # rich would read "[int]" or "[ref]" as markup and drop them (regression: not escaped)
    a = copy.deepcopy(_titled(alerts, "Reflective .NET Assembly Load"))
    a["event"]["ScriptBlockText"] = "[int]$n=1; [ref]$r; [System.Reflection.Assembly]::Load($b)"
    a["rule"]["title"] = "Load via [ref] [bold]"
    text = _text(detections_table([a]), width=400)
    assert "[int]$n=1; [ref]$r; [System.Reflection.Assembly]::Load($b)" in text
    assert "Load via [ref] [bold]" in text


def test_table_sink_prints_both_tables(alerts):
    console = _console(200)
    sink = TableSink(console)
    for a in alerts:
        sink.add(a)
    sink.close()
    text = console.file.getvalue()
    assert "Detections by rule" in text and "what matched" in text


def test_alert_line_has_the_date(alerts):
    line = alert_line(_titled(alerts, "AMSI Bypass"))
    assert line.startswith("[dim]2026-11-24T09:11:49Z[/dim]")
