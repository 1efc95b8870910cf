"""Unit tests for stream.engine: error isolation, odd events, big values, runaway regexes."""
from __future__ import annotations

import time
import uuid

import pytest
import yaml

from sigstream.stream.compiler import LowerCased
from sigstream.stream.engine import Engine, EngineError, event_text
from sigstream.stream.rules import Rule, load_rule_text

SYSMON = "Microsoft-Windows-Sysmon/Operational"
PROC = {"product": "windows", "category": "process_creation"}
ANY = {"product": "test", "category": "test"}


def rule_doc(title, detection, logsource=ANY):
    det = dict(detection)
    det.setdefault("condition", "sel")
    return yaml.safe_dump({"title": title, "id": str(uuid.uuid4()), "status": "test",
                           "logsource": logsource, "detection": det, "level": "high"}, sort_keys=False)


def engine_of(*docs, **kw):
    loaded = load_rule_text("---\n".join(docs))
    assert not loaded.errors, loaded.errors
    return Engine(loaded.rules, **kw)


def titles(hits):
    return [h.rule.title for h in hits]


# ------------------------------------------------------------------ error isolation

def test_rule_raising_during_evaluation_is_reported_and_others_still_match():
    seen: list[EngineError] = []
    engine = engine_of(
        rule_doc("first", {"sel": {"CommandLine|contains": "evil"}}),
        rule_doc("broken", {"sel": {"CommandLine|contains": "evil"}}),
        rule_doc("last", {"sel": {"CommandLine|contains": "evil"}}),
        on_error=seen.append,
    )
    broken = next(r for r in engine.rules if r.rule.title == "broken")

    def boom(ev, low):
        raise RuntimeError("kaboom")
    broken.match = boom

    ev = {"CommandLine": "so evil"}
    assert titles(engine.match(ev)) == ["first", "last"]
    assert titles(engine.match_all(ev)) == ["first", "last"]
    assert len(engine.errors) == 2
    err = engine.errors[0]
    assert err.rule.title == "broken"
    assert "RuntimeError" in err.reason and "kaboom" in err.reason
    assert seen == engine.errors


def test_rule_whose_ir_cannot_compile_is_reported_and_others_load():
    good = load_rule_text(rule_doc("good", {"sel": {"A": "x"}})).rules[0]
    bad = Rule(id="bad", title="bad ir", level=None, status=None, description=None, tags=(),
               references=(), author=None, date=None, logsource={}, falsepositives=(),
               ir=("xor", ()))
    engine = Engine([bad, good])
    assert [r.rule.title for r in engine.rules] == ["good"]
    (err,) = engine.errors
    assert err.rule is bad and "cannot compile" in err.reason
    assert titles(engine.match({"A": "X"})) == ["good"]


def test_matches_are_in_load_order():
    docs = [rule_doc(f"r{i}", {"sel": {"A|contains": "needle"}}) for i in range(6)]
    engine = engine_of(*reversed(docs))
    assert titles(engine.match({"A": "a needle"})) == [f"r{i}" for i in reversed(range(6))]


# ------------------------------------------------------------------ odd events

@pytest.mark.parametrize("event", [
    {"Channel": [SYSMON], "EventID": 1, "Image": "C:\\powershell.exe"},
    {"Channel": SYSMON, "EventID": [1], "Image": "C:\\powershell.exe"},
    {"Channel": {"name": SYSMON}, "EventID": {"id": 1}, "Image": "C:\\powershell.exe"},
    {"Channel": None, "EventID": None, "Image": None},
    {"Channel": 5, "EventID": "one", "Image": ["C:\\powershell.exe", None, {"x": 1}]},
    {},
])
def test_odd_routing_values_do_not_crash(event):
    engine = engine_of(
        rule_doc("proc", {"sel": {"Image|endswith": "\\powershell.exe"}}, PROC),
        rule_doc("any", {"sel": {"Image|endswith": "\\powershell.exe"}}),
    )
    for _ in range(2):  # second time through the bucket cache
        hits = engine.match(event)
        assert set(titles(hits)) <= set(titles(engine.match_all(event)))
    assert engine.errors == []


def test_unhashable_channel_still_matches_unrouted_rules():
    engine = engine_of(rule_doc("any", {"sel": {"Image|endswith": "\\powershell.exe"}}))
    assert titles(engine.match({"Channel": ["a", "b"], "EventID": [1], "Image": "C:\\PowerShell.exe"})) == ["any"]


