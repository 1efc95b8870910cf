"""Unit tests for stream.prefilter, and the engine's index never missing a match."""
from __future__ import annotations

import random
import uuid

import pytest
import yaml

from sigstream.stream.engine import Engine
from sigstream.stream.rules import load_rule_text

SYSMON = "Microsoft-Windows-Sysmon/Operational"
PS = "Microsoft-Windows-PowerShell/Operational"
PROC = {"product": "windows", "category": "process_creation"}
PS_SCRIPT = {"product": "windows", "category": "ps_script"}
SECURITY = {"product": "windows", "service": "security"}
ANY = {"product": "test", "category": "test"}


# ------------------------------------------------------------------ never misses

def rule_doc(title, logsource, detection):
    return yaml.safe_dump({"title": title, "id": str(uuid.uuid4()), "status": "test",
                           "logsource": logsource, "detection": detection, "level": "high"}, sort_keys=False)


RULES = [
    rule_doc("proc encoded", PROC, {
        "img": {"Image|endswith": ["\\powershell.exe", "\\pwsh.exe"]},
        "cmd": {"CommandLine|contains": ["-enc", "frombase64string"]}, "condition": "img and cmd"}),
    rule_doc("proc not filter", PROC, {
        "sel": {"CommandLine|contains": "iex"}, "flt": {"User": "corp\\admin"}, "condition": "sel and not flt"}),
    rule_doc("proc regex", PROC, {"sel": {"CommandLine|re": r"(?i)invoke-(expression|webrequest)"},
                                  "condition": "sel"}),
    rule_doc("proc wildcard", PROC, {"sel": {"CommandLine": "*mimi*katz*"}, "condition": "sel"}),
    rule_doc("script amsi", PS_SCRIPT, {"sel": {"ScriptBlockText|contains|all": ["amsiutils", "getfield"]},
                                        "condition": "sel"}),
    rule_doc("script cased", PS_SCRIPT, {"sel": {"ScriptBlockText|cased|contains": "AmsiUtils"},
                                         "condition": "sel"}),
    rule_doc("security 4688", SECURITY, {"sel": {"EventID": 4688, "NewProcessName|endswith": "\\cmd.exe"},
                                         "condition": "sel"}),
    rule_doc("security any", SECURITY, {"sel": {"SubjectUserName": "attacker"}, "condition": "sel"}),
    rule_doc("keywords", ANY, {"keywords": ["*mimikatz*", "sekurlsa"], "condition": "keywords"}),
    rule_doc("no needle", ANY, {"sel": {"Count|gt": 3}, "condition": "sel"}),
    rule_doc("one of", ANY, {"s1": {"Image|endswith": "\\cmd.exe"}, "s2": {"CommandLine|contains": "-enc"},
                             "condition": "1 of s*"}),
    rule_doc("exists", ANY, {"sel": {"TargetObject|exists": True, "Details|contains": "powershell"},
                             "condition": "sel"}),
    rule_doc("windash", PROC, {"sel": {"CommandLine|windash|contains": " -enc "}, "condition": "sel"}),
    rule_doc("regex case kept", ANY, {"sel": {"Details|re": "AmsiScan[A-Z]uffer"}, "condition": "sel"}),
    # keywords are a full-text search: their literals are needles anywhere in the event's text
    rule_doc("keywords inside", ANY, {"keywords": ["sekurlsa::*passwords", "kiwi?legit", 4104],
                                      "condition": "keywords"}),
    rule_doc("keywords all", ANY, {"keywords": {"|all": ["privilege::debug", "lsadump::"]},
                                   "condition": "keywords"}),
    # field names with spaces (Windows Defender), named without them
    rule_doc("spaced field", ANY, {"sel": {"NewValue|contains": "\\exclusions\\"}, "condition": "sel"}),
    rule_doc("spaced exists", ANY, {"sel": {"SourceName|exists": True, "ThreatName|contains": "mimikatz"},
                                    "condition": "sel"}),
]

