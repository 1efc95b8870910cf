"""Unit tests for the sigstream command line (sigstream.cli) with click's CliRunner."""
from __future__ import annotations

import csv
import io
import json
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sigstream.connectors.readers import read_events
from sigstream.connectors.sinks import CSV_COLUMNS
from sigstream.cli import main
from sigstream.stream.engine import Engine
from sigstream.stream.rules import load_rules

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "sigma_rules"
SAMPLES = REPO / "samples"
SYSMON = "Microsoft-Windows-Sysmon/Operational"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def rule_yaml(title, level="high", detection=None, rule_id=None, **extra):
    doc = {"title": title, "id": rule_id or str(uuid.uuid4()), "status": "test",
           "logsource": {"product": "windows", "category": "process_creation"},
           "detection": detection or {"sel": {"CommandLine|contains": "-enc"}, "condition": "sel"},
           "level": level}
    doc.update(extra)
    return yaml.safe_dump(doc, sort_keys=False)


def proc_event(cmd, n=1):
    return {"EventID": 1, "Channel": SYSMON, "Computer": "WKS-1", "EventRecordID": n,
            "Image": "C:\\Windows\\powershell.exe", "CommandLine": cmd}


def jsonl_alerts(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# ------------------------------------------------------------------ hunt

def test_hunt_project_rules_over_samples_jsonl():
    result = invoke("hunt", "-r", RULES, SAMPLES, "-f", "jsonl", "--no-cache")
    assert result.exit_code == 0, result.output
    everything = jsonl_alerts(result.stdout)
    alerts = [a for a in everything if "correlation" not in a]   # single-event alerts
    assert alerts, "the samples contain an intrusion: there must be detections"
    for a in everything:
        assert {"rule", "event", "source", "matched", "alert_id", "attack"} <= set(a)
    for a in alerts:
        assert a["rule"]["id"] and a["rule"]["title"]
        assert a["source"]["path"].endswith(".jsonl") and a["source"]["position"] >= 1
        assert a["matched"], a["rule"]["title"]
    assert "detections" in result.stderr

    # every alert's rule really matches its event (brute force, no routing/prefilter) and nothing is missed
    from sigstream.stream.enrich import enrich  # hunt enriches by default (--no-enrich turns it off)

    from sigstream.stream.reassembly import ScriptBlockAssembler  # and matches whole script blocks

    loaded = load_rules([RULES], use_cache=False)
    engine = Engine(loaded.rules, enrich=enrich)
    assembler = ScriptBlockAssembler()
    expected = []
    for ev, src in read_events(sorted(SAMPLES.glob("*.jsonl"))):
        # a whole script block is attributed to its first fragment, as in the stream processor
        for whole, src in assembler.feed_with_source(ev, src, 0.0):
            for hit in engine.match_all(whole):
                if not loaded.is_suppressed(hit.rule):   # generate: false -> only the correlation
                    expected.append((hit.rule.id, Path(src.path).name, src.position))
    assert not assembler.flush()
    got = [(a["rule"]["id"], Path(a["source"]["path"]).name, a["source"]["position"]) for a in alerts]
    assert sorted(got) == sorted(expected)
    assert len({a["alert_id"] for a in everything}) == len(everything)


def test_hunt_benign_baseline_has_no_detections():
    result = invoke("hunt", "-r", RULES, SAMPLES / "benign-baseline.jsonl", "-f", "jsonl")
    assert result.exit_code == 0, result.output
    assert jsonl_alerts(result.stdout) == []


def _hunt_dir(tmp_path: Path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yml").write_text("---\n".join([
        rule_yaml("enc high", "high"),
        rule_yaml("enc critical", "critical",
                  {"sel": {"CommandLine|contains": "-enc"}, "flt": {"CommandLine|contains": "benign"},
                   "condition": "sel and not flt"}),
    ]))
    events = tmp_path / "events"
    events.mkdir()
    lines = [json.dumps(proc_event("powershell -enc AAA", 1)).encode(),
             b'{"EventID": 1, "Channel": "x", "CommandLine": "caf\xe9 -enc"}',
             json.dumps(proc_event("powershell -enc benign", 3)).encode(),
             json.dumps(proc_event("cmd /c dir", 4)).encode()]
    (events / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return rules, events


def test_hunt_bad_utf8_line_goes_to_errors_file_and_good_events_still_match(tmp_path):
    rules, events = _hunt_dir(tmp_path)
    errors = tmp_path / "errors.jsonl"
    result = invoke("hunt", "-r", rules, events, "-f", "jsonl", "--errors", errors)
    assert result.exit_code == 0, result.output
    alerts = jsonl_alerts(result.stdout)
    assert sorted((a["rule"]["title"], a["source"]["position"]) for a in alerts) == [
        ("enc critical", 1), ("enc high", 1), ("enc high", 3)]
    (err,) = [json.loads(line) for line in errors.read_text().splitlines()]
    assert err["path"] == str(events / "a.jsonl")
    assert err["position"] == 2
    assert "UTF-8" in err["reason"] or "utf-8" in err["reason"]
    assert "a.jsonl:2" in result.stderr
    assert "1 unreadable records" in result.stderr


def test_hunt_min_level_critical(tmp_path):
    rules, events = _hunt_dir(tmp_path)
    result = invoke("hunt", "-r", rules, events, "-f", "jsonl", "--min-level", "critical")
    assert result.exit_code == 0, result.output
    alerts = jsonl_alerts(result.stdout)
    assert [(a["rule"]["title"], a["rule"]["level"]) for a in alerts] == [("enc critical", "critical")]


def test_hunt_rule_id_and_tag_selection(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    rid = str(uuid.uuid4())
    (rules / "r.yml").write_text("---\n".join([
        rule_yaml("by id", rule_id=rid),
        rule_yaml("by tag", tags=["attack.t1059.001"]),
        rule_yaml("neither"),
    ]))
    ev = tmp_path / "e.jsonl"
    ev.write_text(json.dumps(proc_event("x -enc y")) + "\n")
    by_id = jsonl_alerts(invoke("hunt", "-r", rules, ev, "-f", "jsonl", "--rule-id", rid).stdout)
    assert [a["rule"]["title"] for a in by_id] == ["by id"]
    by_tag = jsonl_alerts(invoke("hunt", "-r", rules, ev, "-f", "jsonl", "--tag", "ATTACK.T1059.001").stdout)
    assert [a["rule"]["title"] for a in by_tag] == ["by tag"]


def test_hunt_csv_output_to_file(tmp_path):
    rules, events = _hunt_dir(tmp_path)
    out = tmp_path / "hits.csv"
    result = invoke("hunt", "-r", rules, events, "-f", "csv", "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1 + 3
    assert {r[CSV_COLUMNS.index("rule_title")] for r in rows[1:]} == {"enc high", "enc critical"}


def test_hunt_csv_header_on_stdout():
    result = invoke("hunt", "-r", RULES, SAMPLES, "-f", "csv")
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first == ",".join(CSV_COLUMNS)


def test_hunt_strict_with_broken_rule_exits_2(tmp_path):
    rules, events = _hunt_dir(tmp_path)
    (rules / "broken.yml").write_text(rule_yaml("broken", detection={"sel": {"A|nosuchmod": "x"},
                                                                     "condition": "sel"}))
    lenient = invoke("hunt", "-r", rules, events, "-f", "jsonl")
    assert lenient.exit_code == 0
    assert "broken.yml" in lenient.stderr and "nosuchmod" in lenient.stderr
    assert len(jsonl_alerts(lenient.stdout)) == 3

    strict = invoke("hunt", "-r", rules, events, "-f", "jsonl", "--strict")
    assert strict.exit_code == 2
    assert "--strict" in strict.stderr
    assert jsonl_alerts(strict.stdout) == []


def test_hunt_missing_event_path_is_usage_error(tmp_path):
    result = invoke("hunt", "-r", RULES, tmp_path / "nope.jsonl")
    assert result.exit_code == 2


def test_hunt_table_format(tmp_path):
    rules, events = _hunt_dir(tmp_path)
    result = invoke("hunt", "-r", rules, events, "-f", "table")
    assert result.exit_code == 0
    assert "Detections by rule" in result.stdout and "enc critical" in result.stdout


# ------------------------------------------------------------------ check

def test_check_project_rules_ok():
    result = invoke("check", RULES)
    assert result.exit_code == 0, result.output
    assert "error:" not in result.stdout
    assert "0 error(s)" in result.stdout


def test_check_reports_one_line_per_problem_naming_the_file(tmp_path):
    (tmp_path / "good.yml").write_text(rule_yaml("good"))
    (tmp_path / "bad_yaml.yml").write_text("title: x\n  bad: [\n")
    (tmp_path / "multi.yml").write_text("---\n".join([
        rule_yaml("bad modifier", detection={"sel": {"A|nosuchmod": "x"}, "condition": "sel"}),
        rule_yaml("fine in multi"),
        rule_yaml("bad regex", detection={"sel": {"A|re": "a(b"}, "condition": "sel"}),
    ]))
    (tmp_path / "deprecated.yml").write_text(rule_yaml("old but valid", status="deprecated"))
    result = invoke("check", tmp_path)
    assert result.exit_code == 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, result.stdout
    assert sum(str(tmp_path / "bad_yaml.yml") in e for e in errors) == 1
    assert sum(str(tmp_path / "multi.yml") in e and "bad modifier" in e for e in errors) == 1
    assert sum(str(tmp_path / "multi.yml") in e and "bad regex" in e for e in errors) == 1
    assert any("line 2" in e for e in errors)
    # path:line: 'title' [id]: reason, the line of the offending key (1-based)
    assert f"error: {tmp_path / 'bad_yaml.yml'}:2: rule: invalid YAML (line 2," in result.stdout
    multi = (tmp_path / "multi.yml").read_text().splitlines()
    mod_line = next(i for i, t in enumerate(multi, 1) if "A|nosuchmod" in t)
    assert any(e.startswith(f"error: {tmp_path / 'multi.yml'}:{mod_line}: 'bad modifier' [") for e in errors)
    assert "3 rule(s) compiled" in result.stdout  # good, fine in multi, deprecated (check sees all)


def test_check_lists_correlation_rules(tmp_path):
    (tmp_path / "c.yml").write_text(textwrap.dedent("""\
        title: base
        id: 11111111-1111-1111-1111-111111111111
        name: base_rule
        status: test
        logsource: {product: windows, category: process_creation}
        detection:
          sel: {CommandLine|contains: x}
          condition: sel
        ---
        title: many base hits
        id: 22222222-2222-2222-2222-222222222222
        status: test
        correlation:
          type: event_count
          rules: [base_rule]
          group-by: [Computer]
          timespan: 5m
          condition: {gte: 10}
        """))
    result = invoke("check", tmp_path)
    assert result.exit_code == 0, result.output
    (note,) = [line for line in result.stdout.splitlines() if line.startswith("correlation:")]
    assert "many base hits" in note and "event_count" in note and "base_rule" in note
    assert "300s" in note and "group by Computer" in note and str(tmp_path / "c.yml") in note
    assert "1 correlation rule(s)" in result.stdout


# ------------------------------------------------------------------ test

def test_test_command_on_project_rules_passes():
    result = invoke("test", RULES)
    assert result.exit_code == 0, result.output
    assert " 0 failed" in result.stdout
    assert "FAIL" not in result.stdout


def test_test_command_failing_case_exits_1(tmp_path):
    (tmp_path / "r.yml").write_text(rule_yaml("enc"))
    (tmp_path / "r.tests.yml").write_text(yaml.safe_dump({"cases": [
        {"name": "good", "expect": "match", "event": proc_event("x -enc y")},
        {"name": "wrong expectation", "expect": "match", "event": proc_event("dir")},
    ]}))
    result = invoke("test", tmp_path, "-v")
    assert result.exit_code == 1
    assert "1 passed, 1 failed" in result.stdout
    fail = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1 and "wrong expectation" in fail[0]
    assert any(line.startswith("ok") and "good" in line for line in result.stdout.splitlines())


def test_test_command_reports_untested_rules(tmp_path):
    (tmp_path / "r.yml").write_text(rule_yaml("lonely"))
    result = invoke("test", tmp_path)
    assert result.exit_code == 0
    assert "no tests" in result.stdout and "r.yml" in result.stdout


# ------------------------------------------------------------------ help

@pytest.mark.parametrize("args, words", [
    ([], ["hunt", "check", "test"]),
    (["hunt"], ["--rules", "--min-level", "--errors", "--strict", "--format"]),
    (["check"], ["--pipeline", "--placeholders"]),
    (["test"], ["--verbose", "tests.yml"]),
])
def test_help(args, words):
    result = invoke(*args, "--help")
    assert result.exit_code == 0
    for w in words:
        assert w in result.stdout