def test_list_channel_routed_like_match_all():
    engine = engine_of(rule_doc("proc", {"sel": {"Image|endswith": "\\powershell.exe"}}, PROC))
    ev = {"Channel": [SYSMON], "EventID": 1, "Image": "C:\\powershell.exe"}
    assert titles(engine.match_all(ev)) == ["proc"]
    assert titles(engine.match(ev)) == ["proc"]


@pytest.mark.parametrize("event, low", [
    ({"A": "MiXed", "N": 5, "F": 1.5, "B": True, "C": False, "Z": None, "L": ["X"], "D": {"k": "V"}},
     {"A": "mixed", "N": "5", "F": "1.5", "B": "true", "C": "false", "Z": None, "L": None, "D": None,
      "missing": None}),
])
def test_lower_cased_view_is_lazy_and_scalar_only(event, low):
    view = LowerCased(event)
    assert dict(view) == {}  # nothing computed before first use
    assert {k: view[k] for k in low} == low
    assert dict(view) == low  # computed once, then cached


@pytest.mark.parametrize("event, lines", [
    ({"A": "MiXed", "N": 5, "F": 1.5, "B": True, "Z": None}, ["MiXed", "5", "1.5", "True", "None"]),
    ({"L": ["X", 1, None, True], "D": {"k": "V", "m": {"n": ["W"]}}}, ["X", "1", "True", "V", "W"]),
])
def test_event_text_has_every_value_including_nested(event, lines):
    assert event_text(event).split("\n") == lines


def test_needle_scan_ignores_case_of_ascii_and_non_ascii_text():
    engine = engine_of(rule_doc("ps", {"sel": {"CommandLine|contains": "Invoke-Mimikatz"}}, PROC))
    for cmd in ("x INVOKE-MIMIKATZ y", "x invoke-mimikatz y", "ÄÖ INVOKE-MIMIKATZ ÉÈ"):
        ev = {"Channel": SYSMON, "EventID": 1, "CommandLine": cmd}
        assert titles(engine.match(ev)) == ["ps"], cmd
    assert titles(engine.match({"Channel": SYSMON, "EventID": 1, "CommandLine": "Invoke-Mimi katz"})) == []


# ------------------------------------------------------------------ big values

BIG = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def big_engine():
    return engine_of(
        rule_doc("contains", {"sel": {"CommandLine|contains": "sekurlsa::logonpasswords"}}),
        rule_doc("wildcard", {"sel": {"CommandLine": "*invoke*mimikatz*"}}),
        rule_doc("regex", {"sel": {"CommandLine|re": r"sekurlsa::\w+"}}),
        rule_doc("endswith", {"sel": {"CommandLine|endswith": ".ps1"}}),
        rule_doc("keyword", {"keywords": ["*DumpCreds*"], "condition": "keywords"}),
    )


@pytest.mark.parametrize("value, expected", [
    ("x" * BIG, []),
    ("invoke " + "x" * BIG + " mimikatz sekurlsa::logonpasswords DumpCreds",
     ["contains", "wildcard", "regex", "keyword"]),
    ("y" * BIG + " run.ps1", ["endswith"]),
])
def test_ten_megabyte_value(big_engine, value, expected):
    t0 = time.perf_counter()
    hits = big_engine.match({"CommandLine": value, "Other": "small"})
    elapsed = time.perf_counter() - t0
    assert titles(hits) == expected
    assert big_engine.errors == []
    assert elapsed < 5.0, f"{elapsed:.2f}s for a 10 MB value"


# ------------------------------------------------------------------ runaway regexes

CATASTROPHIC = r"(.+,)+;"   # nested open-ended quantifiers: polynomial blow-up on a run of commas


def test_catastrophic_regex_is_flagged_risky():
    (rule,) = load_rule_text(rule_doc("cat", {"sel": {"A|re": CATASTROPHIC}})).rules
    assert rule.ir[2] == ("re", CATASTROPHIC, 0, True)
    (plain,) = load_rule_text(rule_doc("ok", {"sel": {"A|re": r"invoke-\w+"}})).rules
    assert plain.ir[2][3] is False


@pytest.mark.parametrize("pattern", [
    r"(a+)+$", r"(?:a+)+$", r"(a{1,})+$", r"(\w+\s?)+$", CATASTROPHIC,
    pytest.param(r"(?:(a+))+$"),
    pytest.param(r"((a+)b?)+$"),
])
def test_nested_quantifiers_are_flagged_risky(pattern):
    (rule,) = load_rule_text(rule_doc("cat", {"sel": {"A|re": pattern}})).rules
    assert rule.ir[2][0] == "re"
    assert rule.ir[2][3] is True


