"""Unit tests for stream.compiler: prefilter needles, regex needles, explanations, OR-merging."""
from __future__ import annotations

import re
import uuid

import pytest
import yaml

from sigstream.stream.compiler import LowerCased, compile_detection
from sigstream.stream.explain import compile_explainer, explain
from sigstream.stream.needles import needles, regex_needles
from sigstream.stream.rules import load_rule_text

SYSMON = "Microsoft-Windows-Sysmon/Operational"
O = ("sel", "label", "value")  # an origin; compilation ignores it


def field(name, kind, text, cased=False):
    return ("field", name, (kind, text, cased), O)


def kw(kind, text, cased=False):
    return ("kw", (kind, text, cased), O)


def rx(name, pattern, flags=0, risky=False):
    return ("field", name, ("re", pattern, flags, risky), O)


def wild(name, regex, longest, cased=False):
    return ("field", name, ("wild", regex, longest, cased), O)


def run(ir, event):
    low = LowerCased(event)
    return compile_detection(ir)(event, low)


# ------------------------------------------------------------------ needles()

@pytest.mark.parametrize("ir, expected", [
    pytest.param(field("CommandLine", "contains", "mimikatz"), {"mimikatz"}, id="contains"),
    pytest.param(field("CommandLine", "eq", "ab"), None, id="too-short"),
    pytest.param(field("CommandLine", "eq", "abc"), {"abc"}, id="three-bytes"),
    pytest.param(field("CommandLine", "contains", "\u00e9\u00e9"), {"\u00e9\u00e9"}, id="two-chars-four-bytes"),
    pytest.param(field("CommandLine", "contains", "MiMi", cased=True), {"mimi"}, id="cased-lowered"),
    pytest.param(field("Channel", "eq", "security"), None, id="routing-field-channel"),
    pytest.param(("field", "EventID", ("num", 4104), O), None, id="routing-field-eventid"),
    pytest.param(("field", "Count", ("num", 12345), O), None, id="number"),
    pytest.param(wild("CommandLine", ".*invoke.*mimikatz.*", "mimikatz"), {"mimikatz"}, id="wildcard-longest"),
    pytest.param(kw("contains", "evil-token"), {"evil-token"}, id="keyword"),
    pytest.param(("and", (field("A", "contains", "abcd"), field("B", "contains", "longer-needle"))),
                 {"longer-needle"}, id="and-picks-longest"),
    pytest.param(("and", (field("A", "contains", "ab"), field("B", "contains", "needle"))),
                 {"needle"}, id="and-skips-useless-child"),
    pytest.param(("and", (("field", "N", ("num", 1), O), ("not", field("B", "eq", "xyz")))),
                 None, id="and-without-needles"),
    pytest.param(("and", (field("A", "eq", "c:\\users\\"), field("B", "eq", "abc"))),
                 {"abc"}, id="and-avoids-ubiquitous"),
    pytest.param(("or", (field("A", "contains", "alpha"), field("B", "endswith", "beta"), kw("eq", "gamma"))),
                 {"alpha", "beta", "gamma"}, id="or-union"),
    pytest.param(("or", (field("A", "contains", "alpha"), field("B", "contains", "be"))), None, id="or-one-short"),
    pytest.param(("or", (field("A", "contains", "alpha"), ("not", field("B", "eq", "beta")))),
                 None, id="or-with-not"),
    pytest.param(("not", field("A", "contains", "alpha")), None, id="not"),
    pytest.param(("const", False), set(), id="const-false"),
    pytest.param(("const", True), None, id="const-true"),
    pytest.param(rx("A", r"invoke-\w+"), {"invoke-"}, id="regex"),
    pytest.param(rx("A", r"\w+"), None, id="regex-no-literal"),
    pytest.param(("and", (field("Channel", "eq", "microsoft-windows-sysmon/operational"),
                          ("field", "EventID", ("num", 1), O),
                          ("or", (field("Image", "endswith", "\\powershell.exe"),
                                  field("Image", "endswith", "\\pwsh.exe"))))),
                 {"\\powershell.exe", "\\pwsh.exe"}, id="routed-rule"),
])
def test_needles(ir, expected):
    got = needles(ir)
    assert (None if got is None else set(got)) == expected


def test_needles_of_loaded_rule_are_lower_case():
    text = yaml.safe_dump({
        "title": "t", "id": str(uuid.uuid4()), "logsource": {"product": "test"},
        "detection": {"sel": {"CommandLine|contains": ["DownloadString", "Net.WebClient"]}, "condition": "sel"}})
    (rule,) = load_rule_text(text).rules
    assert needles(rule.ir) == frozenset({"downloadstring", "net.webclient"})


