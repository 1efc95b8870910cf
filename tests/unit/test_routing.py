"""Unit tests for stream.routing: route_of on real log sources, LogsourceRouter exact/loose."""
from __future__ import annotations

import uuid

import pytest
import yaml

from sigstream.stream.engine import Engine
from sigstream.stream.routing import UNROUTABLE, LogsourceRouter, event_key, route_of
from sigstream.stream.rules import load_rule_text

SYSMON = "microsoft-windows-sysmon/operational"
PS = frozenset({"microsoft-windows-powershell/operational", "powershellcore/operational"})


def load_one(logsource: dict, detection: dict | None = None):
    det = dict(detection or {"sel": {"CommandLine|contains": "xyz"}})
    det.setdefault("condition", "sel")
    text = yaml.safe_dump({"title": "t", "id": str(uuid.uuid4()), "status": "test",
                           "logsource": logsource, "detection": det})
    loaded = load_rule_text(text)
    assert not loaded.errors, loaded.errors
    (rule,) = loaded.rules
    return rule


@pytest.mark.parametrize("logsource, channels, eids", [
    ({"product": "windows", "category": "process_creation"}, {SYSMON}, {1}),
    ({"product": "windows", "category": "image_load"}, {SYSMON}, {7}),
    ({"product": "windows", "category": "registry_set"}, {SYSMON}, {13}),
    ({"product": "windows", "category": "registry_event"}, {SYSMON}, {12, 13, 14}),
    ({"product": "windows", "service": "sysmon"}, {SYSMON}, None),
    ({"product": "windows", "category": "ps_script"}, PS, {4104}),
    ({"product": "windows", "category": "ps_module"}, PS, {4103}),
    ({"product": "windows", "service": "powershell"}, PS, None),
    ({"product": "windows", "service": "powershell-classic"}, {"windows powershell"}, None),
    ({"product": "windows", "service": "security"}, {"security"}, None),
    ({"product": "windows", "service": "system"}, {"system"}, None),
    ({"product": "test", "category": "test"}, None, None),
])
def test_route_of_real_logsources(logsource, channels, eids):
    ch, ei = route_of(load_one(logsource).ir)
    assert (None if ch is None else set(ch)) == channels
    assert (None if ei is None else set(ei)) == eids


@pytest.mark.parametrize("detection, eids", [
    ({"sel": {"EventID": 4688}}, {4688}),
    ({"sel": {"EventID": [4624, 4625]}}, {4624, 4625}),
    ({"a": {"EventID": 4688}, "b": {"EventID": 4689}, "condition": "a or b"}, {4688, 4689}),
    ({"a": {"EventID": [4688, 4689]}, "b": {"EventID": 4689}, "condition": "a and b"}, {4689}),
    ({"a": {"EventID": 4688}, "b": {"CommandLine": "x"}, "condition": "a or b"}, None),
    ({"sel": {"EventID": 4688}, "condition": "not sel"}, None),
    ({"sel": {"EventID": "4688"}}, {4688}),
])
def test_route_of_security_event_ids(detection, eids):
    ch, ei = route_of(load_one({"product": "windows", "service": "security"}, detection).ir)
    assert ch == frozenset({"security"})
    assert (None if ei is None else set(ei)) == eids


@pytest.mark.parametrize("ir, expected", [
    (("const", False), (frozenset(), frozenset())),
    (("const", True), (None, None)),
    (("field", "Channel", ("contains", "sysmon", False), ()), (None, None)),
    (("field", "EventID", ("re", "41.*", 0, False), ()), (None, None)),
    (("field", "EventID", ("num", 4104.0), ()), (None, frozenset({4104}))),
    (("field", "EventID", ("bool", True), ()), (None, None)),
    (("field", "Channel", ("eq", "Security", True), ()), (frozenset({"security"}), None)),
    (("and", (("field", "Channel", ("eq", "a", False), ()), ("field", "Channel", ("eq", "b", False), ()))),
     (frozenset(), None)),
])
def test_route_of_ir_shapes(ir, expected):
    assert route_of(ir) == expected