def test_catastrophic_regex_times_out_and_other_rules_fire():
    engine = engine_of(
        rule_doc("catastrophic", {"sel": {"A|re": CATASTROPHIC}}),
        rule_doc("sibling", {"sel": {"B|contains": "hello"}}),
        rule_doc("same field", {"sel": {"A|startswith": ";,,,"}}),
    )
    # the ";" passes the regex's literal guard, so the search itself has to run (and give up)
    ev = {"A": ";" + "," * 20000, "B": "say hello"}
    t0 = time.perf_counter()
    hits = engine.match(ev)
    elapsed = time.perf_counter() - t0
    assert titles(hits) == ["sibling", "same field"]
    assert elapsed < 10.0, f"took {elapsed:.1f}s"
    (err,) = engine.errors
    assert err.rule.title == "catastrophic"
    assert "RegexTimeout" in err.reason


def test_risky_regex_still_matches_normal_values():
    engine = engine_of(rule_doc("catastrophic", {"sel": {"A|re": CATASTROPHIC}}))
    assert titles(engine.match({"A": "a,b,;"})) == ["catastrophic"]
    assert engine.match({"A": "a,b,"}) == []
    assert engine.errors == []


# ------------------------------------------------------------------ prefilter database cache

@pytest.mark.parametrize("corrupt", [b"", b"garbage" * 10, None], ids=["empty", "garbage", "truncated"])
def test_corrupt_needle_database_cache_is_ignored(tmp_path, monkeypatch, corrupt):
    monkeypatch.setenv("SIGSTREAM_CACHE_DIR", str(tmp_path))
    docs = [rule_doc(f"r{i}", {"sel": {"CommandLine|contains": f"needle-{i}"}}) for i in range(5)]
    first = engine_of(*docs)
    assert titles(first.match({"CommandLine": "x needle-3 y"})) == ["r3"]
    dbs = list(tmp_path.glob("needles-*"))
    if not dbs:
        pytest.skip("no needle database cache on this platform (hyperscan missing)")
    for db in dbs:
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2] if corrupt is None else corrupt)
    second = engine_of(*docs)
    assert titles(second.match({"CommandLine": "x needle-3 y"})) == ["r3"]
    assert titles(second.match({"CommandLine": "needle-0 and needle-4"})) == ["r0", "r4"]
    assert second.match({"CommandLine": "nothing"}) == []


def test_kept_evaluation_errors_are_bounded():
    """A long-running processor must not grow its error list without limit."""
    from sigstream.stream.engine import Engine, EngineError

    engine = Engine([])
    rule = load_rule_text(rule_doc("r", {"sel": {"A": "x"}})).rules[0]
    for i in range(3 * Engine.MAX_KEPT_ERRORS):
        engine._error(EngineError(rule, f"problem {i}"))
    assert engine.error_count == 3 * Engine.MAX_KEPT_ERRORS
    assert len(engine.errors) <= Engine.MAX_KEPT_ERRORS
    assert engine.errors[-1].reason == f"problem {3 * Engine.MAX_KEPT_ERRORS - 1}"


@pytest.mark.parametrize("needle, needed", [
    ("4242", True), ("-500", True), ("1.5e-05", True), ("true", True), ("rue", True), ("none", True),
    ("-inf", True), ("nan", True), ("a\nb", True), ("powershell", False), ("0x40", False), ("1.2.3.x", False),
])
def test_needles_that_need_numbers_bools_and_nulls_in_the_scan(needle, needed):
    from sigstream.stream.engine import needs_non_strings
    assert needs_non_strings([needle]) is needed


def test_event_text_without_non_strings():
    ev = {"A": "x", "N": 5, "B": True, "Z": None, "L": [7, "y"]}
    assert event_text({k: ev[k] for k in "ANBZ"}, False) == "x"
    assert event_text(ev, False).split("\n") == ["x", "5", "True", "7", "y"]  # nested: all kept


@pytest.mark.parametrize("rule_value, event_value", [
    ("4242", 14242), ("true", True), ("1.5", 1.5), ("-500", -500)])
def test_string_needle_found_in_a_number_or_bool_field(rule_value, event_value):
    """Buckets whose needles look like numbers scan numeric values too (never miss)."""
    engine = engine_of(rule_doc("num", {"sel": {"Count|contains": rule_value}}, PROC),
                       rule_doc("other", {"sel": {"CommandLine|contains": "mimikatz"}}, PROC))
    ev = {"Channel": SYSMON, "EventID": 1, "Count": event_value, "CommandLine": "x"}
    assert titles(engine.match(ev)) == titles(engine.match_all(ev)) == ["num"]