# ------------------------------------------------------------------ regex_needles()

@pytest.mark.parametrize("pattern, flags, expected", [
    pytest.param("mimikatz", 0, {"mimikatz"}, id="literal"),
    pytest.param("MiMiKatz", re.IGNORECASE, {"mimikatz"}, id="literal-lowered"),
    pytest.param(r"\d+sekurlsa\d", 0, {"sekurlsa"}, id="literal-run-between-classes"),
    pytest.param(r"ab\d+longer-run", 0, {"longer-run"}, id="longest-run"),
    pytest.param(r"cmd\.exe", 0, {"cmd.exe"}, id="escaped-dot-is-literal"),
    pytest.param("a.b.c", 0, None, id="runs-too-short"),
    pytest.param("foo|bar", 0, {"foo", "bar"}, id="alternation"),
    pytest.param("abc|de", 0, None, id="alternation-with-short-branch"),
    pytest.param("(foo|bar)", 0, {"foo", "bar"}, id="group-alternation"),
    pytest.param(r"(foo|\d+)", 0, None, id="alternation-branch-without-literal"),
    pytest.param("(foo|bar)bazqux", 0, {"bazqux"}, id="literal-beats-alternation"),
    pytest.param("(?:invoke-(expression|command))", 0, {"invoke-"}, id="nested-groups"),
    pytest.param("(abc)+", 0, {"abc"}, id="repeat-min-1"),
    pytest.param("(abc){2,}", 0, {"abc"}, id="repeat-min-2"),
    pytest.param("(abc)*", 0, None, id="star-min-0"),
    pytest.param("(abcd)?", 0, None, id="optional-min-0"),
    pytest.param("(abcd){0,3}", 0, None, id="counted-min-0"),
    pytest.param("x(abcd)?y", 0, None, id="optional-between-short-literals"),
    pytest.param("(foo|)barx", 0, {"barx"}, id="empty-branch-ignored"),
    pytest.param("(foo|)", 0, None, id="empty-branch-only"),
    pytest.param("[abc]def", 0, {"def"}, id="class-ends-run"),
    pytest.param("ab[cd]ef", 0, None, id="class-splits-run"),
    pytest.param("[a-z]+", 0, None, id="class-only"),
    pytest.param("[^x]+yyy", 0, {"yyy"}, id="negated-class"),
    pytest.param(r"\bcmd\.exe\b", 0, {"cmd.exe"}, id="word-boundaries"),
    pytest.param("(?=abcdef)x", 0, None, id="lookahead-ignored"),
    pytest.param("^start.*end$", 0, {"start"}, id="anchors"),
    pytest.param("a(", 0, None, id="invalid-pattern"),
    pytest.param("", 0, None, id="empty-pattern"),
])
def test_regex_needles(pattern, flags, expected):
    got = regex_needles(pattern, flags)
    assert (None if got is None else set(got)) == expected


@pytest.mark.parametrize("pattern, flags, text", [
    (r"\d+sekurlsa\d", 0, "x1sekurlsa2"),
    ("(foo|bar)bazqux", 0, "barbazqux"),
    ("(?:invoke-(expression|command))", re.IGNORECASE, "INVOKE-Expression"),
    ("(abc){2,}", 0, "abcabc"),
    ("[^x]+yyy", 0, "ayyy"),
])
def test_regex_needles_occur_in_every_match(pattern, flags, text):
    m = re.search(pattern, text, flags)
    assert m
    got = regex_needles(pattern, flags)
    assert got and any(n in m.group(0).lower() for n in got)


# ------------------------------------------------------------------ explain()

EXPLAIN_RULE = yaml.safe_dump({
    "title": "explain me", "id": str(uuid.uuid4()), "status": "test",
    "logsource": {"product": "windows", "category": "process_creation"},
    "detection": {
        "sel_img": {"Image|endswith": ["\\powershell.exe", "\\pwsh.exe"]},
        "sel_cmd": {"CommandLine|contains": ["-enc", "iex"]},
        "filter": {"User": "CORP\\admin"},
        "keywords": ["*mimikatz*"],
        "condition": "(sel_img and sel_cmd and not filter) or keywords",
    },
})


def _explain(event):
    (rule,) = load_rule_text(EXPLAIN_RULE).rules
    low = LowerCased(event)
    return explain(rule.ir, event, low)


