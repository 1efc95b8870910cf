"""Unit tests for stream.rules (loading, errors, selection, correlations, filters, cache)."""
from __future__ import annotations

import pickle
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

from sigstream.stream.engine import Engine
from sigstream.stream.rules import (
    LoadedRules,
    Rule,
    RuleSelection,
    find_rule_files,
    load_rule_text,
    load_rules,
)

SYSMON = "Microsoft-Windows-Sysmon/Operational"
PROC_LS = {"product": "windows", "category": "process_creation"}


def rule_yaml(detection: dict | None = None, *, title: str = "test rule", rule_id: str | None = None,
              logsource: dict | None = None, **extra) -> str:
    det = dict(detection or {"sel": {"CommandLine|contains": "evil"}})
    det.setdefault("condition", "sel")
    doc = {"title": title, "id": rule_id or str(uuid.uuid4()), "status": "test",
           "logsource": logsource or {"product": "test", "category": "test"},
           "detection": det, "level": "medium"}
    doc.update(extra)
    return yaml.safe_dump(doc, sort_keys=False)


def titles(loaded: LoadedRules) -> list[str]:
    return sorted(r.title for r in loaded.rules)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------ files and directories

def test_directory_recursion_finds_yml_and_yaml_and_skips_tests_files(tmp_path):
    write(tmp_path / "a.yml", rule_yaml(title="top yml"))
    write(tmp_path / "sub" / "deeper" / "b.yaml", rule_yaml(title="deep yaml"))
    write(tmp_path / "sub" / "b.tests.yml", "cases: []\n")
    write(tmp_path / "sub" / "c.tests.yaml", "cases: []\n")
    write(tmp_path / "notes.txt", rule_yaml(title="not a rule file"))
    write(tmp_path / "rule.json", rule_yaml(title="json is ignored"))

    files = find_rule_files([tmp_path])
    assert sorted(f.name for f in files) == ["a.yml", "b.yaml"]

    loaded = load_rules([tmp_path], cache_dir=tmp_path / "cache")
    assert titles(loaded) == ["deep yaml", "top yml"]
    assert loaded.files == 2
    assert loaded.errors == []


def test_explicit_file_is_loaded_whatever_its_suffix(tmp_path):
    f = write(tmp_path / "custom.rule", rule_yaml(title="odd suffix"))
    assert titles(load_rules([f], use_cache=False)) == ["odd suffix"]


def test_missing_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_rules([tmp_path / "nope"], use_cache=False)


def test_multi_document_yaml_loads_every_document(tmp_path):
    text = "---\n".join(rule_yaml(title=f"doc {i}") for i in range(3))
    loaded = load_rules([write(tmp_path / "multi.yml", text)], use_cache=False)
    assert titles(loaded) == ["doc 0", "doc 1", "doc 2"]
    assert all(r.path == str(tmp_path / "multi.yml") for r in loaded.rules)


def test_rule_meta_is_taken_from_the_rule(tmp_path):
    rid = str(uuid.uuid4())
    text = rule_yaml(title="meta", rule_id=rid, tags=["attack.execution", "attack.t1059.001"],
                     references=["https://example.org/x"], author="me", date="2024-01-02",
                     description="desc", falsepositives=["admins"], logsource=PROC_LS)
    (rule,) = load_rule_text(text).rules
    meta = rule.meta()
    assert meta["id"] == rid and meta["title"] == "meta" and meta["level"] == "medium"
    assert meta["status"] == "test" and meta["author"] == "me" and meta["date"] == "2024-01-02"
    assert meta["tags"] == ["attack.execution", "attack.t1059.001"]
    assert meta["references"] == ["https://example.org/x"]
    assert meta["falsepositives"] == ["admins"]
    assert meta["logsource"] == {"product": "windows", "category": "process_creation"}
    assert meta["description"] == "desc"


# ------------------------------------------------------------------ broken rules

BAD_RULES = {  # detection, part of the reason, text of the line the error points at
    "unknown modifier": ({"sel": {"CommandLine|nosuchmodifier": "x"}}, "nosuchmodifier",
                         "CommandLine|nosuchmodifier:"),
    "undefined identifier": ({"sel": {"A": "x"}, "condition": "sel and missing_sel"}, "missing_sel",
                             "condition: sel and missing_sel"),
    "bad condition syntax": ({"sel": {"A": "x"}, "condition": "sel and and ("}, "", "condition: sel and and"),
    "invalid regex": ({"sel": {"A|re": "a(b"}}, "a(b", "A|re:"),
}


def line_of(path: Path, needle: str) -> int:
    """1-based number of the only line of `path` holding `needle`."""
    (n,) = [i for i, text in enumerate(path.read_text().splitlines(), 1) if needle in text]
    return n


@pytest.mark.parametrize("kind", list(BAD_RULES))
def test_broken_rule_reported_once_with_path_id_title_and_others_load(tmp_path, kind):
    detection, reason_part, at = BAD_RULES[kind]
    bad_id = str(uuid.uuid4())
    same = write(tmp_path / "same.yml", "---\n".join([
        rule_yaml(title="before"),
        rule_yaml(detection, title="the broken one", rule_id=bad_id),
        rule_yaml(title="after"),
    ]))
    write(tmp_path / "other.yml", rule_yaml(title="other file"))

    loaded = load_rules([tmp_path], use_cache=False)

    assert titles(loaded) == ["after", "before", "other file"]
    assert len(loaded.errors) == 1, [str(e) for e in loaded.errors]
    err = loaded.errors[0]
    assert err.path == str(same)
    assert err.rule_id == bad_id
    assert err.title == "the broken one"
    assert reason_part in err.reason
    assert err.line == line_of(same, at)
    assert str(err) == f"{same}:{err.line}: 'the broken one' [{bad_id}]: {err.reason}"
    assert err.to_dict() == {"path": str(same), "line": err.line, "rule_id": bad_id,
                             "title": "the broken one", "reason": err.reason}


