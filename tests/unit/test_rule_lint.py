"""Unit tests for stream.rule_lint (the checks behind `sigstream check`)."""
from __future__ import annotations

import textwrap

import pytest

from sigstream.stream.rule_errors import RuleError
from sigstream.stream.rule_lint import (
    ERROR,
    WARNING,
    DuplicateIds,
    Problem,
    Report,
    attack_tag_problem,
    id_lines,
    lint_file,
    logsource_issue,
)
from sigstream.stream.rules import logsource_catalog

BUILTIN = logsource_catalog()


# ------------------------------------------------------------------ ATT&CK tags

@pytest.mark.parametrize("tag", [
    "attack.t1059", "attack.t1059.001", "attack.execution", "attack.defense-evasion",
    "attack.defense_evasion", "attack.command-and-control", "attack.stealth", "attack.g0016",
    "attack.s0002", "attack.ds0005", "cve.2021-44228", "car.2016-04-005", "detection.threat-hunting",
])
def test_conventional_tags_pass(tag):
    assert attack_tag_problem(tag) is None


@pytest.mark.parametrize("tag, words", [
    ("attack.t1059.1", ["3 digits", "'attack.t1059.001'"]),
    ("attack.T1059", ["lower case", "'attack.t1059'"]),
    ("attack.Execution", ["lower case", "'attack.execution'"]),
    ("attack.execution_", ["unknown ATT&CK tactic", "'attack.execution'"]),
    ("attack.privilege-escalaton", ["unknown ATT&CK tactic", "'attack.privilege-escalation'"]),
    ("attack.t105", ["malformed", "attack.tNNNN"]),
    ("attack.t1059.0001", ["malformed"]),
])
def test_malformed_attack_tags_are_explained(tag, words):
    reason = attack_tag_problem(tag)
    assert reason is not None and tag in reason
    for w in words:
        assert w in reason


# ------------------------------------------------------------------ log sources

def test_builtin_catalog_knows_the_sysmon_and_windows_pipeline_log_sources():
    assert {"process_creation", "registry_set", "ps_script", "ps_module", "image_load",
            "wmi_event"} <= BUILTIN.categories
    assert {"security", "sysmon", "powershell", "system", "windefend"} <= BUILTIN.services


@pytest.mark.parametrize("logsource", [
    {"product": "windows", "category": "process_creation"},
    {"product": "windows", "service": "security"},
    {"product": "windows"},
    {"product": "linux", "category": "proces_creation"},     # other products: not ours to judge
    {"category": "proces_creation"},
])
def test_known_or_foreign_log_sources_pass(logsource):
    assert logsource_issue(logsource, BUILTIN) is None


def test_misspelt_category_is_an_error_with_a_suggestion():
    issue = logsource_issue({"product": "windows", "category": "proces_creation"}, BUILTIN)
    assert issue.level == ERROR and issue.key == "category"
    assert "'proces_creation'" in issue.message and "did you mean 'process_creation'?" in issue.message


def test_misspelt_service_is_an_error_with_a_suggestion():
    issue = logsource_issue({"product": "windows", "service": "powershel"}, BUILTIN)
    assert issue.level == ERROR and issue.key == "service" and "did you mean 'powershell'?" in issue.message


def test_taxonomy_category_without_pipeline_mapping_is_a_warning():
    issue = logsource_issue({"product": "windows", "category": "file_access"}, BUILTIN)
    assert issue.level == WARNING and "every event" in issue.message


def test_catalog_reads_a_custom_pipelines_log_sources(tmp_path):
    p = tmp_path / "p.yml"
    p.write_text(textwrap.dedent("""\
        name: custom
        priority: 20
        transformations:
          - id: my_source
            type: add_condition
            conditions: {Channel: My/Channel}
            rule_conditions:
              - type: logsource
                product: windows
                category: my_category
        """))
    catalog = logsource_catalog([p])
    assert "my_category" in catalog.categories and "process_creation" in catalog.categories
    assert logsource_issue({"product": "windows", "category": "my_category"}, catalog) is None
    # without the pipeline: unlike any known name, so possibly newer than the list: a warning
    assert logsource_issue({"product": "windows", "category": "my_category"}, BUILTIN).level == WARNING


def test_an_unknown_name_unlike_any_known_one_is_a_warning_not_a_rejection():
    issue = logsource_issue({"product": "windows", "service": "brand-new-etw-channel"}, BUILTIN)
    assert issue.level == WARNING and "every event" in issue.message


# ------------------------------------------------------------------ duplicate ids