def test_explain_names_selection_field_and_value():
    ev = {"EventID": 1, "Channel": SYSMON, "Image": "C:\\PowerShell.exe",
          "CommandLine": "powershell -ENC aaa", "User": "bob"}
    got = _explain(ev)
    assert got == [
        {"selection": "sel_img", "field": "Image|endswith", "value": "*\\powershell.exe",
         "event_value": "C:\\PowerShell.exe"},
        {"selection": "sel_cmd", "field": "CommandLine|contains", "value": "*-enc*",
         "event_value": "powershell -ENC aaa"},
    ]


def test_explain_skips_logsource_conditions():
    ev = {"EventID": 1, "Channel": SYSMON, "Image": "C:\\pwsh.exe", "CommandLine": "iex x", "User": "bob"}
    got = _explain(ev)
    assert {e["selection"] for e in got} == {"sel_img", "sel_cmd"}
    assert not any(e["field"] in ("Channel", "EventID") for e in got)


def test_explain_keyword_has_no_event_value():
    ev = {"EventID": 1, "Channel": SYSMON, "Image": "C:\\x.exe", "CommandLine": "run Mimikatz now"}
    got = _explain(ev)
    assert got == [{"selection": "keywords", "field": "keywords", "value": "*mimikatz*"}]


def test_explain_nothing_for_non_matching_or_filtered_event():
    filtered = {"EventID": 1, "Channel": SYSMON, "Image": "C:\\pwsh.exe", "CommandLine": "iex x",
                "User": "CORP\\Admin"}
    assert _explain(filtered) == []
    assert _explain({"EventID": 1, "Channel": SYSMON, "Image": "C:\\cmd.exe"}) == []


def test_explain_shortens_long_event_values():
    ev = {"EventID": 1, "Channel": SYSMON, "Image": "C:\\pwsh.exe", "CommandLine": "iex " + "a" * 5000,
          "User": "bob"}
    cmd = next(e for e in _explain(ev) if e["selection"] == "sel_cmd")
    assert len(cmd["event_value"]) < 400 and "5004 chars" in cmd["event_value"]


# ------------------------------------------------------------------ OR merging

LEAVES = [
    field("F", "eq", "alpha"),
    field("F", "eq", "beta"),
    field("F", "startswith", "c:\\temp\\"),
    field("F", "startswith", "\\\\server"),
    field("F", "endswith", ".ps1"),
    field("F", "endswith", ".hta"),
    field("F", "contains", "-enc"),
    field("F", "contains", "iex"),
    field("F", "contains", "downloadstring"),
    field("F", "contains", "bypass"),
    field("F", "contains", "hidden"),
    field("F", "contains", "frombase64"),
    wild("F", r"invoke.*mimi.*", "invoke"),
    wild("F", r"a.c", "a"),
    field("F", "contains", "CaseKept", cased=True),
    field("F", "eq", "Exact", cased=True),
    rx("F", r"^\d{3}-x$"),
    ("field", "F", ("num", 42), O),
    field("G", "eq", "other-field"),
    kw("contains", "kwneedle"),
    kw("eq", "kwexact"),
]

VALUES = ["alpha", "ALPHA", "alphabet", "beta", "c:\\TEMP\\x.exe", "\\\\Server\\share", "x.PS1", "y.hta.txt",
          "powershell -Enc x", "IEX(foo)", "a downloadString b", "BYPASS", "-w Hidden", "[Convert]::FromBase64",
          "invoke-x-MIMI-y", "abc", "aXc", "ac", "a\nc", "xCaseKeptx", "xcasekeptx", "Exact", "exact",
          "123-x", "1234-x", "42", "42.0", "43", "", "nothing here", "other-field", "kwneedle", "KWEXACT",
          "\u00e9t\u00e9", None, 42, True, ["beta", "zzz"], ["zzz"]]


def _events():
    for v in VALUES:
        yield {"F": v}
        yield {"F": v, "G": "other-field"}
        yield {"H": v}
    yield {}


@pytest.mark.parametrize("n", [2, 3, 5, 8, len(LEAVES)])
def test_or_merging_matches_unmerged_leaves(n):
    import random
    rnd = random.Random(n)
    for _ in range(25):
        leaves = rnd.sample(LEAVES, n)
        merged = compile_detection(("or", tuple(leaves)))
        singles = [compile_detection(leaf) for leaf in leaves]
        for ev in _events():
            low = LowerCased(ev)
            expected = any(s(ev, low) for s in singles)
            assert merged(ev, low) is expected, (leaves, ev)