VOCAB = {
    "Channel": [SYSMON, SYSMON.upper(), PS, "Security", "security", "System", None],
    "EventID": [1, "1", 1.0, 4104, "4104", 4688, 13, 7, None],
    "Image": ["C:\\Windows\\powershell.exe", "C:\\x\\PWSH.EXE", "C:\\Windows\\cmd.exe", "C:\\app.exe", 5, None],
    "NewProcessName": ["C:\\Windows\\System32\\cmd.exe", "C:\\app.exe"],
    "CommandLine": ["powershell -enc AAA", "powershell /enc AAA", "powershell \u2013enc AAA", "IEX (foo)",
                    "Invoke-Expression $x", "invoke-webrequest http://x", "run mimi then katz", "MIMIKATZ",
                    "sekurlsa", "calc.exe", "[Convert]::FromBase64String('x')", "", ["-enc", "x"],
                    "mimikatz # SEKURLSA::LogonPasswords exit", "x privilege::debug lsadump::sam"],
    "ParentCommandLine": ["cmd /c privilege::debug", "lsadump::", "explorer.exe"],
    "Param": ["\\\\srv\\Kiwi Legit Printer", "kiwilegit", "event 4104 logged"],
    "New Value": ["HKLM\\SOFTWARE\\Microsoft\\Windows Defender\\Exclusions\\Paths\\C:\\x = 0x0",
                  "HKLM\\Real-Time Protection = 0x1", None, ["a", "b\\Exclusions\\c"]],
    "Source Name": ["AMSI", None, ""],
    "Threat Name": ["HackTool:Win32/Mimikatz", "Trojan:Win32/Other"],
    "User": ["corp\\admin", "CORP\\Admin", "corp\\bob"],
    "SubjectUserName": ["attacker", "ATTACKER", "someone"],
    "ScriptBlockText": ["[Ref].Assembly.GetType('AmsiUtils').GetField('x')", "amsiutils only",
                        "GETFIELD AMSIUTILS", "Write-Host hi"],
    "Details": ["powershell -w hidden", "AmsiScanBuffer", "amsiscanbuffer", "x"],
    "TargetObject": ["HKLM\\Software\\Run", None],
    "Count": [1, 5, "7", "many"],
    "Nested": [{"a": ["sekurlsa"]}, {"b": {"c": "mimikatz!"}}, ["x", {"y": "z"}]],
}


@pytest.fixture(scope="module", params=["default", "pyahocorasick"])
def engine(request):
    """The engine with its default scanner, and with the portable fallback forced."""
    loaded = load_rule_text("---\n".join(RULES))
    assert not loaded.errors, loaded.errors
    assert len(loaded.rules) == len(RULES)
    if request.param == "default":
        return Engine(loaded.rules)
    import sigstream.stream.prefilter as prefilter
    if not hasattr(prefilter, "_hyperscan_scanner"):
        pytest.skip("single-backend prefilter")

    def no_hyperscan(*a, **kw):
        raise ImportError("forced fallback")
    mp = pytest.MonkeyPatch()
    mp.setattr(prefilter, "_hyperscan_scanner", no_hyperscan)
    try:
        engine = Engine(loaded.rules)
    finally:
        mp.undo()
    if hasattr(engine, "stats"):
        assert engine.stats().get("prefilter", "pyahocorasick") == "pyahocorasick"
    return engine


def random_event(rnd: random.Random) -> dict:
    ev = {}
    for name, values in VOCAB.items():
        if rnd.random() < 0.55:
            ev[name] = rnd.choice(values)
    return ev


@pytest.mark.parametrize("seed", range(8))
def test_prefilter_and_router_never_miss(engine, seed):
    rnd = random.Random(seed)
    fired = set()
    for _ in range(1500):
        ev = random_event(rnd)
        fast = [r.rule.title for r in engine.match(ev)]
        slow = [r.rule.title for r in engine.match_all(ev)]
        assert fast == slow, ev
        fired.update(fast)
    assert engine.errors == []
    assert len(fired) >= 8  # the vocabulary really exercises the rules


