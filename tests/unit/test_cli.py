"""Unit tests for the sigstream command line (sigstream.cli) with click's CliRunner."""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import subprocess
import sys
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


@pytest.mark.parametrize("option", ["--level", "--min-level"])   # --min-level: the hidden old name
def test_hunt_level_critical(tmp_path, option):
    rules, events = _hunt_dir(tmp_path)
    result = invoke("hunt", "-r", rules, events, "-f", "jsonl", option, "critical")
    assert result.exit_code == 0, result.output
    alerts = jsonl_alerts(result.stdout)
    assert [(a["rule"]["title"], a["rule"]["level"]) for a in alerts] == [("enc critical", "critical")]


def test_hunt_level_and_min_level_must_agree(tmp_path):
    rules, events = _hunt_dir(tmp_path)
    same = invoke("hunt", "-r", rules, events, "-f", "jsonl", "--level", "high", "--min-level", "high")
    assert same.exit_code == 0
    result = invoke("hunt", "-r", rules, events, "--level", "high", "--min-level", "critical")
    assert result.exit_code == 2 and "disagree" in result.stderr


def test_hunt_p_is_pipeline(tmp_path):
    rules, events = _hunt_dir(tmp_path)
    pipeline = tmp_path / "p.yml"   # CommandLine -> cmd: the rules then look for a field the events lack
    pipeline.write_text(yaml.safe_dump({"name": "rename", "transformations": [
        {"type": "field_name_mapping", "mapping": {"CommandLine": "cmd"}}]}))
    plain = invoke("hunt", "-r", rules, events, "-f", "jsonl")
    assert len(jsonl_alerts(plain.stdout)) == 3
    for flag in ("-p", "--pipeline"):
        mapped = invoke("hunt", "-r", rules, events, "-f", "jsonl", flag, pipeline)
        assert mapped.exit_code == 0, mapped.output
        assert jsonl_alerts(mapped.stdout) == []


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


@pytest.mark.parametrize("jobs", [[], ["--jobs", "2"]])
def test_hunt_missing_path_is_named_and_the_others_are_hunted_exit_1(tmp_path, jobs):
    rules, events = _hunt_dir(tmp_path)
    missing = tmp_path / "nope.jsonl"
    result = invoke("hunt", "-r", rules, missing, events, "-f", "jsonl", *jobs)
    assert result.exit_code == 1
    assert f"error cannot read {missing}: No such file or directory" in result.stderr
    assert "1 input path(s) could not be read" in result.stderr
    assert len(jsonl_alerts(result.stdout)) == 3      # events/ still hunted, alerts as without it


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file anyway")
def test_hunt_unreadable_file_is_named_exit_1(tmp_path):
    rules, events = _hunt_dir(tmp_path)
    locked = events / "locked.jsonl"
    locked.write_text(json.dumps(proc_event("x -enc y")) + "\n")
    locked.chmod(0)
    result = invoke("hunt", "-r", rules, events, "-f", "jsonl")
    assert result.exit_code == 1
    assert f"error cannot read {locked}: Permission denied" in result.stderr
    assert len(jsonl_alerts(result.stdout)) == 3


def _comparable(stdout: str) -> list[dict]:
    """Alerts without what differs between two runs on the same events from different
    places: the wall-clock detection time and the source file name."""
    alerts = jsonl_alerts(stdout)
    for a in alerts:
        a.pop("detected_at", None)
        if a.get("source"):   # a correlation alert has none
            a["source"].pop("path", None)
    return alerts