def test_or_merging_all_mergeable_same_field():
    specs = [leaf for leaf in LEAVES[:14]]
    merged = compile_detection(("or", tuple(specs)))
    for v in VALUES:
        ev = {"F": v}
        low = LowerCased(ev)
        assert merged(ev, low) is any(compile_detection(s)(ev, low) for s in specs), v


@pytest.mark.parametrize("ir, event, expected", [
    (("and", (field("A", "eq", "x"), field("B", "eq", "y"))), {"A": "X", "B": "Y"}, True),
    (("and", (field("A", "eq", "x"), field("B", "eq", "y"))), {"A": "X", "B": "z"}, False),
    (("and", (field("A", "eq", "x"), field("B", "eq", "y"), field("C", "eq", "z"), field("D", "eq", "w"))),
     {"A": "x", "B": "y", "C": "z", "D": "w"}, True),
    (("and", (field("A", "eq", "x"), field("B", "eq", "y"), field("C", "eq", "z"), field("D", "eq", "w"))),
     {"A": "x", "B": "y", "C": "z", "D": "q"}, False),
    (("or", (field("A", "eq", "x"), field("B", "eq", "y"), ("not", field("C", "eq", "z")))), {"C": "z"}, False),
    (("or", (field("A", "eq", "x"), field("B", "eq", "y"), ("not", field("C", "eq", "z")))), {"C": "q"}, True),
    (("not", ("const", False)), {}, True),
])
def test_compile_boolean_structure(ir, event, expected):
    assert run(ir, event) is expected


def test_unknown_ir_node_is_rejected():
    with pytest.raises(ValueError):
        compile_detection(("xor", ()))


# ------------------------------------------------------------------ regex fields (guard literals)

@pytest.mark.parametrize("pattern, flags, value, expected", [
    pytest.param("Invoke-Mimikatz", 0, "x Invoke-Mimikatz y", True, id="case-exact-hit"),
    pytest.param("Invoke-Mimikatz", 0, "x invoke-mimikatz y", False, id="case-exact-miss"),
    pytest.param("invoke-mimikatz", re.IGNORECASE, "INVOKE-MIMIKATZ", True, id="flag-i"),
    pytest.param("(?i)invoke-mimikatz", 0, "INVOKE-MIMIKATZ", True, id="inline-i"),
    pytest.param(r"\d{3}-\d{4}", 0, "call 555-1234", True, id="no-literal"),
    pytest.param("(foo|bar)baz", 0, "xbarbaz", True, id="alternation"),
    pytest.param(
        "(?i:invoke-mimikatz)", 0, "INVOKE-MIMIKATZ", True, id="scoped-inline-i"),
])
def test_regex_field_matches_like_re_search(pattern, flags, value, expected):
    assert (re.search(pattern, value, flags) is not None) is expected
    assert run(rx("A", pattern, flags), {"A": value}) is expected


@pytest.mark.parametrize("n", [2, 3, 6, 14])
def test_value_list_explanation_equals_leaf_by_leaf(n):
    """A value list is explained reading the field once; the result is the leaves' own."""
    import random

    from sigstream.stream.explain import _explain_step
    rnd = random.Random(n)
    for _ in range(20):
        leaves = tuple(rnd.sample(LEAVES[:14], n))
        whole = compile_explainer(("or", leaves))
        for ev in [*_events(), {"F": ["alpha", "x.ps1"]}, {"F": None}, {"G": "alpha"}]:
            low = LowerCased(ev)
            expected: list = []
            for leaf in leaves:
                _explain_step(leaf, False)(ev, low, expected)
            assert whole(ev, LowerCased(ev)) == expected, (leaves, ev)