def test_bad_yaml_reports_line_number_and_other_files_load(tmp_path):
    bad = write(tmp_path / "bad.yml", "title: broken\nid: x\ndetection:\n  sel: [1, 2\n  condition: sel\n")
    write(tmp_path / "good.yml", rule_yaml(title="good"))
    loaded = load_rules([tmp_path], use_cache=False)
    assert titles(loaded) == ["good"]
    assert len(loaded.errors) == 1
    err = loaded.errors[0]
    assert err.path == str(bad)
    assert "invalid YAML" in err.reason
    assert "line 5" in err.reason  # the flow sequence is still open when `condition:` arrives


@pytest.mark.parametrize("text, line", [
    ("title: x\n  bad: [\n", 2),
    ("a: 1\nb: 2\nc: [1, 2\nd: 3\n", 4),
    ("a: 1\nb:\n\t- x\n", 3),
])
def test_bad_yaml_line_numbers_are_one_based(text, line):
    (err,) = load_rule_text(text, name="f.yml").errors
    assert f"(line {line}," in err.reason
    assert err.line == line and str(err).startswith(f"f.yml:{line}: rule: invalid YAML")


def test_bad_yaml_in_later_document_keeps_earlier_documents(tmp_path):
    first = rule_yaml(title="first, valid")
    f = write(tmp_path / "multi.yml", first + "---\ntitle: x\n  bad: [\n")
    loaded = load_rules([f], use_cache=False)
    (err,) = loaded.errors
    assert titles(loaded) == ["first, valid"]
    # the line in the file (not in the document; yaml counts from 0): `  bad: [`
    bad_line = len(first.splitlines()) + 3
    assert err.line == bad_line == line_of(f, "  bad: [")
    assert f"(line {bad_line}, column 6)" in err.reason
    assert str(err).startswith(f"{f}:{bad_line}: rule: invalid YAML")
    assert err.to_dict()["line"] == bad_line