def test_hunt_stdin_gives_the_alerts_of_the_file():
    sample = SAMPLES / "fileless-intrusion.jsonl"
    on_file = invoke("hunt", sample, "-f", "jsonl")
    result = CliRunner().invoke(main, ["hunt", "-", "-f", "jsonl"], input=sample.read_bytes(),
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _comparable(result.stdout) == _comparable(on_file.stdout) and _comparable(on_file.stdout)
    assert {a["source"]["path"] for a in jsonl_alerts(result.stdout) if a["source"]} == {"<stdin>"}
    assert "72 events read from 1 file(s)" in result.stderr


def test_hunt_stdin_gzip_and_json_array(tmp_path):
    rules, events = _hunt_dir(tmp_path)
    records = [json.loads(line) for line in (events / "a.jsonl").read_bytes().splitlines()
               if b"caf" not in line]
    for data in (gzip.compress(json.dumps(records).encode()),
                 gzip.compress("\n".join(map(json.dumps, records)).encode())):
        result = CliRunner().invoke(main, ["hunt", "-r", str(rules), "-", "-f", "jsonl"], input=data,
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert sorted(a["rule"]["title"] for a in jsonl_alerts(result.stdout)) == \
            ["enc critical", "enc high", "enc high"]


def test_hunt_stdin_through_a_real_pipe_with_files(tmp_path):
    sample = SAMPLES / "fileless-intrusion.jsonl"
    with open(sample, "rb") as stdin:
        proc = subprocess.run([sys.executable, "-m", "sigstream", "hunt", "-f", "jsonl", "-",
                               str(SAMPLES / "benign-baseline.jsonl")],
                              stdin=stdin, capture_output=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    on_file = invoke("hunt", sample, "-f", "jsonl")
    assert _comparable(proc.stdout.decode()) == _comparable(on_file.stdout)
    assert b"97 events read from 2 file(s)" in proc.stderr


def _timed_events(tmp_path: Path) -> Path:
    lines = []
    for n, t in enumerate(["2026-11-23T23:59:59Z", "2026-11-24T00:00:00Z", "2026-11-24T12:00:00+02:00",
                           "2026-11-24T23:59:59.999999Z", "2026-11-25T00:00:00Z"], 1):
        lines.append(dict(proc_event(f"x -enc {n}", n), TimeCreated=t))
    lines.append(dict(proc_event("x -enc untimed", 6), TimeCreated="not a time"))
    lines.append(proc_event("x -enc no time at all", 7))
    path = tmp_path / "timed.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return path


@pytest.mark.parametrize("window, positions, outside", [
    (["--from", "2026-11-24", "--to", "2026-11-24"], [2, 3, 4, 6, 7], 2),
    (["--from", "2026-11-24T10:00:01Z"], [4, 5, 6, 7], 3),              # 12:00+02:00 is 10:00Z
    (["--from", "2026-11-24T12:00:00+02:00", "--to", "2026-11-24T10:00:00"], [3, 6, 7], 4),
    (["--to", "2026-11-23T23:59:59"], [1, 6, 7], 4),                    # --to is inclusive
    (["--from", "100000d"], [1, 2, 3, 4, 5, 6, 7], 0),                  # a span back from now
    (["--to", "100000d"], [6, 7], 5),
])
def test_hunt_from_to_skips_events_outside_and_keeps_untimed_ones(tmp_path, window, positions, outside):
    rules = tmp_path / "r.yml"
    rules.write_text(rule_yaml("enc"))
    for jobs in ("1", "2"):
        result = invoke("hunt", "-r", rules, _timed_events(tmp_path), "-f", "jsonl", "--jobs", jobs, *window)
        assert result.exit_code == 0, result.output
        assert [a["source"]["position"] for a in jsonl_alerts(result.stdout)] == positions
        assert "7 events read" in result.stderr
        assert f"{outside} outside --from/--to, 2 without a readable time (hunted anyway)" in result.stderr


def test_hunt_from_to_bad_values_are_usage_errors(tmp_path):
    ev = _timed_events(tmp_path)
    bad = invoke("hunt", ev, "--from", "yesterday")
    assert bad.exit_code == 2 and "'yesterday' is not a date/time" in bad.stderr
    empty = invoke("hunt", ev, "--from", "2026-11-25", "--to", "2026-11-24")
    assert empty.exit_code == 2 and "before --from" in empty.stderr


def test_hunt_no_window_no_window_summary():
    result = invoke("hunt", SAMPLES, "-f", "jsonl")
    assert "outside --from/--to" not in result.stderr and "readable time" not in result.stderr


def test_hunt_with_no_rule_found_exits_2_naming_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a rule")
    result = invoke("hunt", "-r", empty, SAMPLES, "-f", "jsonl")
    assert result.exit_code == 2
    assert result.stderr.strip() == \
        f"error no Sigma rule found in {empty} (searched *.yml, *.yaml recursively)"
    assert result.stdout == ""


def test_hunt_with_every_rule_left_out_or_rejected_exits_2(tmp_path):
    rules, events = _hunt_dir(tmp_path)
    result = invoke("hunt", "-r", rules, events, "--rule-id", "no-such-id")
    assert result.exit_code == 2
    assert f"no rule selected from {rules}: 1 file(s), 2 rule(s) left out" in result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(rule_yaml("broken", detection={"sel": {"A|nosuchmod": "x"}, "condition": "sel"}))
    result = invoke("hunt", "-r", broken, events)
    assert result.exit_code == 2
    assert f"no rule loaded from {broken}: 1 file(s), 1 rejected" in result.stderr


def test_hunt_ioc_list_alone_is_something_to_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    ioc = tmp_path / "bad.txt"
    ioc.write_text("d41d8cd98f00b204e9800998ecf8427e\n")
    result = invoke("hunt", "-r", empty, "--ioc", ioc, SAMPLES, "-f", "jsonl")
    assert result.exit_code == 0, result.output


def test_summary_line_is_not_wrapped_when_stderr_is_not_a_terminal(tmp_path):
    deep = tmp_path / ("a-rather-long-directory-name-" * 3)
    deep.mkdir()
    missing = deep / "missing.jsonl"
    result = invoke("hunt", missing, SAMPLES / "fileless-intrusion.jsonl", "-f", "jsonl")
    summary = [line for line in result.stderr.splitlines() if "events read" in line]
    assert len(summary) == 1 and len(summary[0]) > 120
    assert summary[0].endswith("events/s")
    assert f"error cannot read {missing}: No such file or directory" in result.stderr.splitlines()


def test_summary_line_is_not_wrapped_in_a_real_pipe():
    proc = subprocess.run([sys.executable, "-m", "sigstream", "hunt", "-f", "jsonl", str(SAMPLES)],
                          capture_output=True, cwd=REPO, timeout=120, env=dict(os.environ, COLUMNS="40"))
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "events read" in lines[0] and lines[0].endswith("events/s"), lines


def test_hunt_table_format(tmp_path):
    rules, events = _hunt_dir(tmp_path)
    result = invoke("hunt", "-r", rules, events, "-f", "table")
    assert result.exit_code == 0
    assert "Detections by rule" in result.stdout and "enc critical" in result.stdout


# ------------------------------------------------------------------ check

def test_check_project_rules_ok():
    result = invoke("check", RULES)
    assert result.exit_code == 0, result.output
    assert "error:" not in result.stdout and "warning:" not in result.stdout
    assert "0 error(s), 0 warning(s)" in result.stdout


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
    errors = [line for line in result.stdout.splitlines() if ": error: " in line]
    assert len(errors) == 3, result.stdout
    assert sum(str(tmp_path / "bad_yaml.yml") in e for e in errors) == 1
    assert sum(str(tmp_path / "multi.yml") in e and "bad modifier" in e for e in errors) == 1
    assert sum(str(tmp_path / "multi.yml") in e and "bad regex" in e for e in errors) == 1
    assert any("line 2" in e for e in errors)
    # path:line: error: 'title' [id]: reason, the line of the offending key (1-based)
    assert f"{tmp_path / 'bad_yaml.yml'}:2: error: rule: invalid YAML (line 2," in result.stdout
    multi = (tmp_path / "multi.yml").read_text().splitlines()
    mod_line = next(i for i, t in enumerate(multi, 1) if "A|nosuchmod" in t)
    assert any(e.startswith(f"{tmp_path / 'multi.yml'}:{mod_line}: error: 'bad modifier' [") for e in errors)
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


def test_test_command_with_no_rule_exits_2_naming_the_folder(tmp_path):
    result = invoke("test", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip() == \
        f"error no Sigma rule found in {tmp_path} (searched *.yml, *.yaml recursively)"


def test_test_command_summary_says_how_long(tmp_path):
    (tmp_path / "r.yml").write_text(rule_yaml("enc"))
    (tmp_path / "r.tests.yml").write_text(yaml.safe_dump({"cases": [
        {"name": "good", "expect": "match", "event": proc_event("x -enc y")}]}))
    result = invoke("test", tmp_path)
    assert result.exit_code == 0
    assert re.fullmatch(r"1 passed, 0 failed in \d+\.\d\ds", result.stdout.splitlines()[-1])


def test_test_command_reports_untested_rules(tmp_path):
    (tmp_path / "r.yml").write_text(rule_yaml("lonely"))
    result = invoke("test", tmp_path)
    assert result.exit_code == 0
    assert "no tests" in result.stdout and "r.yml" in result.stdout


# ------------------------------------------------------------------ help

@pytest.mark.parametrize("args, words", [
    ([], ["hunt", "check", "test"]),
    (["hunt"], ["--rules", "--level", "-p, --pipeline", "--errors", "--strict", "--format", "--from",
                "--to"]),
    (["check"], ["--pipeline", "--placeholders"]),
    (["test"], ["--verbose", "tests.yml"]),
])
def test_help(args, words):
    result = invoke(*args, "--help")
    assert result.exit_code == 0
    for w in words:
        assert w in result.stdout


# ------------------------------------------------------------------ check as a linter (issue 14)

CHECK_ID = "12345678-1234-4234-8234-123456789abc"


def _check_lines(result) -> list[str]:
    return [line for line in result.stdout.splitlines() if ": error: " in line or ": warning: " in line]


def test_check_folder_without_rules_exits_2_naming_it(tmp_path):
    (tmp_path / "notes.txt").write_text("no rules here\n")
    result = invoke("check", tmp_path)
    assert result.exit_code == 2
    assert str(tmp_path) in result.stderr and "no Sigma rule" in result.stderr


def test_check_duplicate_rule_ids_name_both_files(tmp_path):
    (tmp_path / "a.yml").write_text(rule_yaml("first", rule_id=CHECK_ID))
    (tmp_path / "b.yml").write_text(rule_yaml("second", rule_id=CHECK_ID))
    result = invoke("check", tmp_path)
    assert result.exit_code == 1
    (line,) = _check_lines(result)
    id_line = 2   # rule_yaml: title, then id
    assert line == (f"{tmp_path / 'b.yml'}:{id_line}: error: 'second' [{CHECK_ID}]: duplicate rule id "
                    f"{CHECK_ID} (first defined in {tmp_path / 'a.yml'}:{id_line})")


def test_hunt_with_a_duplicated_rule_alerts_once(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yml").write_text(rule_yaml("first", rule_id=CHECK_ID))
    (rules / "b.yml").write_text(rule_yaml("copy", rule_id=CHECK_ID))
    events = tmp_path / "e.jsonl"
    events.write_text(json.dumps(proc_event("powershell -enc AAA")) + "\n")
    result = invoke("hunt", "-r", rules, events, "-f", "jsonl", "--no-cache")
    assert result.exit_code == 0, result.output
    assert [a["rule"]["title"] for a in jsonl_alerts(result.stdout)] == ["first"]
    assert "duplicate rule id" in result.stderr and str(rules / "b.yml") in result.stderr


def test_check_misspelt_category_suggests_the_right_one(tmp_path):
    f = tmp_path / "typo.yml"
    f.write_text(rule_yaml("typo", logsource={"product": "windows", "category": "proces_creation"}))
    result = invoke("check", tmp_path)
    assert result.exit_code == 1
    (line,) = _check_lines(result)
    n = next(i for i, t in enumerate(f.read_text().splitlines(), 1) if "proces_creation" in t)
    assert line.startswith(f"{f}:{n}: error: 'typo' [")
    assert "did you mean 'process_creation'?" in line


def test_hunt_rejects_a_rule_with_a_misspelt_category(tmp_path):
    """Regression: the rule lost its log-source condition and matched every channel."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "typo.yml").write_text(rule_yaml("typo", logsource={"product": "windows", "category": "proces_creation"}))
    (rules / "ok.yml").write_text(rule_yaml("ok"))
    events = tmp_path / "e.jsonl"
    events.write_text("\n".join(json.dumps(e) for e in [
        proc_event("powershell -enc AAA"),
        {"EventID": 4688, "Channel": "Security", "Computer": "WKS-1", "CommandLine": "cmd -enc y"}]) + "\n")
    result = invoke("hunt", "-r", rules, events, "-f", "jsonl", "--no-cache")
    assert [(a["rule"]["title"], a["event"]["EventID"]) for a in jsonl_alerts(result.stdout)] == [("ok", 1)]
    assert "unknown log source category 'proces_creation'" in result.stderr


def test_check_warnings_sorted_and_strict_makes_them_fail(tmp_path):
    (tmp_path / "b.yml").write_text(rule_yaml("tags", tags=["attack.execution", "attack.t1059.1"]))
    (tmp_path / "a.yml").write_text(textwrap.dedent(f"""\
        title: no level
        id: {CHECK_ID}
        status: test
        logsource: {{product: windows, category: process_creation}}
        detection: {{sel: {{CommandLine|contains: x}}, condition: sel}}
        tags: [attack.T1059]
        """))
    result = invoke("check", tmp_path)
    assert result.exit_code == 0, result.output    # warnings alone pass
    lines = _check_lines(result)
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [f"{tmp_path / 'a.yml'}:1", "warning"], [f"{tmp_path / 'a.yml'}:6", "warning"],
        [f"{tmp_path / 'b.yml'}:{next(i for i, t in enumerate((tmp_path / 'b.yml').read_text().splitlines(), 1) if 't1059.1' in t)}", "warning"]]
    assert "no level" in lines[0] and "'attack.t1059'" in lines[1] and "'attack.t1059.001'" in lines[2]
    assert result.stdout.splitlines()[-1].endswith("0 error(s), 3 warning(s), 0 correlation rule(s)")
    strict = invoke("check", "--strict", tmp_path)
    assert strict.exit_code == 1 and "--strict" in strict.stdout.splitlines()[-1]


def test_check_missing_id_is_an_error(tmp_path):
    doc = yaml.safe_load(rule_yaml("no id"))
    del doc["id"]
    (tmp_path / "r.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    result = invoke("check", tmp_path)
    assert result.exit_code == 1
    (line,) = _check_lines(result)
    assert line == f"{tmp_path / 'r.yml'}:1: error: 'no id': rule has no id (alert ids and de-duplication depend on it)"


def test_check_invalid_yaml_line_is_the_unclosed_quote(tmp_path):
    (tmp_path / "q.yml").write_text('title: "unclosed\nid: x\nlevel: high\n')
    result = invoke("check", tmp_path)
    assert result.exit_code == 1
    (line,) = _check_lines(result)
    assert line.startswith(f"{tmp_path / 'q.yml'}:1: error: rule: invalid YAML (line 1,")
