"""Unit tests for stream.ruletests (the `<rule>.tests.yml` runner)."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from sigstream.stream import ruletests
from sigstream.stream.ruletests import discover, run_tests

SYSMON = "Microsoft-Windows-Sysmon/Operational"


def rule_text(title="encoded powershell", status="test"):
    return yaml.safe_dump({
        "title": title, "id": str(uuid.uuid4()), "status": status,
        "logsource": {"product": "windows", "category": "process_creation"},
        "detection": {"img": {"Image|endswith": "\\powershell.exe"},
                      "cmd": {"CommandLine|contains": "-enc"}, "condition": "img and cmd"},
        "level": "high"})


def event(cmd="powershell -enc AAA", image="C:\\Windows\\powershell.exe"):
    return {"EventID": 1, "Channel": SYSMON, "Image": image, "CommandLine": cmd}


def write_pair(d: Path, cases, stem="rule", rule=None, suffix=".tests.yml", extra=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{stem}.yml").write_text(rule if rule is not None else rule_text())
    spec = {"cases": cases, **(extra or {})}
    (d / f"{stem}{suffix}").write_text(yaml.safe_dump(spec))
    return d / f"{stem}.yml", d / f"{stem}{suffix}"


GOOD_CASES = [
    {"name": "encoded", "expect": "match", "event": event()},
    {"name": "plain", "expect": "no_match", "event": event("powershell -c dir")},
    {"name": "other image", "expect": "no_match", "event": event(image="C:\\cmd.exe")},
]


def test_passing_cases(tmp_path):
    rule, tests = write_pair(tmp_path, GOOD_CASES)
    report = run_tests([tmp_path], use_cache=False)
    assert report.ok
    assert [(r.name, r.passed) for r in report.results] == [("encoded", True), ("plain", True),
                                                            ("other image", True)]
    assert all(r.rule_file == str(rule) and r.test_file == str(tests) for r in report.results)
    assert report.errors == [] and report.untested_rules == []


def test_failing_cases_explain_why(tmp_path):
    write_pair(tmp_path, [
        {"name": "should match", "expect": "match", "event": event("powershell -c dir")},
        {"name": "should not match", "expect": "no_match", "event": event()},
        {"name": "fine", "expect": "match", "event": event()},
    ])
    report = run_tests([tmp_path], use_cache=False)
    assert not report.ok
    assert [r.name for r in report.failed] == ["should match", "should not match"]
    miss, false_hit = report.failed
    assert "expected a match" in miss.detail
    assert "expected no match" in false_hit.detail
    assert "img" in false_hit.detail and "cmd" in false_hit.detail  # the explanation


def test_unnamed_cases_get_numbered_names(tmp_path):
    write_pair(tmp_path, [{"expect": "match", "event": event()}, {"expect": "no_match", "event": event("x")}])
    assert [r.name for r in run_tests([tmp_path], use_cache=False).results] == ["case 1", "case 2"]


@pytest.mark.parametrize("case", [
    {"name": "typo", "expect": "matches", "event": event()},
    {"name": "missing expect", "event": event()},
    {"name": "bool", "expect": True, "event": event()},
    {"name": "no event", "expect": "match"},
    {"name": "event is a list", "expect": "match", "event": [event()]},
])
def test_invalid_case_fails_with_a_reason(tmp_path, case):
    write_pair(tmp_path, [case, GOOD_CASES[0]])
    report = run_tests([tmp_path], use_cache=False)
    assert not report.ok
    (bad,) = report.failed
    assert bad.name == case["name"]
    assert "expect: match|no_match" in bad.detail
    assert [r.passed for r in report.results] == [False, True]


def test_bad_test_file_is_an_error_and_other_files_still_run(tmp_path):
    write_pair(tmp_path / "a", GOOD_CASES)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "rule.yml").write_text(rule_text("b"))
    (tmp_path / "b" / "rule.tests.yml").write_text("cases: [\n  - name: x\n")
    report = run_tests([tmp_path], use_cache=False)
    assert not report.ok
    (err,) = report.errors
    assert str(tmp_path / "b" / "rule.tests.yml") in err and "cannot read" in err
    assert len(report.results) == 3 and not report.failed


def test_test_file_without_cases_is_an_error(tmp_path):
    write_pair(tmp_path, [])
    report = run_tests([tmp_path], use_cache=False)
    assert not report.ok and report.results == []
    (err,) = report.errors
    assert "no cases" in err


def test_missing_rule_file_named_by_test_file(tmp_path):
    _, tests = write_pair(tmp_path, GOOD_CASES, extra={"rule": "does_not_exist.yml"})
    report = run_tests([tests], use_cache=False)
    assert not report.ok and report.results == []
    (err,) = report.errors
    assert "does_not_exist.yml" in err and "not found" in err


def test_explicit_test_file_without_rule_next_to_it(tmp_path):
    tests = tmp_path / "orphan.tests.yml"
    tests.write_text(yaml.safe_dump({"cases": GOOD_CASES}))
    report = run_tests([tests], use_cache=False)
    (err,) = report.errors
    assert "orphan.yml" in err and "not found" in err


def test_rule_key_points_to_another_rule_file(tmp_path):
    (tmp_path / "actual_rule.yml").write_text(rule_text())
    (tmp_path / "named.tests.yml").write_text(yaml.safe_dump({"rule": "actual_rule.yml", "cases": GOOD_CASES}))
    report = run_tests([tmp_path / "named.tests.yml"], use_cache=False)
    assert report.ok and len(report.results) == 3


def test_rule_that_does_not_load_is_an_error(tmp_path):
    broken = rule_text().replace("Image|endswith", "Image|nosuchmod")
    write_pair(tmp_path, GOOD_CASES, rule=broken)
    report = run_tests([tmp_path], use_cache=False)
    assert not report.ok and report.results == []
    (err,) = report.errors
    assert "does not load" in err and "nosuchmod" in err


def test_deprecated_rule_is_still_tested(tmp_path):
    write_pair(tmp_path, GOOD_CASES, rule=rule_text(status="deprecated"))
    report = run_tests([tmp_path], use_cache=False)
    assert report.ok and len(report.results) == 3


def test_untested_rules_are_listed_and_yaml_suffix_found(tmp_path):
    write_pair(tmp_path / "t", GOOD_CASES, suffix=".tests.yaml")
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "lonely.yml").write_text(rule_text("lonely"))
    assert ruletests.tests_file_for(tmp_path / "t" / "rule.yml") == tmp_path / "t" / "rule.tests.yaml"
    assert ruletests.tests_file_for(tmp_path / "u" / "lonely.yml") is None
    pairs, untested = discover([tmp_path])
    assert pairs == [(tmp_path / "t" / "rule.yml", tmp_path / "t" / "rule.tests.yaml")]
    assert untested == [str(tmp_path / "u" / "lonely.yml")]
    report = run_tests([tmp_path], use_cache=False)
    assert report.ok and report.untested_rules == untested


def test_prepare_normalises_events_and_its_errors_fail_the_case(tmp_path):
    write_pair(tmp_path, [{"name": "raw", "expect": "match", "event": {"wrapped": event()}},
                          {"name": "unnormalisable", "expect": "match", "event": {"bad": 1}}])

    def prepare(ev):
        if "bad" in ev:
            raise ValueError("cannot do it")
        return ev["wrapped"]
    report = run_tests([tmp_path], prepare=prepare, use_cache=False)
    assert [r.passed for r in report.results] == [True, False]
    assert "cannot do it" in report.failed[0].detail


# ------------------------------------------------------------------ correlation cases

def corr_text(rule_ref="enc_launch", gte=3, timespan="5m", name="many_enc"):
    return yaml.safe_dump({
        "title": "many encoded launches", "id": str(uuid.uuid4()), "name": name, "status": "test",
        "correlation": {"type": "event_count", "rules": [rule_ref], "group-by": ["Computer"],
                        "timespan": timespan, "condition": {"gte": gte}},
        "level": "high"})


def timed(minute, host="WKS-1", cmd="powershell -enc AAA"):
    return {**event(cmd), "Computer": host, "TimeCreated": f"2026-11-24T10:{minute:02d}:00Z"}


def write_corr_pack(d: Path, cases, corr=None):
    """base/enc_launch.yml (a named rule), corr/many_enc.yml + its tests."""
    (d / "base").mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(rule_text())
    base["name"] = "enc_launch"
    (d / "base" / "enc_launch.yml").write_text(yaml.safe_dump(base))
    return write_pair(d / "corr", cases, stem="many_enc", rule=corr if corr is not None else corr_text())


def test_correlation_cases_match_no_match_and_count(tmp_path):
    _, tests = write_corr_pack(tmp_path, [
        {"name": "three in three minutes", "expect": "match", "events": [timed(0), timed(1), timed(2)]},
        {"name": "six give two", "expect": "match", "count": 2, "events": [timed(m) for m in range(6)]},
        {"name": "too slow", "expect": "no_match", "events": [timed(0), timed(3), timed(7)]},
        {"name": "other hosts", "expect": "no_match", "events": [timed(0, "A"), timed(1, "B"), timed(2, "C")]},
        {"name": "benign content", "expect": "no_match", "events": [timed(m, cmd="powershell -c dir") for m in range(4)]},
    ])
    report = run_tests([tmp_path], use_cache=False)
    assert report.ok, [(r.name, r.detail) for r in report.failed] + report.errors
    assert len(report.results) == 5 and all(r.test_file == str(tests) for r in report.results)


def test_correlation_case_failures_explain(tmp_path):
    write_corr_pack(tmp_path, [
        {"name": "wrong count", "expect": "match", "count": 1, "events": [timed(m) for m in range(6)]},
        {"name": "should fire", "expect": "match", "events": [timed(0), timed(1)]},
        {"name": "should not fire", "expect": "no_match", "events": [timed(0), timed(1), timed(2)]},
    ])
    report = run_tests([tmp_path], use_cache=False)
    wrong, miss, hit = report.failed
    assert "exactly 1" in wrong.detail and "fired 2 time(s)" in wrong.detail
    assert "did not" in miss.detail and "enc_launch x2" in miss.detail and "needs: enc_launch" in miss.detail
    assert "expected no firing" in hit.detail and "WKS-1" in hit.detail


def test_suppressed_helper_correlation_is_still_counted(tmp_path):
    # a chained correlation (generate false) suppresses many_enc's alerts; its own test still sees it fire
    write_corr_pack(tmp_path, [{"name": "fires", "expect": "match", "events": [timed(0), timed(1), timed(2)]}])
    (tmp_path / "corr" / "chained.yml").write_text(yaml.safe_dump({
        "title": "chained", "id": str(uuid.uuid4()), "status": "test",
        "correlation": {"type": "event_count", "rules": ["many_enc"], "group-by": ["Computer"],
                        "timespan": "1h", "condition": {"gte": 2}}}))
    report = run_tests([tmp_path], use_cache=False)
    assert report.ok, [(r.name, r.detail) for r in report.failed] + report.errors


@pytest.mark.parametrize("case, reason", [
    ({"name": "bad expect", "expect": "fires", "events": [timed(0)]}, "expect: match|no_match"),
    ({"name": "empty events", "expect": "match", "events": []}, "non-empty list"),
    ({"name": "events not a list", "expect": "match", "events": timed(0)}, "non-empty list"),
    ({"name": "scalar event", "expect": "match", "events": [timed(0), "x"]}, "event 2 of `events` is not a mapping"),
    ({"name": "count with no_match", "expect": "no_match", "count": 2, "events": [timed(0)]}, "contradicts"),
    ({"name": "count zero with match", "expect": "match", "count": 0, "events": [timed(0)]}, "contradicts"),
    ({"name": "negative count", "expect": "match", "count": -1, "events": [timed(0)]}, "whole number"),
    ({"name": "typo key", "expect": "match", "event": timed(0), "events": [timed(0)]}, "unknown key(s) event"),
    ({"name": "single event for a correlation", "expect": "match", "event": timed(0)}, "event sequence"),
    ({"name": "no time", "expect": "match", "events": [event(), event(), event()]}, "no event time"),
    ({"name": "unknown correlation", "expect": "match", "correlation": "nope", "events": [timed(0)]},
     "names no correlation"),
])
def test_malformed_correlation_case_fails_with_file_name_and_reason(tmp_path, case, reason):
    _, tests = write_corr_pack(tmp_path, [case, {"name": "good", "expect": "match",
                                                 "events": [timed(0), timed(1), timed(2)]}])
    report = run_tests([tmp_path], use_cache=False)
    (bad,) = report.failed
    assert (bad.test_file, bad.name) == (str(tests), case["name"])
    assert reason in bad.detail
    assert [r.passed for r in report.results] == [False, True]


def test_correlation_with_unknown_reference_is_an_error(tmp_path):
    write_corr_pack(tmp_path, [{"name": "x", "expect": "match", "events": [timed(0)]}],
                    corr=corr_text(rule_ref="no_such_rule"))
    report = run_tests([tmp_path], use_cache=False)
    (err,) = report.errors
    assert "many_enc.yml" in err and "does not load" in err and "no_such_rule" in err


def test_explicit_correlation_tests_file_with_a_rule_path_for_its_base_rules(tmp_path):
    _, tests = write_corr_pack(tmp_path, [{"name": "fires", "expect": "match",
                                           "events": [timed(0), timed(1), timed(2)]}])
    # the base rule is in another directory: it is found among the rule paths given
    report = run_tests([tests, tmp_path / "base"], use_cache=False)
    assert report.ok, report.errors
    assert [r.name for r in report.results] == ["fires"]


def test_raw_events_are_prepared_in_sequences(tmp_path):
    write_corr_pack(tmp_path, [{"name": "raw", "expect": "match",
                                "events": [{"wrapped": timed(m)} for m in range(3)]}])
    report = run_tests([tmp_path], prepare=lambda ev: ev["wrapped"], use_cache=False)
    assert report.ok, [(r.name, r.detail) for r in report.failed]