@pytest.mark.parametrize("channel, eid, key", [
    ("Security", 4688, ("security", 4688)),
    ("Security", "4688", ("security", 4688)),
    ("Security", " 4688 ", ("security", 4688)),
    ("Security", 4688.0, ("security", 4688)),
    # values the index cannot place meet every rule (over-select, never miss)
    ("Security", True, UNROUTABLE),
    ("Security", "0x12", UNROUTABLE),
    (None, None, (None, None)),
    (["Security"], 1, UNROUTABLE),
])
def test_event_key(channel, eid, key):
    assert event_key(channel, eid) == key


def _router():
    routes = [
        (frozenset({"security"}), frozenset({4688})),           # 0 exact
        (frozenset({"security"}), None),                        # 1 any security event
        (None, frozenset({4688})),                              # 2 event id on any channel
        (None, None),                                           # 3 anything
        (frozenset({SYSMON}), frozenset({1, 13})),              # 4 exact, two ids
        (frozenset(), frozenset()),                             # 5 never
        (frozenset({"security", SYSMON}), frozenset({4688})),   # 6 exact on two channels
    ]
    return LogsourceRouter(routes)


@pytest.mark.parametrize("channel, eid, exact, loose", [
    ("security", 4688, [0, 6], {1, 2, 3}),
    ("security", 4624, [], {1, 3}),
    (SYSMON, 1, [4], {3}),
    (SYSMON, 13, [4], {3}),
    (SYSMON, 4688, [6], {2, 3}),
    ("system", 4688, [], {2, 3}),
    (None, 4688, [], {2, 3}),
    ("security", None, [], {1, 3}),
    (None, None, [], {3}),
])
def test_router_exact_and_loose(channel, eid, exact, loose):
    router = _router()
    assert sorted(router.exact(channel, eid)) == exact
    assert router.loose(channel, eid) == loose
    assert router.rules_for(channel, eid) == sorted(set(exact) | loose)


def test_router_loose_rules():
    assert _router().loose_rules() == {1, 2, 3}


def test_router_never_selects_const_false_rule():
    router = _router()
    for ch in ("security", SYSMON, None):
        for eid in (1, 13, 4688, None):
            assert 5 not in router.rules_for(ch, eid)


# ------------------------------------------------------------------ through the engine

def _sysmon_rule_engine():
    return Engine([load_one({"product": "windows", "category": "process_creation"},
                            {"sel": {"Image|endswith": "\\powershell.exe"}})])


@pytest.mark.parametrize("eid, channel", [
    (1, "Microsoft-Windows-Sysmon/Operational"),
    ("1", "Microsoft-Windows-Sysmon/Operational"),
    (1.0, "Microsoft-Windows-Sysmon/Operational"),
    (1, "MICROSOFT-WINDOWS-SYSMON/OPERATIONAL"),
])
def test_engine_routes_event_id_and_channel_variants(eid, channel):
    ev = {"EventID": eid, "Channel": channel, "Image": "C:\\powershell.exe"}
    engine = _sysmon_rule_engine()
    assert len(engine.match(ev)) == 1 == len(engine.match_all(ev))


@pytest.mark.parametrize("eid, channel", [
    (2, "Microsoft-Windows-Sysmon/Operational"),
    (1, "Security"),
    (None, "Microsoft-Windows-Sysmon/Operational"),
])
def test_engine_routing_rejects_other_logsources(eid, channel):
    ev = {"EventID": eid, "Channel": channel, "Image": "C:\\powershell.exe"}
    engine = _sysmon_rule_engine()
    assert engine.match(ev) == [] == engine.match_all(ev)


def test_router_never_misses_string_float_event_id():
    ev = {"EventID": "1.0", "Channel": "Microsoft-Windows-Sysmon/Operational", "Image": "C:\\powershell.exe"}
    engine = _sysmon_rule_engine()
    assert len(engine.match_all(ev)) == 1
    assert len(engine.match(ev)) == 1