def test_explaining_a_match_skips_nothing_that_a_full_evaluation_finds():
    """Explainers trust that the rule matched (leaves under ANDs are not re-evaluated):
    on every match of the project's rules over the samples, the result equals a full
    leaf-by-leaf evaluation."""
    from pathlib import Path

    from sigstream.connectors.readers import read_events
    from sigstream.stream.explain import _explain_step, is_logsource_entry
    from sigstream.stream.engine import Engine
    from sigstream.stream.rules import load_rules

    repo = Path(__file__).resolve().parents[2]
    engine = Engine(load_rules([repo / "sigma_rules"]).rules, use_cache=False)
    checked = 0
    for event, _ in read_events([repo / "samples"]):
        for hit in engine.match(event):
            full: list = []
            assert _explain_step(hit.rule.ir, False)(event, LowerCased(event), full)
            full.sort(key=is_logsource_entry)   # explainers list log-source fields last
            assert hit.explain(event) == full, hit.rule.title
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("pattern", [
    r"\+.*\+.*\+.*\+", r"ab.*ab", r"`.*`.*`", r"\^.*\^.*\^.*\^.*\^", r"x(?:ab)+y.*ab",
    r"(?:\+.*){3}", r"a\+b\+c", r"(?i)q\+.*\+", r"(?:ab|ab).*ab", r"\{.*\{", r"aa.*aa",
])
def test_regex_guard_with_counted_literals_agrees_with_the_regex(pattern):
    """A literal required n times (`\\+.*\\+`) is checked with str.count before the regex."""
    import random
    import re

    from sigstream.stream.compiler import regex_guard
    from sigstream.stream.values import regex_pred
    guard = regex_guard(pattern, 0)
    pred = regex_pred(pattern, 0, False, guard)
    rnd = random.Random(pattern)
    for _ in range(3000):
        s = "".join(rnd.choice("ab+`^{xyQq\n ") for _ in range(rnd.randint(0, 14)))
        assert pred(s) is (re.search(pattern, s) is not None), (pattern, s, guard)


def test_regex_guard_counts_repeated_literals():
    from sigstream.stream.compiler import regex_guard
    assert regex_guard(r"\+.*\+.*\+", 0) == (("+",), ("+",), ("+",))
    assert regex_guard(r"(?:\+.*){3}", 0) == (("+",),)  # a repeat promises one occurrence only


@pytest.mark.parametrize("value, expected", [
    (443, True), ("443", True), ("443.0", True), (4444, True), ("4444", True), (80, False),
    ("80", False), ("x", False), (None, False), (["80", "443"], True), (443.0, True), (True, False),
])
def test_or_list_of_numbers_merged_on_one_field(value, expected):
    ports = ("or", tuple(("field", "Port", ("num", n), O) for n in (100, 443, 4444, 65535)))
    merged = compile_detection(ports)
    ev = {"Port": value}
    assert merged(ev, LowerCased(ev)) is expected
    assert any(compile_detection(leaf)(ev, LowerCased(ev)) for leaf in ports[1]) is expected


@pytest.mark.parametrize("pattern, flags", [
    (r"\+.*\+.*\+", 0), (r"\+.*\+.*\+", re.DOTALL), (r"(?s)`.*`.*`", 0), (r"\^.*\^", 0),
    (r"\{.*\{.*\{.*\{", 0), (r"(?i)\+.*\+", 0), (r"a.*a.*a", re.IGNORECASE), (r"a.*a", 0),
    (r"\+.*\+.*-", 0), (r"\+.+\+", 0), (r"\+.*?\+", 0), (r"\+", 0),
])
def test_repeated_char_regexes_counted_like_re_search(pattern, flags):
    """`c.*c.*c` is answered by counting per line; anything else keeps the regex."""
    import random

    from sigstream.stream.compiler import _spec_pred
    pred = _spec_pred(("re", pattern, flags, False))[0]
    rnd = random.Random(pattern + str(flags))
    for _ in range(3000):
        s = "".join(rnd.choice("aA+`^{-\n x") for _ in range(rnd.randint(0, 16)))
        assert pred(s) is (re.search(pattern, s, flags) is not None), (pattern, flags, s)


def test_repeated_literal_shapes():
    from sigstream.stream.compiler import repeated_literal
    assert repeated_literal(r"\+.*\+.*\+", 0) == ("+", 3, False)
    assert repeated_literal(r"(?s)`.*`", 0) == ("`", 2, True)
    assert repeated_literal(r"a.*a", re.IGNORECASE) is None
    assert repeated_literal(r"\+.*\+.*-", 0) is None
    assert repeated_literal(r"\+.+\+", 0) is None


def test_short_needles_with_escape_characters_are_selective_enough():
    """'^^' (cmd escapes) is a usable needle; other two-character literals are not."""
    dosfuscation = ("or", (field("CommandLine", "contains", "^^"), field("CommandLine", "contains", ",;,")))
    assert needles(dosfuscation) == frozenset({"^^", ",;,"})
    assert needles(("or", (field("CommandLine", "contains", "-e"), field("X", "contains", ",;,")))) is None


# ------------------------------------------------------------------ keywords: full-text search (IR)