@pytest.mark.parametrize("doc, kind", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_non_mapping_document_is_an_error_and_siblings_load(tmp_path, doc, kind):
    one = rule_yaml(title="one")
    f = write(tmp_path / "r.yml", one + "---\n" + doc + "---\n" + rule_yaml(title="two"))
    loaded = load_rules([f], use_cache=False)
    assert titles(loaded) == ["one", "two"]
    (err,) = loaded.errors
    assert err.path == str(f)
    assert err.line == len(one.splitlines()) + 2   # where the document starts
    assert "document 2" in err.reason and kind in err.reason


def test_empty_documents_are_ignored(tmp_path):
    f = write(tmp_path / "r.yml", "---\n---\n" + rule_yaml(title="only") + "---\n")
    loaded = load_rules([f], use_cache=False)
    assert titles(loaded) == ["only"] and loaded.errors == []


def test_unknown_modifier_points_at_its_key_and_suggests_the_closest_modifier(tmp_path):
    bad = rule_yaml({"sel": {"Image|endswith": "x.exe", "CommandLine|contans": "evil"}},
                    title="typo", rule_id="99999999-9999-4999-8999-999999999999")
    f = write(tmp_path / "r.yml", rule_yaml(title="fine") + "---\n" + bad)
    (err,) = load_rules([f], use_cache=False).errors
    assert err.reason == "Unknown modifier 'contans' (did you mean 'contains'?)"
    assert err.line == line_of(f, "CommandLine|contans:")
    assert str(err) == (f"{f}:{err.line}: 'typo' [99999999-9999-4999-8999-999999999999]: "
                        "Unknown modifier 'contans' (did you mean 'contains'?)")
    (err,) = load_rule_text(rule_yaml({"sel": {"A|zzzzzz": "x"}})).errors
    assert "did you mean" not in err.reason     # nothing close: no suggestion


def test_bad_condition_points_at_the_condition_key(tmp_path):
    bad = rule_yaml({"sel": {"A": "x"}, "other": {"B": "y"}, "condition": "sel or or other"},
                    title="bad cond")
    f = write(tmp_path / "r.yml", rule_yaml(title="fine") + "---\n" + bad)
    (err,) = load_rules([f], use_cache=False).errors
    assert err.title == "bad cond" and err.line == line_of(f, "condition: sel or or other")


def test_errors_without_a_known_key_point_at_the_document_start(tmp_path):
    first = rule_yaml(title="fine")
    f = write(tmp_path / "r.yml", first + "---\n" + yaml.safe_dump(
        {"title": "no det", "id": str(uuid.uuid4()), "logsource": {"product": "x"}}, sort_keys=False))
    (err,) = load_rules([f], use_cache=False).errors
    assert err.title == "no det" and err.line == len(first.splitlines()) + 2


def test_rule_without_detection_is_an_error(tmp_path):
    f = write(tmp_path / "r.yml", yaml.safe_dump({"title": "no det", "id": str(uuid.uuid4()),
                                                  "logsource": {"product": "x"}}))
    loaded = load_rules([f], use_cache=False)
    assert loaded.rules == []
    (err,) = loaded.errors
    assert err.title == "no det"


def test_unresolved_placeholder_is_an_error_and_resolved_one_expands():
    text = rule_yaml({"sel": {"User|expand": "%admins%"}}, title="ph")
    loaded = load_rule_text(text)
    assert loaded.rules == []
    (err,) = loaded.errors
    assert "admins" in err.reason and "placeholder" in err.reason

    loaded = load_rule_text(text, placeholders={"admins": ["root", "Administrator"]})
    assert loaded.errors == []
    engine = Engine(loaded.rules)
    assert engine.match({"User": "administrator"})
    assert engine.match({"User": "ROOT"})
    assert not engine.match({"User": "guest"})


# ------------------------------------------------------------------ selection

def _rule_set(tmp_path: Path) -> Path:
    docs = [
        rule_yaml(title="info", level="informational", status="stable", tags=["attack.discovery"]),
        rule_yaml(title="low", level="low", status="test"),
        rule_yaml(title="medium", level="medium", status="experimental", tags=["attack.t1059.001"]),
        rule_yaml(title="high", level="high", status="stable", tags=["attack.Execution"]),
        rule_yaml(title="critical", level="critical", status="test",
                  rule_id="00000000-0000-0000-0000-00000000c001"),
        rule_yaml(title="deprecated", level="high", status="deprecated"),
        rule_yaml(title="unsupported", level="critical", status="unsupported"),
    ]
    return write(tmp_path / "set.yml", "---\n".join(docs))


@pytest.mark.parametrize("selection, expected", [
    (RuleSelection(), ["critical", "high", "info", "low", "medium"]),
    (RuleSelection(min_level="high"), ["critical", "high"]),
    (RuleSelection(min_level="critical"), ["critical"]),
    (RuleSelection(min_level="informational"), ["critical", "high", "info", "low", "medium"]),
    (RuleSelection(statuses=frozenset({"stable"})), ["high", "info"]),
    (RuleSelection(statuses=frozenset({"deprecated"})), ["deprecated"]),
    (RuleSelection(statuses=frozenset({"deprecated", "unsupported"}), min_level="critical"), ["unsupported"]),
    (RuleSelection(rule_ids=frozenset({"00000000-0000-0000-0000-00000000c001"})), ["critical"]),
    (RuleSelection(tags=frozenset({"attack.t1059.001", "attack.discovery"})), ["info", "medium"]),
    (RuleSelection(tags=frozenset({"attack.execution"})), ["high"]),  # rule tag case is ignored
    (RuleSelection(tags=frozenset({"attack.nothing"})), []),
])
def test_rule_selection(tmp_path, selection, expected):
    loaded = load_rules([_rule_set(tmp_path)], selection=selection, use_cache=False)
    assert titles(loaded) == expected
    assert loaded.skipped == 7 - len(expected)
    assert loaded.errors == []


def test_default_selection_hides_deprecated_and_unsupported(tmp_path):
    loaded = load_rules([_rule_set(tmp_path)], use_cache=False)
    assert "deprecated" not in titles(loaded) and "unsupported" not in titles(loaded)
    assert loaded.skipped == 2


# ------------------------------------------------------------------ correlations

BASE_RULE = textwrap.dedent("""\
    title: base
    id: 11111111-1111-1111-1111-111111111111
    name: base_rule
    status: test
    logsource: {product: test, category: test}
    detection:
      sel: {A: x}
      condition: sel
    level: low
    """)
CORRELATION = textwrap.dedent("""\
    title: many base hits
    id: 22222222-2222-2222-2222-222222222222
    status: test
    correlation:
      type: event_count
      rules: [REF]
      group-by: [Computer]
      timespan: 5m
      condition: {gte: 10}
    level: high
    """)


@pytest.mark.parametrize("ref", ["base_rule", "11111111-1111-1111-1111-111111111111"])
def test_correlation_in_same_file_is_parsed_and_listed(tmp_path, ref):
    f = write(tmp_path / "c.yml", BASE_RULE + "---\n" + CORRELATION.replace("REF", ref))
    loaded = load_rules([f], use_cache=False)
    assert loaded.errors == []
    assert titles(loaded) == ["base"]
    (corr,) = loaded.correlations
    assert corr.title == "many base hits"
    assert corr.id == "22222222-2222-2222-2222-222222222222"
    assert corr.type == "event_count"
    assert corr.rules == (ref,)
    assert corr.path == str(f)


def test_broken_correlation_is_an_error_not_a_crash(tmp_path):
    broken = CORRELATION.replace("event_count", "no_such_type").replace("REF", "base_rule")
    write(tmp_path / "c.yml", BASE_RULE + "---\n" + broken)
    write(tmp_path / "other.yml", rule_yaml(title="other"))
    loaded = load_rules([tmp_path], use_cache=False)
    assert titles(loaded) == ["base", "other"]
    assert loaded.correlations == []
    (err,) = loaded.errors
    assert err.title == "many base hits"


def test_correlation_that_pysigma_cannot_parse_is_an_error_not_a_crash(tmp_path):
    f = write(tmp_path / "c.yml", textwrap.dedent("""\
        title: broken corr
        id: 33333333-3333-3333-3333-333333333333
        correlation:
          type: no_such_type
          rules: [base_rule]
          timespan: 5m
        """))
    loaded = load_rules([f], use_cache=False)
    assert loaded.correlations == [] and loaded.rules == []
    (err,) = loaded.errors
    assert err.path == str(f) and err.title == "broken corr"
    assert err.rule_id == "33333333-3333-3333-3333-333333333333"


def test_valid_correlation_survives_a_broken_sibling_document(tmp_path):
    # a correlation without condition/group-by: pySigma raises instead of collecting the error
    broken = textwrap.dedent("""\
        title: broken corr
        id: 33333333-3333-3333-3333-333333333333
        correlation:
          type: no_such_type
          rules: [base_rule]
          timespan: 5m
        """)
    f = write(tmp_path / "c.yml", "---\n".join([BASE_RULE, CORRELATION.replace("REF", "base_rule"), broken]))
    loaded = load_rules([f], use_cache=False)
    assert [c.title for c in loaded.correlations] == ["many base hits"]
    assert [e.title for e in loaded.errors] == ["broken corr"]


def test_correlation_referencing_rule_in_another_file(tmp_path):
    write(tmp_path / "a_base.yml", BASE_RULE)
    write(tmp_path / "b_corr.yml", CORRELATION.replace("REF", "base_rule"))
    loaded = load_rules([tmp_path], use_cache=False)
    assert loaded.errors == []
    assert [c.title for c in loaded.correlations] == ["many base hits"]


# ------------------------------------------------------------------ meta filters

PROC_RULE_ID = "44444444-4444-4444-4444-444444444444"


def _proc_rule(title="powershell", rule_id=PROC_RULE_ID):
    return rule_yaml({"sel": {"Image|endswith": "\\powershell.exe"}}, title=title, rule_id=rule_id,
                     logsource=PROC_LS)


def _filter_doc(rules, logsource=None):
    return yaml.safe_dump({
        "title": "allow admin", "id": str(uuid.uuid4()),
        "logsource": logsource or PROC_LS,
        "filter": {"rules": rules, "admin": {"User": "CORP\\admin"}, "condition": "not admin"},
    }, sort_keys=False)


def _proc_event(user):
    return {"EventID": 1, "Channel": SYSMON, "Image": "C:\\Windows\\powershell.exe", "User": user}


@pytest.mark.parametrize("ref", [PROC_RULE_ID, "powershell_rule"])
def test_meta_filter_excludes_events_of_referenced_rule(tmp_path, ref):
    rule = _proc_rule().replace("status: test", "status: test\nname: powershell_rule")
    write(tmp_path / "rules" / "r.yml", rule)
    write(tmp_path / "rules" / "other.yml", _proc_rule("unfiltered", str(uuid.uuid4())))
    write(tmp_path / "filters" / "f.yml", _filter_doc([ref]))
    loaded = load_rules([tmp_path], use_cache=False)
    assert loaded.errors == []
    assert titles(loaded) == ["powershell", "unfiltered"]  # the filter document is not a rule
    engine = Engine(loaded.rules)
    assert sorted(h.rule.title for h in engine.match(_proc_event("CORP\\bob"))) == ["powershell", "unfiltered"]
    assert [h.rule.title for h in engine.match(_proc_event("corp\\ADMIN"))] == ["unfiltered"]


def test_meta_filter_with_other_logsource_does_not_apply(tmp_path):
    write(tmp_path / "r.yml", _proc_rule())
    write(tmp_path / "f.yml", _filter_doc([PROC_RULE_ID], {"product": "windows", "category": "image_load"}))
    engine = Engine(load_rules([tmp_path], use_cache=False).rules)
    assert engine.match(_proc_event("CORP\\admin"))


def test_meta_filter_change_invalidates_cache(tmp_path):
    cache = tmp_path / "cache"
    write(tmp_path / "rules" / "r.yml", _proc_rule())
    f = write(tmp_path / "rules" / "f.yml", _filter_doc([PROC_RULE_ID]))
    first = load_rules([tmp_path / "rules"], cache_dir=cache)
    assert not Engine(first.rules).match(_proc_event("CORP\\admin"))
    f.write_text(_filter_doc(["some-other-rule"]))
    second = load_rules([tmp_path / "rules"], cache_dir=cache)
    assert Engine(second.rules).match(_proc_event("CORP\\admin"))


def test_invalid_filter_is_reported(tmp_path):
    f = write(tmp_path / "f.yml", yaml.safe_dump({"title": "bad filter", "logsource": PROC_LS,
                                                  "filter": {"rules": [PROC_RULE_ID], "condition": "not x"}}))
    write(tmp_path / "r.yml", _proc_rule())
    loaded = load_rules([tmp_path], use_cache=False)
    # either the filter itself or the rule it breaks is reported; loading never crashes
    assert loaded.errors
    assert any(e.path in (str(f), str(tmp_path / "r.yml")) for e in loaded.errors)


# ------------------------------------------------------------------ user pipelines

def test_user_pipeline_field_mapping_is_applied(tmp_path):
    pipeline = write(tmp_path / "map.yml", textwrap.dedent("""\
        name: ecs mapping
        priority: 100
        transformations:
          - id: cmd_to_ecs
            type: field_name_mapping
            mapping:
              CommandLine: process.command_line
        """))
    text = rule_yaml({"sel": {"CommandLine|contains": "mimikatz"}})
    plain = Engine(load_rule_text(text).rules)
    mapped = Engine(load_rule_text(text, pipelines=[pipeline]).rules)
    ecs_flat = {"process.command_line": "run MIMIKATZ now"}
    ecs_nested = {"process": {"command_line": "run mimikatz now"}}
    sysmon = {"CommandLine": "run mimikatz now"}
    assert mapped.match(ecs_flat) and mapped.match(ecs_nested)
    assert not mapped.match(sysmon)
    assert plain.match(sysmon) and not plain.match(ecs_flat)


def test_user_pipeline_through_load_rules_changes_cache_salt(tmp_path):
    pipeline = write(tmp_path / "map.yml", "name: m\npriority: 100\ntransformations:\n"
                     "  - type: field_name_mapping\n    mapping:\n      CommandLine: cmd\n")
    rules = write(tmp_path / "rules" / "r.yml", rule_yaml())
    cache = tmp_path / "cache"
    load_rules([rules], cache_dir=cache)
    mapped = load_rules([rules], cache_dir=cache, pipelines=[pipeline])
    assert mapped.cache_hits == 0  # a different setup never reuses the plain compile
    assert Engine(mapped.rules).match({"cmd": "so evil"})
    assert not Engine(mapped.rules).match({"CommandLine": "so evil"})


# ------------------------------------------------------------------ compile cache

def test_second_load_hits_cache_and_content_change_misses(tmp_path):
    cache = tmp_path / "cache"
    a = write(tmp_path / "rules" / "a.yml", rule_yaml(title="a"))
    write(tmp_path / "rules" / "b.yml", rule_yaml(title="b"))
    first = load_rules([tmp_path / "rules"], cache_dir=cache)
    assert first.cache_hits == 0 and titles(first) == ["a", "b"]
    second = load_rules([tmp_path / "rules"], cache_dir=cache)
    assert second.cache_hits == 2 and titles(second) == ["a", "b"]
    assert [r.ir for r in second.rules] == [r.ir for r in first.rules]
    a.write_text(rule_yaml(title="a changed"))
    third = load_rules([tmp_path / "rules"], cache_dir=cache)
    assert third.cache_hits == 1
    assert titles(third) == ["a changed", "b"]


def test_cache_keeps_errors_and_paths_follow_the_file(tmp_path):
    cache = tmp_path / "cache"
    text = rule_yaml({"sel": {"A|nosuchmod": "x"}}, title="broken")
    write(tmp_path / "one" / "r.yml", text)
    write(tmp_path / "two" / "r.yml", text)
    first = load_rules([tmp_path / "one"], cache_dir=cache)
    second = load_rules([tmp_path / "two"], cache_dir=cache)
    assert second.cache_hits == 1
    assert [e.reason for e in second.errors] == [e.reason for e in first.errors]
    assert second.errors[0].path == str(tmp_path / "two" / "r.yml")
    assert first.errors[0].path == str(tmp_path / "one" / "r.yml")


def test_use_cache_false_writes_nothing(tmp_path):
    write(tmp_path / "rules" / "r.yml", rule_yaml())
    load_rules([tmp_path / "rules"], cache_dir=tmp_path / "cache", use_cache=False)
    assert not (tmp_path / "cache").exists()


def _cache_file(cache: Path) -> Path:
    (f,) = list(cache.glob("rules-*.pickle"))
    return f


@pytest.mark.parametrize("corrupt", [
    pytest.param(lambda old: b"definitely not a pickle", id="garbage"),
    pytest.param(lambda old: b"", id="empty"),
    pytest.param(lambda old: old[: len(old) // 2], id="truncated"),
    pytest.param(lambda old: pickle.dumps(["a", "list"]), id="pickled-list"),
    pytest.param(lambda old: pickle.dumps({k: b"xx" for k in pickle.loads(old)}), id="corrupt-entry"),
])
def test_corrupt_cache_file_is_ignored(tmp_path, corrupt):
    cache = tmp_path / "cache"
    write(tmp_path / "rules" / "r.yml", rule_yaml(title="r"))
    load_rules([tmp_path / "rules"], cache_dir=cache)
    f = _cache_file(cache)
    f.write_bytes(corrupt(f.read_bytes()))
    loaded = load_rules([tmp_path / "rules"], cache_dir=cache)
    assert titles(loaded) == ["r"] and loaded.errors == []
    assert loaded.cache_hits == 0
    again = load_rules([tmp_path / "rules"], cache_dir=cache)  # the cold compile was written back
    assert again.cache_hits == 1


def test_loaded_rules_are_plain_picklable_data():
    (rule,) = load_rule_text(rule_yaml(logsource=PROC_LS)).rules
    assert isinstance(rule, Rule)
    clone = pickle.loads(pickle.dumps(rule))
    assert clone == rule


# ------------------------------------------------------------------ correlations: records and resolving

def _corr(title: str = "corr", *, rules=("base_rule",), ctype: str = "event_count", condition=None,
          cid: str | None = "55555555-5555-5555-5555-555555555555", name: str | None = None,
          top: dict | None = None, **section) -> str:
    doc: dict = {"title": title}
    if cid:
        doc["id"] = cid
    if name:
        doc["name"] = name
    doc["status"] = "test"
    corr = {"type": ctype, "rules": list(rules), "group-by": ["User"], "timespan": "5m",
            "condition": condition if condition is not None else {"gte": 3}}
    corr.update(section)
    doc["correlation"] = corr
    doc["level"] = "high"
    doc.update(top or {})
    return yaml.safe_dump(doc, sort_keys=False)


def _load(tmp_path, *docs: str, **kw) -> LoadedRules:
    f = write(tmp_path / "c.yml", "---\n".join(docs))
    return load_rules([f], use_cache=False, **kw)


def test_rule_name_is_loaded_and_in_meta(tmp_path):
    (rule,) = _load(tmp_path, BASE_RULE).rules
    assert rule.name == "base_rule" and rule.meta()["name"] == "base_rule"


def test_correlation_record_is_complete_and_picklable(tmp_path):
    text = textwrap.dedent("""\
        title: fast transfers
        id: 66666666-6666-6666-6666-666666666666
        name: fast_transfers
        status: experimental
        description: much data
        references: [https://example.org/r]
        author: me
        date: 2024-05-06
        tags: [attack.exfiltration, attack.t1041]
        falsepositives: [backups]
        level: critical
        correlation:
          type: value_avg
          rules: [base_rule]
          group-by: [Computer, who]
          timespan: 1h
          condition: {gte: 2.5, field: Bytes}
          aliases:
            who: {base_rule: TargetUserName}
          generate: true
        """)
    loaded = _load(tmp_path, BASE_RULE, text)
    assert loaded.errors == []
    (c,) = loaded.correlations
    assert (c.id, c.name, c.title, c.type) == ("66666666-6666-6666-6666-666666666666", "fast_transfers",
                                              "fast transfers", "value_avg")
    assert c.rules == ("base_rule",) and c.group_by == ("Computer", "who")
    assert c.timespan_s == 3600 and c.timespan == "1h"
    assert c.condition == {"gte": 2.5, "field": "Bytes"}        # the threshold as written, not int()
    assert c.ops == {"gte": 2.5} and c.value_field == "Bytes"
    assert c.aliases == {"who": {"base_rule": "TargetUserName"}} and c.generate is True
    assert (c.level, c.status, c.author, c.date) == ("critical", "experimental", "me", "2024-05-06")
    assert c.tags == ("attack.exfiltration", "attack.t1041") and c.falsepositives == ("backups",)
    assert c.references == ("https://example.org/r",) and c.description == "much data"
    meta = c.meta()
    assert meta["title"] == "fast transfers" and meta["correlation_type"] == "value_avg"
    assert meta["logsource"] is None and meta["path"] == str(tmp_path / "c.yml")
    assert pickle.loads(pickle.dumps(c)) == c


@pytest.mark.parametrize("section, top, expected", [
    ({}, {}, False), ({"generate": True}, {}, True), ({}, {"generate": True}, True),
    ({"generate": True}, {"generate": True}, True), ({"generate": False}, {"generate": True}, "error")])
def test_generate_is_read_in_both_places(tmp_path, section, top, expected):
    loaded = _load(tmp_path, BASE_RULE, _corr(top=top, **section))
    if expected == "error":
        (err,) = loaded.errors
        assert "generate" in err.reason and loaded.correlations == []
    else:
        (c,) = loaded.correlations
        assert c.generate is expected


def test_extended_temporal_condition_is_parsed(tmp_path):
    other = BASE_RULE.replace("base_rule", "other_rule").replace("11111111-1111-1111-1111-111111111111",
                                                                 "77777777-7777-7777-7777-777777777777")
    text = yaml.safe_dump({"title": "ext", "correlation": {
        "type": "temporal", "group-by": ["User"], "timespan": "5m",
        "condition": "base_rule and not other_rule"}})
    loaded = _load(tmp_path, BASE_RULE, other, text)
    assert loaded.errors == []
    (c,) = loaded.correlations
    assert c.rules == ("base_rule", "other_rule") and c.ops == {}    # rules taken from the condition
    assert c.expression == ("and", (("rule", "base_rule"), ("not", ("rule", "other_rule"))))
    assert c.expression_text == "base_rule and not other_rule"


@pytest.mark.parametrize("condition, reason", [
    ({"gte": 3, "field": "Bytes"}, "percentile"),
    ({"gte": 3, "field": "Bytes", "percentile": 101}, "percentile")])
def test_value_percentile_needs_a_percentile(tmp_path, condition, reason):
    loaded = _load(tmp_path, BASE_RULE, _corr(ctype="value_percentile", condition=condition))
    (err,) = loaded.errors
    assert reason in err.reason and loaded.correlations == []


def test_unknown_reference_is_a_located_error_and_the_rest_loads(tmp_path):
    good = _corr("good", cid="66666666-6666-6666-6666-666666666666")
    bad = _corr("bad", rules=("base_rule", "no_such_rule"))
    loaded = _load(tmp_path, BASE_RULE, good, bad)
    assert titles(loaded) == ["base"] and [c.title for c in loaded.correlations] == ["good"]
    (err,) = loaded.errors
    assert (err.path, err.rule_id, err.title) == (str(tmp_path / "c.yml"),
                                                  "55555555-5555-5555-5555-555555555555", "bad")
    assert "no_such_rule" in err.reason and "unknown" in err.reason
    assert err.line == line_of(tmp_path / "c.yml", "- no_such_rule")   # the reference itself
    assert str(err).startswith(f"{tmp_path / 'c.yml'}:{err.line}: 'bad' [55555555-")


def test_reference_cycle_is_an_error_and_so_is_what_builds_on_it(tmp_path):
    a = _corr("a", rules=("corr_b",), name="corr_a", cid="a0000000-0000-4000-8000-000000000000")
    b = _corr("b", rules=("corr_a", "base_rule"), name="corr_b", cid="b0000000-0000-4000-8000-000000000000")
    c = _corr("c", rules=("corr_a",), cid="c0000000-0000-4000-8000-000000000000")
    fine = _corr("fine", cid="d0000000-0000-4000-8000-000000000000")
    selfref = _corr("self", rules=("me",), name="me", cid="e0000000-0000-4000-8000-000000000000")
    loaded = _load(tmp_path, BASE_RULE, a, b, c, fine, selfref)
    assert [x.title for x in loaded.correlations] == ["fine"] and titles(loaded) == ["base"]
    reasons = {e.title: e.reason for e in loaded.errors}
    assert set(reasons) == {"a", "b", "c", "self"}
    assert "cycle" in reasons["a"] and "cycle" in reasons["b"] and "cycle" in reasons["self"]
    lines = {e.title: e.line for e in loaded.errors}
    f = tmp_path / "c.yml"
    # each points at its reference that leads into the cycle (or to the broken correlation)
    to_a = [i for i, t in enumerate(f.read_text().splitlines(), 1) if t.endswith("- corr_a")]
    assert lines == {"a": line_of(f, "- corr_b"), "b": to_a[0], "c": to_a[1], "self": line_of(f, "- me")}
    assert "'corr_a'" in reasons["c"] and "has errors" in reasons["c"]


def test_ambiguous_and_duplicate_references_are_errors(tmp_path):
    twin = BASE_RULE.replace("title: base", "title: twin").replace(
        "11111111-1111-1111-1111-111111111111", "77777777-7777-7777-7777-777777777777")
    loaded = _load(tmp_path, BASE_RULE, twin, _corr())
    (err,) = loaded.errors
    assert "ambiguous" in err.reason
    loaded = _load(tmp_path, BASE_RULE, _corr(rules=("base_rule", "11111111-1111-1111-1111-111111111111")))
    (err,) = loaded.errors
    assert "twice" in err.reason


def test_alias_for_a_rule_outside_the_correlation_is_an_error(tmp_path):
    other = BASE_RULE.replace("base_rule", "other_rule").replace("11111111-1111-1111-1111-111111111111",
                                                                 "77777777-7777-7777-7777-777777777777")
    ok = _corr("ok", aliases={"who": {"11111111-1111-1111-1111-111111111111": "TargetUserName"}},
               cid="66666666-6666-6666-6666-666666666666")     # by id while rules name it: same rule
    bad = _corr("bad", aliases={"who": {"other_rule": "TargetUserName"}})
    loaded = _load(tmp_path, BASE_RULE, other, ok, bad)
    assert [c.title for c in loaded.correlations] == ["ok"]
    (err,) = loaded.errors
    assert err.title == "bad" and "alias 'who'" in err.reason and "other_rule" in err.reason


def test_resolve_checks_hand_made_records():
    from sigstream.stream.rules import Correlation, resolve_correlations
    base = Rule(id="11111111-1111-1111-1111-111111111111", title="b", level=None, status=None,
                description=None, tags=(), references=(), author=None, date=None, logsource={},
                falsepositives=(), ir=("true",), name="b")
    good = Correlation("c1", "good", "event_count", ("b",), timespan_s=60, condition={"gte": 2})
    cases = {
        "type": Correlation("c2", "t", "event_sum", ("b",), timespan_s=60, condition={"gte": 2}),
        "operator": Correlation("c3", "o", "event_count", ("b",), timespan_s=60, condition={"ge": 2}),
        "number": Correlation("c4", "n", "event_count", ("b",), timespan_s=60, condition={"gte": "2"}),
        "timespan": Correlation("c5", "s", "event_count", ("b",), timespan_s=0, condition={"gte": 2}),
        "field": Correlation("c6", "f", "value_sum", ("b",), timespan_s=60, condition={"gte": 2}),
    }
    ok, errors = resolve_correlations([base], [good, *cases.values()])
    assert ok == [good] and len(errors) == len(cases)
    for (what, _), err in zip(cases.items(), errors):
        assert what in err.reason, err.reason


def test_generate_false_suppresses_the_referenced_rules(tmp_path):
    loaded = _load(tmp_path, BASE_RULE, _corr())
    (rule,) = loaded.rules
    assert loaded.is_suppressed(rule) and loaded.suppressed == {"11111111-1111-1111-1111-111111111111"}
    assert loaded.is_suppressed(rule.meta())                      # an alert's rule dict works too
    loaded = _load(tmp_path, BASE_RULE, _corr(generate=True))
    assert loaded.suppressed == frozenset()


def test_selection_keeps_what_a_selected_correlation_needs(tmp_path):
    # the base rule is low and left out by --min-level high, the correlation (high) needs it
    loaded = _load(tmp_path, BASE_RULE, _corr(generate=True), selection=RuleSelection(min_level="high"))
    assert titles(loaded) == ["base"] and loaded.skipped == 0
    assert [c.title for c in loaded.correlations] == ["corr"]
    assert loaded.is_suppressed(loaded.rules[0])                  # a helper never alerts itself


def test_an_unselected_correlation_neither_runs_nor_suppresses(tmp_path):
    loaded = _load(tmp_path, BASE_RULE, _corr().replace("level: high", "level: low"),
                   selection=RuleSelection(min_level="low"))
    assert [c.title for c in loaded.correlations] == ["corr"]
    loaded = _load(tmp_path, BASE_RULE.replace("level: low", "level: high"),
                   _corr().replace("level: high", "level: low"), selection=RuleSelection(min_level="high"))
    assert loaded.correlations == [] and titles(loaded) == ["base"] and loaded.suppressed == frozenset()


def test_correlations_come_back_whole_from_the_cache(tmp_path):
    write(tmp_path / "rules" / "a.yml", BASE_RULE)
    write(tmp_path / "rules" / "b.yml", _corr(aliases={"who": {"base_rule": "X"}}))
    cold = load_rules([tmp_path / "rules"], cache_dir=tmp_path / "cache")
    warm = load_rules([tmp_path / "rules"], cache_dir=tmp_path / "cache")
    assert warm.cache_hits == 2 and cold.errors == warm.errors == []
    assert warm.correlations == cold.correlations and warm.suppressed == cold.suppressed
    assert warm.rules[0].name == "base_rule"


# ------------------------------------------------------------------ duplicate ids, log sources, YAML lines

DUP_ID = "12345678-1234-4234-8234-123456789abc"


def test_duplicate_rule_id_keeps_the_first_and_rejects_the_other_with_both_places(tmp_path):
    a = write(tmp_path / "a.yml", rule_yaml(title="first", rule_id=DUP_ID, logsource=PROC_LS))
    b = write(tmp_path / "b.yml", rule_yaml(title="second", rule_id=DUP_ID, logsource=PROC_LS))
    write(tmp_path / "c.yml", rule_yaml(title="other", logsource=PROC_LS))
    loaded = load_rules([tmp_path], use_cache=False)
    assert titles(loaded) == ["first", "other"]
    (err,) = loaded.errors
    assert (err.path, err.line, err.title) == (str(b), line_of(b, "id:"), "second")
    assert err.reason == f"duplicate rule id {DUP_ID} (first defined in {a}:{line_of(a, 'id:')})"
    assert str(err).startswith(f"{b}:{line_of(b, 'id:')}: 'second' [{DUP_ID}]: duplicate rule id")


def test_duplicate_rule_id_is_rejected_from_the_cache_too(tmp_path):
    write(tmp_path / "a.yml", rule_yaml(title="first", rule_id=DUP_ID))
    write(tmp_path / "b.yml", rule_yaml(title="second", rule_id=DUP_ID))
    load_rules([tmp_path], cache_dir=tmp_path / "cache")
    again = load_rules([tmp_path], cache_dir=tmp_path / "cache")
    assert again.cache_hits == 2
    assert titles(again) == ["first"] and "duplicate rule id" in again.errors[0].reason


def test_duplicate_rule_id_in_one_file(tmp_path):
    f = write(tmp_path / "m.yml", rule_yaml(title="one", rule_id=DUP_ID) + "---\n"
              + rule_yaml(title="two", rule_id=DUP_ID))
    loaded = load_rules([f], use_cache=False)
    assert titles(loaded) == ["one"]
    (err,) = loaded.errors
    first, second = [i for i, t in enumerate(f.read_text().splitlines(), 1) if t.startswith("id:")]
    assert err.line == second and f"(first defined in {f}:{first})" in err.reason


def test_misspelt_windows_category_is_rejected_at_its_key_and_siblings_load(tmp_path):
    f = write(tmp_path / "r.yml", rule_yaml(title="typo", logsource={
        "product": "windows", "category": "proces_creation"}) + "---\n" + rule_yaml(title="fine", logsource=PROC_LS))
    loaded = load_rules([f], use_cache=False)
    assert titles(loaded) == ["fine"]
    (err,) = loaded.errors
    assert err.line == line_of(f, "proces_creation") and err.title == "typo"
    assert "unknown log source category 'proces_creation'" in err.reason
    assert "did you mean 'process_creation'?" in err.reason


def test_misspelt_category_no_longer_matches_every_channel():
    """Regression: without a log-source condition the rule matched 4104 and 4688 events too."""
    good = load_rule_text(rule_yaml(logsource=PROC_LS))
    typo = load_rule_text(rule_yaml(logsource={"product": "windows", "category": "proces_creation"}))
    assert typo.rules == [] and len(typo.errors) == 1
    engine = Engine(good.rules)
    assert engine.match({"EventID": 1, "Channel": SYSMON, "CommandLine": "evil"})
    assert not engine.match({"EventID": 4104, "Channel": "Microsoft-Windows-PowerShell/Operational",
                             "CommandLine": "evil"})


def test_valid_but_unmapped_taxonomy_category_still_loads():
    loaded = load_rule_text(rule_yaml(logsource={"product": "windows", "category": "file_access"}))
    assert loaded.errors == [] and len(loaded.rules) == 1


def test_category_a_user_pipeline_maps_is_accepted(tmp_path):
    pipeline = write(tmp_path / "p.yml", textwrap.dedent("""\
        name: custom source
        priority: 20
        transformations:
          - id: my_source
            type: add_condition
            conditions: {Channel: My/Channel}
            rule_conditions:
              - type: logsource
                product: windows
                category: proces_creation
        """))
    text = rule_yaml(logsource={"product": "windows", "category": "proces_creation"})
    assert load_rule_text(text).errors[0].reason.startswith("unknown log source category 'proces_creation'")   # a near-miss: rejected
    loaded = load_rule_text(text, pipelines=[pipeline])
    assert loaded.errors == [] and Engine(loaded.rules).match({"Channel": "My/Channel", "CommandLine": "evil"})


@pytest.mark.parametrize("text, line", [
    ('title: "unclosed\nid: 1\ndetection:\n  sel: {A: b}\n  condition: sel\n', 1),
    ("title: x\ndetection:\n  sel:\n    A: 'unclosed\n  condition: sel\nlevel: high\n", 4),
    ("title: x\ndetection:\n  sel: [1, 2\n", 3),
    ("title: x\ndetection:\n  sel:\n\tA: b\n", 4),
])
def test_invalid_yaml_at_end_of_file_points_at_the_unclosed_quote_or_bracket(text, line):
    """Regression: an unclosed quote was reported on the line after the end of the file."""
    (err,) = load_rule_text(text, name="f.yml").errors
    assert err.line == line and f"(line {line}," in err.reason
    assert line <= len(text.splitlines())


def test_legacy_global_collection_rules_share_their_id_without_a_duplicate_error(tmp_path):
    f = write(tmp_path / "c.yml", textwrap.dedent("""\
        action: global
        title: collection
        id: 33333333-3333-4333-8333-333333333333
        status: test
        level: medium
        detection:
          condition: sel
        ---
        logsource: {product: windows, service: security}
        detection:
          sel: {EventID: 4697}
        ---
        logsource: {product: windows, service: system}
        detection:
          sel: {EventID: 7045}
        """))
    loaded = load_rules([f], use_cache=False)
    assert loaded.errors == [] and len(loaded.rules) == 2