def test_duplicate_ids_name_the_first_definition_with_lines():
    files = {
        "a.yml": b"title: a\nstatus: test\nid: 11111111-1111-4111-8111-111111111111\n",
        "b.yml": b"title: b\n\n\n\nid: 11111111-1111-4111-8111-111111111111\n",
    }
    ids = DuplicateIds(files.get)
    assert ids.check("a.yml", "11111111-1111-4111-8111-111111111111") is None
    assert ids.check("a.yml", "22222222-2222-4222-8222-222222222222") is None
    assert ids.check("b.yml", None) is None
    message, line = ids.check("b.yml", "11111111-1111-4111-8111-111111111111")
    assert line == 5
    assert message == ("duplicate rule id 11111111-1111-4111-8111-111111111111 "
                       "(first defined in a.yml:3)")


def test_id_lines_finds_each_document_with_the_id():
    data = b"title: a\nid: X-1\n---\ntitle: b\nid: x-1\n---\nid: other\n"
    assert id_lines(data, "x-1") == [2, 5]


# ------------------------------------------------------------------ files

def test_lint_file_reports_missing_id_and_level_and_bad_tags_with_lines():
    data = textwrap.dedent("""\
        title: no id here
        status: test
        tags:
          - attack.execution
          - attack.t1059.1
        logsource: {product: windows, category: process_creation}
        detection: {sel: {A: b}, condition: sel}
        """).encode()
    problems = lint_file("r.yml", data, BUILTIN)
    assert sorted((p.line, p.level, p.message.split(": ", 1)[1][:20]) for p in problems) == [
        (1, ERROR, "rule has no id (aler"),
        (1, WARNING, "rule has no level (i"),
        (5, WARNING, "malformed ATT&CK tag"),
    ]
    assert all(p.message.startswith("'no id here': ") for p in problems)


def test_lint_file_clean_rule_and_broken_yaml_give_nothing():
    clean = (b"title: t\nid: 11111111-1111-4111-8111-111111111111\nlevel: high\n"
             b"tags: [attack.t1059.001]\nlogsource: {product: windows, category: process_creation}\n"
             b"detection: {sel: {A: b}, condition: sel}\n")
    assert lint_file("c.yml", clean, BUILTIN) == []
    assert lint_file("y.yml", b'title: "unclosed\n', BUILTIN) == []   # loading reports YAML errors


def test_lint_file_warns_for_unmapped_taxonomy_log_source_at_its_key():
    data = (b"title: t\nid: 11111111-1111-4111-8111-111111111111\nlevel: high\n"
            b"logsource:\n  product: windows\n  category: file_access\n"
            b"detection: {sel: {A: b}, condition: sel}\n")
    (p,) = lint_file("f.yml", data, BUILTIN)
    assert (p.line, p.level) == (6, WARNING) and "'file_access'" in p.message


def test_filter_documents_are_not_linted_as_rules():
    data = b"title: f\nfilter:\n  rules: [x]\n  selection: {A: b}\n  condition: not selection\n"
    assert lint_file("f.yml", data, BUILTIN) == []


# ------------------------------------------------------------------ output

def test_problem_format_and_report_order():
    report = Report()
    report.add([Problem("b.yml", 3, WARNING, "w"), Problem("a.yml", 10, ERROR, "e10"),
                Problem("a.yml", 2, ERROR, "e2"), Problem("a.yml", 2, ERROR, "e2")])
    report.add([Problem.of_error(RuleError("a.yml", "id-1", "T", "bad", 7))])
    assert [str(p) for p in report.sorted()] == [
        "a.yml:2: error: e2", "a.yml:7: error: 'T' [id-1]: bad", "a.yml:10: error: e10",
        "b.yml:3: warning: w"]
    assert report.count(ERROR) == 3 and report.count(WARNING) == 1
    assert str(Problem("x.yml", 0, ERROR, "m")) == "x.yml: error: m"


LEGACY_COLLECTION = textwrap.dedent("""\
    action: global
    title: collection
    id: 33333333-3333-4333-8333-333333333333
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
    """).encode()


def test_legacy_global_collection_shares_its_id_and_level():
    assert lint_file("c.yml", LEGACY_COLLECTION, BUILTIN) == []
    ids = DuplicateIds({"c.yml": LEGACY_COLLECTION, "d.yml": LEGACY_COLLECTION}.get)
    rid = "33333333-3333-4333-8333-333333333333"
    assert ids.check("c.yml", rid) is None and ids.check("c.yml", rid) is None   # same collection
    assert ids.check("d.yml", rid)[0].startswith(f"duplicate rule id {rid} (first defined in c.yml:3)")