def _keyword_ir(item) -> tuple:
    doc = {"title": "k", "id": str(uuid.uuid4()), "status": "test", "logsource": {"product": "test"},
           "detection": {"keywords": item, "condition": "keywords"}, "level": "low"}
    loaded = load_rule_text(yaml.safe_dump(doc))
    assert not loaded.errors, loaded.errors
    return loaded.rules[0].ir


@pytest.mark.parametrize("item, spec", [
    pytest.param(["Kiwi Legit Printer"], ("contains", "kiwi legit printer", False), id="plain-contains"),
    pytest.param({"|startswith": "sekurlsa::"}, ("contains", "sekurlsa::", False), id="startswith-contains"),
    pytest.param({"|endswith": "\\mimilib.dll"}, ("contains", "\\mimilib.dll", False), id="endswith-contains"),
    pytest.param({"|cased": "Kiwi"}, ("contains", "Kiwi", True), id="cased-contains"),
    pytest.param([4104], ("contains", "4104", False), id="number-as-text"),
    pytest.param(["sekurlsa::*passwords"], ("wild", ".*sekurlsa::.*passwords.*", "sekurlsa::", False),
                 id="wild-wrapped"),
    pytest.param(["*mimikatz*"], ("contains", "mimikatz", False), id="explicit-stars"),
    pytest.param(["a?c\\*"], ("wild", ".*a.c\\*.*", "c*", False), id="escaped-star-not-a-wildcard"),
    pytest.param(["*a?b*"], ("wild", ".*a.b.*", "a", False), id="wild-already-wrapped"),
    pytest.param({"|re": "^sekurlsa"}, ("re", "^sekurlsa", 0, False), id="regex-as-written"),
])
def test_keyword_specs_search(item, spec):
    ir = _keyword_ir(item)
    assert ir[0] == "kw" and ir[1] == spec


def test_keyword_wildcard_is_an_unanchored_search():
    ir = _keyword_ir(["sekurlsa::*passwords"])
    assert run(ir, {"CommandLine": "mimikatz sekurlsa::logonpasswords exit"})
    assert not run(ir, {"CommandLine": "mimikatz sekurlsa::tickets exit"})
    assert needles(ir) == frozenset({"sekurlsa::"})


@pytest.mark.parametrize("regex", [".*a.b.*", ".*a.*b.*", ".*\\..*", ".*x\\*.*", ".*\\\\.*", ".*..*"])
def test_wild_search_shortcut_agrees_with_fullmatch(regex):
    """`.*X.*` is answered with a search for X: the same answers as the full match."""
    import random

    from sigstream.stream.values import wild_pred
    pred = wild_pred(regex)
    rnd = random.Random(regex)
    for _ in range(3000):
        s = "".join(rnd.choice("ab.*\\x\n") for _ in range(rnd.randint(0, 8)))
        assert pred(s) is (re.fullmatch(regex, s, re.DOTALL) is not None), (regex, s)


# ------------------------------------------------------------------ field names with spaces

def test_spaced_names_only_computed_on_a_missed_field():
    from sigstream.stream.compiler import spaced_names
    assert spaced_names({"Image": "x", "CommandLine": "y"}) == {}
    assert spaced_names({"New Value": 1, "NewValue": 2, "Old  Value": 3, 7: "x"}) == {
        "NewValue": "New Value", "OldValue": "Old  Value"}
    ev = {"Image": "C:\\a.exe", "New Value": "x"}
    low = LowerCased(ev)
    assert run(field("Image", "endswith", "a.exe"), ev) and low.spaced is None
    hit = compile_detection(field("Image", "endswith", "a.exe"))
    assert hit(ev, low) and low.spaced is None  # a field the event has: no alias work
    assert compile_detection(field("NewValue", "eq", "x"))(ev, low)
    assert low.spaced == {"NewValue": "New Value"}


def test_spaced_names_without_lowercased_view():
    """_lookup finds a spaced name without a LowerCased view (nothing cached then)."""
    from sigstream.stream.compiler import MISSING, _lookup
    ev = {"New Value": "X", "Nested": {"Inner Name": 1}}
    assert _lookup(ev, "NewValue") == "X"
    assert _lookup(ev, "NewValue", {}) == "X"
    assert _lookup(ev, "New Value") == "X"
    assert _lookup(ev, "Nested.Inner Name") == 1
    assert _lookup(ev, "Nested.InnerName") is MISSING  # top-level names only
    assert _lookup(ev, "Other") is MISSING