def test_every_rule_can_fire(engine):
    """Sanity check of the vocabulary: each rule has an event that matches it."""
    hand = [
        {"Channel": SYSMON, "EventID": 1, "Image": "C:\\Windows\\powershell.exe", "CommandLine": "x -enc y"},
        {"Channel": SYSMON, "EventID": 1, "CommandLine": "iex y", "User": "bob"},
        {"Channel": SYSMON, "EventID": 1, "CommandLine": "INVOKE-Expression"},
        {"Channel": SYSMON, "EventID": 1, "CommandLine": "run mimi then katz"},
        {"Channel": PS, "EventID": 4104, "ScriptBlockText": "AmsiUtils GetField"},
        {"Channel": PS, "EventID": 4104, "ScriptBlockText": "xAmsiUtilsx"},
        {"Channel": "Security", "EventID": 4688, "NewProcessName": "C:\\cmd.exe"},
        {"Channel": "Security", "EventID": 4624, "SubjectUserName": "attacker"},
        {"X": "has MIMIKATZ"},
        {"Count": 5},
        {"CommandLine": "a -enc b"},
        {"TargetObject": None, "Details": "powershell"},
        {"Channel": SYSMON, "EventID": 1, "CommandLine": "x /enc y"},
        {"Details": "AmsiScanBuffer"},
        {"CommandLine": "mimikatz # sekurlsa::logonpasswords exit"},
        {"CommandLine": "privilege::debug", "ParentCommandLine": "lsadump::sam"},
        {"New Value": "HKLM\\SOFTWARE\\Microsoft\\Windows Defender\\Exclusions\\Paths\\C:\\x = 0x0"},
        {"Source Name": None, "Threat Name": "HackTool:Win32/Mimikatz"},
    ]
    fired = set()
    for ev in hand:
        fast = [r.rule.title for r in engine.match(ev)]
        assert fast == [r.rule.title for r in engine.match_all(ev)], ev
        fired.update(fast)
    assert fired == {yaml.safe_load(d)["title"] for d in RULES}


@pytest.mark.parametrize("value", ["K\u0130LL-SWITCH", "power\u017fhell-bypass", "k\u0131ll-sw\u0131tch",
                                   "\u212aill-switch", "Äpower\u017fhell-bypass"])
def test_prefilter_regex_ignorecase_unicode_fold(value):
    text = rule_doc("re i", ANY, {"sel": {"A|re|i": "kill-switch|powershell-bypass"}, "condition": "sel"})
    engine = Engine(load_rule_text(text).rules)
    ev = {"A": value}
    assert len(engine.match_all(ev)) == 1
    assert len(engine.match(ev)) == 1


@pytest.mark.parametrize("value", ["ΛΌΓΟΣ", "λόγοσ", "λόγος"])
def test_prefilter_regex_ignorecase_non_ascii_needle_greek_sigma(value):
    text = rule_doc("re i", ANY, {"sel": {"A|re|i": "λόγος"}, "condition": "sel"})
    engine = Engine(load_rule_text(text).rules)
    ev = {"A": value}
    assert len(engine.match_all(ev)) == 1
    assert len(engine.match(ev)) == 1


def test_non_ascii_text_without_fold_chars_skips_ascii_regex_rules():
    """Over-selection guard: "®" in an event must not make every re|i rule a candidate."""
    text = rule_doc("re i", ANY, {"sel": {"A|re|i": "kill-switch"}, "condition": "sel"})
    engine = Engine(load_rule_text(text).rules)
    bucket = engine._bucket(None, None)
    assert bucket.candidates("Microsoft® Windows®", lambda i: None) == []
    assert bucket.candidates("Microsoft® \u017f", lambda i: None) == [0]


def test_ascii_fold_chars_are_all_chars_re_equates_with_ascii_letters():
    import re
    import sys

    from sigstream.stream.needles import ASCII_FOLD_CHARS
    letter = re.compile(r"(?i)[a-z]")
    found = {chr(c) for c in range(128, sys.maxunicode + 1) if letter.fullmatch(chr(c))}
    assert found == set(ASCII_FOLD_CHARS)
